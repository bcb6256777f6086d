//! Noise schedules: β_t and ᾱ_t = Π_{s≤t}(1 − β_s), computed once in f64.

use super::scheduler::VarianceType;
use crate::error::{Error, Result};
use crate::models::WeightFile;
use serde::Deserialize;

/// A diffusers-style scheduler config (the fields the samplers read), as stored in the weight
/// file's `scheduler` metadata; absent fields take diffusers' defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
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
}

impl Default for ScheduleConfig {
    /// diffusers' `DDPMScheduler.__init__` defaults.
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
        }
    }
}

impl ScheduleConfig {
    /// The config in a weight file's `scheduler` metadata, or the defaults when it has none.
    pub fn from_weights(file: &WeightFile) -> Result<ScheduleConfig> {
        match file.metadata.get("scheduler") {
            Some(json) => serde_json::from_str(json).map_err(|e| {
                Error::Weights(format!(
                    "{}: invalid scheduler metadata: {e}",
                    file.path().display()
                ))
            }),
            None => Ok(ScheduleConfig::default()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    pub fn from_config(cfg: &ScheduleConfig) -> Result<NoiseSchedule> {
        if cfg.prediction_type != "epsilon" {
            return Err(Error::Invalid(format!(
                "prediction_type {:?}: only epsilon models are supported",
                cfg.prediction_type
            )));
        }
        let t = cfg.num_train_timesteps;
        if t < 2 {
            return Err(Error::Invalid(format!("num_train_timesteps {t} < 2")));
        }
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
            other => {
                return Err(Error::Invalid(format!(
                    "unknown beta_schedule {other:?} (linear, scaled_linear, squaredcos_cap_v2)"
                )))
            }
        };
        let mut alphas_cumprod = Vec::with_capacity(t);
        let mut prod = 1.0;
        for b in &betas {
            prod *= 1.0 - b;
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
