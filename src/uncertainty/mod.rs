//! Pixel-wise aleatoric uncertainty during sampling (Algorithm 1), as a sampling-loop hook.
//!
//! At each step in the window: x̂0 from (x_t, ε) (clipped when the sampler clips), M re-noised
//! copies x̃_m = √ᾱ_t·x̂0 + √(1−ᾱ_t)·n_m at the same t, ε_m = ε_θ(x̃_m, t) for all M·B copies in
//! one batched forward (split only when a buffer would exceed the device limit), and the map
//! U_t from one Welford pass. The trajectory itself is untouched: ε is returned unchanged.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::limits::{self, MAX_COPIES};
use crate::ops::{self, UncertaintyMode};
use crate::sampling::{BatchHook, StepContext, StepHook};

#[derive(Clone, Debug)]
pub struct UncertaintyConfig {
    /// M, the number of re-noised copies per step.
    pub copies: usize,
    pub mode: UncertaintyMode,
    /// First step (0-based, in sampling order) of the window.
    pub start: usize,
    /// Steps in the window (None: to the end).
    pub steps: Option<usize>,
    /// Most copies per network call (None: as many as the device allows).
    pub max_copies_per_forward: Option<usize>,
    /// Keep each step's map (B, C, H, W) for saving.
    pub keep_maps: bool,
    /// Keep each step's perturbation noise (M·B, C, H, W) for saving.
    pub keep_noise: bool,
}

impl Default for UncertaintyConfig {
    fn default() -> Self {
        UncertaintyConfig {
            copies: 5,
            mode: UncertaintyMode::Centred,
            start: 0,
            steps: None,
            max_copies_per_forward: None,
            keep_maps: false,
            keep_noise: false,
        }
    }
}

