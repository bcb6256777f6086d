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

/// The activations whose backward `activation_grad` computes (elementwise_grad.wgsl's
/// `ACTIVATION_*`).
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub(super) enum Activation {
    Silu = 0,
    Gelu = 1,
    QuickGelu = 2,
}

/// ∂⟨f(z), dy⟩/∂z = dy·f'(z) for the activation f.
fn activation_grad(
    gpu: &Gpu,
    op: &'static str,
    f: Activation,
    z: &Tensor,
    dy: &Tensor,
) -> Result<Tensor> {
    ensure(z.shape() == dy.shape(), op, || {
        format!("z {:?} and dy {:?} differ", z.shape(), dy.shape())
    })?;
    let p = ElementwiseGradParams {
        total: checked_u32(op, "total", z.numel())?,
    };
    let dx = gpu.empty(z.shape())?;
    let kernel = Kernel::new(&shaders::ELEMENTWISE_GRAD, "activation_grad").with("OP", f as u32);
    gpu.dispatch(&kernel, &p, &[z, dy], &[&dx], gpu.grid_1d(dx.numel()))?;
    Ok(dx)
}

/// ∂⟨SiLU(z), dy⟩/∂z = dy·SiLU'(z).
pub fn silu_grad(gpu: &Gpu, z: &Tensor, dy: &Tensor) -> Result<Tensor> {
    activation_grad(gpu, "silu_grad", Activation::Silu, z, dy)
}

/// ∂⟨GELU(z), dy⟩/∂z = dy·(Φ(z) + z·φ(z)).
pub fn gelu_grad(gpu: &Gpu, z: &Tensor, dy: &Tensor) -> Result<Tensor> {
    activation_grad(gpu, "gelu_grad", Activation::Gelu, z, dy)
}

/// ∂⟨quick_gelu(z), dy⟩/∂z.
pub fn quick_gelu_grad(gpu: &Gpu, z: &Tensor, dy: &Tensor) -> Result<Tensor> {
    activation_grad(gpu, "quick_gelu_grad", Activation::QuickGelu, z, dy)
}

/// ∂⟨geglu(x), dy⟩/∂x for x (…, 2F) = [h | gate] and dy (…, F): the h half takes
/// dy·GELU(gate), the gate half dy·h·GELU'(gate).
pub fn geglu_grad(gpu: &Gpu, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "geglu_grad";
    let shape = x.shape();
    let width = *shape.last().unwrap_or(&0);
    let half = width / 2;
    let matches = width > 0
        && width.is_multiple_of(2)
        && dy.shape().split_last() == Some((&half, &shape[..shape.len() - 1]));
    ensure(matches, OP, || {
        format!(
            "x {shape:?} (two halves) and dy {:?} (one) differ",
            dy.shape()
        )
    })?;
    let rows = x.numel() / width;
    let planes = x.reshape(&[rows, width, 1, 1])?;
    let h = super::slice_channels(gpu, &planes, 0, half)?;
    let gate = super::slice_channels(gpu, &planes, half, half)?;
    let dy = dy.reshape(&[rows, half, 1, 1])?;
    let d_h = super::mul(gpu, &dy, &super::gelu(gpu, &gate)?)?;
    let d_gate = gelu_grad(gpu, &gate, &super::mul(gpu, &dy, &h)?)?;
    super::concat_channels(gpu, &[&d_h, &d_gate])?.reshape(shape)
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
