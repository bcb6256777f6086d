//! guided-diffusion's `AttentionBlock`: self-attention over the pixels of a feature map with a
//! 1-D qkv convolution, in either qkv channel order.
//!
//! `QKVAttentionLegacy` reads the qkv channels head by head ([q₀ k₀ v₀ | q₁ k₁ v₁ | …]),
//! `QKVAttention` (`use_new_attention_order`) part by part ([q₀ q₁ … | k₀ k₁ … | v₀ v₁ …]);
//! both scale q and k by ch^(−1/4) (together 1/√ch) and return the heads side by side. The
//! port reorders the qkv rows once at load into three projections for the shared attention
//! kernel, so neither order costs anything at run time.

use super::nn::{Dense, HostParams};
use super::{NORM_EPS, NORM_GROUPS};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::layers::GroupNorm;
use crate::models::weights::VarBuilder;
use crate::ops;

pub struct AttentionBlock {
    norm: GroupNorm,
    /// q, k and v projections (rows of `qkv`, head-major within each).
    qkv: [Dense; 3],
    proj_out: Dense,
    heads: usize,
    head_dim: usize,
}

impl AttentionBlock {
    pub fn load(
        vb: &VarBuilder,
        channels: usize,
        heads: usize,
        new_order: bool,
    ) -> Result<AttentionBlock> {
        let gpu = vb.gpu();
        let head_dim = channels / heads;
        let qkv = HostParams::load(&vb.pp("qkv"), 3 * channels, &[channels, 1])?;
        // The qkv row holding element d of head h of part (0 q, 1 k, 2 v).
        let row = |part: usize, h: usize, d: usize| match new_order {
            true => part * channels + h * head_dim + d,
            false => h * 3 * head_dim + part * head_dim + d,
        };
        let part = |p: usize| -> Result<Dense> {
            let rows: Vec<usize> = (0..heads)
                .flat_map(|h| (0..head_dim).map(move |d| (h, d)))
                .map(|(h, d)| row(p, h, d))
                .collect();
            qkv.select(gpu, &rows, &[channels])
        };
        let all: Vec<usize> = (0..channels).collect();
        Ok(AttentionBlock {
            norm: GroupNorm::load(&vb.pp("norm"), NORM_GROUPS, channels, NORM_EPS)?,
            qkv: [part(0)?, part(1)?, part(2)?],
            proj_out: HostParams::load(&vb.pp("proj_out"), channels, &[channels, 1])?.select(
                gpu,
                &all,
                &[channels],
            )?,
            heads,
            head_dim,
        })
    }

    /// x + proj_out(attention(qkv(norm(x)))) over the H·W pixels of x (B, C, H, W).
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let &[b, c, h, w] = x.shape() else {
            return Err(Error::Shape {
                op: "ADM attention block",
                msg: format!("input {:?} is not NCHW", x.shape()),
            });
        };
        let normed = self.norm.forward(gpu, x, false)?;
        let tokens = ops::transpose_last2(gpu, &normed.reshape(&[b, c, h * w])?)?;
        let [q, k, v] = [0, 1, 2].map(|i| self.qkv[i].linear(gpu, &tokens));
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let attended = ops::attention(gpu, &q?, &k?, &v?, self.heads, scale)?;
        let projected = self.proj_out.linear(gpu, &attended)?;
        let planes = ops::transpose_last2(gpu, &projected)?.reshape(&[b, c, h, w])?;
        ops::add(gpu, x, &planes)
    }
}
