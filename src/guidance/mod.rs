//! Uncertainty-guided sampling (Algorithm 2, docs/method.md §3) as a step hook that changes ε.
//!
//! At each guided step: x̂0 from (x_t, ε) (never clipped), M re-noised copies
//! x̃_m = √ᾱ_t·x̂0 + √(1−ᾱ_t)·n_m with their own noise stream ([`NoisePurpose::Guidance`]),
//! ε_m = ε_θ(x̃_m, t) for all M·B copies in one call, then
//! - Rule G ([`GuidanceRule::Gradient`], the paper's): U = unbiased variance of {ε_m},
//!   g = ∂(Σ U)/∂ε = −√(1−ᾱ_t)·Σ_m J_mᵀ·2(ε_m − ε̄)/(M−1) by one input-gradient pass through
//!   the network, and ε ← ε + λ·mask·g;
//! - Rule P ([`GuidanceRule::Posterior`]): U' = unbiased variance of {ε_1..ε_M, ε},
//!   ε_post = Σ_m ε_m/(M + U'/ᾱ_t), and ε ← mask·ε_post + (1−mask)·ε — with ᾱ at the step's
//!   timestep and the sum over the M copies (the official code's bugs are not copied);
//!
//! where mask = U > thr: the image's p-quantile of U (torch.quantile's linear interpolation) or a
//! calibrated per-element threshold of the step ([`calibrate`]). The masks of chosen samples
//! can be kept ([`GuidanceHook::keep_masks`]) for the report to show where guidance acted.

mod calibrate;

pub use calibrate::{
    calibrate, calibrate_with_progress, CalibrateRequest, CalibratedThreshold, Calibration,
};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::noise::NoisePurpose;
use crate::ops::{self, MaskedRule};
use crate::sampling::{BatchHook, StepContext, StepHook};
use crate::uncertainty::overlaps;
use std::ops::Range;

/// How the uncertainty steers ε.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuidanceRule {
    /// Rule G: a gradient step on the summed uncertainty (needs the model's backward pass).
    Gradient,
    /// Rule P: a closed-form precision-weighted mean of the M predictions.
    Posterior,
}

crate::names::named_enum!(GuidanceRule {
    Gradient = "gradient",
    Posterior = "posterior",
});

impl GuidanceRule {
    /// The fewest copies M the rule works with (Rule G's uncertainty is a spread over them).
    pub fn min_copies(self) -> usize {
        match self {
            GuidanceRule::Gradient => 2,
            GuidanceRule::Posterior => 1,
        }
    }
}

/// Which elements are guided.
#[derive(Clone, Debug)]
pub enum Threshold {
    /// Those above the image's p-quantile of its uncertainty map, p in (0, 1).
    Percentile(f64),
    /// Those above a calibrated per-element threshold of their step.
    Calibrated(CalibratedThreshold),
}

#[derive(Clone, Debug)]
pub struct GuidanceConfig {
    pub rule: GuidanceRule,
    /// λ, the step size of Rule G (Rule P ignores it).
    pub strength: f64,
    /// M, re-noised copies per guided step.
    pub copies: usize,
    /// First guided step (0-based, in sampling order).
    pub start: usize,
    /// Guided steps (None: to the end).
    pub steps: Option<usize>,
    pub threshold: Threshold,
    /// Most copies per network call (None: as many as the device allows).
    pub max_copies_per_forward: Option<usize>,
}

