//! `wgsl-diff sample`: flags → [`SampleRequest`], a progress bar, and what the run did.

use super::named;
use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wgsl_diff::gpu::{AdapterChoice, Gpu, NO_TIMESTAMPS};
use wgsl_diff::guidance::{GuidanceConfig, GuidanceRule, Threshold};
use wgsl_diff::job::{PromptRequest, SampleJob, SampleProgress, SampleRequest, DEFAULT_MODEL};
use wgsl_diff::limits::{MAX_BATCH, MAX_COPIES, MAX_TRAIN_TIMESTEPS, SAMPLE_INDEX_END};
use wgsl_diff::ops::UncertaintyMode;
use wgsl_diff::run_dir::{HeatmapScale, HeatmapStyle, Shard};
use wgsl_diff::sampling::{default_sampler, ClassChoice, SamplerChoice, SamplerKind, Spacing};
use wgsl_diff::uncertainty::{UncertaintyConfig, UncertaintyMethod, UncertaintyReference};
use wgsl_diff::Error;

/// The model and how to sample it; shared by `sample` and `calibrate`.
#[derive(Args, Debug, Clone)]
pub struct SamplerArgs {
    /// Weight file written by tools/convert.py, diffusers folder, or Stable Diffusion 1.x
    /// single-file .safetensors [default: the shipped Fashion-MNIST model]
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, help = format!("Sampling steps, at most the model's training timesteps (≤ {MAX_TRAIN_TIMESTEPS}) [default: 50; all of them for ddpm]"))]
    pub steps: Option<usize>,
    /// Sampler [default: ddim; a Stable Diffusion folder's own scheduler (pndm for SD 1.5)]
    #[arg(long, value_parser = named::<SamplerKind>(SamplerKind::NAMES))]
    pub sampler: Option<SamplerKind>,
    /// DDIM's η (finite, ≥ 0): 0 is deterministic, 1 is DDPM-like
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Timestep spacing [default: leading; linspace for dpmpp2m]
    #[arg(long, value_parser = named::<Spacing>(Spacing::NAMES))]
    pub spacing: Option<Spacing>,
    /// Added to every timestep with leading spacing (diffusers' steps_offset) [default: the
    /// model's scheduler config's, 0 when it names none]
    #[arg(long)]
    pub steps_offset: Option<usize>,
    /// Do not clamp x̂0 to [−1, 1] (clamped by default when the model's scheduler config asks)
    #[arg(long)]
    pub no_clip: bool,
}

