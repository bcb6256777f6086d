//! Windowed max/average pooling and the global average pool (pool.wgsl), the pooling variants
//! of FID's Inception-V3.

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct PoolParams for POOL::Params {
        total: u32,
        h: u32,
        w: u32,
        h_out: u32,
        w_out: u32,
    }
}

/// What a [`pool2d`] window computes: pool.wgsl's `MODE` override (its `MODE_*` constants).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// The largest input tap; padding never wins (torch's max_pool2d).
    Max = 0,
    /// Sum over K² with padded taps as zeros (avg_pool2d, count_include_pad=True).
    Avg = 1,
    /// Mean of the taps inside the input (avg_pool2d, count_include_pad=False).
    AvgValid = 2,
}

/// Window geometry of a [`pool2d`].
#[derive(Clone, Copy, Debug)]
pub struct Pool2dArgs {
    pub kernel: usize,
    pub stride: usize,
    /// Zero padding on every side, at most `kernel / 2` (as torch requires).
    pub padding: usize,
    pub mode: PoolMode,
}

/// K×K pooling of (B, C, H, W) with floor-mode output sizes, as torch's max_pool2d/avg_pool2d.
pub fn pool2d(gpu: &Gpu, x: &Tensor, args: Pool2dArgs) -> Result<Tensor> {
    const OP: &str = "pool2d";
    let [b, c, h, w] = dims::<4>(x, OP, "input")?;
    let Pool2dArgs {
        kernel: k,
        stride,
        padding,
        mode,
    } = args;
    ensure(k >= 1 && stride >= 1, OP, || {
        format!("kernel {k} and stride {stride} must be ≥ 1")
    })?;
    ensure(padding <= k / 2, OP, || {
        format!("padding {padding} must be at most half the kernel {k}")
    })?;
    ensure(h + 2 * padding >= k && w + 2 * padding >= k, OP, || {
        format!("kernel {k}x{k} larger than the padded input {h}x{w} (+{padding})")
    })?;
    let h_out = (h + 2 * padding - k) / stride + 1;
    let w_out = (w + 2 * padding - k) / stride + 1;
    let u = |what, v| checked_u32(OP, what, v);
    let total = b * c * h_out * w_out;
    let params = PoolParams {
        total: u("total", total)?,
        h: u("h", h)?,
        w: u("w", w)?,
        h_out: u("h_out", h_out)?,
        w_out: u("w_out", w_out)?,
    };
    let kernel = Kernel::new(&shaders::POOL, "pool2d")
        .with("K", u("kernel", k)?)
        .with("STRIDE", u("stride", stride)?)
        .with("PAD", u("padding", padding)?)
        .with("MODE", mode as u32);
    let out = gpu.empty(&[b, c, h_out, w_out])?;
    gpu.dispatch(&kernel, &params, &[x], &[&out], gpu.grid_1d(total))?;
    Ok(out)
}

/// The mean of each plane: (B, C, H, W) → (B, C) (adaptive_avg_pool2d to 1×1, flattened).
pub fn global_avg_pool(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "global_avg_pool";
    let [b, c, h, w] = dims::<4>(x, OP, "input")?;
    ensure(h * w > 0, OP, || "the input has no pixels".into())?;
    let u = |what, v| checked_u32(OP, what, v);
    let params = PoolParams {
        total: u("planes", b * c)?,
        h: u("h", h)?,
        w: u("w", w)?,
        h_out: 1,
        w_out: 1,
    };
    let out = gpu.empty(&[b, c])?;
    let kernel = Kernel::new(&shaders::POOL, "global_avg_pool");
    gpu.dispatch(&kernel, &params, &[x], &[&out], gpu.grid_1d(b * c))?;
    Ok(out)
}
