//! Input gradients of the element-wise and layout kernels (elementwise_grad.wgsl, and the
//! existing kernels where those are the adjoint already).

use super::{avg_pool2x, dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct ElementwiseGradParams for ELEMENTWISE_GRAD::Params {
        total: u32,
    }
}

/// One 1-D launch of `entry` writing every element of `out`.
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    p: &ElementwiseGradParams,
    inputs: &[&Tensor],
    out: &Tensor,
) -> Result<()> {
    let kernel = Kernel::new(&shaders::ELEMENTWISE_GRAD, entry);
    gpu.dispatch(&kernel, p, inputs, &[out], gpu.grid_1d(out.numel()))
}

/// ∂⟨SiLU(z), dy⟩/∂z = dy·SiLU'(z).
pub fn silu_grad(gpu: &Gpu, z: &Tensor, dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "silu_grad";
    ensure(z.shape() == dy.shape(), OP, || {
        format!("z {:?} and dy {:?} differ", z.shape(), dy.shape())
    })?;
    let p = ElementwiseGradParams {
        total: checked_u32(OP, "total", z.numel())?,
    };
    let dx = gpu.empty(z.shape())?;
    launch(gpu, "silu_grad", &p, &[z, dy], &dx)?;
    Ok(dx)
}

/// ∂⟨upsample_nearest2x(x), dy⟩/∂x: each input pixel sums its 2×2 block of dy, which is
/// 4·avg_pool2x(dy) exactly (scaling by a power of two does not round).
pub fn upsample_nearest2x_grad(gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "upsample_nearest2x_grad";
    let [_, _, h, w] = dims::<4>(dy, OP, "dy")?;
    ensure(h % 2 == 0 && w % 2 == 0 && h > 0 && w > 0, OP, || {
        format!("dy {:?} is not a 2x upsampled map", dy.shape())
    })?;
    super::affine(gpu, &avg_pool2x(gpu, dy)?, 4.0, 0.0)
}
