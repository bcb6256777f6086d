//! Samplers with diffusers' semantics, reduced to per-step scalar coefficients for the fused
//! GPU update (`ops::sampler_step`): DDIM (DDIMScheduler), DDPM ancestral (DDPMScheduler with
//! fixed_small, fixed_large or learned_range variance) and DPM-Solver++(2M)
//! (DPMSolverMultistepScheduler, midpoint, lower_order_final, final sigma zero).

use super::schedule::{NoiseSchedule, ScheduleConfig};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::{self, StepCoeffs};
use serde::Deserialize;

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    Ddim,
    Ddpm,
    Dpmpp2m,
}

/// How the N sampling timesteps are spread over the training schedule (diffusers'
/// `timestep_spacing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// The variance of a DDPM step (diffusers' `variance_type`; guided-diffusion's
/// `model_var_type`). DDIM and DPM-Solver ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// The posterior variance β̃_t = (1−ᾱ_{t'})/(1−ᾱ_t)·β_t (`fixed_small_log` is the same σ).
    #[serde(alias = "fixed_small_log")]
    FixedSmall,
    /// β_t.
    FixedLarge,
    /// exp(frac·log β_t + (1−frac)·log β̃_t) per element, frac = (v+1)/2 from the model's
    /// variance output v.
    LearnedRange,
}

crate::names::named_enum!(SamplerKind {
    Ddim = "ddim",
    Ddpm = "ddpm",
    Dpmpp2m = "dpmpp2m",
});
crate::names::named_enum!(Spacing {
    Leading = "leading",
    Trailing = "trailing",
    Linspace = "linspace",
});

#[derive(Clone, Debug)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    pub steps: usize,
    /// DDIM's η (0 = deterministic); ignored by the other samplers.
    pub eta: f64,
    pub spacing: Spacing,
    pub steps_offset: usize,
    /// DDIM: ᾱ after the last step is 1 (else ᾱ_0).
    pub set_alpha_to_one: bool,
    /// Clamp x̂0 to ±range (DDIM, DDPM); None disables.
    pub clip_sample: Option<f64>,
    /// DDPM's step variance.
    pub variance: VarianceType,
    /// DDIM: step along the ε of the clipped x̂0 (see [`ScheduleConfig`]).
    pub use_clipped_model_output: bool,
}

impl SamplerConfig {
    /// diffusers' DDIMScheduler defaults for pixel-space models: leading spacing, η = 0,
    /// ᾱ = 1 after the last step, x̂0 clipped to [−1, 1].
    pub fn ddim(steps: usize) -> SamplerConfig {
        SamplerConfig {
            kind: SamplerKind::Ddim,
            steps,
            eta: 0.0,
            spacing: Spacing::Leading,
            steps_offset: 0,
            set_alpha_to_one: true,
            clip_sample: Some(1.0),
            variance: VarianceType::FixedSmall,
            use_clipped_model_output: false,
        }
    }
}

/// A user's choice of sampler; [`resolve`](Self::resolve) fills in what the model's training
/// schedule implies.
#[derive(Clone, Debug)]
pub struct SamplerChoice {
    pub kind: SamplerKind,
    /// Default: 50, or every training timestep for DDPM.
    pub steps: Option<usize>,
    pub eta: f64,
    /// Default: linspace for DPM-Solver++(2M), leading otherwise.
    pub spacing: Option<Spacing>,
    pub steps_offset: usize,
    /// Clamp x̂0 when the model's schedule asks for it.
    pub clip: bool,
}

