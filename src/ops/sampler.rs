//! The fused sampler update shared by DDIM, DDPM and DPM-Solver++(2M) (sampler.wgsl).

use super::ensure;
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct SamplerParams for SAMPLER::Params {
        total: u32,
        p: f32,
        q: f32,
        clip_range: f32,
        a: f32,
        b: f32,
        d: f32,
        e: f32,
        c: f32,
    }
}

/// Scalar coefficients of one fused sampler update (see sampler.wgsl):
/// x0 = clip(p·x + q·ε), x_next = a·x0 + b·ε + d·x + e·x0_prev + c·z.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepCoeffs {
    pub p: f64,
    pub q: f64,
    pub clip: Option<f64>,
    pub a: f64,
    pub b: f64,
    pub d: f64,
    pub e: f64,
    pub c: f64,
}

/// Applies one update; returns (x_next, x0). `x0_prev` is needed when `e ≠ 0`, `noise` when `c ≠ 0`.
pub fn sampler_step(
    gpu: &Gpu,
    k: &StepCoeffs,
    x: &Tensor,
    eps: &Tensor,
    x0_prev: Option<&Tensor>,
    noise: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "sampler_step";
    for (name, t) in [("eps", Some(eps)), ("x0_prev", x0_prev), ("noise", noise)] {
        if let Some(t) = t {
            ensure(t.shape() == x.shape(), OP, || {
                format!("{name} {:?} differs from x {:?}", t.shape(), x.shape())
            })?;
        }
    }
    ensure(k.e == 0.0 || x0_prev.is_some(), OP, || {
        "a multistep coefficient needs the previous x0".into()
    })?;
    ensure(k.c == 0.0 || noise.is_some(), OP, || {
        "a noise coefficient needs a noise tensor".into()
    })?;
    let kernel = Kernel::new(&shaders::SAMPLER, "step")
        .flag("CLIP", k.clip.is_some())
        .flag("HAS_PREV", x0_prev.is_some())
        .flag("HAS_NOISE", noise.is_some());
    let p = SamplerParams {
        total: checked_u32(OP, "total", x.numel())?,
        p: k.p as f32,
        q: k.q as f32,
        clip_range: k.clip.unwrap_or(0.0) as f32,
        a: k.a as f32,
        b: k.b as f32,
        d: k.d as f32,
        e: k.e as f32,
        c: k.c as f32,
    };
    let x_next = gpu.empty(x.shape())?;
    let x0 = gpu.empty(x.shape())?;
    gpu.dispatch(
        &kernel,
        &p,
        &[x, eps, x0_prev.unwrap_or(x), noise.unwrap_or(x)],
        &[&x_next, &x0],
        gpu.grid_1d(x.numel()),
    )?;
    Ok((x_next, x0))
}
