//! `wgsl-diff sample` as a library call: a [`SampleRequest`] is prepared into a [`SampleJob`]
//! (model loaded, folder checked, finished samples found), which samples what is missing batch
//! by batch and then rebuilds everything derived from the folder.

use super::filter::{filter, Filtered};
use super::manifest::{collect, sample_indices, write_manifest, write_scores_csv};
use super::render::{
    render_heatmaps, write_grid, write_html_report, write_uncertainty_grids, HeatmapScale,
};
use super::write::{check_same_run, BatchWriter};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::guidance::{CalibratedThreshold, GuidanceConfig, GuidanceHook, Threshold};
use crate::models::{load_eps_model, EpsModel};
use crate::npy;
use crate::sampling::{
    contiguous_batches, open_scheduler, ClassLabels, InitNoise, NoisePlan, Run, SamplerChoice,
    Scheduler,
};
use crate::uncertainty::{UncertaintyConfig, UncertaintyEstimator, UncertaintyMethod};
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
    /// One class for every sample of a class-conditional model (default: index mod classes).
    pub class: Option<usize>,
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
    /// Write each step's uncertainty map as .npy into this folder.
    pub save_maps: Option<PathBuf>,
    /// Write every noise tensor the run drew as .npy into this folder.
    pub dump_noise: Option<PathBuf>,
    /// Filter the run afterwards, keeping this fraction.
    pub keep_fraction: Option<f64>,
    /// Write report.html.
    pub report: bool,
}

/// What a job tells its caller while it runs.
pub trait SampleProgress {
    /// A batch of these samples starts.
    fn batch(&mut self, _samples: Range<usize>) {}
    /// One step of a batch of `samples` samples is recorded.
    fn step(&mut self, _samples: usize) {}
}

impl SampleProgress for () {}

/// What a finished job did.
#[derive(Clone, Debug)]
pub struct SampleSummary {
    /// Samples in the folder's manifest.
    pub samples: usize,
    pub filtered: Option<Filtered>,
}

/// A prepared `sample` run.
pub struct SampleJob<'g> {
    gpu: &'g Gpu,
    request: SampleRequest,
    model: Box<dyn EpsModel>,
    scheduler: Scheduler,
    noise: NoisePlan,
    labels: ClassLabels,
    init_noise: Option<InitNoise>,
    guidance: Option<GuidanceConfig>,
    writer: BatchWriter,
    /// Every sample the folder's manifest lists: this request's and earlier shards'.
    all: Vec<usize>,
    /// This request's samples not yet in the folder.
    todo: Vec<usize>,
}

