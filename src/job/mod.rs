//! `wgsl-diff sample` as a library call: a [`SampleRequest`] is checked and prepared into a
//! [`SampleJob`] (model loaded, folder claimed for the run, finished samples found), which
//! samples what is missing batch by batch — stopping on a sample that goes non-finite unless
//! asked to keep it — and then has the folder rebuild everything derived from its samples.
//! This is where the layers meet: the sampling run, the uncertainty and guidance hooks, and the
//! run folder ([`crate::run_dir`], which knows the folder format and nothing of sampling). Many
//! jobs, each a [`Shard`](crate::run_dir::Shard) of one run, may share a folder (see
//! [`crate::run_dir::shared`]).

mod prompt;
mod request;

pub use prompt::PromptRequest;
pub use request::{SampleRequest, DEFAULT_MODEL};

use crate::error::{Error, NonFiniteSample, Result};
use crate::gpu::Gpu;
use crate::guidance::{GuidanceConfig, GuidanceHook, Threshold};
use crate::models::diffusers::autoencoder_kl::AutoencoderKlDecoder;
use crate::models::diffusers::unet_2d_condition::UNet2DConditionConfig;
use crate::models::pipeline::stable_diffusion_parts;
use crate::models::{load_eps_model, Cond, Decoder, EpsModel, Identity, WeightFile};
use crate::noise::NoisePlan;
use crate::run_dir::shared::{FolderLock, Presence};
use crate::run_dir::{
    collect_folder, report_samples, write_manifest, BatchWriter, FolderPlan, FolderSummary,
    Pending, SampleRecord,
};
use crate::sampling::{
    open_scheduler, ClassGuidance, ClassLabels, FinishedBatch, InitNoise, Run, Scheduler,
};
use crate::uncertainty::{
    known_misranking, UncertaintyBatch, UncertaintyConfig, UncertaintyEstimator,
};
use request::{check_method, guidance_config, parameters, read_init_noise};
use std::collections::BTreeMap;
use std::ops::Range;

/// What a job tells its caller while it runs.
pub trait SampleProgress {
    /// A batch of these samples starts.
    fn batch(&mut self, _samples: Range<usize>) {}
    /// One step of a batch of `samples` samples is recorded.
    fn step(&mut self, _samples: usize) {}
}

impl SampleProgress for () {}

