//! The kernels of uncertainty-guided sampling (guidance.wgsl): the statistics of the M
//! predictions that Rule G and Rule P need, the sum of the copies' input gradients, and the
//! masked update of ε.

use super::ensure;
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct GuidanceParams for GUIDANCE::Params {
        total: u32,
        copies: u32,
        per_sample: u32,
        scalar: f32,
    }
}

/// How a masked element of ε changes (the `RULE` override of guidance.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MaskedRule {
    /// ε + λ·update (Rule G's gradient step).
    Add = 0,
    /// The update itself (Rule P's posterior ε).
    Replace = 1,
}

/// Where an element's threshold comes from (the `THRESHOLD` override of guidance.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ThresholdKind {
    /// One value per sample, shape (B): the image's percentile.
    PerSample = 0,
    /// One value per element of a sample, shape (C, H, W): a calibrated map.
    PerElement = 1,
}

fn params(op: &str, per_copy: &Tensor, copies: usize, scalar: f32) -> Result<GuidanceParams> {
    let per_sample = per_copy.numel() / per_copy.dim(0).max(1);
    Ok(GuidanceParams {
        total: checked_u32(op, "total", per_copy.numel())?,
        copies: checked_u32(op, "copies", copies)?,
        per_sample: checked_u32(op, "per_sample", per_sample)?,
        scalar,
    })
}

/// The number of copies M in `copies` (M·B, …) of tensors shaped like `one` (B, …).
fn count_copies(op: &'static str, one: &[usize], copies: &Tensor, min: usize) -> Result<usize> {
    let per_copy: usize = one.iter().product();
    let m = copies.numel() / per_copy.max(1);
    ensure(
        !one.is_empty() && copies.shape()[1..] == one[1..] && m * per_copy == copies.numel(),
        op,
        || format!("{:?} is not M stacked batches of {one:?}", copies.shape()),
    )?;
    ensure(m >= min, op, || {
        format!("needs at least {min} copies, got {m}")
    })?;
    Ok(m)
}

/// Rule G's statistics of `eps_copies` (M·B, …) for B samples: (∂U/∂ε_m = 2(ε_m − ε̄)/(M−1)
/// stacked like the copies, U = the unbiased variance (B, …)).
pub fn gradient_cotangent(
    gpu: &Gpu,
    eps_copies: &Tensor,
    batch: usize,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "gradient_cotangent";
    let mut one = eps_copies.shape().to_vec();
    ensure(!one.is_empty() && batch > 0, OP, || "needs a batch".into())?;
    one[0] = batch;
    let m = count_copies(OP, &one, eps_copies, 2)?;
    let cotangent = gpu.empty(eps_copies.shape())?;
    let variance = gpu.empty(&one)?;
    let p = params(OP, &variance, m, 0.0)?;
    let kernel = Kernel::new(&shaders::GUIDANCE, "gradient_cotangent");
    let grid = gpu.grid_1d(variance.numel());
    gpu.dispatch(&kernel, &p, &[eps_copies], &[&cotangent, &variance], grid)?;
    Ok((cotangent, variance))
}

/// Rule P's statistics: (U' = the unbiased variance of {ε_1..ε_M, ε}, ε_post = Σ_m ε_m /
/// (M + U'/ᾱ)), both shaped like `eps`.
pub fn posterior(
    gpu: &Gpu,
    eps: &Tensor,
    eps_copies: &Tensor,
    alpha_bar: f64,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "posterior";
    let m = count_copies(OP, eps.shape(), eps_copies, 1)?;
    ensure(alpha_bar > 0.0 && alpha_bar <= 1.0, OP, || {
        format!("ᾱ must be in (0, 1], got {alpha_bar}")
    })?;
    let variance = gpu.empty(eps.shape())?;
    let eps_post = gpu.empty(eps.shape())?;
    let p = params(OP, eps, m, alpha_bar as f32)?;
    let kernel = Kernel::new(&shaders::GUIDANCE, "posterior");
    let grid = gpu.grid_1d(eps.numel());
    gpu.dispatch(
        &kernel,
        &p,
        &[eps, eps_copies],
        &[&variance, &eps_post],
        grid,
    )?;
    Ok((variance, eps_post))
}

/// scale · Σ_m x_m over the copies of `x` (M·B, …) → (B, …).
pub fn sum_copies(gpu: &Gpu, x: &Tensor, batch: usize, scale: f32) -> Result<Tensor> {
    const OP: &str = "sum_copies";
    let mut one = x.shape().to_vec();
    ensure(!one.is_empty() && batch > 0, OP, || "needs a batch".into())?;
    one[0] = batch;
    let m = count_copies(OP, &one, x, 1)?;
    let out = gpu.empty(&one)?;
    let p = params(OP, &out, m, scale)?;
    let kernel = Kernel::new(&shaders::GUIDANCE, "sum_copies");
    gpu.dispatch(&kernel, &p, &[x], &[&out], gpu.grid_1d(out.numel()))?;
    Ok(out)
}

/// ε where `uncertainty` ≤ its threshold, else ε + strength·update (`Add`) or update
/// (`Replace`). `threshold` is (B) per sample or (C, H, W) per element.
pub fn masked_update(
    gpu: &Gpu,
    rule: MaskedRule,
    eps: &Tensor,
    uncertainty: &Tensor,
    threshold: &Tensor,
    update: &Tensor,
    strength: f32,
) -> Result<Tensor> {
    const OP: &str = "masked_update";
    for (name, t) in [("uncertainty", uncertainty), ("update", update)] {
        ensure(t.shape() == eps.shape(), OP, || {
            format!("{name} {:?} differs from ε {:?}", t.shape(), eps.shape())
        })?;
    }
    let kind = if threshold.shape() == [eps.dim(0)] {
        ThresholdKind::PerSample
    } else if threshold.shape() == &eps.shape()[1..] {
        ThresholdKind::PerElement
    } else {
        return Err(crate::ops::shape_err(
            OP,
            format!(
                "threshold {:?} is neither per sample ({}) nor per element {:?}",
                threshold.shape(),
                eps.dim(0),
                &eps.shape()[1..]
            ),
        ));
    };
    let out = gpu.empty(eps.shape())?;
    let p = params(OP, eps, 1, strength)?;
    let kernel = Kernel::new(&shaders::GUIDANCE, "masked_update")
        .with("RULE", rule as u32)
        .with("THRESHOLD", kind as u32);
    let inputs = [eps, uncertainty, threshold, update];
    gpu.dispatch(&kernel, &p, &inputs, &[&out], gpu.grid_1d(eps.numel()))?;
    Ok(out)
}
