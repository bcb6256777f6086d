//! `wgsl-diff sample`: generate images, one PNG per sample, resumable; optionally estimate
//! pixel-wise uncertainty, score and filter the samples.

use super::report::{self, png_name, total_map_name, HeatmapScale};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use wgsl_diff::gpu::{Gpu, Tensor};
use wgsl_diff::images;
use wgsl_diff::models::{UNet2DModel, WeightFile};
use wgsl_diff::ops::{self, UncertaintyMode};
use wgsl_diff::sampling::{
    noise_key, sample_batch, BatchSpec, NoisePurpose, NoiseSchedule, SamplerConfig, SamplerKind,
    ScheduleConfig, Scheduler, Spacing, StepHook,
};
use wgsl_diff::uncertainty::{UncertaintyConfig, UncertaintyEstimator};
use wgsl_diff::{npy, Error};

/// The model shipped in `weights/`, used when `--model` is not given.
pub const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/fashion_mnist_ddpm.safetensors"
);

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Weight file written by tools/convert.py [default: the shipped Fashion-MNIST model]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Sampling steps [default: 50; 1000 for ddpm]
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, value_enum, default_value = "ddim")]
    pub sampler: SamplerKind,
    /// DDIM's η: 0 is deterministic, 1 is DDPM-like
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Timestep spacing [default: leading; linspace for dpmpp2m]
    #[arg(long, value_enum)]
    pub spacing: Option<Spacing>,
    /// Added to every timestep with leading spacing (diffusers' steps_offset)
    #[arg(long, default_value_t = 0)]
    pub steps_offset: usize,
    /// Do not clamp x̂0 to [−1, 1] (clamped by default when the model's scheduler config asks)
    #[arg(long)]
    pub no_clip: bool,
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
    /// M: re-noised copies per uncertainty step
    #[arg(short = 'M', long = "mc-samples", default_value_t = 5)]
    pub mc_samples: usize,
    /// How the M predictions are summarised
    #[arg(long, value_enum, default_value = "centred")]
    pub uc_mode: UncertaintyMode,
    /// First sampling step (0-based) with uncertainty estimation
    #[arg(long, default_value_t = 0)]
    pub uc_start: usize,
    /// Number of steps with uncertainty estimation [default: all from uc-start]
    #[arg(long)]
    pub uc_steps: Option<usize>,
    /// Heatmap colour scale
    #[arg(long, value_enum, default_value = "image")]
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

/// Everything fixed for the run, shared by its batches.
struct Run<'a> {
    gpu: &'a Gpu,
    args: &'a SampleArgs,
    model: UNet2DModel,
    scheduler: Scheduler,
    uncertainty: Option<UncertaintyConfig>,
    sample_shape: [usize; 3],
    parameters: serde_json::Value,
}

impl Run<'_> {
    fn class_of(&self, index: usize) -> Option<usize> {
        self.model
            .num_classes()
            .map(|n| self.args.class.unwrap_or(index % n))
    }
    fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }
    fn batch_shape(&self, n: usize) -> [usize; 4] {
        [
            n,
            self.sample_shape[0],
            self.sample_shape[1],
            self.sample_shape[2],
        ]
    }
}