impl SamplerChoice {
    pub fn resolve(&self, schedule: &ScheduleConfig) -> SamplerConfig {
        let default_steps = match self.kind {
            SamplerKind::Ddpm => schedule.num_train_timesteps,
            _ => 50,
        };
        let default_spacing = match self.kind {
            SamplerKind::Dpmpp2m => Spacing::Linspace,
            _ => Spacing::Leading,
        };
        SamplerConfig {
            kind: self.kind,
            steps: self.steps.unwrap_or(default_steps),
            eta: self.eta,
            spacing: self.spacing.unwrap_or(default_spacing),
            steps_offset: self.steps_offset,
            set_alpha_to_one: schedule.set_alpha_to_one,
            clip_sample: (schedule.clip_sample && self.clip).then_some(schedule.clip_sample_range),
            variance: schedule.variance_type,
            use_clipped_model_output: schedule.use_clipped_model_output,
        }
    }
}

/// A configured sampler: the timesteps to visit and the update coefficients for each.
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub config: SamplerConfig,
    pub schedule: NoiseSchedule,
    pub timesteps: Vec<usize>,
    /// DPM-Solver: σ_i = sqrt((1 − ᾱ)/ᾱ) at each timestep, then 0.
    sigmas: Vec<f64>,
}

fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// diffusers' `set_timesteps`. DPM-Solver's grids have one more point, the last (t = 0) dropped.
fn spaced_timesteps(
    kind: SamplerKind,
    spacing: Spacing,
    t_train: usize,
    n: usize,
    offset: usize,
) -> Vec<usize> {
    let points = if kind == SamplerKind::Dpmpp2m {
        n + 1
    } else {
        n
    };
    match spacing {
        Spacing::Leading => {
            let ratio = t_train / points;
            (points - n..points)
                .rev()
                .map(|i| i * ratio + offset)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = t_train as f64 / n as f64;
            (0..n)
                .map(|i| round_half_even(t_train as f64 - i as f64 * ratio) as usize - 1)
                .collect()
        }
        Spacing::Linspace => {
            let last = (t_train - 1) as f64;
            let intervals = (points - 1).max(1) as f64;
            (points - n..points)
                .rev()
                .map(|i| round_half_even(last * i as f64 / intervals) as usize)
                .collect()
        }
    }
}

/// The visited timesteps must fall inside the schedule and strictly decrease: a repeated one
/// (more steps than the spacing can place, e.g. DPM-Solver++(2M) with 1000 linspace steps of a
/// 1000-step schedule) makes a zero-length step whose multistep coefficients divide by zero.
fn check_timesteps(config: &SamplerConfig, timesteps: &[usize], t_train: usize) -> Result<()> {
    if let Some(&t) = timesteps.iter().find(|&&t| t >= t_train) {
        return Err(Error::Invalid(format!(
            "timestep {t} (steps_offset {}) exceeds the schedule",
            config.steps_offset
        )));
    }
    match timesteps.windows(2).position(|w| w[1] >= w[0]) {
        Some(i) => Err(Error::Invalid(format!(
            "{} steps of the {} sampler with {} spacing visit timestep {} twice (steps {i} and \
             {}) in a {t_train}-step schedule: use fewer steps",
            config.steps,
            config.kind,
            config.spacing,
            timesteps[i + 1],
            i + 1
        ))),
        None => Ok(()),
    }
}

