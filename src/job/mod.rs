//! `wgsl-diff sample` as a library call: a [`SampleRequest`] is checked and prepared into a
//! [`SampleJob`] (model loaded, folder claimed for the run, finished samples found), which
//! samples what is missing batch by batch — stopping on a sample that goes non-finite unless
//! asked to keep it — and then rebuilds everything derived from the folder. Many jobs, each a
//! [`Shard`] of one run, may share a folder (see [`super::shared`]).

use super::filter::{filter, kept_count, Filtered};
use super::manifest::{
    collect, collect_folder, sample_indices, write_manifest, write_scores_csv, SampleRecord,
};
use super::render::{
    render_heatmaps, write_grid, write_html_report, write_uncertainty_grids, HeatmapScale,
};
use super::shard::Shard;
use super::shared::{claim, remove_abandoned, FolderLock, Presence, RUN_FILE};
use super::write::{check_same_run, BatchWriter};
use crate::error::{Error, NonFiniteSample, Result};
use crate::gpu::Gpu;
use crate::guidance::{CalibratedThreshold, GuidanceConfig, GuidanceHook, GuidanceRule, Threshold};
use crate::limits::{self, MAX_BATCH};
use crate::models::{load_eps_model, EpsModel};
use crate::npy;
use crate::sampling::{
    contiguous_batches, open_scheduler, ClassChoice, ClassLabels, FinishedBatch, InitNoise,
    NoisePlan, Run, SamplerChoice, Scheduler,
};
use crate::uncertainty::{
    UncertaintyBatch, UncertaintyConfig, UncertaintyEstimator, UncertaintyMethod,
};
use std::collections::BTreeMap;
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
    /// Write each step's uncertainty map as .npy into this folder.
    pub save_maps: Option<PathBuf>,
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

    /// Checks every count, index, fraction and flag combination that needs neither the model
    /// nor the folder, before anything is loaded or allocated.
    pub fn validate(&self) -> Result<()> {
        limits::count_in("--batch", self.batch, MAX_BATCH)?;
        let run = self.own_range().and(self.run_range())?;
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
    /// Samples of the run not in the folder yet (other shards still at work); the filtered sets
    /// and the report are written only once none is missing.
    pub missing: usize,
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
    /// This request's samples not yet in the folder.
    todo: Vec<usize>,
    /// Records read from the folder's PNGs, so each is read once per job.
    known: BTreeMap<usize, SampleRecord>,
    /// This process's presence in the folder, held while it may write there.
    _presence: Presence,
}