impl GuidanceConfig {
    /// The paper's defaults: Rule G, λ = 1, M = 5, the first 3 steps, p = 0.95.
    pub fn paper(rule: GuidanceRule) -> GuidanceConfig {
        GuidanceConfig {
            rule,
            strength: 1.0,
            copies: 5,
            start: 0,
            steps: Some(3),
            threshold: Threshold::Percentile(0.95),
            max_copies_per_forward: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::Invalid(msg));
        if !self.strength.is_finite() {
            return invalid(format!(
                "the guidance strength must be finite, got {}",
                self.strength
            ));
        }
        let min_copies = self.rule.min_copies();
        if self.copies < min_copies {
            return invalid(format!(
                "{} guidance needs at least {min_copies} copies, got {}",
                self.rule, self.copies
            ));
        }
        if self.max_copies_per_forward == Some(0) {
            return invalid("max copies per forward must be at least 1".into());
        }
        if self.steps == Some(0) {
            return invalid(
                "--guidance-steps 0 guides no step: give at least 1 (or drop --guidance)".into(),
            );
        }
        match &self.threshold {
            Threshold::Percentile(p) if !(*p > 0.0 && *p < 1.0) => {
                invalid(format!("the percentile must be in (0, 1), got {p}"))
            }
            _ => Ok(()),
        }
    }

    pub fn in_window(&self, step: usize) -> bool {
        step >= self.start && self.steps.is_none_or(|n| step - self.start < n)
    }

    /// The settings as recorded in a run's parameters.
    pub fn describe(&self) -> serde_json::Value {
        let threshold = match &self.threshold {
            Threshold::Percentile(p) => serde_json::json!({ "percentile": p }),
            Threshold::Calibrated(c) => serde_json::json!({ "calibrated": c.source }),
        };
        serde_json::json!({
            "rule": self.rule, "strength": self.strength, "M": self.copies,
            "start": self.start, "steps": self.steps, "threshold": threshold,
        })
    }
}

/// Guides one batch at a time; with `observe_only` it only measures the rule's uncertainty
/// map at every window step (for [`calibrate`]) and leaves ε alone.
pub struct GuidanceHook {
    pub config: GuidanceConfig,
    observe_only: bool,
    /// The calibrated thresholds of each step (C, H, W), uploaded once.
    calibrated: Vec<Tensor>,
    /// (step, the rule's uncertainty map) when observing.
    maps: Vec<(usize, Tensor)>,
    /// The samples (run indices) whose masks are kept ([`keep_masks`](Self::keep_masks)).
    keep_masks: Range<usize>,
    /// (step, mask (B, C, H, W)) of a batch holding a sample of `keep_masks`.
    masks: Vec<(usize, Tensor)>,
}

/// What a guided batch hands back: the observed maps (empty unless observing) and the masks
/// of the guided steps (empty unless the batch holds a sample whose masks are kept).
#[derive(Clone, Debug, Default)]
pub struct GuidanceBatch {
    pub maps: Vec<(usize, Vec<f32>)>,
    /// (step, 1 where the element was guided and 0 elsewhere, (B, C, H, W)).
    pub masks: Vec<(usize, Vec<f32>)>,
}

impl GuidanceHook {
    pub fn new(gpu: &Gpu, config: GuidanceConfig) -> Result<GuidanceHook> {
        config.validate()?;
        let calibrated = match &config.threshold {
            Threshold::Calibrated(c) => c.upload(gpu)?,
            Threshold::Percentile(_) => Vec::new(),
        };
        Ok(GuidanceHook {
            config,
            observe_only: false,
            calibrated,
            maps: Vec::new(),
            keep_masks: 0..0,
            masks: Vec::new(),
        })
    }

    /// Keeps the mask of every guided step for the batches holding any of `samples` (run
    /// indices), so a report can show where guidance acted.
    pub fn keep_masks(mut self, samples: Range<usize>) -> GuidanceHook {
        self.keep_masks = samples;
        self
    }

    /// A hook that records the rule's uncertainty map at every window step without guiding
    /// (its threshold is not used).
    pub fn observer(config: GuidanceConfig) -> Result<GuidanceHook> {
        config.validate()?;
        Ok(GuidanceHook {
            config,
            observe_only: true,
            calibrated: Vec::new(),
            maps: Vec::new(),
            keep_masks: 0..0,
            masks: Vec::new(),
        })
    }

