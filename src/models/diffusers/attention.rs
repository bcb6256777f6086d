//! diffusers `Attention` in the form UNet2DModel's blocks build it
//! (`_from_deprecated_attn_block`): self-attention over the pixels of a feature map, with the
//! input gradient of the UNet's backward pass.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::layers::{GroupNorm, GroupNormTape, Linear};
use crate::models::weights::VarBuilder;
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
        Ok(self.run(gpu, x, false)?.0)
    }

    /// [`Self::forward`] and what [`Self::backward`] needs.
    pub fn forward_saving(&self, gpu: &Gpu, x: &Tensor) -> Result<(Tensor, AttentionTape)> {
        let (y, tape) = self.run(gpu, x, true)?;
        Ok((y, tape.expect("a saving run keeps its tape")))
    }

    /// The forward; with `save` it keeps the tape, and the attention kernel also writes the
    /// softmax log-sum-exp, the one value the plain forward does not compute anyway. Without
    /// it each intermediate is dropped after its last use, so its buffer can serve the next op.
    fn run(&self, gpu: &Gpu, x: &Tensor, save: bool) -> Result<(Tensor, Option<AttentionTape>)> {
        let &[b, c, h, w] = x.shape() else {
            return Err(Error::Shape {
                op: "attention block",
                msg: format!("input {:?} is not NCHW", x.shape()),
            });
        };
        let (normed, norm) = match (&self.group_norm, save) {
            (Some(norm), true) => {
                let (y, tape) = norm.forward_saving(gpu, x, false)?;
                (y, Some(tape))
            }
            (Some(norm), false) => (norm.forward(gpu, x, false)?, None),
            (None, _) => (x.clone(), None),
        };
        let tokens = ops::transpose_last2(gpu, &normed.reshape(&[b, c, h * w])?)?;
        drop(normed);
        let q = self.to_q.forward(gpu, &tokens)?;
        let k = self.to_k.forward(gpu, &tokens)?;
        let v = self.to_v.forward(gpu, &tokens)?;
        drop(tokens);
        let (heads, scale) = (self.heads, self.scale());
        let (attended, lse) = if save {
            let (out, lse) = ops::attention_saving(gpu, &q, &k, &v, heads, scale)?;
            (out, Some(lse))
        } else {
            (ops::attention(gpu, &q, &k, &v, heads, scale)?, None)
        };
        let projected = self.to_out.forward(gpu, &attended)?;
        let tape = match save {
            true => Some(AttentionTape {
                norm,
                q,
                k,
                v,
                attended,
                lse,
            }),
            false => None,
        };
        let planes = ops::transpose_last2(gpu, &projected)?.reshape(&[b, c, h, w])?;
        drop(projected);
        let s = self.out_scale();
        let y = ops::lincomb(gpu, s, &planes, s, x)?;
        Ok((y, tape))
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    fn out_scale(&self) -> f32 {
        1.0 / self.rescale_output_factor
    }

    /// ∂⟨forward(x), dy⟩/∂x, through the residual and through norm → q/k/v → softmax attention
    /// → output projection.
    pub fn backward(&self, gpu: &Gpu, tape: &AttentionTape, dy: &Tensor) -> Result<Tensor> {
        let lse = tape.lse.as_ref().ok_or_else(|| {
            Error::Invalid("attention backward needs the tape of forward_saving".into())
        })?;
        let &[b, c, h, w] = dy.shape() else {
            return Err(Error::Shape {
                op: "attention block backward",
                msg: format!("dy {:?} is not NCHW", dy.shape()),
            });
        };
        // out = s·planes + s·x: both terms take s·dy.
        let g = super::resnet::scaled(gpu, dy, self.out_scale())?;
        let d_projected = ops::transpose_last2(gpu, &g.reshape(&[b, c, h * w])?)?;
        let d_attended = self.to_out.input_grad(gpu, &d_projected)?;
        let saved = ops::AttentionSaved {
            q: &tape.q,
            k: &tape.k,
            v: &tape.v,
            out: &tape.attended,
            lse,
        };
        let (dq, dk, dv) = ops::attention_grad(gpu, saved, &d_attended, self.heads, self.scale())?;
        let d_tokens = ops::add(
            gpu,
            &ops::add(
                gpu,
                &self.to_q.input_grad(gpu, &dq)?,
                &self.to_k.input_grad(gpu, &dk)?,
            )?,
            &self.to_v.input_grad(gpu, &dv)?,
        )?;
        let d_normed = ops::transpose_last2(gpu, &d_tokens)?.reshape(&[b, c, h, w])?;
        let d_x = match (&self.group_norm, &tape.norm) {
            (Some(norm), Some(norm_tape)) => norm.backward(gpu, norm_tape, &d_normed)?,
            _ => d_normed,
        };
        ops::add(gpu, &d_x, &g)
    }
}

/// What an [`Attention`]'s backward needs: the norm's input and statistics, the projections
/// q, k, v, the attention output and (from the saving forward) the softmax log-sum-exp. The
/// token sequence itself is not kept: q, k and v are linear in it.
pub struct AttentionTape {
    norm: Option<GroupNormTape>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attended: Tensor,
    lse: Option<Tensor>,
}
