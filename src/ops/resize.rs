//! Bilinear resizing (resize.wgsl), torch's F.interpolate(mode='bilinear', align_corners=False):
//! how pytorch-fid brings any image to Inception's 299×299.

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct ResizeParams for RESIZE::Params {
        total: u32,
        h_in: u32,
        w_in: u32,
        h_out: u32,
        w_out: u32,
    }
}

/// Resizes (B, C, H, W) to (B, C, h_out, w_out), up or down, without antialiasing.
pub fn resize_bilinear(gpu: &Gpu, x: &Tensor, h_out: usize, w_out: usize) -> Result<Tensor> {
    const OP: &str = "resize_bilinear";
    let [b, c, h, w] = dims::<4>(x, OP, "input")?;
    ensure(h > 0 && w > 0 && h_out > 0 && w_out > 0, OP, || {
        format!("cannot resize {h}x{w} to {h_out}x{w_out}")
    })?;
    // resize.wgsl's exact source coordinates need (2·out + 1)·in in an i32.
    let fits = |size_in: usize, size_out: usize| (2 * size_out + 1) * size_in <= i32::MAX as usize;
    ensure(fits(h, h_out) && fits(w, w_out), OP, || {
        format!("{h}x{w} → {h_out}x{w_out} is too large to resize")
    })?;
    let u = |what, v| checked_u32(OP, what, v);
    let total = b * c * h_out * w_out;
    let params = ResizeParams {
        total: u("total", total)?,
        h_in: u("h_in", h)?,
        w_in: u("w_in", w)?,
        h_out: u("h_out", h_out)?,
        w_out: u("w_out", w_out)?,
    };
    let out = gpu.empty(&[b, c, h_out, w_out])?;
    let kernel = Kernel::new(&shaders::RESIZE, "resize_bilinear");
    gpu.dispatch(&kernel, &params, &[x], &[&out], gpu.grid_1d(total))?;
    Ok(out)
}