impl<'g> SampleJob<'g> {
    /// Loads the model, validates the request and reads the folder's state.
    pub fn prepare(gpu: &'g Gpu, request: SampleRequest) -> Result<SampleJob<'g>> {
        if request.batch == 0 || request.num == 0 {
            return Err(Error::Invalid(
                "the batch size and the number of samples must be at least 1".into(),
            ));
        }
        if let Some(uc) = &request.uncertainty {
            uc.validate()?;
        }
        if let Some(g) = &request.guidance {
            g.validate()?;
        }
        let (file, scheduler) = open_scheduler(&request.model, &request.sampler)?;
        check_window(&request, scheduler.timesteps.len())?;
        create_folders(&request)?;
        let model = load_eps_model(gpu, &file)?;
        check_method(&request, &*model)?;
        let labels = ClassLabels::new(model.num_classes(), request.class)?;
        let sample_shape = model.sample_shape()?;
        let guidance = guidance_config(&request, &scheduler, sample_shape)?;
        let parameters = parameters(&request, &scheduler, guidance.as_ref());
        let init_noise = read_init_noise(&request, sample_shape)?;
        let existing = sample_indices(&request.out)?;
        check_same_run(&request.out, &existing, &parameters)?;
        let writer = BatchWriter {
            out: request.out.clone(),
            parameters,
            timesteps: scheduler.timesteps.clone(),
            save_raw: request.save_raw,
            uncertainty: request.uncertainty.is_some(),
            save_maps: request.save_maps.clone(),
            dump_noise: request.dump_noise.clone(),
        };
        let ours = request.start_index..request.start_index + request.num;
        let mut all = existing;
        all.extend(ours.clone());
        all.sort_unstable();
        all.dedup();
        let todo = ours.filter(|&i| !writer.done(i)).collect();
        let noise = match request.dump_noise {
            Some(_) => NoisePlan::recording(request.seed),
            None => NoisePlan::new(request.seed),
        };
        Ok(SampleJob {
            gpu,
            request,
            model,
            scheduler,
            noise,
            labels,
            init_noise,
            guidance,
            writer,
            all,
            todo,
        })
    }

    /// Samples still to make.
    pub fn todo(&self) -> &[usize] {
        &self.todo
    }

    /// Sampling steps per sample.
    pub fn steps(&self) -> usize {
        self.scheduler.timesteps.len()
    }

    /// Makes the missing samples, then rebuilds the folder's derived files.
    pub fn run(mut self, progress: &mut dyn SampleProgress) -> Result<SampleSummary> {
        let run = Run {
            gpu: self.gpu,
            model: &*self.model,
            scheduler: &self.scheduler,
            noise: &self.noise,
            labels: self.labels,
            init_noise: self.init_noise.take(),
        };
        let estimator = self.request.uncertainty.clone();
        let guidance = self.guidance.take();
        let mut hooks = (
            guidance
                .map(|g| GuidanceHook::new(self.gpu, g))
                .transpose()?,
            estimator.map(UncertaintyEstimator::new).transpose()?,
        );
        for batch in contiguous_batches(&self.todo, self.request.batch) {
            progress.batch(batch.clone());
            let size = batch.len();
            let finished = run
                .sample(batch.start, size, &mut hooks, |_| progress.step(size))
                .map_err(|e| batch_too_large(e, size))?;
            let uc = finished.hook.1.as_ref().and_then(|u| u.as_ref());
            self.writer.write(&finished, uc)?;
            let records = collect(&self.request.out, &self.all)?;
            write_manifest(&self.request.out, &self.writer.parameters, &records)?;
        }
        self.finish()
    }

    /// Rebuilds the manifest, scores, heatmaps, grids, filtered sets and report from the folder.
    fn finish(&self) -> Result<SampleSummary> {
        let (out, request) = (&self.request.out, &self.request);
        let mut records = collect(out, &self.all)?;
        if request.uncertainty.is_some() {
            render_heatmaps(out, &mut records, request.heatmap_scale)?;
            write_scores_csv(out, &records)?;
            write_uncertainty_grids(out, &records)?;
        }
        write_manifest(out, &self.writer.parameters, &records)?;
        write_grid(out, &records)?;
        let filtered = request
            .keep_fraction
            .map(|f| filter(out, &records, f, request.seed))
            .transpose()?;
        if request.report {
            write_html_report(out, &records)?;
        }
        Ok(SampleSummary {
            samples: records.len(),
            filtered,
        })
    }
}

/// The guidance of the run, with its calibrated thresholds read when a file is given.
fn guidance_config(
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
fn parameters(
    request: &SampleRequest,
    scheduler: &Scheduler,
    guidance: Option<&GuidanceConfig>,
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
    if let (Some(g), Some(map)) = (guidance, parameters.as_object_mut()) {
        map.insert("guidance".into(), g.describe());
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
fn check_method(request: &SampleRequest, model: &dyn EpsModel) -> Result<()> {
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

fn check_window(request: &SampleRequest, steps: usize) -> Result<()> {
    match &request.uncertainty {
        Some(uc) if uc.start >= steps => Err(Error::Invalid(format!(
            "the uncertainty window starts at step {}, past the last step ({steps} steps)",
            uc.start
        ))),
        _ => Ok(()),
    }
}

fn create_folders(request: &SampleRequest) -> Result<()> {
    let dirs = [
        Some(&request.out),
        request.save_maps.as_ref(),
        request.dump_noise.as_ref(),
    ];
    for dir in dirs.into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Invalid(format!(
                "cannot create output folder {}: {e}",
                dir.display()
            ))
        })?;
        check_writable(dir)?;
    }
    Ok(())
}

fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(".wgsl-diff-write-test");
    std::fs::write(&probe, b"").map_err(|e| {
        Error::Invalid(format!(
            "output folder {} is not writable: {e}",
            dir.display()
        ))
    })?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

fn read_init_noise(request: &SampleRequest, shape: [usize; 3]) -> Result<Option<InitNoise>> {
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
    Ok(Some(InitNoise {
        first_index: request.start_index,
        data,
    }))
}

/// A buffer over the device's binding limit, said in samples per batch.
fn batch_too_large(e: Error, batch: usize) -> Error {
    match e {
        Error::TooLarge { bytes, limit, .. } => Error::BatchTooLarge {
            batch,
            bytes,
            limit,
            fits: (batch as u64 * limit / bytes.max(1)).max(1) as usize,
        },
        other => other,
    }
}