impl UncertaintyConfig {
    /// M in 1..=[`MAX_COPIES`] (≥ 2 for the variance modes, whose spread of one copy is
    /// 0 or undefined) and a non-empty window. Whether the window fits the sampler's steps is
    /// checked by [`check_window`](Self::check_window) once they are known.
    pub fn validate(&self) -> Result<()> {
        limits::count_in("-M (copies per uncertainty step)", self.copies, MAX_COPIES)?;
        if self.copies < 2 && self.mode != UncertaintyMode::Centred {
            return Err(Error::Invalid(format!(
                "--uc-mode {} needs M ≥ 2: the spread of one copy around its own mean is 0",
                self.mode
            )));
        }
        if self.steps == Some(0) {
            return Err(Error::Invalid(
                "an uncertainty window of 0 steps estimates nothing: drop --uncertainty, or \
                 give --uc-steps ≥ 1"
                    .into(),
            ));
        }
        if self.max_copies_per_forward == Some(0) {
            return Err(Error::Invalid(
                "max copies per forward must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The window must start at a step the sampler takes and end by its last step.
    pub fn check_window(&self, steps: usize) -> Result<()> {
        let end = self.start.checked_add(self.steps.unwrap_or(0));
        match end {
            Some(end) if self.start < steps && end <= steps => Ok(()),
            _ => Err(Error::Invalid(format!(
                "the uncertainty window (start {}, {} steps) does not fit the sampler's {steps} \
                 steps: --uc-start must be below {steps} and --uc-start + --uc-steps at most \
                 {steps}",
                self.start,
                self.steps.map_or("all remaining".into(), |n| n.to_string()),
            ))),
        }
    }

    pub fn in_window(&self, step: usize) -> bool {
        step >= self.start && self.steps.is_none_or(|n| step - self.start < n)
    }
}

/// Collects the maps of one batch; its [`scores`](Self::scores) rank the samples.
pub struct UncertaintyEstimator {
    pub config: UncertaintyConfig,
    /// Σ over window steps of U_t, (B, C, H, W).
    total: Option<Tensor>,
    /// (step, U_t) when `keep_maps`.
    pub maps: Vec<(usize, Tensor)>,
    /// (step, perturbation noise) when `keep_noise`.
    pub noise: Vec<(usize, Tensor)>,
    /// Perturbation noise to use instead of drawing it (replaying another implementation's run),
    /// one (M·B, C, H, W) tensor per window step in order.
    replay: Option<std::collections::VecDeque<Tensor>>,
}

impl UncertaintyEstimator {
    pub fn new(config: UncertaintyConfig) -> Result<UncertaintyEstimator> {
        config.validate()?;
        Ok(UncertaintyEstimator {
            config,
            total: None,
            maps: Vec::new(),
            noise: Vec::new(),
            replay: None,
        })
    }

    /// Uses the given perturbation noise, one tensor per window step, instead of drawing it.
    pub fn replaying(mut self, noise: Vec<Tensor>) -> Self {
        self.replay = Some(noise.into());
        self
    }

    /// The summed map Σ_t U_t (B, C, H, W), if any step was in the window.
    pub fn total_map(&self) -> Option<&Tensor> {
        self.total.as_ref()
    }

    /// Image scores s_b = Σ over window steps, channels and pixels of U (B), on the GPU.
    pub fn scores(&self, gpu: &Gpu) -> Result<Option<Tensor>> {
        self.total
            .as_ref()
            .map(|t| ops::sum_per_sample(gpu, t))
            .transpose()
    }

    fn perturbation_noise(&mut self, ctx: &StepContext, shape: &[usize]) -> Result<Tensor> {
        let m = self.config.copies;
        if let Some(queue) = &mut self.replay {
            let n = queue.pop_front().ok_or_else(|| {
                Error::Invalid("replayed noise ran out before the window ended".into())
            })?;
            let want = [&[m * shape[0]], &shape[1..]].concat();
            if n.shape() != want {
                return Err(Error::Invalid(format!(
                    "replayed noise {:?} must be {want:?}",
                    n.shape()
                )));
            }
            return Ok(n);
        }
        ctx.noise
            .perturbation(ctx.gpu, shape, m, ctx.step, ctx.first_index)
    }

    /// ε_θ over all copies, in as few network calls as the device's buffer limit allows.
    fn predict_copies(&self, ctx: &StepContext, noisy: &Tensor, batch: usize) -> Result<Tensor> {
        let m = self.config.copies;
        let fit = (ctx.model.max_batch(ctx.gpu) / batch.max(1)).max(1);
        let per_call = self
            .config
            .max_copies_per_forward
            .unwrap_or(m)
            .min(fit)
            .min(m);
        let timesteps = ops::repeat_batch(ctx.gpu, ctx.timesteps, per_call)?;
        let labels = ctx
            .labels
            .map(|l| ops::repeat_batch(ctx.gpu, l, per_call))
            .transpose()?;
        if per_call == m {
            return ctx
                .model
                .predict_eps(ctx.gpu, noisy, &timesteps, labels.as_ref());
        }
        let out = ctx.gpu.empty(noisy.shape())?;
        let sample_bytes = noisy.byte_len() / (m * batch) as u64;
        let mut first = 0;
        while first < m {
            let n = per_call.min(m - first);
            let rows = n * batch;
            let mut shape = noisy.shape().to_vec();
            shape[0] = rows;
            let chunk = ctx.gpu.empty(&shape)?;
            ctx.gpu
                .copy_range(noisy, (first * batch) as u64 * sample_bytes, &chunk)?;
            let (t, l) = if n == per_call {
                (timesteps.clone(), labels.clone())
            } else {
                (
                    ops::repeat_batch(ctx.gpu, ctx.timesteps, n)?,
                    ctx.labels
                        .map(|l| ops::repeat_batch(ctx.gpu, l, n))
                        .transpose()?,
                )
            };
            let eps = ctx.model.predict_eps(ctx.gpu, &chunk, &t, l.as_ref())?;
            ctx.gpu
                .copy_into(&eps, &out, (first * batch) as u64 * sample_bytes)?;
            first += n;
        }
        Ok(out)
    }
}

impl StepHook for UncertaintyEstimator {
    fn on_eps(&mut self, ctx: &StepContext, eps: Tensor) -> Result<Tensor> {
        if !self.config.in_window(ctx.step) {
            return Ok(eps);
        }
        let gpu = ctx.gpu;
        let x0 = ctx.scheduler.predict_x0(gpu, ctx.timestep, ctx.x, &eps)?;
        let shape = x0.shape().to_vec();
        let noise = self.perturbation_noise(ctx, &shape)?;
        let noisy = ctx.scheduler.add_noise(gpu, ctx.timestep, &x0, &noise)?;
        let eps_copies = self.predict_copies(ctx, &noisy, shape[0])?;
        let map = ops::uncertainty_map(gpu, &eps, &eps_copies, self.config.mode)?;
        let total = match &self.total {
            Some(t) => ops::add(gpu, t, &map)?,
            None => map.clone(),
        };
        // The running sum holds every map's NaN or ±Inf, and an overflow of the sum itself.
        ctx.non_finite.record(gpu, &total, ctx.step)?;
        self.total = Some(total);
        if self.config.keep_maps {
            self.maps.push((ctx.step, map));
        }
        if self.config.keep_noise {
            self.noise.push((ctx.step, noise));
        }
        Ok(eps)
    }
}

/// What the estimator collected over one batch, read back.
#[derive(Clone, Debug)]
pub struct UncertaintyBatch {
    /// Image scores s_b (B).
    pub scores: Vec<f32>,
    /// Σ_t U_t (B, C, H, W).
    pub total: Vec<f32>,
    /// (step, U_t) for each window step, when `keep_maps`.
    pub maps: Vec<(usize, Vec<f32>)>,
}

impl BatchHook for UncertaintyEstimator {
    /// None when no step of the batch was in the window.
    type Output = Option<UncertaintyBatch>;

    fn start_batch(&mut self) {
        self.total = None;
        self.maps.clear();
        self.noise.clear();
    }

    fn finish_batch(&mut self, gpu: &Gpu) -> Result<Option<UncertaintyBatch>> {
        let (Some(scores), Some(total)) = (self.scores(gpu)?, self.total_map()) else {
            return Ok(None);
        };
        let maps = self
            .maps
            .iter()
            .map(|(step, map)| Ok((*step, gpu.read(map)?)))
            .collect::<Result<_>>()?;
        Ok(Some(UncertaintyBatch {
            scores: gpu.read(&scores)?,
            total: gpu.read(total)?,
            maps,
        }))
    }
}
