//! What `sample` is asked to do: a [`SampleRequest`], the checks that need neither the model
//! nor the folder, and what follows from it once the model is known — the run's identity (the
//! parameters every PNG carries), its guidance, its starting noise and its folder plan.

use crate::error::{Error, Result};
use crate::guidance::{CalibratedThreshold, GuidanceConfig, GuidanceRule, Threshold};
use crate::limits::{self, MAX_BATCH};
use crate::models::{EpsModel, MapSpace};
use crate::npy;
use crate::run_dir::{kept_count, FolderPlan, HeatmapScale, HeatmapStyle, Shard};
use crate::sampling::{ClassChoice, InitNoise, SamplerChoice, Scheduler};
use crate::uncertainty::{UncertaintyConfig, UncertaintyMethod};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The model shipped in `weights/`, used when no model is given.
pub const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/fashion_mnist_ddpm.safetensors"
);

/// Everything `sample` is asked to do.
#[derive(Clone, Debug)]
pub struct SampleRequest {
    /// A weight file written by tools/convert.py.
    pub model: PathBuf,
    pub sampler: SamplerChoice,
    pub seed: u64,
    /// Samples `start_index .. start_index + num`.
    pub start_index: usize,
    pub num: usize,
    /// Samples per GPU batch.
    pub batch: usize,
    /// The classes of a class-conditional model's samples (required for one).
    pub class: Option<ClassChoice>,
    pub out: PathBuf,
    /// Starting noise as float32 .npy of shape (num, C, H, W).
    pub init_noise: Option<PathBuf>,
    /// Also write each final image as float32 .npy.
    pub save_raw: bool,
    pub uncertainty: Option<UncertaintyConfig>,
    /// Uncertainty-guided sampling (Algorithm 2).
    pub guidance: Option<GuidanceConfig>,
    /// A calibrated (steps, C, H, W) threshold file replacing the guidance's percentile.
    pub threshold_file: Option<PathBuf>,
    pub heatmap_scale: HeatmapScale,
    pub heatmap_style: HeatmapStyle,
    /// Write each step's uncertainty map as .npy into this folder.
    pub save_maps: Option<PathBuf>,
    /// Draw each map of `save_maps` as a heatmap PNG beside it.
    pub step_heatmaps: bool,
    /// Write every noise tensor the run drew as .npy into this folder.
    pub dump_noise: Option<PathBuf>,
    /// Filter the run afterwards, keeping this fraction.
    pub keep_fraction: Option<f64>,
    /// Write report.html.
    pub report: bool,
    /// Make only this part of `start_index .. start_index + num`: one worker of many sharing
    /// the folder.
    pub shard: Option<Shard>,
    /// Write samples that go non-finite (marked in their PNG and the manifest) instead of
    /// stopping with [`Error::NonFinite`].
    pub keep_non_finite: bool,
    /// Store the network's conv and linear weights as f16 (`WeightFile::with_f16_weights`).
    pub f16_weights: bool,
    /// Store the network's activations as f16 (`WeightFile::with_f16_activations`).
    pub f16_activations: bool,
    /// What to draw, for a Stable Diffusion model (required there, refused elsewhere).
    pub prompt: Option<super::PromptRequest>,
    /// Classifier-free guidance scale between each sample's class and the model's null class
    /// (class-conditional models trained with one; no guidance when None).
    pub class_cfg_scale: Option<f64>,
    /// The autoencoder (an AutoencoderKL weight file) that decodes a latent model's samples
    /// (U-ViT's; a Stable Diffusion checkpoint brings its own).
    pub vae: Option<PathBuf>,
}

impl SampleRequest {
    /// The run's samples, `start_index .. start_index + num`, which must fit the kernels' u32
    /// sample index.
    pub fn run_range(&self) -> Result<Range<usize>> {
        limits::sample_range("--start-index/--num", self.start_index, self.num)
    }

    /// The samples this request makes: its shard of the run, or all of it.
    pub fn own_range(&self) -> Result<Range<usize>> {
        let run = self.run_range()?;
        match &self.shard {
            Some(shard) => shard.part(&run),
            None => Ok(run),
        }
    }