    /// The threshold of each element of `uncertainty` at `step`: (B) or (C, H, W).
    fn threshold(&self, gpu: &Gpu, uncertainty: &Tensor, step: usize) -> Result<Tensor> {
        match &self.config.threshold {
            Threshold::Percentile(p) => ops::quantile_per_sample(gpu, uncertainty, *p),
            Threshold::Calibrated(c) => self.calibrated.get(step).cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "the calibrated threshold ({}) has {} steps; step {step} is not among them",
                    c.source,
                    c.steps()
                ))
            }),
        }
    }

    /// (the rule's uncertainty map, the guided ε) for one step.
    fn guide(&mut self, ctx: &StepContext, eps: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (gpu, t, m) = (ctx.gpu, ctx.timestep, self.config.copies);
        let batch = eps.dim(0);
        let x0 = ctx.scheduler.predict_x0_unclipped(gpu, t, ctx.x, eps)?;
        let noise = ctx.noise.perturbation(
            gpu,
            NoisePurpose::Guidance,
            x0.shape(),
            m,
            ctx.step,
            ctx.first_index,
        )?;
        let noisy = ctx.scheduler.add_noise(gpu, t, &x0, &noise)?;
        let eps_copies = ctx.predict_copies(&noisy, m, self.config.max_copies_per_forward)?;
        let alpha_bar = ctx.scheduler.alpha_bar(t);
        let (uncertainty, update, rule) = match self.config.rule {
            GuidanceRule::Gradient => {
                let (cotangent, variance) = ops::gradient_cotangent(gpu, &eps_copies, batch)?;
                if self.observe_only {
                    return Ok((variance, None));
                }
                let grads = ctx.vjp_copies(&noisy, &cotangent, m)?;
                let scale = -(1.0 - alpha_bar).sqrt() as f32;
                let g = ops::sum_copies(gpu, &grads, batch, scale)?;
                (variance, g, MaskedRule::Add)
            }
            GuidanceRule::Posterior => {
                let (variance, eps_post) = ops::posterior(gpu, eps, &eps_copies, alpha_bar)?;
                (variance, eps_post, MaskedRule::Replace)
            }
        };
        if self.observe_only {
            return Ok((uncertainty, None));
        }
        let threshold = self.threshold(gpu, &uncertainty, ctx.step)?;
        let strength = self.config.strength as f32;
        let guided =
            ops::masked_update(gpu, rule, eps, &uncertainty, &threshold, &update, strength)?;
        if overlaps(&self.keep_masks, ctx.first_index, batch) {
            // The mask is the update kernel's own test, U > threshold: replacing 0 by 1 there.
            let (zeros, ones) = (gpu.zeros(eps.shape())?, ones(gpu, eps.shape())?);
            let mask = ops::masked_update(
                gpu,
                MaskedRule::Replace,
                &zeros,
                &uncertainty,
                &threshold,
                &ones,
                1.0,
            )?;
            self.masks.push((ctx.step, mask));
        }
        Ok((uncertainty, Some(guided)))
    }
}

impl StepHook for GuidanceHook {
    fn on_eps(&mut self, ctx: &StepContext, eps: Tensor) -> Result<Tensor> {
        if !self.config.in_window(ctx.step) {
            return Ok(eps);
        }
        let (uncertainty, guided) = self.guide(ctx, &eps)?;
        if self.observe_only {
            self.maps.push((ctx.step, uncertainty));
        }
        Ok(guided.unwrap_or(eps))
    }
}

impl BatchHook for GuidanceHook {
    type Output = GuidanceBatch;

    fn start_batch(&mut self) {
        self.maps.clear();
        self.masks.clear();
    }

    fn finish_batch(&mut self, gpu: &Gpu) -> Result<GuidanceBatch> {
        let read = |tensors: &mut Vec<(usize, Tensor)>| {
            tensors
                .drain(..)
                .map(|(step, t)| Ok((step, gpu.read(&t)?)))
                .collect::<Result<_>>()
        };
        Ok(GuidanceBatch {
            maps: read(&mut self.maps)?,
            masks: read(&mut self.masks)?,
        })
    }
}

fn ones(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
    gpu.upload(shape, &vec![1.0; shape.iter().product()])
}