pub fn run(gpu: &Gpu, args: &SampleArgs) -> Result<()> {
    if args.batch == 0 || args.num == 0 {
        bail!("--batch and --num must be at least 1");
    }
    if (args.save_maps.is_some() || args.keep_fraction.is_some() || args.report)
        && !args.uncertainty
    {
        bail!("--save-maps, --keep-fraction and --report need --uncertainty");
    }
    let uc_config = UncertaintyConfig {
        copies: args.mc_samples,
        mode: args.uc_mode,
        start: args.uc_start,
        steps: args.uc_steps,
        keep_maps: args.save_maps.is_some(),
        ..Default::default()
    };
    uc_config.validate()?;
    let model_path = args
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL));
    let file = WeightFile::open(&model_path)?;
    let schedule_cfg: ScheduleConfig = match file.metadata.get("scheduler") {
        Some(json) => serde_json::from_str(json).context("invalid scheduler metadata")?,
        None => ScheduleConfig::default(),
    };
    let steps = args.steps.unwrap_or(if args.sampler == SamplerKind::Ddpm {
        schedule_cfg.num_train_timesteps
    } else {
        50
    });
    let spacing = args
        .spacing
        .unwrap_or(if args.sampler == SamplerKind::Dpmpp2m {
            Spacing::Linspace
        } else {
            Spacing::Leading
        });
    let scheduler = Scheduler::new(
        SamplerConfig {
            kind: args.sampler,
            steps,
            eta: args.eta,
            spacing,
            steps_offset: args.steps_offset,
            set_alpha_to_one: true,
            clip_sample: (schedule_cfg.clip_sample && !args.no_clip)
                .then_some(schedule_cfg.clip_sample_range),
        },
        NoiseSchedule::from_config(&schedule_cfg)?,
    )?;
    if args.uncertainty && args.uc_start >= steps {
        bail!(
            "--uc-start {} is past the last step ({steps} steps)",
            args.uc_start
        );
    }
    for dir in [
        Some(&args.out),
        args.save_maps.as_ref(),
        args.dump_noise.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        check_writable(dir)?;
    }
    let model = UNet2DModel::load(gpu, &file)?;
    if args.class.is_some() && model.num_classes().is_none() {
        bail!("--class given, but this model is unconditional");
    }
    let side = model
        .config
        .sample_size
        .context("model config lacks sample_size")?;
    // Canonical, so that the same file named two ways is the same run (see check_same_run).
    let model_path = std::fs::canonicalize(&model_path).unwrap_or(model_path);
    let parameters = serde_json::json!({
        "model": model_path.display().to_string(), "sampler": args.sampler, "steps": steps, "eta": args.eta,
        "spacing": spacing, "steps_offset": args.steps_offset, "clip_sample": scheduler.config.clip_sample,
        "seed": args.seed, "timesteps": scheduler.timesteps,
        "uncertainty": args.uncertainty.then(|| serde_json::json!({
            "M": args.mc_samples, "mode": args.uc_mode, "start": args.uc_start, "steps": args.uc_steps })),
    });
    let uncertainty = args.uncertainty.then_some(uc_config);
    let run = Run {
        gpu,
        args,
        sample_shape: [model.config.in_channels, side, side],
        model,
        scheduler,
        uncertainty,
        parameters,
    };

    let init_noise = match &args.init_noise {
        Some(path) => {
            let (shape, data) = npy::read(path)?;
            let want = run.batch_shape(args.num);
            if shape != want {
                bail!(
                    "{}: shape {shape:?}, expected {want:?} (--num × C × H × W)",
                    path.display()
                );
            }
            Some(data)
        }
        None => None,
    };

    let existing = report::sample_indices(&args.out)?;
    check_same_run(&args.out, &existing, &run.parameters)?;
    let indices: Vec<usize> = (args.start_index..args.start_index + args.num).collect();
    // The folder's manifest lists every sample in it: this run's and earlier shards of the same run.
    let mut all = existing;
    all.extend(&indices);
    all.sort_unstable();
    all.dedup();
    let done = |i: usize| {
        args.out.join(png_name(i)).exists()
            && (!args.save_raw || args.out.join(format!("sample_{i:06}.npy")).exists())
            && (!args.uncertainty || args.out.join(total_map_name(i)).exists())
    };
    let todo: Vec<usize> = indices.iter().copied().filter(|&i| !done(i)).collect();
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((todo.len() * steps) as u64)
    };
    progress.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} sample-steps  {msg}  [{elapsed_precise}<{eta_precise}]",
    )?);
    if todo.len() < indices.len() {
        progress.println(format!(
            "resuming: {} of {} samples already in {}",
            indices.len() - todo.len(),
            indices.len(),
            args.out.display()
        ));
    }

    // Runs of consecutive missing indices, cut into batches: a sample's noise depends only on
    // its index, so any batching gives the same images.
    for chunk in contiguous_batches(&todo, args.batch) {
        progress.set_message(format!("samples {}..{}", chunk[0], chunk[0] + chunk.len()));
        let init = init_noise
            .as_ref()
            .map(|all| {
                let off = (chunk[0] - args.start_index) * run.sample_len();
                gpu.upload(
                    &run.batch_shape(chunk.len()),
                    &all[off..off + chunk.len() * run.sample_len()],
                )
            })
            .transpose()?;
        generate_batch(&run, &chunk, init, &progress)
            .map_err(|e| explain_too_large(e, chunk.len()))?;
        let records = report::collect(&args.out, &all)?;
        report::write_manifest(&args.out, &run.parameters, &records)?;
    }
    progress.finish_and_clear();
    finish(&run, &all)
}

