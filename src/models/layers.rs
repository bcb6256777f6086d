//! PyTorch/diffusers building blocks on GPU ops, each loading its own parameters by name.

use super::weights::VarBuilder;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::{self, Conv2dArgs};

pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    pad_bottom_right: usize,
}

impl Conv2d {
    pub fn load(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Conv2d> {
        Ok(Conv2d {
            weight: vb.get("weight", &[c_out, c_in, k, k])?,
            bias: vb.get("bias", &[c_out])?,
            stride,
            padding,
            pad_bottom_right: 0,
        })
    }

    /// diffusers' Downsample2D convolution: 3×3, stride 2; padding 0 means pad (0, 1, 0, 1).
    pub fn load_downsample(vb: &VarBuilder, channels: usize, padding: usize) -> Result<Conv2d> {
        let mut conv = Conv2d::load(vb, channels, channels, 3, 2, padding)?;
        conv.pad_bottom_right = usize::from(padding == 0);
        Ok(conv)
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        self.forward_residual(gpu, x, None, 1.0)
    }

    /// `(conv(x) + residual) * out_scale` in one kernel.
    pub fn forward_residual(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        residual: Option<&Tensor>,
        out_scale: f32,
    ) -> Result<Tensor> {
        let args = Conv2dArgs {
            stride: self.stride,
            padding: self.padding,
            pad_bottom_right: self.pad_bottom_right,
            residual,
            out_scale,
        };
        ops::conv2d(gpu, x, &self.weight, Some(&self.bias), args)
    }
}

pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn load(vb: &VarBuilder, d_in: usize, d_out: usize) -> Result<Linear> {
        Ok(Linear {
            weight: vb.get("weight", &[d_out, d_in])?,
            bias: vb.get("bias", &[d_out])?,
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ops::linear(gpu, x, &self.weight, Some(&self.bias))
    }
}

pub struct GroupNorm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
    eps: f32,
}

impl GroupNorm {
    pub fn load(vb: &VarBuilder, groups: usize, channels: usize, eps: f32) -> Result<GroupNorm> {
        Ok(GroupNorm {
            gamma: vb.get("weight", &[channels])?,
            beta: vb.get("bias", &[channels])?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor, silu: bool) -> Result<Tensor> {
        ops::group_norm(gpu, x, self.groups, self.eps, &self.gamma, &self.beta, silu)
    }
}

/// How a ResnetBlock2D injects the time embedding (diffusers' `time_embedding_norm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeEmbeddingNorm {
    /// h + proj(temb) after conv1.
    Default,
    /// norm2(h)·(1 + scale) + shift with [scale | shift] = proj(temb) (ADM).
    ScaleShift,
}

/// diffusers `ResnetBlock2D`: norm1 → SiLU → conv1 → +temb → norm2 → SiLU → conv2, plus shortcut.
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    time_norm: TimeEmbeddingNorm,
    output_scale_factor: f32,
}

pub struct ResnetConfig {
    pub groups: usize,
    pub eps: f32,
    pub temb_channels: usize,
    pub time_norm: TimeEmbeddingNorm,
    pub output_scale_factor: f32,
}

impl ResnetBlock2D {
    pub fn load(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        cfg: &ResnetConfig,
    ) -> Result<ResnetBlock2D> {
        let proj_out = match cfg.time_norm {
            TimeEmbeddingNorm::Default => c_out,
            TimeEmbeddingNorm::ScaleShift => 2 * c_out,
        };
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&vb.pp("norm1"), cfg.groups, c_in, cfg.eps)?,
            conv1: Conv2d::load(&vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: Linear::load(&vb.pp("time_emb_proj"), cfg.temb_channels, proj_out)?,
            norm2: GroupNorm::load(&vb.pp("norm2"), cfg.groups, c_out, cfg.eps)?,
            conv2: Conv2d::load(&vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out {
                Some(Conv2d::load(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
            } else {
                None
            },
            time_norm: cfg.time_norm,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `temb_act` is SiLU(time embedding), shared by every block of the network.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(gpu, x, true)?;
        let h = self.conv1.forward(gpu, &h)?;
        let t = self.time_emb_proj.forward(gpu, temb_act)?;
        let h = match self.time_norm {
            TimeEmbeddingNorm::Default => {
                let h = ops::add_channel_vec(gpu, &h, &t)?;
                self.norm2.forward(gpu, &h, true)?
            }
            TimeEmbeddingNorm::ScaleShift => {
                let h = self.norm2.forward(gpu, &h, false)?;
                ops::silu(gpu, &ops::scale_shift(gpu, &h, &t)?)?
            }
        };
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(gpu, x)?,
            None => x.clone(),
        };
        self.conv2
            .forward_residual(gpu, &h, Some(&shortcut), 1.0 / self.output_scale_factor)
    }
}

/// diffusers `Attention` as used in UNet2DModel blocks (`_from_deprecated_attn_block`):
/// optional group norm, per-token q/k/v projections, softmax attention, output projection, residual,
/// division by `rescale_output_factor`.
pub struct SpatialAttention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    rescale_output_factor: f32,
}

impl SpatialAttention {
    pub fn load(
        vb: &VarBuilder,
        channels: usize,
        head_dim: usize,
        groups: Option<usize>,
        eps: f32,
        rescale_output_factor: f32,
    ) -> Result<SpatialAttention> {
        let heads = (channels / head_dim).max(1);
        let inner = heads * head_dim;
        Ok(SpatialAttention {
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
            return Err(crate::Error::Shape {
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
