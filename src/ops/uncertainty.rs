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
    pub(super) struct SteinParams for UNCERTAINTY::SteinParams {
        total: u32,
        copies: u32,
        len: u32,
        rho: f32,
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
    /// Per-element contribution to the typicality statistic
    /// Δ_t = [(1/M) Σ_m ‖ε_m‖² − Σ_i Ĵ_i] / √(2D), Ĵ_i the Stein estimate of ∂ε̂_i/∂n_i
    /// (needs the re-noise draws n_m). The image score is Σ_t |Δ_t|.
    Typicality,
    /// The Tweedie posterior variance v̂_i = ρ·max(0, 1 − Ĵ_i), z-scored per (step, element)
    /// against a real-image reference.
    PosteriorVariance,
    /// The per-element residual (1/M) Σ_m (ε_m − n_m)², shifted and scaled so that it sums to
    /// the z-score of R_t = (1/M) Σ_m ‖ε_m − n_m‖² against a real-image reference.
    Residual,
    /// The official DPM-Solver++ scheduler's estimate, a bug kept so that the paper's ImageNet
    /// 256/512 numbers can be compared: `scheduling_dpm_2_uncertainty_centered.py` estimates after
    /// `convert_model_output` replaced ε by the data prediction x̂0, so it re-noises
    /// (x_t − √(1−ᾱ_t)·x̂0)/√ᾱ_t and centres Σ(ε_m − x̂0)²/M on x̂0. DPM-Solver++(2M) only.
    OfficialDpm,
}

crate::names::named_enum!(UncertaintyMode {
    Centred = "centred",
    Variance = "variance",
    VarianceBiased = "variance-biased",
    Typicality = "typicality",
    PosteriorVariance = "posterior-variance",
    Residual = "residual",
    OfficialDpm = "official-dpm",
});

impl UncertaintyMode {
    /// Whether the mode reads the re-noise draws n_m ([`stein_map`] rather than
    /// [`uncertainty_map`]); MC-Dropout has none.
    pub fn needs_noise(self) -> bool {
        matches!(
            self,
            UncertaintyMode::Typicality
                | UncertaintyMode::PosteriorVariance
                | UncertaintyMode::Residual
        )
    }

    /// Whether the mode is z-scored against a real-image reference (`wgsl-diff reference`).
    pub fn needs_reference(self) -> bool {
        matches!(
            self,
            UncertaintyMode::PosteriorVariance | UncertaintyMode::Residual
        )
    }
}

/// The `MODE` override that selects `mode` in uncertainty.wgsl (its `MODE_*` constants), named
/// here rather than taken from the enum's declaration order.
pub(super) fn mode_code(mode: UncertaintyMode) -> u32 {
    match mode {
        // The official DPM mode is the centred formula; its difference is what it is given.
        UncertaintyMode::Centred | UncertaintyMode::OfficialDpm => 0,
        UncertaintyMode::Variance => 1,
        UncertaintyMode::VarianceBiased => 2,
        UncertaintyMode::Typicality => 3,
        UncertaintyMode::PosteriorVariance => 4,
        UncertaintyMode::Residual => 5,
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
    ensure(!mode.needs_noise(), OP, || {
        format!("mode {mode} reads the re-noise draws: use stein_map")
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

/// The map of a Stein mode (typicality, posterior-variance, residual) from the copies'
/// predictions ε_m and their re-noise draws n_m (both (M·B, C, H, W), copy-major): element i of
/// the map is (raw_i − shift_i)·scale_i, shift and scale (C, H, W) broadcast over the batch
/// (uncertainty.wgsl documents raw for each mode). `rho` is (1 − ᾱ_t)/ᾱ_t.
pub fn stein_map(
    gpu: &Gpu,
    eps_copies: &Tensor,
    noise: &Tensor,
    (shift, scale): (&Tensor, &Tensor),
    copies: usize,
    mode: UncertaintyMode,
    rho: f64,
) -> Result<Tensor> {
    const OP: &str = "stein_map";
    ensure(mode.needs_noise(), OP, || {
        format!("mode {mode} does not read the re-noise draws: use uncertainty_map")
    })?;
    ensure(noise.shape() == eps_copies.shape(), OP, || {
        format!(
            "noise {:?} and copies {:?} differ in shape",
            noise.shape(),
            eps_copies.shape()
        )
    })?;
    let shape = eps_copies.shape();
    ensure(
        copies >= 2 && !shape.is_empty() && shape[0].is_multiple_of(copies),
        OP,
        || format!("{shape:?} is not M = {copies} ≥ 2 stacked batches"),
    )?;
    let len: usize = shape[1..].iter().product();
    ensure(
        shift.numel() == len && scale.numel() == len && len > 0,
        OP,
        || {
            format!(
                "shift {:?} and scale {:?} must each hold one sample {:?}",
                shift.shape(),
                scale.shape(),
                &shape[1..]
            )
        },
    )?;
    let mut out_shape = shape.to_vec();
    out_shape[0] /= copies;
    let total = eps_copies.numel() / copies;
    let kernel = Kernel::new(&shaders::UNCERTAINTY, "stein").with("MODE", mode_code(mode));
    let p = SteinParams {
        total: checked_u32(OP, "total", total)?,
        copies: checked_u32(OP, "copies", copies)?,
        len: checked_u32(OP, "len", len)?,
        rho: rho as f32,
    };
    let map = gpu.empty(&out_shape)?;
    gpu.dispatch(
        &kernel,
        &p,
        &[eps_copies, noise, shift, scale],
        &[&map],
        gpu.grid_1d(total),
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