impl SamplerArgs {
    pub fn model(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into())
    }

    pub fn choice(&self) -> SamplerChoice {
        SamplerChoice {
            kind: self
                .sampler
                .unwrap_or_else(|| default_sampler(&self.model())),
            steps: self.steps,
            eta: self.eta,
            spacing: self.spacing,
            steps_offset: self.steps_offset,
            clip: !self.no_clip,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[arg(long, default_value_t = 16, help = format!("Samples per GPU batch (1..={MAX_BATCH})"))]
    pub batch: usize,
    #[arg(long, default_value_t = 16, help = format!("Number of samples of the run; start-index + num ≤ {SAMPLE_INDEX_END}"))]
    pub num: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Index of the first sample: a run makes samples start-index .. start-index + num
    #[arg(long, default_value_t = 0)]
    pub start_index: usize,
    /// Make only part I of N (0-based) of the run, e.g. 3/8: one of N workers filling --out
    #[arg(long, value_name = "I/N", conflicts_with = "shard_from_env")]
    pub shard: Option<Shard>,
    /// Take the shard from a job array: SLURM_ARRAY_TASK_ID/_COUNT or JOB_COMPLETION_INDEX
    #[arg(long)]
    pub shard_from_env: bool,
    /// The number of workers for --shard-from-env [default: SLURM_ARRAY_TASK_COUNT]
    #[arg(long, value_name = "N", requires = "shard_from_env")]
    pub shard_count: Option<usize>,
    /// Class of a class-conditional model's samples (required for one): an index, or `cycle`
    /// (sample i gets class i mod the number of classes)
    #[arg(long, value_name = "N|cycle")]
    pub class: Option<ClassChoice>,
    /// Output folder (many workers may share one: see --shard)
    #[arg(long)]
    pub out: PathBuf,
    /// Starting noise as float32 .npy of shape (num, C, H, W), replacing the generated noise
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Also write each final image as float32 .npy in [−1, 1] before quantisation
    #[arg(long)]
    pub save_raw: bool,
    /// Write samples that go NaN or ±Inf (marked in samples.json) instead of stopping
    #[arg(long)]
    pub keep_non_finite: bool,
    /// Estimate pixel-wise uncertainty at each step (Algorithm 1) and score the samples
    #[arg(long)]
    pub uncertainty: bool,
    #[arg(short = 'M', long = "mc-samples", help = format!("M: copies per uncertainty or guidance step (1..={MAX_COPIES}; ≥ 2 for the variance modes and gradient guidance) [default: 5]"))]
    pub mc_samples: Option<usize>,
    /// Where the M predictions come from: `renoise` (the paper's Algorithm 1) or `mc-dropout`
    /// (M passes with dropout active; models with dropout layers only)
    #[arg(long, default_value = "renoise", value_parser = named::<UncertaintyMethod>(UncertaintyMethod::NAMES), requires = "uncertainty")]
    pub uc_method: UncertaintyMethod,
    /// How the M predictions are summarised [default: centred; variance for mc-dropout]
    #[arg(long, value_parser = named::<UncertaintyMode>(UncertaintyMode::NAMES), requires = "uncertainty")]
    pub uc_mode: Option<UncertaintyMode>,
    /// The real-image reference (`wgsl-diff reference`) that the posterior-variance and
    /// residual modes are z-scored against
    #[arg(long, requires = "uncertainty")]
    pub uc_reference: Option<PathBuf>,
    /// First sampling step (0-based) with uncertainty estimation
    #[arg(long, default_value_t = 0, requires = "uncertainty")]
    pub uc_start: usize,
    /// Number of steps with uncertainty estimation (≥ 1; uc-start + uc-steps ≤ steps) [default: all from uc-start]
    #[arg(long, requires = "uncertainty")]
    pub uc_steps: Option<usize>,
    /// Uncertainty-guided sampling (Algorithm 2): `gradient` (Rule G, the paper's) or
    /// `posterior` (Rule P, closed form)
    #[arg(long, value_parser = named::<GuidanceRule>(GuidanceRule::NAMES))]
    pub guidance: Option<GuidanceRule>,
    /// λ, the step size of gradient guidance [default: 1]
    #[arg(long)]
    pub guidance_strength: Option<f64>,
    /// Guide the elements above this quantile of each image's uncertainty map [default: 0.95]
    #[arg(long)]
    pub percentile: Option<f64>,
    /// First guided step (0-based) [default: 0]
    #[arg(long)]
    pub guidance_start: Option<usize>,
    /// Number of guided steps [default: 3]
    #[arg(long)]
    pub guidance_steps: Option<usize>,
    /// Calibrated thresholds from `wgsl-diff calibrate` ((steps, C, H, W) float32 .npy), in
    /// place of --percentile
    #[arg(long)]
    pub threshold_file: Option<PathBuf>,
    /// Heatmap colour scale: `image` (each its own) or `shared` (one for the run); each runs to
    /// the 99th percentile of its maps, so at most 1 % of a map's pixels saturate
    #[arg(long, default_value = "image", value_parser = named::<HeatmapScale>(HeatmapScale::NAMES), requires = "uncertainty")]
    pub heatmap_scale: HeatmapScale,
    /// What heatmap_*.png shows, beside a labelled colour bar: `overlay` (the map over the
    /// sample in grey) or `map` (the map alone)
    #[arg(long, default_value = "overlay", value_parser = named::<HeatmapStyle>(HeatmapStyle::NAMES), requires = "uncertainty")]
    pub heatmap_style: HeatmapStyle,
    /// Write each step's uncertainty map (B, C, H, W per batch) as .npy into this folder
    #[arg(long, requires = "uncertainty")]
    pub save_maps: Option<PathBuf>,
    /// Also draw each map of --save-maps as heatmap_stepSSS_tTTTT_sampleNNNNNN.png beside its
    /// .npy, as heatmap_*.png are drawn (--heatmap-style, a colour bar); with --heatmap-scale
    /// shared each step has one scale for all samples
    #[arg(long, requires = "save_maps")]
    pub step_heatmaps: bool,
    /// Write every noise tensor the run drew as .npy into this folder (for replay elsewhere)
    #[arg(long)]
    pub dump_noise: Option<PathBuf>,
    /// After sampling, keep this fraction (0, 1] of lowest-uncertainty samples (and an equal random subset); it must keep at least one
    #[arg(long, requires = "uncertainty")]
    pub keep_fraction: Option<f64>,
    /// Write report.html, one self-contained page: parameters, score histogram (the filtering
    /// marked), a few samples' maps step by step, guidance masks, extremes, samples by score
    #[arg(long, requires = "uncertainty")]
    pub report: bool,
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
    /// Profile the run: GPU time per kernel family, kernel, UNet block and module (timestamp
    /// queries, where the adapter has them), dispatches, submits and bytes per step, and
    /// memory; printed as tables and saved as profile.json in --out. Each submit then waits
    /// for its timestamps, so the run is a little slower
    #[arg(long)]
    pub profile: bool,
    /// Store the network's conv and linear weights in f16 on the GPU (half their memory; an f16
    /// checkpoint from `tools/convert.py --half` is uploaded as stored). Products still
    /// accumulate in f32; activations stay f32. Not with --guidance gradient (it differentiates the network, which needs f32
    /// weights). docs/precision.md ("f16 weights") states the error against f32
    #[arg(long)]
    pub f16_weights: bool,
    /// Store the network's activations in f16 between kernels (half their memory and traffic;
    /// needs the adapter's SHADER_F16). Products and sums stay f32, and so do the sample and ε
    /// the sampler sees. diffusers UNets only; not with --guidance gradient (its backward
    /// pass reads f32 activations). docs/precision.md ("f16 activations") states the error against f32
    #[arg(long)]
    pub f16_activations: bool,
    /// What to draw (Stable Diffusion models: a diffusers folder with text_encoder/, tokenizer/,
    /// unet/, vae/, or a single file with --tokenizer; at most 75 tokens are read, as diffusers
    /// reads them)
    #[arg(long)]
    pub prompt: Option<String>,
    /// The autoencoder that decodes a latent model's samples into images (an AutoencoderKL
    /// weight file, e.g. U-ViT's from `tools/convert.py --uvit … --autoencoder`)
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// The CLIP tokenizer (a folder with vocab.json and merges.txt, such as a diffusers SD
    /// folder's tokenizer/) for a single-file checkpoint, which holds none
    #[arg(long, value_name = "DIR", requires = "prompt")]
    pub tokenizer: Option<PathBuf>,
    /// What to steer away from: the unconditional side of classifier-free guidance
    #[arg(long, default_value = "", requires = "prompt")]
    pub negative_prompt: String,
    /// Classifier-free guidance scale w: ε = ε_u + w·(ε_c − ε_u), none at w ≤ 1. Stable
    /// Diffusion: prompt against negative prompt, default 7.5. Class-conditional models trained
    /// with a null class (U-ViT): class against the null class, none unless given (U-ViT's
    /// `scale` s is w = 1 + s: 1.4 for ImageNet 256, 1.7 for 512)
    #[arg(long)]
    pub cfg_scale: Option<f64>,
    /// Image height in pixels (Stable Diffusion; default the model's, 512 for SD 1.5): a
    /// multiple of the VAE's and the UNet's downsampling together (64 for SD 1.x)
    #[arg(long, requires = "prompt")]
    pub height: Option<usize>,
    /// Image width in pixels (as --height)
    #[arg(long, requires = "prompt")]
    pub width: Option<usize>,
}

impl SampleArgs {
    fn request(&self) -> Result<SampleRequest> {
        let shard = match (self.shard, self.shard_from_env) {
            (Some(shard), _) => Some(shard),
            (None, true) => Some(Shard::from_env(
                |k| std::env::var(k).ok(),
                self.shard_count,
            )?),
            (None, false) => None,
        };
        if self.mc_samples.is_some() && !self.uncertainty && self.guidance.is_none() {
            bail!("-M needs --uncertainty or --guidance");
        }
        let copies = self.mc_samples.unwrap_or(5);
        let guidance_flags = self.guidance_strength.is_some()
            || self.percentile.is_some()
            || self.guidance_start.is_some()
            || self.guidance_steps.is_some()
            || self.threshold_file.is_some();
        if guidance_flags && self.guidance.is_none() {
            bail!("--guidance-strength, --percentile, --guidance-start, --guidance-steps and --threshold-file need --guidance");
        }
        // A flag a mode ignores is refused rather than recorded in the run's identity.
        if self.guidance == Some(GuidanceRule::Posterior) && self.guidance_strength.is_some() {
            bail!("--guidance-strength applies to --guidance gradient; Rule P (posterior) has no strength");
        }
        if self.threshold_file.is_some() && self.percentile.is_some() {
            bail!("--threshold-file replaces --percentile: give one of them");
        }
        let guidance = self.guidance.map(|rule| {
            let paper = GuidanceConfig::paper(rule);
            GuidanceConfig {
                strength: self.guidance_strength.unwrap_or(paper.strength),
                copies,
                start: self.guidance_start.unwrap_or(paper.start),
                steps: self.guidance_steps.or(paper.steps),
                threshold: self
                    .percentile
                    .map_or(paper.threshold.clone(), Threshold::Percentile),
                ..paper
            }
        });
        let reference = self
            .uc_reference
            .as_deref()
            .map(UncertaintyReference::load)
            .transpose()?
            .map(Arc::new);
        let uncertainty = self.uncertainty.then(|| UncertaintyConfig {
            copies,
            method: self.uc_method,
            mode: self.uc_mode.unwrap_or(match self.uc_method {
                UncertaintyMethod::Renoise => UncertaintyMode::Centred,
                UncertaintyMethod::McDropout => UncertaintyMode::Variance,
            }),
            start: self.uc_start,
            steps: self.uc_steps,
            reference,
            ..Default::default()
        });
        let request = SampleRequest {
            model: self.sampler.model(),
            sampler: self.sampler.choice(),
            seed: self.seed,
            start_index: self.start_index,
            num: self.num,
            batch: self.batch,
            class: self.class,
            out: self.out.clone(),
            init_noise: self.init_noise.clone(),
            save_raw: self.save_raw,
            uncertainty,
            guidance,
            threshold_file: self.threshold_file.clone(),
            heatmap_scale: self.heatmap_scale,
            heatmap_style: self.heatmap_style,
            save_maps: self.save_maps.clone(),
            step_heatmaps: self.step_heatmaps,
            dump_noise: self.dump_noise.clone(),
            keep_fraction: self.keep_fraction,
            report: self.report,
            shard,
            keep_non_finite: self.keep_non_finite,
            f16_weights: self.f16_weights,
            f16_activations: self.f16_activations,
            class_cfg_scale: self.cfg_scale.filter(|_| self.prompt.is_none()),
            vae: self.vae.clone(),
            prompt: self.prompt.clone().map(|prompt| PromptRequest {
                prompt,
                negative_prompt: self.negative_prompt.clone(),
                cfg_scale: self.cfg_scale.unwrap_or(DEFAULT_PROMPT_CFG_SCALE),
                height: self.height,
                width: self.width,
                tokenizer: self.tokenizer.clone(),
            }),
        };
        request.validate()?;
        Ok(request)
    }
}

/// diffusers' default classifier-free guidance scale for Stable Diffusion.
const DEFAULT_PROMPT_CFG_SCALE: f64 = 7.5;

/// Rows of the module and kernel tables `--profile` prints (profile.json has them all).
const PROFILE_TOP: usize = 20;

/// Where `--profile` saves its JSON: beside the manifest, one file per shard.
fn profile_path(out: &Path, shard: Option<&Shard>) -> PathBuf {
    match shard {
        Some(s) => out.join(format!("profile-{}-of-{}.json", s.index, s.count)),
        None => out.join("profile.json"),
    }
}

/// The progress bar, counted in sample-steps.
struct Bar(ProgressBar);

impl SampleProgress for Bar {
    fn batch(&mut self, samples: Range<usize>) {
        self.0
            .set_message(format!("samples {}..{}", samples.start, samples.end));
    }
    fn step(&mut self, samples: usize) {
        self.0.inc(samples as u64);
    }
}

/// Checks the flags before the GPU is opened, then samples.
pub fn run(adapter: &AdapterChoice, args: &SampleArgs) -> Result<()> {
    let request = args.request()?;
    let profile_file = profile_path(&args.out, request.shard.as_ref());
    let gpu = Gpu::new(adapter)?;
    if args.profile && !gpu.start_profile() {
        eprintln!("note: {NO_TIMESTAMPS}");
    }
    let job = SampleJob::prepare(&gpu, request)?;
    for warning in job.warnings() {
        eprintln!("warning: {warning}");
    }
    let (todo, own) = (job.todo().len(), job.own().len());
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((todo * job.steps()) as u64)
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} sample-steps  {msg}  [{elapsed_precise}<{eta_precise}]",
    )?);
    if todo < own {
        bar.println(format!(
            "resuming: {} of {own} samples already in {}",
            own - todo,
            args.out.display()
        ));
    }
    let mut progress = Bar(bar);
    let started = std::time::Instant::now();
    let summary = match job.run(&mut progress) {
        Err(Error::BatchTooLarge { batch, why, .. }) if batch <= 1 => {
            bail!(
                "one sample {why}: it is too large for this device (a latent model's image: a \
                 smaller --height/--width; or a device with larger bindings)"
            )
        }
        Err(Error::BatchTooLarge { batch, why, fits }) => {
            bail!("batch {batch} {why}: use --batch {fits} or less")
        }
        other => other?,
    };
    progress.0.finish_and_clear();
    if let Some(f) = &summary.filtered {
        println!(
            "kept the {} most certain samples in {} and a random subset in {}",
            f.count,
            f.kept.display(),
            f.random.display()
        );
    }
    println!(
        "{} samples in {} ({todo} made in {:.1} s)",
        summary.samples,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some((lo, hi)) = summary.score_range {
        println!("uncertainty scores {lo:.6e} .. {hi:.6e} (lower: more certain)");
    }
    if let Some(report) = &summary.report {
        println!("report: {}", report.display());
    }
    if let (Some(maps), n @ 1..) = (&args.save_maps, summary.step_heatmaps) {
        println!("{n} per-step heatmaps in {}", maps.display());
    }
    if let Some(profile) = gpu.finish_profile()? {
        profile.save(&profile_file)?;
        println!("{}", profile.table(PROFILE_TOP));
        println!("profile saved as {}", profile_file.display());
    }
    if summary.missing > 0 {
        println!(
            "{} samples of the run are not there yet (other shards): the last worker to finish \
             writes the filtered sets and the report",
            summary.missing
        );
    }
    Ok(())
}
