//! DPM-Solver++(2M) (diffusers' `DPMSolverMultistepScheduler`: midpoint, lower_order_final,
//! final sigma zero). The one rule with history: its second-order steps read the previous
//! step's x̂0, which it keeps in the batch's [`History`].

use super::{History, Scheduler, UpdateRule};
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::{self, StepCoeffs};
use crate::sampling::Spacing;

#[derive(Debug)]
pub(super) struct Dpmpp2m;

/// σ_i = √((1 − ᾱ)/ᾱ) at step i's timestep; 0 after the last step.
fn sigma(s: &Scheduler, i: usize) -> f64 {
    match s.timesteps.get(i) {
        Some(&t) => {
            let a = s.schedule.alphas_cumprod[t];
            ((1.0 - a) / a).sqrt()
        }
        None => 0.0,
    }
}

impl UpdateRule for Dpmpp2m {
    /// The grid has one more point, the last (t = 0) dropped.
    fn grid_points(&self, steps: usize) -> usize {
        steps + 1
    }

    fn default_spacing(&self) -> Spacing {
        Spacing::Linspace
    }

    fn coeffs(&self, s: &Scheduler, i: usize) -> StepCoeffs {
        let n = s.timesteps.len();
        let alpha_sigma = |sg: f64| {
            let alpha = 1.0 / (sg * sg + 1.0).sqrt();
            (alpha, sg * alpha)
        };
        let lambda = |sg: f64| {
            let (a, sgm) = alpha_sigma(sg);
            a.ln() - sgm.ln()
        };
        let (s0, s_next) = (sigma(s, i), sigma(s, i + 1));
        let (alpha0, sigma0) = alpha_sigma(s0);
        let (alpha_t, sigma_t) = alpha_sigma(s_next);
        // x̂0 from ε at σ_i: (x − σ·ε)/α in the scaled parametrisation.
        let base = StepCoeffs {
            p: 1.0 / alpha0,
            q: -sigma0 / alpha0,
            ..Default::default()
        };
        // exp(−h) − 1 with h = λ_t − λ_s; the final σ = 0 gives h = ∞, so the update returns x̂0.
        let (ratio, em1) = if s_next == 0.0 {
            (0.0, -1.0)
        } else {
            (
                sigma_t / sigma0,
                (-(lambda(s_next) - lambda(s0))).exp() - 1.0,
            )
        };
        // Second order needs one step of history; the last step is first order
        // (lower_order_final with a zero final sigma).
        if i == 0 || i + 1 == n {
            StepCoeffs {
                a: -alpha_t * em1,
                d: ratio,
                ..base
            }
        } else {
            let h = lambda(s_next) - lambda(s0);
            let h0 = lambda(s0) - lambda(sigma(s, i - 1));
            let r0 = h0 / h;
            let c = -0.5 * alpha_t * em1 / r0;
            StepCoeffs {
                a: -alpha_t * em1 + c,
                d: ratio,
                e: -c,
                ..base
            }
        }
    }

    /// The fused update with the previous x̂0 where the step is second order; keeps this
    /// step's x̂0 for the next.
    fn step(
        &self,
        _i: usize,
        k: &StepCoeffs,
        history: &mut History,
        gpu: &Gpu,
        x: &Tensor,
        eps: &Tensor,
        z: Option<&Tensor>,
    ) -> Result<Tensor> {
        let previous = if k.e != 0.0 {
            history.tensors.last()
        } else {
            None
        };
        let (next, x0) = ops::sampler_step(gpu, k, x, eps, previous, z)?;
        history.tensors = vec![x0];
        Ok(next)
    }
}
