//! Input gradients of the element-wise and layout kernels (elementwise_grad.wgsl, and the
//! existing kernels where those are the adjoint already).

use super::{avg_pool2x, dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, DType, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct ElementwiseGradParams for ELEMENTWISE_GRAD::Params {
        total: u32,
        inner: u32,
        outer: u32,
        offset: u32,
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
    // Only slice_channels has `act` bindings (the forward slices f16 activations too); every
    // gradient entry reads f32, and an f16 tensor there is refused by the dispatch.
    let half = entry == "slice_channels"
        && super::elementwise::one_dtype(entry, inputs, out)? == DType::F16;
    let kernel = Kernel::new(&shaders::ELEMENTWISE_GRAD, entry).half(half);
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
        ..Default::default()
    };
    let dx = gpu.empty(z.shape())?;
    launch(gpu, "silu_grad", &p, &[z, dy], &dx)?;
    Ok(dx)
}

/// Channels [start, start + count) of x (B, C, H, W): the gradient of one part of a
/// [`concat_channels`](super::concat_channels).
pub fn slice_channels(gpu: &Gpu, x: &Tensor, start: usize, count: usize) -> Result<Tensor> {
    const OP: &str = "slice_channels";
    let [b, c, h, w] = dims::<4>(x, OP, "x")?;
    ensure(start + count <= c, OP, || {
        format!("channels {start}..{} of {c}", start + count)
    })?;
    let hw = h * w;
    let u = |what, v| checked_u32(OP, what, v);
    let p = ElementwiseGradParams {
        total: u("total", b * count * hw)?,
        inner: u("inner", count * hw)?,
        outer: u("outer", c * hw)?,
        offset: u("offset", start * hw)?,
    };
    let out = gpu.empty_typed(&[b, count, h, w], x.dtype())?;
    launch(gpu, "slice_channels", &p, &[x], &out)?;
    Ok(out)
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