/// Refuses a folder holding samples made with other parameters: resuming into it would keep
/// those images under this run's manifest.
fn check_same_run(dir: &Path, existing: &[usize], parameters: &serde_json::Value) -> Result<()> {
    for &i in existing {
        let path = dir.join(png_name(i));
        let theirs: Option<serde_json::Value> = images::read_png_text(&path)?
            .get("parameters")
            .and_then(|p| serde_json::from_str(p).ok());
        if theirs.as_ref() == Some(parameters) {
            continue;
        }
        let differ = match (
            theirs.as_ref().and_then(|t| t.as_object()),
            parameters.as_object(),
        ) {
            (Some(a), Some(b)) => {
                let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
                let names: Vec<&str> = keys
                    .filter(|k| a.get(*k) != b.get(*k))
                    .map(|k| k.as_str())
                    .collect();
                format!("different {}", names.join(", "))
            }
            _ => "no readable parameters".to_string(),
        };
        bail!(
            "{} was made with other parameters ({differ}); use another --out folder or remove it",
            path.display()
        );
    }
    Ok(())
}

/// Samples one batch and writes its files; a PNG is written last, once its sample is complete.
fn generate_batch(
    run: &Run,
    chunk: &[usize],
    init: Option<Tensor>,
    progress: &ProgressBar,
) -> Result<(), Error> {
    let (gpu, args) = (run.gpu, run.args);
    let first = chunk[0];
    let labels: Option<Vec<usize>> = run
        .model
        .num_classes()
        .map(|_| chunk.iter().map(|&i| run.class_of(i).unwrap()).collect());
    let mut estimator = run
        .uncertainty
        .clone()
        .map(UncertaintyEstimator::new)
        .transpose()?;
    let mut hooks: Vec<&mut dyn StepHook> = estimator
        .iter_mut()
        .map(|e| e as &mut dyn StepHook)
        .collect();
    let spec = BatchSpec {
        first_index: first,
        size: chunk.len(),
        labels: labels.as_deref(),
        init_noise: init,
    };
    let out = sample_batch(
        gpu,
        &run.model,
        &run.scheduler,
        args.seed,
        spec,
        &mut hooks,
        |_| progress.inc(chunk.len() as u64),
    )?;
    let data = gpu.read(&out)?;
    let len = run.sample_len();
    let range = format!("{first:06}-{:06}", first + chunk.len() - 1);

    let (scores, totals) = match &estimator {
        Some(est) => {
            let scores = est.scores(gpu)?.map(|s| gpu.read(&s)).transpose()?;
            let totals = est.total_map().map(|t| gpu.read(t)).transpose()?;
            if let Some(dir) = &args.save_maps {
                for (step, map) in &est.maps {
                    let t = run.scheduler.timesteps[*step];
                    npy::write(
                        &dir.join(format!("map_step{step:03}_t{t:04}_samples{range}.npy")),
                        &run.batch_shape(chunk.len()),
                        &gpu.read(map)?,
                    )?;
                }
            }
            (scores, totals)
        }
        None => (None, None),
    };
    if let Some(dir) = &args.dump_noise {
        dump_noise(run, dir, first, chunk.len(), &range)?;
    }
    for (k, &index) in chunk.iter().enumerate() {
        let raw = &data[k * len..(k + 1) * len];
        if args.save_raw {
            npy::write(
                &args.out.join(format!("sample_{index:06}.npy")),
                &run.sample_shape,
                raw,
            )?;
        }
        if let Some(t) = &totals {
            npy::write(
                &args.out.join(total_map_name(index)),
                &run.sample_shape,
                &t[k * len..(k + 1) * len],
            )?;
        }
        let mut text = vec![
            ("parameters", run.parameters.to_string()),
            ("index", index.to_string()),
        ];
        if let Some(c) = run.class_of(index) {
            text.push(("class", c.to_string()));
        }
        if let Some(s) = &scores {
            text.push(("uncertainty_score", s[k].to_string()));
        }
        let [c, h, w] = run.sample_shape;
        images::write_png(
            &args.out.join(png_name(index)),
            &images::quantize(raw, c, h, w),
            &text,
        )?;
    }
    Ok(())
}

