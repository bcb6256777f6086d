//! Pixel-wise aleatoric uncertainty during sampling (Algorithm 1), as a sampling-loop hook.
//!
//! At each step in the window: x̂0 from (x_t, ε) (clipped when the sampler clips), M re-noised
//! copies x̃_m = √ᾱ_t·x̂0 + √(1−ᾱ_t)·n_m at the same t, ε_m = ε_θ(x̃_m, t) for all M·B copies in
//! one batched forward (split only when a buffer would exceed the device limit), and the map
//! U_t from one Welford pass. The trajectory itself is untouched: ε is returned unchanged.
//!
//! The Stein modes (typicality, posterior-variance, residual; [`UncertaintyMode::needs_noise`])
//! read the re-noise draws n_m too, and the z-scored ones a real-image [`reference`]. Every step
//! in the window also gives each sample a per-step score, the sum of its map (for typicality,
//! Δ_t); the image score sums them over the window (for typicality, their absolute values).
//!
//! The MC-Dropout baseline ([`UncertaintyMethod::McDropout`], [`mc_dropout`]) replaces the
//! re-noised copies with M dropout passes on x_t itself; its map is the unbiased variance.

mod known;
pub mod mc_dropout;
pub mod reference;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::limits::{self, MAX_COPIES};
use crate::noise::NoisePurpose;
use crate::ops::{self, UncertaintyMode};
use crate::sampling::{BatchHook, SamplerConfig, SamplerKind, StepContext, StepHook};
pub use known::{known_misranking, Misranking};
pub use reference::{build_reference, ReferenceRequest, UncertaintyReference};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// Where the M predictions of a step come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UncertaintyMethod {
    /// The paper's Algorithm 1: x̂0 re-noised M times at the same t.
    Renoise,
    /// M passes on x_t with dropout active (models with dropout layers only).
    McDropout,
}

crate::names::named_enum!(UncertaintyMethod {
    Renoise = "renoise",
    McDropout = "mc-dropout",
});

#[derive(Clone, Debug)]
pub struct UncertaintyConfig {
    /// M, the number of re-noised copies (or dropout passes) per step.
    pub copies: usize,
    pub method: UncertaintyMethod,
    pub mode: UncertaintyMode,
    /// First step (0-based, in sampling order) of the window.
    pub start: usize,
    /// Steps in the window (None: to the end).
    pub steps: Option<usize>,
    /// Most copies per network call (None: as many as the device allows).
    pub max_copies_per_forward: Option<usize>,
    /// The samples (run indices) whose per-step maps are kept: a batch holding any of them
    /// keeps each step's map (B, C, H, W) and hands it back (empty: none, the cheap default).
    pub keep_maps: Range<usize>,
    /// The real-image statistics the z-scored modes need ([`UncertaintyMode::needs_reference`]).
    pub reference: Option<Arc<UncertaintyReference>>,
}

