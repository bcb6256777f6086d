//! `wgsl-diff sample`: generate images, one PNG per sample, resumable.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};
use wgsl_diff::gpu::Gpu;
use wgsl_diff::images::{self, Image8};
use wgsl_diff::models::{UNet2DModel, WeightFile};
use wgsl_diff::sampling::{
    sample_batch, BatchSpec, NoiseSchedule, SamplerConfig, SamplerKind, ScheduleConfig, Scheduler,
    Spacing,
};
use wgsl_diff::{npy, Error};

/// The model shipped in `weights/`, used when `--model` is not given.
pub const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/fashion_mnist_ddpm.safetensors"
);

#[derive(Args, Debug, Clone, Serialize)]
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
    /// Timestep spacing for DDIM and DDPM
    #[arg(long, value_enum, default_value = "leading")]
    pub spacing: Spacing,
    /// Added to every timestep with leading spacing (diffusers' steps_offset)
    #[arg(long, default_value_t = 0)]
    pub steps_offset: usize,
    /// Do not clamp x̂0 to [−1, 1] (on by default when the model's scheduler config asks)
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
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Serialize)]
struct SampleRecord {
    index: usize,
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<usize>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    model: String,
    sampler: SamplerKind,
    steps: usize,
    eta: f64,
    spacing: Spacing,
    clip_sample: Option<f64>,
    seed: u64,
    timesteps: &'a [usize],
    samples: Vec<SampleRecord>,
}

fn png_name(index: usize) -> String {
    format!("sample_{index:06}.png")
}

pub fn run(gpu: &Gpu, args: &SampleArgs) -> Result<()> {
    if args.batch == 0 || args.num == 0 {
        bail!("--batch and --num must be at least 1");
    }
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
    let scheduler = Scheduler::new(
        SamplerConfig {
            kind: args.sampler,
            steps,
            eta: args.eta,
            spacing: args.spacing,
            steps_offset: args.steps_offset,
            set_alpha_to_one: true,
            clip_sample: (schedule_cfg.clip_sample && !args.no_clip)
                .then_some(schedule_cfg.clip_sample_range),
        },
        NoiseSchedule::from_config(&schedule_cfg)?,
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;
    check_writable(&args.out)?;
    let model = UNet2DModel::load(gpu, &file)?;
    let cfg = &model.config;
    let side = cfg.sample_size.context("model config lacks sample_size")?;
    let sample_shape = [cfg.in_channels, side, side];
    let sample_len: usize = sample_shape.iter().product();

    let init_noise = match &args.init_noise {
        Some(path) => {
            let (shape, data) = npy::read(path)?;
            let want = [args.num, sample_shape[0], sample_shape[1], sample_shape[2]];
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
    let class_of = |index: usize| -> Option<usize> {
        model.num_classes().map(|n| args.class.unwrap_or(index % n))
    };
    if args.class.is_some() && model.num_classes().is_none() {
        bail!("--class given, but this model is unconditional");
    }

    let indices: Vec<usize> = (args.start_index..args.start_index + args.num).collect();
    let done = |i: usize| {
        args.out.join(png_name(i)).exists()
            && (!args.save_raw || args.out.join(format!("sample_{i:06}.npy")).exists())
    };
    let todo: Vec<usize> = indices.iter().copied().filter(|&i| !done(i)).collect();
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((todo.len() * steps) as u64)
    };
    progress.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
    )?);
    if todo.len() < indices.len() {
        progress.println(format!(
            "resuming: {} of {} samples already in {}",
            indices.len() - todo.len(),
            indices.len(),
            args.out.display()
        ));
    }
    let params = serde_json::to_string(&serde_json::json!({
        "model": model_path.display().to_string(), "sampler": args.sampler, "steps": steps, "eta": args.eta,
        "spacing": args.spacing, "seed": args.seed, "clip_sample": scheduler.config.clip_sample,
    }))?;

    // Consecutive runs of missing indices, cut into batches: a sample's noise depends only on
    // its index, so any batching gives the same images.
    for chunk in contiguous_batches(&todo, args.batch) {
        let first = chunk[0];
        progress.set_message(format!("samples {}..{}", first, first + chunk.len()));
        let labels: Option<Vec<usize>> = model
            .num_classes()
            .map(|_| chunk.iter().map(|&i| class_of(i).unwrap()).collect());
        let init = match &init_noise {
            Some(all) => {
                let off = (first - args.start_index) * sample_len;
                Some(gpu.upload(
                    &[chunk.len(), sample_shape[0], side, side],
                    &all[off..off + chunk.len() * sample_len],
                )?)
            }
            None => None,
        };
        let spec = BatchSpec {
            first_index: first,
            size: chunk.len(),
            labels: labels.as_deref(),
            init_noise: init,
        };
        let out = sample_batch(gpu, &model, &scheduler, args.seed, spec, &mut [], |_| {
            progress.inc(chunk.len() as u64)
        })
        .map_err(|e| explain_too_large(e, chunk.len()))?;
        let data = gpu.read(&out)?;
        for (k, &index) in chunk.iter().enumerate() {
            let raw = &data[k * sample_len..(k + 1) * sample_len];
            if args.save_raw {
                npy::write(
                    &args.out.join(format!("sample_{index:06}.npy")),
                    &sample_shape,
                    raw,
                )?;
            }
            let img = images::quantize(raw, sample_shape[0], side, side);
            let text = [("parameters", params.clone()), ("index", index.to_string())];
            images::write_png(&args.out.join(png_name(index)), &img, &text)?;
        }
        write_manifest(args, &model_path, &scheduler, &indices, &class_of)?;
    }
    progress.finish_and_clear();
    write_manifest(args, &model_path, &scheduler, &indices, &class_of)?;
    write_grid(&args.out, &indices)?;
    println!("{} samples in {}", indices.len(), args.out.display());
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

fn write_manifest(
    args: &SampleArgs,
    model: &Path,
    scheduler: &Scheduler,
    indices: &[usize],
    class_of: &dyn Fn(usize) -> Option<usize>,
) -> Result<()> {
    let samples = indices
        .iter()
        .filter(|&&i| args.out.join(png_name(i)).exists())
        .map(|&i| SampleRecord {
            index: i,
            file: png_name(i),
            class: class_of(i),
        })
        .collect();
    let manifest = Manifest {
        model: model.display().to_string(),
        sampler: args.sampler,
        steps: scheduler.config.steps,
        eta: args.eta,
        spacing: args.spacing,
        clip_sample: scheduler.config.clip_sample,
        seed: args.seed,
        timesteps: &scheduler.timesteps,
        samples,
    };
    wgsl_diff::io::write_atomic(
        &args.out.join("samples.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    Ok(())
}

fn write_grid(dir: &Path, indices: &[usize]) -> Result<()> {
    let imgs: Vec<Image8> = indices
        .iter()
        .map(|&i| images::read_png(&dir.join(png_name(i))))
        .collect::<wgsl_diff::Result<_>>()?;
    let cols = (imgs.len() as f64).sqrt().ceil() as usize;
    if let Some(g) = images::grid(&imgs, cols, 2) {
        images::write_png(&dir.join("grid.png"), &g, &[])?;
    }
    Ok(())
}
