//! The PyTorch primitives (`nn.Conv2d`, `nn.Linear`, `nn.GroupNorm`, `nn.Embedding`) on GPU ops,
//! each loading its own parameters by name.

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

    /// Adds `pad` zero rows and columns at the bottom and right only, as `F.pad(x, (0, pad, 0,
    /// pad))` before the convolution would, but without materialising the padded input.
    pub fn with_bottom_right_pad(self, pad: usize) -> Conv2d {
        Conv2d {
            pad_bottom_right: pad,
            ..self
        }
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
            ..Default::default()
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

    /// With `silu`, the SiLU that follows almost every norm in these networks is fused in.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, silu: bool) -> Result<Tensor> {
        ops::group_norm(gpu, x, self.groups, self.eps, &self.gamma, &self.beta, silu)
    }
}

/// A lookup table of `num_embeddings` rows of width `dim`.
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    pub fn load(vb: &VarBuilder, num_embeddings: usize, dim: usize) -> Result<Embedding> {
        Ok(Embedding {
            weight: vb.get("weight", &[num_embeddings, dim])?,
        })
    }

    /// The rows of integer-valued f32 `ids` (B).
    pub fn forward(&self, gpu: &Gpu, ids: &Tensor) -> Result<Tensor> {
        ops::embedding_lookup(gpu, &self.weight, ids)
    }
}
