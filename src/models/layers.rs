//! The PyTorch primitives (`nn.Conv2d`, `nn.Linear`, `nn.GroupNorm`, `nn.Embedding`) on GPU ops,
//! each loading its own parameters by name, with the input gradients the UNet's backward pass
//! needs (no weight gradients: guidance differentiates with respect to the image only).

use super::weights::VarBuilder;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::{self, Conv2dArgs, ConvWeight, LinearWeight};

pub struct Conv2d {
    weight: ConvWeight,
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
        let weight = vb.get_weight("weight", &[c_out, c_in, k, k])?;
        Ok(Conv2d {
            weight: ConvWeight::new(vb.gpu(), weight)?,
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
            residual,
            out_scale,
            ..self.geometry()
        };
        ops::conv2d_prepared(gpu, x, &self.weight, Some(&self.bias), args)
    }

    fn geometry(&self) -> Conv2dArgs<'static> {
        Conv2dArgs {
            stride: self.stride,
            padding: self.padding,
            pad_bottom_right: self.pad_bottom_right,
            ..Default::default()
        }
    }

    /// ∂⟨conv(x), dy⟩/∂x for an input of spatial size `input_hw` (the convolution is linear in
    /// x, so nothing of the forward is needed).
    pub fn input_grad(&self, gpu: &Gpu, dy: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        let weight = self.weight.oihw(gpu)?;
        ops::conv2d_input_grad(gpu, dy, &weight, input_hw, self.geometry())
    }

    /// [`Self::input_grad`] of a size-preserving (stride 1, "same" padding) convolution.
    pub fn same_size_input_grad(&self, gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
        let [_, _, h, w] = *dy.shape() else {
            return Err(Error::Shape {
                op: "conv2d backward",
                msg: format!("dy {:?} is not NCHW", dy.shape()),
            });
        };
        self.input_grad(gpu, dy, (h, w))
    }
}

pub struct Linear {
    weight: LinearWeight,
    /// None for `Linear(bias=False)` (the attention projections of transformer blocks).
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(vb: &VarBuilder, d_in: usize, d_out: usize) -> Result<Linear> {
        let weight = vb.get_weight("weight", &[d_out, d_in])?;
        Ok(Linear {
            weight: LinearWeight::new(vb.gpu(), weight)?,
            bias: Some(vb.get("bias", &[d_out])?),
        })
    }

    /// A `Linear(bias=False)`: the product alone, no bias added.
    pub fn load_without_bias(vb: &VarBuilder, d_in: usize, d_out: usize) -> Result<Linear> {
        let weight = vb.get_weight("weight", &[d_out, d_in])?;
        Ok(Linear {
            weight: LinearWeight::new(vb.gpu(), weight)?,
            bias: None,
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ops::linear_prepared(gpu, x, &self.weight, self.bias.as_ref())
    }

    /// ∂⟨linear(x), dy⟩/∂x = dy·W.
    pub fn input_grad(&self, gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
        ops::linear_input_grad_prepared(gpu, dy, &self.weight)
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

    /// [`Self::forward`] (the same dispatches) keeping what [`Self::backward`] needs.
    pub fn forward_saving(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        silu: bool,
    ) -> Result<(Tensor, GroupNormTape)> {
        let (y, moments) =
            ops::group_norm_saving(gpu, x, self.groups, self.eps, &self.gamma, &self.beta, silu)?;
        let tape = GroupNormTape {
            x: x.clone(),
            moments,
            silu,
        };
        Ok((y, tape))
    }

    /// ∂⟨forward(x), dy⟩/∂x; the fused SiLU's derivative is recomputed from the saved input.
    pub fn backward(&self, gpu: &Gpu, tape: &GroupNormTape, dy: &Tensor) -> Result<Tensor> {
        let GroupNormTape { x, moments, silu } = tape;
        ops::group_norm_input_grad(
            gpu,
            x,
            moments,
            self.groups,
            &self.gamma,
            &self.beta,
            *silu,
            dy,
        )
    }
}

/// PyTorch's `nn.LayerNorm` over the last axis.
pub struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(vb: &VarBuilder, channels: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: vb.get("weight", &[channels])?,
            beta: vb.get("bias", &[channels])?,
            eps,
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(gpu, x, self.eps, &self.gamma, &self.beta)
    }

    /// [`Self::forward`] keeping what [`Self::backward`] needs.
    pub fn forward_saving(&self, gpu: &Gpu, x: &Tensor) -> Result<(Tensor, LayerNormTape)> {
        let (y, moments) = ops::layer_norm_saving(gpu, x, self.eps, &self.gamma, &self.beta)?;
        Ok((
            y,
            LayerNormTape {
                x: x.clone(),
                moments,
            },
        ))
    }

    /// ∂⟨forward(x), dy⟩/∂x.
    pub fn backward(&self, gpu: &Gpu, tape: &LayerNormTape, dy: &Tensor) -> Result<Tensor> {
        ops::layer_norm_input_grad(gpu, &tape.x, &tape.moments, &self.gamma, &self.beta, dy)
    }
}

/// What a [`LayerNorm`]'s backward needs: its input and per-row (mean, 1/std).
pub struct LayerNormTape {
    x: Tensor,
    moments: Tensor,
}

/// What a [`GroupNorm`]'s backward needs: its input and per-group (mean, 1/std).
pub struct GroupNormTape {
    x: Tensor,
    moments: Tensor,
    silu: bool,
}

/// A lookup table of `num_embeddings` rows of width `dim`, in blocks of rows that each fit one
/// storage binding (one block unless the table is larger: CLIP's token table is 145 MiB).
pub struct Embedding {
    blocks: Vec<(usize, Tensor)>,
}

impl Embedding {
    pub fn load(vb: &VarBuilder, num_embeddings: usize, dim: usize) -> Result<Embedding> {
        let gpu = vb.gpu();
        let row_bytes = (dim.max(1) * 4) as u64;
        let rows_per_block = ((gpu.max_tensor_bytes() / row_bytes) as usize).max(1);
        if num_embeddings <= rows_per_block {
            let table = vb.get("weight", &[num_embeddings, dim])?;
            return Ok(Embedding {
                blocks: vec![(0, table)],
            });
        }
        let data = vb.get_host("weight", &[num_embeddings, dim])?;
        let blocks = (0..num_embeddings)
            .step_by(rows_per_block)
            .map(|first| {
                let rows = rows_per_block.min(num_embeddings - first);
                let values = &data[first * dim..(first + rows) * dim];
                Ok((first, gpu.upload(&[rows, dim], values)?))
            })
            .collect::<Result<_>>()?;
        Ok(Embedding { blocks })
    }

    /// The rows of integer-valued f32 `ids` (B).
    pub fn forward(&self, gpu: &Gpu, ids: &Tensor) -> Result<Tensor> {
        let blocks: Vec<(usize, &Tensor)> = self.blocks.iter().map(|(f, t)| (*f, t)).collect();
        ops::embedding_lookup_blocks(gpu, &blocks, ids)
    }
}
