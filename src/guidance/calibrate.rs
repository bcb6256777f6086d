//! Calibrated thresholds (docs/method.md §3, the official `compute_threshold_pixel_wise.py`): the
//! rule's uncertainty map at every step of N unguided calibration samples, and per (step,
//! element) the value at sorted index ⌊N·p⌋ over the samples. Stored as float32 .npy of shape
//! (steps, C, H, W).

use super::{GuidanceBatch, GuidanceConfig, GuidanceHook, GuidanceRule, Threshold};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::limits;
use crate::models::Identity;
use crate::noise::NoisePlan;
use crate::npy;
use crate::sampling::{
    contiguous_batches, load_for_sampling, ClassChoice, ClassLabels, Run, SamplerChoice,
};
use std::path::{Path, PathBuf};

/// A (steps, C, H, W) threshold tensor and where it came from.
#[derive(Clone, Debug)]
pub struct CalibratedThreshold {
    pub source: String,
    /// (steps, C, H, W).
    pub shape: [usize; 4],
    pub data: Vec<f32>,
    /// How it was made, where that is known (saved beside the file as `FILE.json`).
    pub calibration: Option<Calibration>,
}

/// How a threshold file was calibrated: what a guided run must share with it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub rule: GuidanceRule,
    /// M, the copies per step.
    pub copies: usize,
    pub percentile: f64,
    /// The sampler's timesteps, in sampling order.
    pub timesteps: Vec<usize>,
    pub model: String,
    pub samples: usize,
    pub seed: u64,
}

impl Calibration {
    /// Refuses a record `calibrate` cannot have written for a threshold file of `steps` steps:
    /// M outside the rule's range, a percentile outside (0, 1), no samples or more than a run
    /// holds, other than one timestep per step or one past the schedule's limit.
    fn check(&self, steps: usize) -> std::result::Result<(), String> {
        let least = self.rule.min_copies();
        if !(least..=limits::MAX_COPIES).contains(&self.copies) {
            return Err(format!(
                "M = {} for rule {} (it must be in {least}..={})",
                self.copies,
                self.rule,
                limits::MAX_COPIES
            ));
        }
        if !(self.percentile > 0.0 && self.percentile < 1.0) {
            return Err(format!("percentile {} is outside (0, 1)", self.percentile));
        }
        if !(1..=limits::SAMPLE_INDEX_END).contains(&(self.samples as u64)) {
            return Err(format!("{} samples", self.samples));
        }
        if self.timesteps.len() != steps {
            return Err(format!(
                "{} timesteps for a file of {steps} steps",
                self.timesteps.len()
            ));
        }
        match self
            .timesteps
            .iter()
            .find(|&&t| t >= limits::MAX_TRAIN_TIMESTEPS)
        {
            Some(t) => Err(format!("timestep {t} is past any schedule")),
            None => Ok(()),
        }
    }
}

/// Where a threshold file's calibration record lives: beside it, `.json` appended.
fn record_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

impl CalibratedThreshold {
    pub fn steps(&self) -> usize {
        self.shape[0]
    }

    /// Reads a threshold file for a run of `steps` steps of samples shaped `sample` (C, H, W),
    /// refusing another shape and non-finite values.
    pub fn load(path: &Path, steps: usize, sample: [usize; 3]) -> Result<CalibratedThreshold> {
        let (shape, data) = npy::read(path)?;
        let want = [steps, sample[0], sample[1], sample[2]];
        if shape != want {
            return Err(Error::Invalid(format!(
                "threshold file {}: shape {shape:?}, expected {want:?} (steps × C × H × W of this run)",
                path.display()
            )));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "threshold file {}: element {i} is {} (thresholds must be finite)",
                path.display(),
                data[i]
            )));
        }
        let record = record_path(path);
        let calibration = match record.exists() {
            true => {
                let text = crate::io::read_text_input(&record, limits::MAX_CONFIG_BYTES)?;
                let not_a_record = |e: &dyn std::fmt::Display| {
                    Error::Invalid(format!(
                        "{}: not a calibration record: {e}",
                        record.display()
                    ))
                };
                let c: Calibration = crate::json::from_str(&text).map_err(|e| not_a_record(&e))?;
                c.check(steps).map_err(|e| not_a_record(&e))?;
                Some(c)
            }
            false => None,
        };
        Ok(CalibratedThreshold {
            source: path.display().to_string(),
            shape: want,
            data,
            calibration,
        })
    }

    /// The thresholds as .npy and, where known, their calibration beside them as `FILE.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(calibration) = &self.calibration {
            let json = serde_json::to_string_pretty(calibration)
                .map_err(|e| Error::Internal(format!("a calibration record: {e}")))?;
            crate::io::write_atomic(&record_path(path), json.as_bytes())?;
        }
        npy::write(path, &self.shape, &self.data)
    }

    /// Refuses thresholds calibrated for another rule, M or sampler than the guided run's;
    /// Ok(false) where the file carries no record to check.
    pub fn check_run(
        &self,
        rule: GuidanceRule,
        copies: usize,
        timesteps: &[usize],
    ) -> Result<bool> {
        let Some(c) = &self.calibration else {
            return Ok(false);
        };
        let mismatch = if c.rule != rule {
            Some(format!("rule {} (this run: {rule})", c.rule))
        } else if c.copies != copies {
            Some(format!("M = {} (this run: {copies})", c.copies))
        } else if c.timesteps != timesteps {
            Some(format!(
                "timesteps {:?} (this run: {timesteps:?})",
                c.timesteps
            ))
        } else {
            None
        };
        match mismatch {
            Some(what) => Err(Error::Invalid(format!(
                "threshold file {} was calibrated with {what}: calibrate again with this run's \
                 settings",
                self.source
            ))),
            None => Ok(true),
        }
    }

    /// One (C, H, W) tensor per step.
    pub(super) fn upload(&self, gpu: &Gpu) -> Result<Vec<Tensor>> {
        let len = self.data.len() / self.steps().max(1);
        self.data
            .chunks(len.max(1))
            .map(|step| gpu.upload(&self.shape[1..], step))
            .collect()
    }
}

