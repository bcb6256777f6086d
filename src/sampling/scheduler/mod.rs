//! Samplers with diffusers' semantics, reduced to per-step scalar coefficients for the fused
//! GPU update (`ops::sampler_step`, [`StepCoeffs`]): DDIM ([`ddim`]), DDPM ancestral ([`ddpm`],
//! fixed_small, fixed_large or learned_range variance) and DPM-Solver++(2M) ([`dpmpp2m`]).
//!
//! Each update rule is one file implementing [`UpdateRule`]: its coefficients, its defaults and,
//! for multistep rules, what it keeps of earlier steps. That memory belongs to the batch being
//! sampled ([`SamplerState`], from [`Scheduler::start`]), not to the sampling loop, so a rule
//! with a longer history (PNDM's three past ε) changes nothing outside its file. A new sampler
//! is a file here, a [`SamplerKind`] name and one arm of [`SamplerKind::rule`].

mod ddim;
mod ddpm;
mod dpmpp2m;
mod pndm;

use super::schedule::{NoiseSchedule, ScheduleConfig, Spacing, VarianceType};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::{self, StepCoeffs};

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    Ddim,
    Ddpm,
    Dpmpp2m,
    Pndm,
}

crate::names::named_enum!(SamplerKind {
    Ddim = "ddim",
    Ddpm = "ddpm",
    Dpmpp2m = "dpmpp2m",
    Pndm = "pndm",
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
    /// Added to every leading-spacing timestep. Default: the model's scheduler config's
    /// `steps_offset`, as diffusers takes it (Stable Diffusion's is 1).
    pub steps_offset: Option<usize>,
    /// Clamp x̂0 when the model's schedule asks for it.
    pub clip: bool,
}

impl SamplerChoice {
    pub fn resolve(&self, schedule: &ScheduleConfig) -> SamplerConfig {
        let rule = self.kind.rule();
        SamplerConfig {
            kind: self.kind,
            steps: self
                .steps
                .unwrap_or(rule.default_steps(schedule.num_train_timesteps)),
            eta: self.eta,
            spacing: self.spacing.unwrap_or(rule.default_spacing()),
            steps_offset: self.steps_offset.unwrap_or(schedule.steps_offset),
            set_alpha_to_one: schedule.set_alpha_to_one,
            clip_sample: (schedule.clip_sample && self.clip).then_some(schedule.clip_sample_range),
            variance: schedule.variance_type,
            use_clipped_model_output: schedule.use_clipped_model_output,
        }
    }
}

impl SamplerKind {
    /// The update rule of this kind: the one place a sampler is registered.
    fn rule(self) -> &'static dyn UpdateRule {
        match self {
            SamplerKind::Ddim => &ddim::Ddim,
            SamplerKind::Ddpm => &ddpm::Ddpm,
            SamplerKind::Dpmpp2m => &dpmpp2m::Dpmpp2m,
            SamplerKind::Pndm => &pndm::Pndm,
        }
    }
}

/// What one sampler contributes: the coefficients of each step of the fused update, its
/// defaults, and the step itself where it keeps history.
trait UpdateRule: std::fmt::Debug + Sync {
    /// The coefficients of step `i` (0-based, in sampling order).
    fn coeffs(&self, s: &Scheduler, i: usize) -> StepCoeffs;

    /// Step `i`: x_{t'} from x_t, ε and the noise z, with coefficients `k` =
    /// [`coeffs`](Self::coeffs)`(i)`. One-step rules keep nothing in `history`.
    #[allow(clippy::too_many_arguments)] // the step's inputs, as the fused update takes them
    fn step(
        &self,
        i: usize,
        k: &StepCoeffs,
        history: &mut History,
        gpu: &Gpu,
        x: &Tensor,
        eps: &Tensor,
        z: Option<&Tensor>,
    ) -> Result<Tensor> {
        let _ = (i, history);
        Ok(ops::sampler_step(gpu, k, x, eps, None, z)?.0)
    }

    /// The model calls' timesteps from the grid's (strictly decreasing) points: the grid
    /// itself, or with points visited twice (PNDM).
    fn visit_order(&self, grid: Vec<usize>) -> Vec<usize> {
        grid
    }

