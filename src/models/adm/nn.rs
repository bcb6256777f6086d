//! Parameters the ADM port rearranges before uploading (guided-diffusion's `nn.py` builds them
//! as `conv_nd`/`linear` modules): the 1-D qkv convolution split into q, k and v projections,
//! and the output convolution split into its ε and variance halves.

use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::models::weights::VarBuilder;
use crate::ops::{self, Conv2dArgs};

/// A layer's `weight` (rows × …) and `bias` (rows), read to the CPU once.
pub struct HostParams {
    weight: Vec<f32>,
    bias: Vec<f32>,
    row_len: usize,
}

impl HostParams {
    /// `weight` of shape `[rows, rest…]` and `bias` of shape `[rows]` under `vb`.
    pub fn load(vb: &VarBuilder, rows: usize, rest: &[usize]) -> Result<HostParams> {
        let mut shape = vec![rows];
        shape.extend_from_slice(rest);
        Ok(HostParams {
            weight: vb.get_host("weight", &shape)?,
            bias: vb.get_host("bias", &[rows])?,
            row_len: rest.iter().product(),
        })
    }

    /// The given rows, in that order, uploaded as a weight of `[rows.len(), rest…]`.
    pub fn select(&self, gpu: &Gpu, rows: &[usize], rest: &[usize]) -> Result<Dense> {
        let mut weight = Vec::with_capacity(rows.len() * self.row_len);
        for &r in rows {
            weight.extend_from_slice(&self.weight[r * self.row_len..(r + 1) * self.row_len]);
        }
        let bias: Vec<f32> = rows.iter().map(|&r| self.bias[r]).collect();
        let mut shape = vec![rows.len()];
        shape.extend_from_slice(rest);
        Ok(Dense {
            weight: gpu.upload(&shape, &weight)?,
            bias: gpu.upload(&[rows.len()], &bias)?,
        })
    }
}

/// A weight and bias on the GPU, applied as a token-wise linear map or a 3×3 convolution.
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// x (…, K) · Wᵀ + b for a weight (N, K): a 1-D kernel-size-1 convolution over tokens.
    pub fn linear(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ops::linear(gpu, x, &self.weight, Some(&self.bias))
    }

    /// A 3×3 convolution with padding 1 for a weight (N, C, 3, 3).
    pub fn conv3x3(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(
            gpu,
            x,
            &self.weight,
            Some(&self.bias),
            Conv2dArgs::padded(1),
        )
    }
}