/// What `wgsl-diff calibrate` is asked to do.
#[derive(Clone, Debug)]
pub struct CalibrateRequest {
    pub model: PathBuf,
    pub sampler: SamplerChoice,
    pub rule: GuidanceRule,
    /// M, as the guided run will use it.
    pub copies: usize,
    /// p: each threshold is the value at sorted index ⌊N·p⌋ of the N samples.
    pub percentile: f64,
    pub seed: u64,
    /// N calibration samples: indices `start_index .. start_index + num`.
    pub start_index: usize,
    pub num: usize,
    pub batch: usize,
    /// The classes of a class-conditional model's samples (required for one).
    pub class: Option<ClassChoice>,
}

/// Samples N unguided trajectories, measuring the rule's map at every step, and returns the
/// per-element thresholds.
pub fn calibrate(gpu: &Gpu, request: &CalibrateRequest) -> Result<CalibratedThreshold> {
    calibrate_with_progress(gpu, request, |_, _| {})
}

/// [`calibrate`], calling `progress(samples done, N)` after each batch.
pub fn calibrate_with_progress(
    gpu: &Gpu,
    request: &CalibrateRequest,
    mut progress: impl FnMut(usize, usize),
) -> Result<CalibratedThreshold> {
    limits::sample_range("--start-index/--num", request.start_index, request.num)?;
    limits::count_in("--batch", request.batch, limits::MAX_BATCH)?;
    let (model, scheduler) = load_for_sampling(gpu, &request.model, &request.sampler)?;
    let mut config = GuidanceConfig::paper(request.rule);
    config.copies = request.copies;
    config.steps = None;
    config.threshold = Threshold::Percentile(request.percentile);
    let mut hook = GuidanceHook::observer(config)?;
    let noise = NoisePlan::new(request.seed);
    let run = Run {
        gpu,
        model: &*model,
        scheduler: &scheduler,
        noise: &noise,
        labels: ClassLabels::for_model(&*model, request.class)?,
        init_noise: None,
        decoder: &Identity,
        prompt: None,
    };
    let steps = scheduler.timesteps.len();
    let sample = model.sample_shape()?;
    let len: usize = sample.iter().product();
    // Checked before the maps are allocated: N samples' maps at every step stay in memory.
    let bytes = [steps, request.num, len, 4]
        .iter()
        .try_fold(1u64, |n, &f| n.checked_mul(f as u64))
        .filter(|&b| b <= limits::MAX_CALIBRATION_BYTES);
    if bytes.is_none() {
        return Err(Error::Invalid(format!(
            "calibrating {} samples of {steps} steps × {len} values holds more than {} bytes of \
             maps: use fewer samples (--num)",
            request.num,
            limits::MAX_CALIBRATION_BYTES
        )));
    }
    // values[step][element] holds the N samples' values, filled batch by batch.
    let mut values = vec![Vec::with_capacity(request.num * len); steps];
    let indices: Vec<usize> = (request.start_index..request.start_index + request.num).collect();
    for batch in contiguous_batches(&indices, request.batch) {
        let finished = run.sample(batch.start, batch.len(), &mut hook, |_| {})?;
        let GuidanceBatch { maps, .. } = finished.hook;
        for (step, map) in maps {
            values[step].extend(map);
        }
        progress(batch.end - request.start_index, request.num);
    }
    let mut data = Vec::with_capacity(steps * len);
    for step_values in &values {
        data.extend(order_statistics(
            step_values,
            request.num,
            len,
            request.percentile,
        )?);
    }
    Ok(CalibratedThreshold {
        source: format!("calibrated from {} samples", request.num),
        shape: [steps, sample[0], sample[1], sample[2]],
        data,
        calibration: Some(Calibration {
            rule: request.rule,
            copies: request.copies,
            percentile: request.percentile,
            timesteps: scheduler.timesteps.clone(),
            model: request.model.display().to_string(),
            samples: request.num,
            seed: request.seed,
        }),
    })
}

/// For each of `len` elements of `n` stacked samples, the value at sorted index ⌊n·p⌋ (the last
/// one when that is n).
fn order_statistics(values: &[f32], n: usize, len: usize, p: f64) -> Result<Vec<f32>> {
    let k = ((n as f64 * p).floor() as usize).min(n - 1);
    let mut column = vec![0f32; n];
    (0..len)
        .map(|i| {
            for (s, v) in column.iter_mut().enumerate() {
                *v = values[s * len + i];
            }
            if column.iter().any(|v| v.is_nan()) {
                return Err(Error::Invalid(format!(
                    "calibration: element {i} of a step's uncertainty map is NaN"
                )));
            }
            column.sort_by(f32::total_cmp);
            Ok(column[k])
        })
        .collect()
}