/// A prepared `sample` run.
pub struct SampleJob<'g> {
    gpu: &'g Gpu,
    request: SampleRequest,
    model: Box<dyn EpsModel>,
    /// The decode stage of the model's pipeline (the identity for pixel-space models).
    decoder: Box<dyn Decoder>,
    /// A text-to-image run's encoded prompt, every sample's condition.
    prompt: Option<Cond>,
    /// What the caller should be told (a prompt cut at 77 tokens, a score known to rank the
    /// wrong way on this model).
    warnings: Vec<String>,
    scheduler: Scheduler,
    folder: FolderPlan,
    noise: NoisePlan,
    labels: ClassLabels,
    init_noise: Option<InitNoise>,
    guidance: Option<GuidanceConfig>,
    writer: BatchWriter,
    /// This request's samples not yet in the folder.
    todo: Pending,
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
            uc.check_sampler(&scheduler.config)?;
            uc.check_window(scheduler.timesteps.len())?;
        }
        // The text side first: its VAE decides the latent size an asked image size means. A
        // missing tokenizer or prompt is reported before any network is uploaded.
        let text = match (stable_diffusion_parts(&request.model)?, &request.prompt) {
            (Some(parts), Some(prompt)) => {
                let files = parts.tokenizer_files(prompt.tokenizer.as_deref())?;
                Some(prompt::prepare(
                    gpu,
                    parts,
                    &files,
                    prompt,
                    request.f16_weights,
                )?)
            }
            (Some(_), None) => {
                return Err(Error::Invalid(format!(
                    "{} is a Stable Diffusion model: say what to draw with --prompt",
                    request.model.display()
                )))
            }
            (None, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "--prompt applies to Stable Diffusion models; {} is not one",
                    request.model.display()
                )))
            }
            (None, None) => None,
        };
        let latent_size = match (&text, &request.prompt) {
            (Some(t), Some(prompt)) => {
                let default = UNet2DConditionConfig::parse(file.meta("config")?)?.sample_size;
                prompt.latent_size(&*t.decoder, default)?
            }
            _ => None,
        };
        let file = file
            .with_f16_weights(request.f16_weights)
            .with_f16_activations(request.f16_activations)
            .with_sample_size(latent_size);
        let model = load_eps_model(gpu, &file)?;
        check_method(&request, &*model)?;
        let mut warnings = Vec::new();
        if let Some(t) = &text {
            for (what, dropped) in ["--prompt", "--negative-prompt"].iter().zip(t.truncated) {
                if dropped > 0 {
                    warnings.push(format!(
                        "{what} is {dropped} token(s) past CLIP's 77 positions; they were cut \
                         (as diffusers does)"
                    ));
                }
            }
        }
        if let Some(uc) = &request.uncertainty {
            if let Some(known) = known_misranking(&request.model, uc.method, uc.mode)? {
                warnings.push(known.to_string());
            }
        }
        let mut labels = ClassLabels::for_model(&*model, request.class)?;
        if let Some(scale) = request.class_cfg_scale {
            let null_class = model.null_class().ok_or_else(|| {
                Error::Invalid(format!(
                    "--cfg-scale applies to Stable Diffusion (with --prompt) and to \
                     class-conditional models trained with a null class (U-ViT); {} is neither",
                    request.model.display()
                ))
            })?;
            // diffusers' rule: no guidance at a scale of 1 or below.
            if scale > 1.0 {
                labels = labels.with_guidance(ClassGuidance {
                    null_class,
                    scale: scale as f32,
                });
            }
        }
        let (decoder, prompt): (Box<dyn Decoder>, _) = match (text, &request.vae) {
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(
                    "--vae is for latent models without one of their own; a Stable Diffusion \
                     folder or file brings its VAE"
                        .into(),
                ))
            }
            (Some(t), None) => (t.decoder, Some(t.cond)),
            (None, Some(vae)) => {
                let file = WeightFile::open(vae)?;
                (Box::new(AutoencoderKlDecoder::load(gpu, &file)?), None)
            }
            (None, None) => (Box::new(Identity), None),
        };
        let sample_shape = model.sample_shape()?;
        let image_channels = decoder.image_shape(sample_shape)[0];
        if !matches!(image_channels, 1 | 3) {
            return Err(Error::Invalid(format!(
                "{} makes {image_channels}-channel samples, latents rather than images: give \
                 the autoencoder that decodes them with --vae FILE (for U-ViT's ImageNet models \
                 the one `tools/convert.py --uvit … --autoencoder` writes)",
                request.model.display()
            )));
        }
        if let Some(uc) = &request.uncertainty {
            if let Some(r) = &uc.reference {
                r.check_fits(&scheduler.timesteps, sample_shape, uc.copies)?;
            }
        }
        let init_noise = read_init_noise(&request, sample_shape)?;
        let guidance = guidance_config(&request, &scheduler, sample_shape)?;
        if let Some(GuidanceConfig {
            threshold: Threshold::Calibrated(t),
            rule,
            copies,
            ..
        }) = &guidance
        {
            if !t.check_run(*rule, *copies, &scheduler.timesteps)? {
                warnings.push(format!(
                    "{} has no calibration record beside it (made before wgsl-diff wrote one): \
                     its rule, M and timesteps cannot be checked against this run",
                    t.source
                ));
            }
        }
        let folder = request.folder()?;
        folder.create()?;
        let parameters = parameters(&request, &scheduler, guidance.as_ref(), decoder.map_space());
        let presence = folder.claim(&parameters)?;
        let writer = BatchWriter {
            out: request.out.clone(),
            parameters,
            timesteps: scheduler.timesteps.clone(),
            save_raw: request.save_raw,
            uncertainty: request.uncertainty.is_some(),
            guided: guidance.is_some(),
            report_samples: report_samples(&folder.run),
            save_maps: request.save_maps.clone(),
            dump_noise: request.dump_noise.clone(),
        };
        let todo = Pending::find(&request.out, request.own_range()?, |i| writer.done(i))?;
        let noise = match request.dump_noise {
            Some(_) => NoisePlan::recording(request.seed),
            None => NoisePlan::new(request.seed),
        };
        Ok(SampleJob {
            gpu,
            request,
            model,
            decoder,
            prompt,
            warnings,
            scheduler,
            folder,
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

    /// What the caller should tell the user before the run (a prompt cut at 77 tokens, a score
    /// known to rank the wrong way on this model).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Samples still to make.
    pub fn todo(&self) -> &Pending {
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
    pub fn run(mut self, progress: &mut dyn SampleProgress) -> Result<FolderSummary> {
        let run = Run {
            gpu: self.gpu,
            model: &*self.model,
            scheduler: &self.scheduler,
            noise: &self.noise,
            labels: self.labels,
            init_noise: self.init_noise.take(),
            decoder: &*self.decoder,
            prompt: self.prompt.as_ref(),
        };
        // The report's samples keep their per-step maps and masks; --save-maps keeps every
        // sample's maps.
        let shown = report_samples(&self.folder.run);
        let keep_maps = match self.request.save_maps {
            Some(_) => self.folder.run.clone(),
            None => shown.clone(),
        };
        let estimator = self
            .request
            .uncertainty
            .clone()
            .map(|uc| UncertaintyConfig { keep_maps, ..uc });
        let guidance = self.guidance.take();
        let mut hooks = (
            guidance
                .map(|g| GuidanceHook::new(self.gpu, g).map(|h| h.keep_masks(shown.clone())))
                .transpose()?,
            estimator.map(UncertaintyEstimator::new).transpose()?,
        );
        let (out, timesteps) = (&self.request.out, &self.scheduler.timesteps);
        for batch in self.todo.batches(self.request.batch) {
            progress.batch(batch.clone());
            let size = batch.len();
            let finished = run
                .sample(batch.start, size, &mut hooks, |_| progress.step(size))
                .map_err(|e| batch_too_large(e, size))?;
            let uc = finished.hook.1.as_ref().and_then(|u| u.as_ref());
            let masks = finished.hook.0.as_ref().map_or(&[][..], |g| &g.masks[..]);
            let marks = non_finite_marks(&finished, uc, timesteps, self.request.keep_non_finite)?;
            self.writer.write(&finished, uc, masks, &marks)?;
            let _lock = FolderLock::acquire(out)?;
            let records = collect_folder(out, &mut self.known)?;
            write_manifest(out, &self.writer.parameters, &records)?;
        }
        self.folder.rebuild(&self.writer.parameters)
    }
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
