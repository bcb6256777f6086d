//! Pixel-wise uncertainty maps and per-sample sums (uncertainty.wgsl).

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct MapParams for UNCERTAINTY::Params {
        total: u32,
        copies: u32,
    }
}

kernel_params! {
    pub(super) struct SumParams for UNCERTAINTY::SumParams {
        len: u32,
    }
}

/// How the per-element spread of the M ε predictions is summarised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UncertaintyMode {
    /// Σ(ε_m − ε)²/M around the unperturbed ε (the official code; default).
    Centred,
    /// Sample variance of {ε_m} with divisor M − 1.
    Variance,
    /// Variance of {ε_m} with divisor M.
    VarianceBiased,
}

crate::names::named_enum!(UncertaintyMode {
    Centred = "centred",
    Variance = "variance",
    VarianceBiased = "variance-biased",
});

/// The `MODE` override that selects `mode` in uncertainty.wgsl (its `MODE_*` constants), named
/// here rather than taken from the enum's declaration order.
pub(super) fn mode_code(mode: UncertaintyMode) -> u32 {
    match mode {
        UncertaintyMode::Centred => 0,
        UncertaintyMode::Variance => 1,
        UncertaintyMode::VarianceBiased => 2,
    }
}

/// The uncertainty map (B, C, H, W) from ε (B, …) and the copies' predictions (M·B, …).
pub fn uncertainty_map(
    gpu: &Gpu,
    eps: &Tensor,
    eps_copies: &Tensor,
    mode: UncertaintyMode,
) -> Result<Tensor> {
    const OP: &str = "uncertainty_map";
    let copies = eps_copies.numel() / eps.numel().max(1);
    ensure(
        eps_copies.shape()[1..] == eps.shape()[1..]
            && copies * eps.numel() == eps_copies.numel()
            && copies > 0,
        OP,
        || {
            format!(
                "copies {:?} are not M stacked batches of {:?}",
                eps_copies.shape(),
                eps.shape()
            )
        },
    )?;
    ensure(copies > 1 || mode != UncertaintyMode::Variance, OP, || {
        "the unbiased variance needs M ≥ 2".into()
    })?;
    let kernel =
        Kernel::new(&shaders::UNCERTAINTY, "uncertainty_map").with("MODE", mode_code(mode));
    let p = MapParams {
        total: checked_u32(OP, "total", eps.numel())?,
        copies: checked_u32(OP, "copies", copies)?,
    };
    let map = gpu.empty(eps.shape())?;
    gpu.dispatch(
        &kernel,
        &p,
        &[eps, eps_copies],
        &[&map],
        gpu.grid_1d(eps.numel()),
    )?;
    Ok(map)
}

/// Sums each sample (first axis) of x over all other axes: (B, …) → (B).
pub fn sum_per_sample(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let rows = dims::<4>(x, "sum_per_sample", "x")
        .map(|d| d[0])
        .or_else(|_| {
            ensure(!x.shape().is_empty(), "sum_per_sample", || {
                "x needs a sample axis".into()
            })
            .map(|_| x.dim(0))
        })?;
    let p = SumParams {
        len: checked_u32("sum_per_sample", "len", x.numel() / rows.max(1))?,
    };
    let out = gpu.empty(&[rows])?;
    let kernel = Kernel::new(&shaders::UNCERTAINTY, "row_sum");
    gpu.dispatch(&kernel, &p, &[x], &[&out], [rows, 1, 1])?;
    Ok(out)
}