    /// What the run folder needs to know of this run.
    pub fn folder(&self) -> Result<FolderPlan> {
        Ok(FolderPlan {
            out: self.out.clone(),
            save_maps: self.save_maps.clone(),
            dump_noise: self.dump_noise.clone(),
            run: self.run_range()?,
            uncertainty: self.uncertainty.is_some(),
            heatmap_scale: self.heatmap_scale,
            heatmap_style: self.heatmap_style,
            step_heatmaps: self.step_heatmaps,
            keep_fraction: self.keep_fraction,
            seed: self.seed,
            report: self.report,
        })
    }

    /// Checks every count, index, fraction and flag combination that needs neither the model
    /// nor the folder, before anything is loaded or allocated.
    pub fn validate(&self) -> Result<()> {
        limits::count_in("--batch", self.batch, MAX_BATCH)?;
        let run = self.own_range().and(self.run_range())?;
        if let Some(prompt) = &self.prompt {
            prompt.validate()?;
        }
        if let Some(scale) = self.class_cfg_scale {
            if !(scale.is_finite() && scale.abs() <= 1e4) {
                return Err(Error::Invalid(format!(
                    "--cfg-scale must be finite and at most 1e4 in size, got {scale}"
                )));
            }
        }
        if self.step_heatmaps && self.save_maps.is_none() {
            return Err(Error::Invalid(
                "--step-heatmaps draws the maps of --save-maps: give --save-maps DIR".into(),
            ));
        }
        match &self.uncertainty {
            Some(uc) => uc.validate()?,
            None if self.save_maps.is_some() || self.keep_fraction.is_some() || self.report => {
                return Err(Error::Invalid(
                    "--save-maps, --keep-fraction and --report need --uncertainty".into(),
                ))
            }
            None => {}
        }
        if let Some(fraction) = self.keep_fraction {
            kept_count(fraction, run.len())?;
        }
        match &self.guidance {
            Some(g) if self.f16_weights && matches!(g.rule, GuidanceRule::Gradient) => {
                Err(Error::Invalid(
                    "gradient guidance differentiates the network, which needs f32 weights: \
                     drop --f16-weights"
                        .into(),
                ))
            }
            Some(g) if self.f16_activations && matches!(g.rule, GuidanceRule::Gradient) => {
                Err(Error::Invalid(
                    "gradient guidance differentiates the network, whose backward pass reads \
                     f32 activations: drop --f16-activations"
                        .into(),
                ))
            }
            Some(g) => g.validate(),
            None if self.threshold_file.is_some() => Err(Error::Invalid(
                "a threshold file only applies to guided sampling".into(),
            )),
            None => Ok(()),
        }
    }
}

/// The guidance of the run, with its calibrated thresholds read when a file is given.
pub(super) fn guidance_config(
    request: &SampleRequest,
    scheduler: &Scheduler,
    sample_shape: [usize; 3],
) -> Result<Option<GuidanceConfig>> {
    let Some(mut config) = request.guidance.clone() else {
        return match request.threshold_file {
            Some(_) => Err(Error::Invalid(
                "a threshold file only applies to guided sampling".into(),
            )),
            None => Ok(None),
        };
    };
    if let Some(path) = &request.threshold_file {
        let steps = scheduler.timesteps.len();
        let threshold = CalibratedThreshold::load(&canonical(path), steps, sample_shape)?;
        config.threshold = Threshold::Calibrated(threshold);
    }
    if config.start >= scheduler.timesteps.len() {
        return Err(Error::Invalid(format!(
            "guidance starts at step {}, past the last step ({} steps)",
            config.start,
            scheduler.timesteps.len()
        )));
    }
    Ok(Some(config))
}

