//! `wgsl-diff sample`: flags → [`SampleRequest`], a progress bar, and what the run did.

use super::named;
use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::ops::Range;
use std::path::PathBuf;
use wgsl_diff::gpu::Gpu;
use wgsl_diff::guidance::{GuidanceConfig, GuidanceRule, Threshold};
use wgsl_diff::ops::UncertaintyMode;
use wgsl_diff::run_dir::{HeatmapScale, SampleJob, SampleProgress, SampleRequest, DEFAULT_MODEL};
use wgsl_diff::sampling::{SamplerChoice, SamplerKind, Spacing};
use wgsl_diff::uncertainty::{UncertaintyConfig, UncertaintyMethod};
use wgsl_diff::Error;

/// The model and how to sample it; shared by `sample` and `calibrate`.
#[derive(Args, Debug, Clone)]
pub struct SamplerArgs {
    /// Weight file written by tools/convert.py [default: the shipped Fashion-MNIST model]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Sampling steps [default: 50; 1000 for ddpm]
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value = "ddim", value_parser = named::<SamplerKind>(SamplerKind::NAMES))]
    pub sampler: SamplerKind,
    /// DDIM's η: 0 is deterministic, 1 is DDPM-like
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Timestep spacing [default: leading; linspace for dpmpp2m]
    #[arg(long, value_parser = named::<Spacing>(Spacing::NAMES))]
    pub spacing: Option<Spacing>,
    /// Added to every timestep with leading spacing (diffusers' steps_offset)
    #[arg(long, default_value_t = 0)]
    pub steps_offset: usize,
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
            kind: self.sampler,
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
    /// Samples per GPU batch
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Number of samples
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Index of the first sample: a run makes samples start-index .. start-index + num
    #[arg(long, default_value_t = 0)]
    pub start_index: usize,
    /// Class label for class-conditional models [default: sample index mod number of classes]
    #[arg(long)]
    pub class: Option<usize>,
    /// Output folder
    #[arg(long)]
    pub out: PathBuf,
    /// Starting noise as float32 .npy of shape (num, C, H, W), replacing the generated noise
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Also write each final image as float32 .npy in [−1, 1] before quantisation
    #[arg(long)]
    pub save_raw: bool,
    /// Estimate pixel-wise uncertainty at each step (Algorithm 1) and score the samples
    #[arg(long)]
    pub uncertainty: bool,
    /// M: re-noised copies per uncertainty or guidance step
    #[arg(short = 'M', long = "mc-samples", default_value_t = 5)]
    pub mc_samples: usize,
    /// Where the M predictions come from: `renoise` (the paper's Algorithm 1) or `mc-dropout`
    /// (M passes with dropout active; models with dropout layers only)
    #[arg(long, default_value = "renoise", value_parser = named::<UncertaintyMethod>(UncertaintyMethod::NAMES))]
    pub uc_method: UncertaintyMethod,
    /// How the M predictions are summarised [default: centred; variance for mc-dropout]
    #[arg(long, value_parser = named::<UncertaintyMode>(UncertaintyMode::NAMES))]
    pub uc_mode: Option<UncertaintyMode>,
    /// First sampling step (0-based) with uncertainty estimation
    #[arg(long, default_value_t = 0)]
    pub uc_start: usize,
    /// Number of steps with uncertainty estimation [default: all from uc-start]
    #[arg(long)]
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
    /// Heatmap colour scale: `image` (each its own maximum) or `shared` (the run's maximum)
    #[arg(long, default_value = "image", value_parser = named::<HeatmapScale>(HeatmapScale::NAMES))]
    pub heatmap_scale: HeatmapScale,
    /// Write each step's uncertainty map (B, C, H, W per batch) as .npy into this folder
    #[arg(long)]
    pub save_maps: Option<PathBuf>,
    /// Write every noise tensor the run drew as .npy into this folder (for replay elsewhere)
    #[arg(long)]
    pub dump_noise: Option<PathBuf>,
    /// After sampling, keep this fraction of lowest-uncertainty samples (and an equal random subset)
    #[arg(long)]
    pub keep_fraction: Option<f64>,
    /// Write report.html: samples sorted by score beside their heatmaps, and a histogram
    #[arg(long)]
    pub report: bool,
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
}

impl SampleArgs {
    fn request(&self) -> Result<SampleRequest> {
        if (self.save_maps.is_some() || self.keep_fraction.is_some() || self.report)
            && !self.uncertainty
        {
            bail!("--save-maps, --keep-fraction and --report need --uncertainty");
        }
        if (self.uc_method != UncertaintyMethod::Renoise || self.uc_mode.is_some())
            && !self.uncertainty
        {
            bail!("--uc-method and --uc-mode need --uncertainty");
        }
        let guidance_flags = self.guidance_strength.is_some()
            || self.percentile.is_some()
            || self.guidance_start.is_some()
            || self.guidance_steps.is_some()
            || self.threshold_file.is_some();
        if guidance_flags && self.guidance.is_none() {
            bail!("--guidance-strength, --percentile, --guidance-start, --guidance-steps and --threshold-file need --guidance");
        }
        let guidance = self.guidance.map(|rule| {
            let paper = GuidanceConfig::paper(rule);
            GuidanceConfig {
                strength: self.guidance_strength.unwrap_or(paper.strength),
                copies: self.mc_samples,
                start: self.guidance_start.unwrap_or(paper.start),
                steps: self.guidance_steps.or(paper.steps),
                threshold: self
                    .percentile
                    .map_or(paper.threshold.clone(), Threshold::Percentile),
                ..paper
            }
        });
        let uncertainty = self.uncertainty.then(|| UncertaintyConfig {
            copies: self.mc_samples,
            method: self.uc_method,
            mode: self.uc_mode.unwrap_or(match self.uc_method {
                UncertaintyMethod::Renoise => UncertaintyMode::Centred,
                UncertaintyMethod::McDropout => UncertaintyMode::Variance,
            }),
            start: self.uc_start,
            steps: self.uc_steps,
            keep_maps: self.save_maps.is_some(),
            ..Default::default()
        });
        Ok(SampleRequest {
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
            save_maps: self.save_maps.clone(),
            dump_noise: self.dump_noise.clone(),
            keep_fraction: self.keep_fraction,
            report: self.report,
        })
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

pub fn run(gpu: &Gpu, args: &SampleArgs) -> Result<()> {
    let job = SampleJob::prepare(gpu, args.request()?)?;
    let todo = job.todo().len();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((todo * job.steps()) as u64)
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} sample-steps  {msg}  [{elapsed_precise}<{eta_precise}]",
    )?);
    if todo < args.num {
        bar.println(format!(
            "resuming: {} of {} samples already in {}",
            args.num - todo,
            args.num,
            args.out.display()
        ));
    }
    let mut progress = Bar(bar);
    let summary = match job.run(&mut progress) {
        Err(Error::BatchTooLarge {
            batch,
            bytes,
            limit,
            fits,
        }) => bail!("batch {batch} needs a {bytes}-byte buffer but this device allows {limit} per binding: use --batch {fits} or less"),
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
    println!("{} samples in {}", summary.samples, args.out.display());
    Ok(())
}