impl Scheduler {
    /// Checks the configuration against the schedule: steps in 1..=T, η finite and ≥ 0, every
    /// visited timestep distinct and inside the schedule, and every step's coefficients finite
    /// in f32 (what the GPU update computes with).
    pub fn new(config: SamplerConfig, schedule: NoiseSchedule) -> Result<Scheduler> {
        let t_train = schedule.len();
        let n = config.steps;
        if n == 0 || n > t_train {
            return Err(Error::Invalid(format!(
                "steps must be in 1..={t_train}, got {n}"
            )));
        }
        if !(config.eta.is_finite() && config.eta >= 0.0) {
            return Err(Error::Invalid(format!(
                "eta must be finite and ≥ 0, got {}",
                config.eta
            )));
        }
        if config.steps_offset >= t_train {
            return Err(Error::Invalid(format!(
                "steps_offset {} must be below the schedule's {t_train} timesteps",
                config.steps_offset
            )));
        }
        let timesteps =
            spaced_timesteps(config.kind, config.spacing, t_train, n, config.steps_offset);
        check_timesteps(&config, &timesteps, t_train)?;
        let ac = &schedule.alphas_cumprod;
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| ((1.0 - ac[t]) / ac[t]).sqrt())
            .collect();
        sigmas.push(0.0);
        let scheduler = Scheduler {
            config,
            schedule,
            timesteps,
            sigmas,
        };
        scheduler.check_coefficients()?;
        Ok(scheduler)
    }

    /// Every step's update coefficients must be finite in f32, or the first step would write
    /// NaN or ±Inf into every sample.
    fn check_coefficients(&self) -> Result<()> {
        for i in 0..self.timesteps.len() {
            let k = self.coeffs(i);
            let named = [
                ("p", k.p),
                ("q", k.q),
                ("a", k.a),
                ("b", k.b),
                ("c", k.c),
                ("d", k.d),
                ("e", k.e),
                ("clip", k.clip.unwrap_or(0.0)),
            ];
            if let Some((name, v)) = named.iter().find(|(_, v)| !(*v as f32).is_finite()) {
                return Err(Error::Invalid(format!(
                    "the {} update at step {i} (t = {}) has coefficient {name} = {v:e}, which is not \
                     a finite f32: check eta and the model's schedule",
                    self.config.kind, self.timesteps[i]
                )));
            }
        }
        Ok(())
    }

    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.schedule.alphas_cumprod[t]
    }

    /// x̂0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t, clipped when the sampler clips: the `p`, `q` and `clip`
    /// of a step's coefficients.
    fn x0_coeffs(&self, t: usize) -> StepCoeffs {
        let a_t = self.alpha_bar(t);
        StepCoeffs {
            p: 1.0 / a_t.sqrt(),
            q: -(1.0 - a_t).sqrt() / a_t.sqrt(),
            clip: self.config.clip_sample,
            ..Default::default()
        }
    }

    /// x̂0 from x_t and ε at timestep `t`, clipped when the sampler clips, on the GPU.
    pub fn predict_x0(&self, gpu: &Gpu, t: usize, x: &Tensor, eps: &Tensor) -> Result<Tensor> {
        let (_, x0) = ops::sampler_step(gpu, &self.x0_coeffs(t), x, eps, None, None)?;
        Ok(x0)
    }

    /// x̂0 from x_t and ε at timestep `t`, never clipped (guidance differentiates through it).
    pub fn predict_x0_unclipped(
        &self,
        gpu: &Gpu,
        t: usize,
        x: &Tensor,
        eps: &Tensor,
    ) -> Result<Tensor> {
        let coeffs = StepCoeffs {
            clip: None,
            ..self.x0_coeffs(t)
        };
        let (_, x0) = ops::sampler_step(gpu, &coeffs, x, eps, None, None)?;
        Ok(x0)
    }

    /// The forward process q(x_t | x0) = √ᾱ_t·x0 + √(1−ᾱ_t)·n for `copies` stacked noise
    /// tensors n (M·B, …) against one x0 (B, …).
    pub fn add_noise(&self, gpu: &Gpu, t: usize, x0: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let a_t = self.alpha_bar(t);
        let (a, s) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        ops::broadcast_lincomb(gpu, a as f32, x0, s as f32, noise)
    }

    /// ᾱ at the timestep after step `i` (diffusers' prev_timestep = t − T/N).
    fn alpha_bar_prev(&self, i: usize) -> f64 {
        let ratio = (self.schedule.len() / self.config.steps) as isize;
        let prev = self.timesteps[i] as isize - ratio;
        if prev >= 0 {
            self.schedule.alphas_cumprod[prev as usize]
        } else if self.config.kind == SamplerKind::Ddim && !self.config.set_alpha_to_one {
            self.schedule.alphas_cumprod[0]
        } else {
            1.0
        }
    }

    /// Whether step `i` draws fresh noise z.
    pub fn needs_noise(&self, i: usize) -> bool {
        self.coeffs(i).c != 0.0
    }

    /// The update coefficients of step `i` (0-based, in sampling order).
    pub fn coeffs(&self, i: usize) -> StepCoeffs {
        let t = self.timesteps[i];
        let a_t = self.alpha_bar(t);
        match self.config.kind {
            SamplerKind::Ddim => {
                let a_prev = self.alpha_bar_prev(i);
                let variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
                let std = self.config.eta * variance.sqrt();
                let (a, b) = (a_prev.sqrt(), (1.0 - a_prev - std * std).max(0.0).sqrt());
                if self.config.use_clipped_model_output && self.config.clip_sample.is_some() {
                    // ε' = (x − √ᾱ_t·x̂0)/√(1−ᾱ_t) folded into the x̂0 and x coefficients.
                    let s = (1.0 - a_t).sqrt();
                    return StepCoeffs {
                        a: a - b * a_t.sqrt() / s,
                        d: b / s,
                        c: std,
                        ..self.x0_coeffs(t)
                    };
                }
                StepCoeffs {
                    a,
                    b,
                    c: std,
                    ..self.x0_coeffs(t)
                }
            }
            SamplerKind::Ddpm => {
                let a_prev = self.alpha_bar_prev(i);
                let alpha = a_t / a_prev;
                let beta = 1.0 - alpha;
                // The learned-range σ varies per element: the step's noise arrives scaled
                // (`ops::learned_range_noise` with `learned_range`'s bounds), so c is 1.
                let std = match self.config.variance {
                    VarianceType::FixedSmall => self.posterior_variance(i).sqrt(),
                    VarianceType::FixedLarge => beta.sqrt(),
                    VarianceType::LearnedRange => 1.0,
                };
                StepCoeffs {
                    a: a_prev.sqrt() * beta / (1.0 - a_t),
                    d: alpha.sqrt() * (1.0 - a_prev) / (1.0 - a_t),
                    c: if t > 0 { std } else { 0.0 },
                    ..self.x0_coeffs(t)
                }
            }
            SamplerKind::Dpmpp2m => self.dpm_coeffs(i),
        }
    }

    /// DDPM's β̃ at step `i`, clamped at 1e-20 like diffusers' `_get_variance`.
    fn posterior_variance(&self, i: usize) -> f64 {
        let a_t = self.alpha_bar(self.timesteps[i]);
        let a_prev = self.alpha_bar_prev(i);
        ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).max(1e-20)
    }

    /// Whether steps need the model's variance output (DDPM with learned-range variance).
    pub fn needs_model_variance(&self) -> bool {
        self.config.kind == SamplerKind::Ddpm && self.config.variance == VarianceType::LearnedRange
    }

    /// (log β̃, log β) of step `i`, the bounds the learned-range log-variance interpolates
    /// between, when the step draws learned-range noise.
    pub fn learned_range(&self, i: usize) -> Option<(f64, f64)> {
        let noisy = self.timesteps[i] > 0;
        (self.needs_model_variance() && noisy).then(|| {
            let beta = 1.0 - self.alpha_bar(self.timesteps[i]) / self.alpha_bar_prev(i);
            (self.posterior_variance(i).ln(), beta.ln())
        })
    }

    fn dpm_coeffs(&self, i: usize) -> StepCoeffs {
        let n = self.timesteps.len();
        let alpha_sigma = |s: f64| {
            let alpha = 1.0 / (s * s + 1.0).sqrt();
            (alpha, s * alpha)
        };
        let lambda = |s: f64| {
            let (a, sg) = alpha_sigma(s);
            a.ln() - sg.ln()
        };
        let (s0, s_next) = (self.sigmas[i], self.sigmas[i + 1]);
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
            let h0 = lambda(s0) - lambda(self.sigmas[i - 1]);
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
}
