//! DDIM (diffusers' `DDIMScheduler`): x_{t'} = √ᾱ_{t'}·x̂0 + √(1 − ᾱ_{t'} − σ²)·ε + σ·z with
//! σ = η·√β̃, one step of no history.

use super::{Scheduler, UpdateRule};
use crate::ops::StepCoeffs;

#[derive(Debug)]
pub(super) struct Ddim;

impl UpdateRule for Ddim {
    fn coeffs(&self, s: &Scheduler, i: usize) -> StepCoeffs {
        let t = s.timesteps[i];
        let a_t = s.alpha_bar(t);
        let a_prev = s.alpha_bar_prev(i);
        let variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
        let std = s.config.eta * variance.sqrt();
        let (a, b) = (a_prev.sqrt(), (1.0 - a_prev - std * std).max(0.0).sqrt());
        if s.config.use_clipped_model_output && s.config.clip_sample.is_some() {
            // ε' = (x − √ᾱ_t·x̂0)/√(1−ᾱ_t) folded into the x̂0 and x coefficients.
            let sq = (1.0 - a_t).sqrt();
            return StepCoeffs {
                a: a - b * a_t.sqrt() / sq,
                d: b / sq,
                c: std,
                ..s.x0_coeffs(t)
            };
        }
        StepCoeffs {
            a,
            b,
            c: std,
            ..s.x0_coeffs(t)
        }
    }

    /// ᾱ after the last step is ᾱ_0 unless `set_alpha_to_one`.
    fn final_alpha_bar(&self, s: &Scheduler) -> f64 {
        match s.config.set_alpha_to_one {
            true => 1.0,
            false => s.schedule.alphas_cumprod[0],
        }
    }
}
