//! DDPM ancestral sampling (diffusers' `DDPMScheduler`; guided-diffusion's `p_sample`): the
//! posterior mean of q(x_{t'} | x_t, x̂0) plus σ·z, σ from the `variance_type`.

use super::{Scheduler, UpdateRule};
use crate::ops::StepCoeffs;
use crate::sampling::VarianceType;

#[derive(Debug)]
pub(super) struct Ddpm;

impl UpdateRule for Ddpm {
    fn coeffs(&self, s: &Scheduler, i: usize) -> StepCoeffs {
        let t = s.timesteps[i];
        let a_t = s.alpha_bar(t);
        let a_prev = s.alpha_bar_prev(i);
        let alpha = a_t / a_prev;
        let beta = 1.0 - alpha;
        // The learned-range σ varies per element: the step's noise arrives scaled
        // (`ops::learned_range_noise` with `learned_range`'s bounds), so c is 1.
        let std = match s.config.variance {
            VarianceType::FixedSmall => s.posterior_variance(i).sqrt(),
            VarianceType::FixedLarge => beta.sqrt(),
            VarianceType::LearnedRange => 1.0,
        };
        StepCoeffs {
            a: a_prev.sqrt() * beta / (1.0 - a_t),
            d: alpha.sqrt() * (1.0 - a_prev) / (1.0 - a_t),
            c: if t > 0 { std } else { 0.0 },
            ..s.x0_coeffs(t)
        }
    }

    fn default_steps(&self, train_timesteps: usize) -> usize {
        train_timesteps
    }

    fn samples_model_variance(&self, s: &Scheduler) -> bool {
        s.config.variance == VarianceType::LearnedRange
    }
}
