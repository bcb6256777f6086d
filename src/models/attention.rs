//! diffusers `Attention` in the form UNet2DModel's blocks build it
//! (`_from_deprecated_attn_block`): self-attention over the pixels of a feature map.

use super::layers::{GroupNorm, Linear};
use super::weights::VarBuilder;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops;

/// Optional group norm, per-pixel q/k/v projections, softmax attention, output projection,
/// residual, division by `rescale_output_factor`.
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    rescale_output_factor: f32,
}

impl Attention {
    /// `head_dim` must be positive (the config's `validate` refuses 0); `groups` is None when
    /// the block has no norm before the attention.
    pub fn load(
        vb: &VarBuilder,
        channels: usize,
        head_dim: usize,
        groups: Option<usize>,
        eps: f32,
        rescale_output_factor: f32,
    ) -> Result<Attention> {
        // diffusers computes `channels // head_dim` heads; one head when the head is wider
        // than the channels.
        let heads = (channels / head_dim).max(1);
        let inner = heads * head_dim;
        Ok(Attention {
            group_norm: match groups {
                Some(g) => Some(GroupNorm::load(&vb.pp("group_norm"), g, channels, eps)?),
                None => None,
            },
            to_q: Linear::load(&vb.pp("to_q"), channels, inner)?,
            to_k: Linear::load(&vb.pp("to_k"), channels, inner)?,
            to_v: Linear::load(&vb.pp("to_v"), channels, inner)?,
            to_out: Linear::load(&vb.pp("to_out").pp(0), inner, channels)?,
            heads,
            head_dim,
            rescale_output_factor,
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let &[b, c, h, w] = x.shape() else {
            return Err(Error::Shape {
                op: "attention block",
                msg: format!("input {:?} is not NCHW", x.shape()),
            });
        };
        let normed = match &self.group_norm {
            Some(norm) => norm.forward(gpu, x, false)?,
            None => x.clone(),
        };
        let tokens = ops::transpose_last2(gpu, &normed.reshape(&[b, c, h * w])?)?;
        let q = self.to_q.forward(gpu, &tokens)?;
        let k = self.to_k.forward(gpu, &tokens)?;
        let v = self.to_v.forward(gpu, &tokens)?;
        let attended = ops::attention(
            gpu,
            &q,
            &k,
            &v,
            self.heads,
            1.0 / (self.head_dim as f32).sqrt(),
        )?;
        let projected = self.to_out.forward(gpu, &attended)?;
        let planes = ops::transpose_last2(gpu, &projected)?.reshape(&[b, c, h, w])?;
        let s = 1.0 / self.rescale_output_factor;
        ops::lincomb(gpu, s, &planes, s, x)
    }
}