/// Regenerates and writes every noise tensor of a batch: each is a pure function of
/// (seed, purpose, step, copy, sample index), so this reproduces exactly what the run drew.
fn dump_noise(run: &Run, dir: &Path, first: usize, n: usize, range: &str) -> Result<(), Error> {
    let (gpu, args) = (run.gpu, run.args);
    let shape = run.batch_shape(n);
    let write = |name: String, t: Tensor| -> Result<(), Error> {
        npy::write(&dir.join(name), t.shape(), &gpu.read(&t)?)
    };
    if args.init_noise.is_none() {
        write(
            format!("noise_init_samples{range}.npy"),
            ops::normal(
                gpu,
                &shape,
                noise_key(args.seed, NoisePurpose::Initial, 0, 0),
                first,
            )?,
        )?;
    }
    for (i, &t) in run.scheduler.timesteps.iter().enumerate() {
        if run.scheduler.needs_noise(i) {
            let key = noise_key(args.seed, NoisePurpose::Ancestral, i, 0);
            write(
                format!("noise_ancestral_step{i:03}_t{t:04}_samples{range}.npy"),
                ops::normal(gpu, &shape, key, first)?,
            )?;
        }
        if let Some(uc) = run.uncertainty.as_ref().filter(|uc| uc.in_window(i)) {
            for m in 0..uc.copies {
                let key = noise_key(args.seed, NoisePurpose::Uncertainty, i, m);
                write(
                    format!("noise_uncertainty_step{i:03}_t{t:04}_m{m}_samples{range}.npy"),
                    ops::normal(gpu, &shape, key, first)?,
                )?;
            }
        }
    }
    Ok(())
}

/// Rebuilds the manifest, scores, heatmaps, grids, filtered sets and report from the folder.
fn finish(run: &Run, indices: &[usize]) -> Result<()> {
    let args = run.args;
    let mut records = report::collect(&args.out, indices)?;
    if args.uncertainty {
        report::render_heatmaps(&args.out, &mut records, args.heatmap_scale)?;
        report::write_scores_csv(&args.out, &records)?;
        report::write_uncertainty_grids(&args.out, &records)?;
    }
    report::write_manifest(&args.out, &run.parameters, &records)?;
    report::write_grid(&args.out, &records)?;
    if let Some(f) = args.keep_fraction {
        let (kept, random) = report::filter(&args.out, &records, f, args.seed)?;
        println!(
            "kept the {} most certain samples in {} and a random subset in {}",
            (f * records.len() as f64 + 1e-9).floor(),
            kept.display(),
            random.display()
        );
    }
    if args.report {
        report::write_html_report(&args.out, &records)?;
    }
    println!("{} samples in {}", records.len(), args.out.display());
    Ok(())
}

/// Splits sorted indices into runs of consecutive values, each at most `batch` long.
fn contiguous_batches(indices: &[usize], batch: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for &i in indices {
        match out.last_mut() {
            Some(run) if run.len() < batch && *run.last().unwrap() + 1 == i => run.push(i),
            _ => out.push(vec![i]),
        }
    }
    out
}

fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(".wgsl-diff-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("output folder {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

fn explain_too_large(e: Error, batch: usize) -> anyhow::Error {
    match e {
        Error::TooLarge { bytes, limit, .. } => {
            let fits = (batch as u64 * limit / bytes.max(1)).max(1);
            anyhow::anyhow!("batch {batch} needs a {bytes}-byte buffer but this device allows {limit} per binding: use --batch {fits} or less")
        }
        other => other.into(),
    }
}
