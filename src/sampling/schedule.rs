//! Noise schedules: β_t and ᾱ_t = Π_{s≤t}(1 − β_s), computed once in f64.

use crate::error::{Error, Result};
use crate::limits::MAX_TRAIN_TIMESTEPS;
use crate::models::weights::parse_config;
use crate::models::WeightFile;
use serde::Deserialize;

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

crate::names::named_enum!(Spacing {
    Leading = "leading",
    Trailing = "trailing",
    Linspace = "linspace",
});

/// The `beta_schedule` names [`NoiseSchedule::from_config`] computes (`cosine` is an alias of
/// diffusers' `squaredcos_cap_v2`).
const BETA_SCHEDULES: &[&str] = &["linear", "scaled_linear", "squaredcos_cap_v2", "cosine"];

/// A diffusers scheduler config (`DDPMScheduler` / `DDIMScheduler` / `PNDMScheduler`) as stored in the weight
/// file's `scheduler` metadata; absent keys take diffusers' defaults. Every key those schedulers
/// write is known and any other is refused, so a misspelled key cannot silently fall back to a
/// default; [`validate`](Self::validate) refuses values outside their range and settings this
/// crate does not implement.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    pub num_train_timesteps: usize,
    pub beta_schedule: String,
    pub beta_start: f64,
    pub beta_end: f64,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub prediction_type: String,
    /// The DDPM step's variance: `fixed_small` (diffusers' default), `fixed_large`, or
    /// `learned_range` for models that predict it (ADM with `learn_sigma`).
    pub variance_type: VarianceType,
    /// DDIM steps along the ε implied by the clipped x̂0 (diffusers' `use_clipped_model_output`;
    /// what guided-diffusion's `ddim_sample` always does) instead of the model's ε.
    pub use_clipped_model_output: bool,
    /// DDIM: ᾱ after the last step is 1 (else ᾱ_0).
    pub set_alpha_to_one: bool,
    /// Only None: explicit β tables are not implemented.
    pub trained_betas: Option<serde_json::Value>,
    /// Only false: dynamic thresholding is not implemented; its two settings are range-checked.
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    /// The training scheduler's `set_timesteps` settings: sampling takes the spacing from the
    /// [`SamplerChoice`](super::SamplerChoice) (`--spacing`) and the offset from here unless
    /// `--steps-offset` gives one.
    pub timestep_spacing: String,
    pub steps_offset: usize,
    /// Only false: zero-terminal-SNR rescaling is not implemented.
    pub rescale_betas_zero_snr: bool,
    /// PNDMScheduler's: PLMS without the Runge–Kutta warm-up. `--sampler pndm` always runs
    /// PLMS, as Stable Diffusion's config (`true`) asks.
    pub skip_prk_steps: bool,
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    #[serde(rename = "_diffusers_version")]
    pub diffusers_version: Option<String>,
}

impl Default for ScheduleConfig {
    /// diffusers' `DDPMScheduler.__init__` defaults (and DDIM's `set_alpha_to_one`).
    fn default() -> Self {
        ScheduleConfig {
            num_train_timesteps: 1000,
            beta_schedule: "linear".into(),
            beta_start: 1e-4,
            beta_end: 0.02,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: "epsilon".into(),
            variance_type: VarianceType::FixedSmall,
            use_clipped_model_output: false,
            set_alpha_to_one: true,
            trained_betas: None,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            timestep_spacing: "leading".into(),
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            skip_prk_steps: true,
            class_name: None,
            diffusers_version: None,
        }
    }
}

impl ScheduleConfig {
    /// The config in a weight file's `scheduler` metadata, or the defaults when it has none.
    pub fn from_weights(file: &WeightFile) -> Result<ScheduleConfig> {
        let bad = |e: String| {
            Error::Weights(format!(
                "{}: invalid scheduler metadata: {e}",
                file.path().display()
            ))
        };
        let config: ScheduleConfig = match file.metadata.get("scheduler") {
            Some(json) => parse_config(json).map_err(|e| e.at(file.path(), "scheduler"))?,
            None => ScheduleConfig::default(),
        };
        config.validate().map_err(|e| bad(e.to_string()))?;
        Ok(config)
    }