/// The canonical form of a path that exists, so the same file named two ways is one run.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The run's identity, embedded in every PNG: a folder holds samples of one set of parameters.
/// Unguided runs carry no `guidance` key, as before guidance existed.
pub(super) fn parameters(
    request: &SampleRequest,
    scheduler: &Scheduler,
    guidance: Option<&GuidanceConfig>,
    map_space: MapSpace,
) -> serde_json::Value {
    let model = canonical(&request.model);
    let config = &scheduler.config;
    let mut parameters = serde_json::json!({
        "model": model.display().to_string(), "sampler": config.kind, "steps": config.steps,
        "eta": config.eta, "spacing": config.spacing, "steps_offset": config.steps_offset,
        "clip_sample": config.clip_sample, "seed": request.seed, "timesteps": scheduler.timesteps,
        "uncertainty": request.uncertainty.as_ref().map(|uc| serde_json::json!({
            "M": uc.copies, "mode": uc.mode, "start": uc.start, "steps": uc.steps })),
    });
    // Only z-scored runs name their reference, so other runs keep their identity.
    let reference = request
        .uncertainty
        .as_ref()
        .and_then(|uc| uc.reference.as_ref());
    if let (Some(r), Some(uc)) = (reference, parameters.get_mut("uncertainty")) {
        uc["reference"] = r.source.clone().into();
    }
    if let (Some(g), Some(map)) = (guidance, parameters.as_object_mut()) {
        map.insert("guidance".into(), g.describe());
    }
    // Where the maps live, said only where they are not the images' own pixels (so pixel runs
    // keep their identity).
    if let (MapSpace::Latent { factor }, Some(map)) = (map_space, parameters.as_object_mut()) {
        map.insert(
            "maps".into(),
            serde_json::json!({ "space": "latent", "factor": factor }),
        );
    }
    // Only text-to-image runs carry a prompt, so pixel runs keep their identity.
    if let (Some(p), Some(map)) = (&request.prompt, parameters.as_object_mut()) {
        map.insert("prompt".into(), p.prompt.clone().into());
        map.insert("negative_prompt".into(), p.negative_prompt.clone().into());
        map.insert("cfg_scale".into(), p.cfg_scale.into());
        // The size only where asked, so default-size runs keep their identity.
        for (key, side) in [("height", p.height), ("width", p.width)] {
            if let Some(side) = side {
                map.insert(key.into(), side.into());
            }
        }
    }
    // Only runs with an autoencoder of their own name it, so other runs keep their identity.
    if let (Some(vae), Some(map)) = (&request.vae, parameters.as_object_mut()) {
        map.insert("vae".into(), canonical(vae).display().to_string().into());
    }
    // Only class-guided runs carry a scale, so other runs keep their identity.
    if let (Some(scale), Some(map)) = (request.class_cfg_scale, parameters.as_object_mut()) {
        map.insert("cfg_scale".into(), scale.into());
    }
    // Only f16-weight and f16-activation runs say so, so f32 runs keep their identity (and
    // none resumes another).
    if let (true, Some(map)) = (request.f16_weights, parameters.as_object_mut()) {
        map.insert("f16_weights".into(), true.into());
    }
    if let (true, Some(map)) = (request.f16_activations, parameters.as_object_mut()) {
        map.insert("f16_activations".into(), true.into());
    }
    // Renoising runs keep the identity they had before MC-Dropout existed.
    let method = request.uncertainty.as_ref().map(|uc| uc.method);
    if let (Some(UncertaintyMethod::McDropout), Some(uc)) =
        (method, parameters.get_mut("uncertainty"))
    {
        uc["method"] = UncertaintyMethod::McDropout.name().into();
    }
    parameters
}

/// MC-Dropout needs dropout layers, which only the model can tell.
pub(super) fn check_method(request: &SampleRequest, model: &dyn EpsModel) -> Result<()> {
    match &request.uncertainty {
        Some(uc) if uc.method == UncertaintyMethod::McDropout && model.dropout_rate() == 0.0 => {
            Err(Error::Invalid(format!(
                "--uc-method mc-dropout needs a model with dropout layers; {} has none (dropout \
                 0 in its config)",
                request.model.display()
            )))
        }
        _ => Ok(()),
    }
}

pub(super) fn read_init_noise(
    request: &SampleRequest,
    shape: [usize; 3],
) -> Result<Option<InitNoise>> {
    let Some(path) = &request.init_noise else {
        return Ok(None);
    };
    let (got, data) = npy::read(path)?;
    let want = [request.num, shape[0], shape[1], shape[2]];
    if got != want {
        return Err(Error::Invalid(format!(
            "{}: shape {got:?}, expected {want:?} (samples × C × H × W)",
            path.display()
        )));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        let per_sample = data.len() / request.num.max(1);
        return Err(Error::Invalid(format!(
            "{}: sample {} of the starting noise holds a non-finite value",
            path.display(),
            request.start_index + i / per_sample.max(1)
        )));
    }
    Ok(Some(InitNoise {
        first_index: request.start_index,
        data,
    }))
}