impl Default for UncertaintyConfig {
    fn default() -> Self {
        UncertaintyConfig {
            copies: 5,
            method: UncertaintyMethod::Renoise,
            mode: UncertaintyMode::Centred,
            start: 0,
            steps: None,
            max_copies_per_forward: None,
            keep_maps: 0..0,
            reference: None,
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
        if self.method == UncertaintyMethod::McDropout && self.mode != UncertaintyMode::Variance {
            return Err(Error::Invalid(format!(
                "MC-Dropout's map is the unbiased variance of its M passes (uc-mode variance), \
                 not {}",
                self.mode
            )));
        }
        if self.mode.needs_reference() && self.reference.is_none() {
            return Err(Error::Invalid(format!(
                "--uc-mode {} is z-scored against real images: make a reference file with \
                 `wgsl-diff reference` (same model, sampler and --steps) and pass it with \
                 --uc-reference",
                self.mode
            )));
        }
        if self.reference.is_some() && !self.mode.needs_reference() {
            return Err(Error::Invalid(format!(
                "--uc-reference only applies to the z-scored modes (posterior-variance, \
                 residual), not --uc-mode {}",
                self.mode
            )));
        }
        if self.max_copies_per_forward == Some(0) {
            return Err(Error::Invalid(
                "max copies per forward must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The mode must suit the sampler: the official DPM-Solver++ estimate exists for DPM-Solver++
    /// only, and with an unclipped x̂0 (the official scheduler has no clipping).
    pub fn check_sampler(&self, sampler: &SamplerConfig) -> Result<()> {
        if self.mode == UncertaintyMode::OfficialDpm
            && (sampler.kind != SamplerKind::Dpmpp2m || sampler.clip_sample.is_some())
        {
            return Err(Error::Invalid(format!(
                "--uc-mode official-dpm reproduces the official DPM-Solver++ scheduler's estimate: \
                 it needs --sampler dpmpp2m without clipping of x̂0 (this run: {}{})",
                sampler.kind,
                if sampler.clip_sample.is_some() { ", clipped" } else { "" }
            )));
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
    /// (step, U_t) when the batch holds a sample of `keep_maps`.
    pub maps: Vec<(usize, Tensor)>,
    /// (step, per-sample sum of U_t (B)) for every window step.
    pub step_sums: Vec<(usize, Tensor)>,
    /// The Stein modes' (shift, scale) per step, uploaded once per run.
    standardisation: HashMap<usize, (Tensor, Tensor)>,
}

impl UncertaintyEstimator {
    pub fn new(config: UncertaintyConfig) -> Result<UncertaintyEstimator> {
        config.validate()?;
        Ok(UncertaintyEstimator {
            config,
            total: None,
            maps: Vec::new(),
            step_sums: Vec::new(),
            standardisation: HashMap::new(),
        })
    }

    /// The summed map Σ_t U_t (B, C, H, W), if any step was in the window.
    pub fn total_map(&self) -> Option<&Tensor> {
        self.total.as_ref()
    }

    /// Σ over window steps, channels and pixels of U (B), on the GPU: the image scores of
    /// every mode but typicality (whose score is Σ_t |Δ_t|, [`UncertaintyBatch::scores`]).
    pub fn scores(&self, gpu: &Gpu) -> Result<Option<Tensor>> {
        self.total
            .as_ref()
            .map(|t| ops::sum_per_sample(gpu, t))
            .transpose()
    }
}

impl StepHook for UncertaintyEstimator {
    fn on_eps(&mut self, ctx: &StepContext, eps: Tensor) -> Result<Tensor> {
        if !self.config.in_window(ctx.step) {
            return Ok(eps);
        }
        let copies = self.config.copies;
        let gpu = ctx.gpu;
        let map = match self.config.method {
            UncertaintyMethod::Renoise if self.config.mode == UncertaintyMode::OfficialDpm => {
                // The official DPM-Solver++ code estimates after ε was replaced by the data
                // prediction, and so takes x̂0 for ε throughout (see the mode's documentation).
                let x0 = ctx
                    .scheduler
                    .predict_x0_unclipped(gpu, ctx.timestep, ctx.x, &eps)?;
                let (_, eps_copies) =
                    renoised_copies(ctx, &x0, copies, self.config.max_copies_per_forward)?;
                ops::uncertainty_map(gpu, &x0, &eps_copies, UncertaintyMode::OfficialDpm)?
            }
            UncertaintyMethod::Renoise => {
                let (noise, eps_copies) =
                    renoised_copies(ctx, &eps, copies, self.config.max_copies_per_forward)?;
                self.map(ctx, &eps, &eps_copies, &noise)?
            }
            UncertaintyMethod::McDropout => {
                let eps_copies = mc_dropout::predict_copies(ctx, copies)?;
                ops::uncertainty_map(gpu, &eps, &eps_copies, self.config.mode)?
            }
        };
        self.step_sums
            .push((ctx.step, ops::sum_per_sample(gpu, &map)?));
        let total = match &self.total {
            Some(t) => ops::add(gpu, t, &map)?,
            None => map.clone(),
        };
        // The running sum holds every map's NaN or ±Inf, and an overflow of the sum itself.
        ctx.non_finite.record(gpu, &total, ctx.step)?;
        self.total = Some(total);
        if overlaps(&self.config.keep_maps, ctx.first_index, eps.dim(0)) {
            self.maps.push((ctx.step, map));
        }
        Ok(eps)
    }
}

impl UncertaintyEstimator {
    /// U_t of the configured mode from ε, the copies' predictions and their re-noise draws.
    fn map(
        &mut self,
        ctx: &StepContext,
        eps: &Tensor,
        eps_copies: &Tensor,
        noise: &Tensor,
    ) -> Result<Tensor> {
        let (gpu, mode) = (ctx.gpu, self.config.mode);
        if !mode.needs_noise() {
            return ops::uncertainty_map(gpu, eps, eps_copies, mode);
        }
        let sample = &eps.shape()[1..];
        if !self.standardisation.contains_key(&ctx.step) {
            let len = sample.iter().product();
            let reference = self.config.reference.as_deref();
            let (shift, scale) = reference::standardisation(mode, reference, ctx.step, len)?;
            let tensors = (gpu.upload(sample, &shift)?, gpu.upload(sample, &scale)?);
            self.standardisation.insert(ctx.step, tensors);
        }
        let (shift, scale) = &self.standardisation[&ctx.step];
        let a = ctx.scheduler.alpha_bar(ctx.timestep);
        ops::stein_map(
            gpu,
            eps_copies,
            noise,
            (shift, scale),
            self.config.copies,
            mode,
            (1.0 - a) / a,
        )
    }
}

/// Whether the batch `first .. first + size` holds any sample of `samples`.
pub(crate) fn overlaps(samples: &Range<usize>, first: usize, size: usize) -> bool {
    samples.start < first.saturating_add(size) && first < samples.end
}

/// (n_m, ε_m): the M re-noise draws of x̂0 at the context's step (Algorithm 1) and ε_θ at the
/// re-noised copies, both stacked copy-major (M·B, C, H, W).
pub fn renoised_copies(
    ctx: &StepContext,
    eps: &Tensor,
    copies: usize,
    max_copies_per_forward: Option<usize>,
) -> Result<(Tensor, Tensor)> {
    let gpu = ctx.gpu;
    let x0 = ctx.scheduler.predict_x0(gpu, ctx.timestep, ctx.x, eps)?;
    let shape = x0.shape().to_vec();
    let noise = ctx.noise.perturbation(
        gpu,
        NoisePurpose::Uncertainty,
        &shape,
        copies,
        ctx.step,
        ctx.first_index,
    )?;
    let noisy = ctx.scheduler.add_noise(gpu, ctx.timestep, &x0, &noise)?;
    let eps_copies = ctx.predict_copies(&noisy, copies, max_copies_per_forward)?;
    Ok((noise, eps_copies))
}

/// What the estimator collected over one batch, read back.
#[derive(Clone, Debug)]
pub struct UncertaintyBatch {
    /// Image scores s_b (B).
    pub scores: Vec<f32>,
    /// (step, per-step score of each sample (B)) for every window step: the sum of U_t (for
    /// typicality, Δ_t).
    pub step_scores: Vec<(usize, Vec<f32>)>,
    /// Σ_t U_t (B, C, H, W).
    pub total: Vec<f32>,
    /// (step, U_t (B, C, H, W)) for each window step, when the batch holds a sample of
    /// `keep_maps`.
    pub maps: Vec<(usize, Vec<f32>)>,
}

impl BatchHook for UncertaintyEstimator {
    /// None when no step of the batch was in the window.
    type Output = Option<UncertaintyBatch>;

    fn start_batch(&mut self) {
        self.total = None;
        self.maps.clear();
        self.step_sums.clear();
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
        let step_scores: Vec<(usize, Vec<f32>)> = self
            .step_sums
            .iter()
            .map(|(step, sums)| Ok((*step, gpu.read(sums)?)))
            .collect::<Result<_>>()?;
        let mut scores = gpu.read(&scores)?;
        if self.config.mode == UncertaintyMode::Typicality {
            // Σ_t |Δ_t|, in f64 over the steps.
            for (b, score) in scores.iter_mut().enumerate() {
                *score = step_scores
                    .iter()
                    .map(|(_, s)| (s[b] as f64).abs())
                    .sum::<f64>() as f32;
            }
        }
        Ok(Some(UncertaintyBatch {
            scores,
            step_scores,
            total: gpu.read(total)?,
            maps,
        }))
    }
}
