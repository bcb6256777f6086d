//! PNDM as Stable Diffusion ships it (diffusers' `PNDMScheduler` with `skip_prk_steps`: the
//! linear multistep PLMS of Liu et al., 2022). The grid's second-to-last point is visited twice,
//! so N steps make N + 1 model calls; the second call re-does the first step from its start with
//! the two calls' ε averaged, and later calls combine up to four past ε (Adams–Bashforth
//! weights). Every call's update is x_{t'} = √(ᾱ_{t'}/ᾱ_t)·x − (ᾱ_{t'} − ᾱ_t)/D·ε' with
//! D = ᾱ_t·√(1 − ᾱ_{t'}) + √(ᾱ_t·(1 − ᾱ_t)·ᾱ_{t'}) (the paper's formula 9).

use super::{History, Scheduler, UpdateRule};
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::{self, StepCoeffs};

#[derive(Debug)]
pub(super) struct Pndm;

impl Pndm {
    /// diffusers' `num_train_timesteps // num_inference_steps`.
    fn ratio(s: &Scheduler) -> usize {
        s.schedule.len() / s.config.steps
    }

    /// The (t, t') call `i` steps between: call 1 re-does call 0's step.
    fn step_timesteps(s: &Scheduler, i: usize) -> (usize, isize) {
        let t = s.timesteps[i];
        let ratio = Self::ratio(s);
        match i {
            1 => (t + ratio, t as isize),
            _ => (t, t as isize - ratio as isize),
        }
    }
}

impl UpdateRule for Pndm {
    /// The leading grid with its second-to-last point repeated (diffusers' `plms_timesteps`).
    fn visit_order(&self, grid: Vec<usize>) -> Vec<usize> {
        match grid.len() {
            0 | 1 => grid,
            _ => {
                let mut visits = grid;
                visits.insert(1, visits[1]);
                visits
            }
        }
    }

    fn coeffs(&self, s: &Scheduler, i: usize) -> StepCoeffs {
        let (t, prev) = Self::step_timesteps(s, i);
        let a_t = s.alpha_bar(t);
        let a_prev = match prev {
            p if p >= 0 => s.alpha_bar(p as usize),
            _ => self.final_alpha_bar(s),
        };
        let denom = a_t * (1.0 - a_prev).sqrt() + (a_t * (1.0 - a_t) * a_prev).sqrt();
        StepCoeffs {
            d: (a_prev / a_t).sqrt(),
            b: -(a_prev - a_t) / denom,
            ..Default::default()
        }
    }

    fn final_alpha_bar(&self, s: &Scheduler) -> f64 {
        match s.config.set_alpha_to_one {
            true => 1.0,
            false => s.schedule.alphas_cumprod[0],
        }
    }

    /// ε' from this call's ε and the ones kept (the last four at most; call 1's is not kept),
    /// applied to x — or, at call 1, to the sample call 0 started from.
    fn step(
        &self,
        i: usize,
        k: &StepCoeffs,
        history: &mut History,
        gpu: &Gpu,
        x: &Tensor,
        eps: &Tensor,
        _z: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ets = &mut history.tensors;
        let (eps, sample) = if i == 1 {
            let last = ets.last().expect("call 0 kept its ε");
            let start = history.sample.take().expect("call 0 kept its sample");
            (ops::lincomb(gpu, 0.5, eps, 0.5, last)?, start)
        } else {
            if ets.len() == 4 {
                ets.remove(0);
            }
            ets.push(eps.clone());
            let e = |back: usize| &ets[ets.len() - back];
            let combined = match ets.len() {
                1 => {
                    history.sample = Some(x.clone());
                    eps.clone()
                }
                2 => ops::lincomb(gpu, 1.5, e(1), -0.5, e(2))?,
                3 => weighted(gpu, &[(23.0, e(1)), (-16.0, e(2)), (5.0, e(3))], 12.0)?,
                _ => weighted(
                    gpu,
                    &[(55.0, e(1)), (-59.0, e(2)), (37.0, e(3)), (-9.0, e(4))],
                    24.0,
                )?,
            };
            (combined, x.clone())
        };
        Ok(ops::sampler_step(gpu, k, &sample, &eps, None, None)?.0)
    }
}

/// Σ w_j·t_j / divisor, as a chain of linear combinations.
fn weighted(gpu: &Gpu, terms: &[(f32, &Tensor)], divisor: f32) -> Result<Tensor> {
    let (w0, t0) = terms[0];
    let mut sum = ops::affine(gpu, t0, w0 / divisor, 0.0)?;
    for &(w, t) in &terms[1..] {
        sum = ops::lincomb(gpu, 1.0, &sum, w / divisor, t)?;
    }
    Ok(sum)
}