    /// Refuses values outside their range and settings not implemented, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::Invalid(format!("`{key}` {why}")));
        let t = self.num_train_timesteps;
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&t) {
            return bad(
                "num_train_timesteps",
                format!("is {t}; it must be in 2..={MAX_TRAIN_TIMESTEPS}"),
            );
        }
        for (key, beta) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !(beta > 0.0 && beta < 1.0) {
                return bad(key, format!("is {beta}; a β must be in (0, 1)"));
            }
        }
        let positive = [
            ("clip_sample_range", self.clip_sample_range),
            ("sample_max_value", self.sample_max_value),
            (
                "dynamic_thresholding_ratio",
                self.dynamic_thresholding_ratio,
            ),
        ];
        if let Some((key, v)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return bad(key, format!("is {v}; it must be finite and positive"));
        }
        if self.dynamic_thresholding_ratio > 1.0 {
            return bad("dynamic_thresholding_ratio", "must be at most 1".into());
        }
        if self.steps_offset >= t {
            return bad(
                "steps_offset",
                format!(
                    "is {}; it must be below num_train_timesteps ({t})",
                    self.steps_offset
                ),
            );
        }
        if self.timestep_spacing.parse::<Spacing>().is_err() {
            return bad(
                "timestep_spacing",
                format!(
                    "{:?} is not one of {}",
                    self.timestep_spacing,
                    Spacing::NAMES.join(", ")
                ),
            );
        }
        self.validate_supported()
    }

    /// Settings diffusers offers that this crate does not implement.
    fn validate_supported(&self) -> Result<()> {
        let unsupported = |key: &str, value: String, supported: &str| {
            Err(Error::Invalid(format!(
                "`{key}` {value} is not supported (only {supported})"
            )))
        };
        if !BETA_SCHEDULES.contains(&self.beta_schedule.as_str()) {
            let known = BETA_SCHEDULES.join(", ");
            return unsupported("beta_schedule", format!("{:?}", self.beta_schedule), &known);
        }
        if self.prediction_type != "epsilon" {
            return unsupported(
                "prediction_type",
                format!("{:?}", self.prediction_type),
                "epsilon models",
            );
        }
        if self.trained_betas.as_ref().is_some_and(|b| !b.is_null()) {
            return unsupported("trained_betas", "(a β table)".into(), "computed schedules");
        }
        if self.thresholding {
            return unsupported("thresholding", "true".into(), "false");
        }
        if self.rescale_betas_zero_snr {
            return unsupported("rescale_betas_zero_snr", "true".into(), "false");
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// β_t and ᾱ_t of a config, which is validated first; every β_t must be in (0, 1) and
    /// every ᾱ_t above 0.
    pub fn from_config(cfg: &ScheduleConfig) -> Result<NoiseSchedule> {
        cfg.validate()?;
        let t = cfg.num_train_timesteps;
        let betas: Vec<f64> = match cfg.beta_schedule.as_str() {
            "linear" => (0..t)
                .map(|i| {
                    cfg.beta_start + (cfg.beta_end - cfg.beta_start) * i as f64 / (t - 1) as f64
                })
                .collect(),
            "scaled_linear" => {
                let (a, b) = (cfg.beta_start.sqrt(), cfg.beta_end.sqrt());
                (0..t)
                    .map(|i| (a + (b - a) * i as f64 / (t - 1) as f64).powi(2))
                    .collect()
            }
            // ADM's cosine schedule (diffusers' squaredcos_cap_v2).
            "squaredcos_cap_v2" | "cosine" => {
                let f = |x: f64| {
                    ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..t)
                    .map(|i| {
                        (1.0 - f((i + 1) as f64 / t as f64) / f(i as f64 / t as f64)).min(0.999)
                    })
                    .collect()
            }
            // Refused by `validate`; kept an error rather than a panic.
            other => return Err(Error::Invalid(format!("unknown beta_schedule {other:?}"))),
        };
        let mut alphas_cumprod = Vec::with_capacity(t);
        let mut prod = 1.0;
        for (i, &b) in betas.iter().enumerate() {
            prod *= 1.0 - b;
            if !(b > 0.0 && b < 1.0 && prod > 0.0) {
                return Err(Error::Invalid(format!(
                    "the {} schedule gives β = {b} and ᾱ = {prod} at t = {i}: β must be in (0, 1) \
                     and ᾱ above 0",
                    cfg.beta_schedule
                )));
            }
            alphas_cumprod.push(prod);
        }
        Ok(NoiseSchedule {
            betas,
            alphas_cumprod,
        })
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }
}