    /// Points of diffusers' timestep grid for `steps` steps.
    fn grid_points(&self, steps: usize) -> usize {
        steps
    }

    /// Steps when the user names none.
    fn default_steps(&self, train_timesteps: usize) -> usize {
        let _ = train_timesteps;
        50
    }

    /// Spacing when the user names none.
    fn default_spacing(&self) -> Spacing {
        Spacing::Leading
    }

    /// ᾱ after the last step.
    fn final_alpha_bar(&self, s: &Scheduler) -> f64 {
        let _ = s;
        1.0
    }

    /// Whether steps draw the model's learned-range variance.
    fn samples_model_variance(&self, s: &Scheduler) -> bool {
        let _ = s;
        false
    }
}

/// What earlier steps of a batch left for later ones; each rule decides what it keeps
/// (DPM-Solver++(2M): the last x̂0; PNDM: the last four ε and the sample its first step
/// started from).
#[derive(Default)]
struct History {
    /// Newest last.
    tensors: Vec<Tensor>,
    sample: Option<Tensor>,
}

/// One batch's pass through the scheduler's steps, with the history its rule keeps.
pub struct SamplerState<'a> {
    scheduler: &'a Scheduler,
    history: History,
}

impl SamplerState<'_> {
    /// Step `i` (0-based, in sampling order): x_{t'} from x_t, ε and the step's noise z (where
    /// [`Scheduler::needs_noise`]), on the GPU.
    pub fn step(
        &mut self,
        gpu: &Gpu,
        i: usize,
        x: &Tensor,
        eps: &Tensor,
        z: Option<&Tensor>,
    ) -> Result<Tensor> {
        let s = self.scheduler;
        let k = s.coeffs(i);
        s.config
            .kind
            .rule()
            .step(i, &k, &mut self.history, gpu, x, eps, z)
    }
}

/// A configured sampler: the timesteps to visit and the update coefficients for each.
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub config: SamplerConfig,
    pub schedule: NoiseSchedule,
    pub timesteps: Vec<usize>,
}

fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// diffusers' `set_timesteps` on a grid of `points` ≥ `n` points, the first `n` visited.
fn spaced_timesteps(
    spacing: Spacing,
    t_train: usize,
    n: usize,
    points: usize,
    offset: usize,
) -> Vec<usize> {
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
        let rule = config.kind.rule();
        let points = rule.grid_points(n);
        let grid = spaced_timesteps(config.spacing, t_train, n, points, config.steps_offset);
        check_timesteps(&config, &grid, t_train)?;
        let timesteps = rule.visit_order(grid);
        let scheduler = Scheduler {
            config,
            schedule,
            timesteps,
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
    pub(super) fn x0_coeffs(&self, t: usize) -> StepCoeffs {
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
    pub(super) fn alpha_bar_prev(&self, i: usize) -> f64 {
        let ratio = (self.schedule.len() / self.config.steps) as isize;
        let prev = self.timesteps[i] as isize - ratio;
        if prev >= 0 {
            self.schedule.alphas_cumprod[prev as usize]
        } else {
            self.config.kind.rule().final_alpha_bar(self)
        }
    }

    /// Whether step `i` draws fresh noise z.
    pub fn needs_noise(&self, i: usize) -> bool {
        self.coeffs(i).c != 0.0
    }

    /// The update coefficients of step `i` (0-based, in sampling order).
    pub fn coeffs(&self, i: usize) -> StepCoeffs {
        self.config.kind.rule().coeffs(self, i)
    }

    /// A batch's pass through the steps, holding what the rule keeps between them.
    pub fn start(&self) -> SamplerState<'_> {
        SamplerState {
            scheduler: self,
            history: History::default(),
        }
    }

    /// DDPM's β̃ at step `i`, clamped at 1e-20 like diffusers' `_get_variance`.
    pub(super) fn posterior_variance(&self, i: usize) -> f64 {
        let a_t = self.alpha_bar(self.timesteps[i]);
        let a_prev = self.alpha_bar_prev(i);
        ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).max(1e-20)
    }

    /// Whether steps need the model's variance output (DDPM with learned-range variance).
    pub fn needs_model_variance(&self) -> bool {
        self.config.kind.rule().samples_model_variance(self)
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
}