impl<'g> SampleJob<'g> {
    /// Validates the request, loads the model and its schedule, claims the folder for the run
    /// and finds which of this request's samples it still lacks.
    pub fn prepare(gpu: &'g Gpu, request: SampleRequest) -> Result<SampleJob<'g>> {
        request.validate()?;
        let (file, scheduler) = open_scheduler(&request.model, &request.sampler)?;
        if let Some(uc) = &request.uncertainty {
            uc.check_window(scheduler.timesteps.len())?;
        }
        let file = file
            .with_f16_weights(request.f16_weights)
            .with_f16_activations(request.f16_activations);
        let model = load_eps_model(gpu, &file)?;
        check_method(&request, &*model)?;
        let labels = ClassLabels::new(model.num_classes(), request.class)?;
        let sample_shape = model.sample_shape()?;
        if let Some(uc) = &request.uncertainty {
            if let Some(r) = &uc.reference {
                r.check_fits(&scheduler.timesteps, sample_shape, uc.copies)?;
            }
        }
        let init_noise = read_init_noise(&request, sample_shape)?;
        let guidance = guidance_config(&request, &scheduler, sample_shape)?;
        create_folders(&request)?;
        let parameters = parameters(&request, &scheduler, guidance.as_ref());
        let presence = claim_folder(&request, &parameters)?;
        let writer = BatchWriter {
            out: request.out.clone(),
            parameters,
            timesteps: scheduler.timesteps.clone(),
            save_raw: request.save_raw,
            uncertainty: request.uncertainty.is_some(),
            save_maps: request.save_maps.clone(),
            dump_noise: request.dump_noise.clone(),
        };
        let todo = request.own_range()?.filter(|&i| !writer.done(i)).collect();
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
            todo,
            known: BTreeMap::new(),
            _presence: presence,
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

    /// This request's samples: its shard of the run, or the whole run.
    pub fn own(&self) -> Range<usize> {
        self.request.own_range().unwrap_or_default()
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
        let (out, timesteps) = (&self.request.out, &self.scheduler.timesteps);
        for batch in contiguous_batches(&self.todo, self.request.batch) {
            progress.batch(batch.clone());
            let size = batch.len();
            let finished = run
                .sample(batch.start, size, &mut hooks, |_| progress.step(size))
                .map_err(|e| batch_too_large(e, size))?;
            let uc = finished.hook.1.as_ref().and_then(|u| u.as_ref());
            let marks = non_finite_marks(&finished, uc, timesteps, self.request.keep_non_finite)?;
            self.writer.write(&finished, uc, &marks)?;
            let _lock = FolderLock::acquire(out)?;
            let records = collect_folder(out, &mut self.known)?;
            write_manifest(out, &self.writer.parameters, &records)?;
        }
        self.finish()
    }

    /// Rebuilds the manifest, scores, heatmaps and grids from the folder — holding its lock, and
    /// from every sample in it, whichever worker made it — and, once no sample of the run is
    /// missing, the filtered sets and the report.
    fn finish(&self) -> Result<SampleSummary> {
        let (out, request) = (&self.request.out, &self.request);
        let _lock = FolderLock::acquire(out)?;
        let mut records = collect(out, &sample_indices(out)?)?;
        if request.uncertainty.is_some() {
            render_heatmaps(out, &mut records, request.heatmap_scale)?;
            write_scores_csv(out, &records)?;
            write_uncertainty_grids(out, &records)?;
        }
        write_manifest(out, &self.writer.parameters, &records)?;
        write_grid(out, &records)?;
        let present = |i: &usize| records.binary_search_by_key(i, |r| r.index).is_ok();
        let missing = request.run_range()?.filter(|i| !present(i)).count();
        let complete = missing == 0;
        let filtered = match request.keep_fraction {
            Some(f) if complete => Some(filter(out, &records, f, request.seed)?),
            _ => None,
        };
        if request.report && complete {
            write_html_report(out, &records)?;
        }
        Ok(SampleSummary {
            samples: records.len(),
            missing,
            filtered,
        })
    }
}

/// Under the folder's lock: refuses a folder holding another run (by its `run.json`, or by its
/// samples' parameters in a folder without one), checks that a filtering would keep at least
/// one of the samples the folder will hold, claims the folder for this run, announces this
/// process and removes temporary files killed processes left.
fn claim_folder(request: &SampleRequest, parameters: &serde_json::Value) -> Result<Presence> {
    let out = &request.out;
    let _lock = FolderLock::acquire(out)?;
    let existing = sample_indices(out)?;
    // With a run.json the claim decides; without, the folder may predate it: ask its PNGs.
    if !out.join(RUN_FILE).exists() {
        check_same_run(out, &existing, parameters)?;
    }
    if let Some(fraction) = request.keep_fraction {
        let run = request.run_range()?;
        let others = existing.iter().filter(|i| !run.contains(i)).count();
        kept_count(fraction, run.len() + others)?;
    }
    claim(out, parameters)?;
    let presence = Presence::announce(out)?;
    let dirs = [
        Some(out),
        request.save_maps.as_ref(),
        request.dump_noise.as_ref(),
    ];
    let dirs: Vec<&Path> = dirs.into_iter().flatten().map(PathBuf::as_path).collect();
    remove_abandoned(out, &dirs)?;
    Ok(presence)
}

/// Each sample's first non-finite step: from the GPU's flags, else a non-finite image or score
/// found on the CPU (counted at the last step). Unless `keep`, any such sample is an error.
fn non_finite_marks<T>(
    batch: &FinishedBatch<T>,
    uc: Option<&UncertaintyBatch>,
    timesteps: &[usize],
    keep: bool,
) -> Result<Vec<Option<usize>>> {
    let scores = uc.map(|u| &u.scores);
    let last = timesteps.len().saturating_sub(1);
    let marks: Vec<Option<usize>> = (0..batch.len())
        .map(|k| {
            let score_bad = scores.is_some_and(|s| !s[k].is_finite());
            let image_bad = batch.image(k).iter().any(|v| !v.is_finite());
            batch.non_finite[k].or((score_bad || image_bad).then_some(last))
        })
        .collect();
    if keep || marks.iter().all(Option::is_none) {
        return Ok(marks);
    }
    let samples = batch
        .indices()
        .zip(&marks)
        .filter_map(|(index, mark)| {
            mark.map(|step| NonFiniteSample {
                index,
                step,
                timestep: timesteps.get(step).copied().unwrap_or(0),
            })
        })
        .collect();
    Err(Error::NonFinite(samples))
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

/// A buffer over the device's binding limit or a dispatch over its workgroup limit, said in
/// samples per batch (both grow in proportion to the batch).
fn batch_too_large(e: Error, batch: usize) -> Error {
    let (why, need, limit) = match e {
        Error::TooLarge { bytes, limit, .. } => (
            format!("needs a {bytes}-byte buffer but this device allows {limit} per binding"),
            bytes,
            limit,
        ),
        Error::TooManyWorkgroups {
            kernel,
            workgroups,
            max,
        } => {
            let most = workgroups.into_iter().max().unwrap_or(0);
            let why = format!(
                "needs {most} workgroups of {kernel} along one dimension but this device allows {max}"
            );
            (why, most as u64, max as u64)
        }
        other => return other,
    };
    Error::BatchTooLarge {
        batch,
        why,
        fits: (batch as u64 * limit / need.max(1)).max(1) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_device_limits_become_a_batch_that_fits() {
        let bytes = Error::TooLarge {
            what: "x".into(),
            bytes: 1000,
            limit: 300,
        };
        let Error::BatchTooLarge { fits, why, .. } = batch_too_large(bytes, 10) else {
            panic!("not a batch error")
        };
        assert_eq!(fits, 3);
        assert!(why.contains("1000-byte buffer"), "{why}");
        // The limit NVIDIA's Vulkan driver met first for `--batch 65536` on the shipped model.
        let workgroups = Error::TooManyWorkgroups {
            kernel: "conv2d::conv2d".into(),
            workgroups: [131072, 1, 1],
            max: 65535,
        };
        let Error::BatchTooLarge { fits, why, .. } = batch_too_large(workgroups, 65536) else {
            panic!("not a batch error")
        };
        assert_eq!(fits, 32767);
        assert!(why.contains("131072 workgroups of conv2d::conv2d"), "{why}");
        let other = batch_too_large(Error::Invalid("x".into()), 4);
        assert!(matches!(other, Error::Invalid(_)));
    }
}
