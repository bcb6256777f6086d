//! `wgsl-diff fid`: the command line of [`wgsl_diff::evaluation::fid`] — FID between two sources,
//! or a source's statistics saved for later, in pytorch-fid's format.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use wgsl_diff::evaluation::fid::{self, FidOptions, FidSource, DEFAULT_BATCH, DEFAULT_WEIGHTS};
use wgsl_diff::gpu::{AdapterChoice, Gpu};
use wgsl_diff::limits::MAX_BATCH;

const SOURCES_HELP: &str = "\
Sources (--real, --fake, --save-stats SRC):
  DIR       a folder of PNG images: a run's sample_*.png when it has any (a `wgsl-diff sample`
            folder, its filtered/kept and filtered/random), otherwise every *.png; one size,
            any mode (grayscale is repeated to RGB, alpha dropped, as pytorch-fid's loader does)
  FILE.npz  statistics (mu, sigma) as pytorch-fid --save-stats writes them
  FILE      an idx3 ubyte images file, gzip-compressed or not
Images are scaled to [0, 1], resized bilinearly to 299x299 and mapped to [-1, 1], as in
pytorch-fid. Weights: tools/converters/fid_weights.py writes weights/fid_inception.safetensors.";

#[derive(Args, Debug)]
#[command(after_help = SOURCES_HELP)]
pub struct FidArgs {
    /// Real images or statistics (see below)
    #[arg(
        long,
        required_unless_present = "save_stats",
        conflicts_with = "save_stats"
    )]
    pub real: Option<PathBuf>,
    /// Generated images or statistics (see below)
    #[arg(long, required_unless_present = "save_stats")]
    pub fake: Option<PathBuf>,
    /// Write the statistics of SRC to OUT.npz (pytorch-fid's format) instead of comparing
    #[arg(long, num_args = 2, value_names = ["SRC", "OUT.npz"], conflicts_with = "fake")]
    pub save_stats: Option<Vec<PathBuf>>,
    /// Converted FID Inception weights [default: weights/fid_inception.safetensors]
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, default_value_t = DEFAULT_BATCH, help = format!("Images per GPU batch (1..={MAX_BATCH})"))]
    pub batch: usize,
    /// Min-max rescale each batch to [0, 1] before Inception, as the paper's official FID code
    /// does (only to reproduce its numbers; the result depends on --batch)
    #[arg(long)]
    pub batch_minmax: bool,
    /// Also write the result to this JSON file; written as RUN/fid.json into the run folder
    /// of --fake, `wgsl-diff compare` shows it beside the run
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(choice: &AdapterChoice, args: &FidArgs) -> Result<()> {
    let options = FidOptions {
        weights: args
            .weights
            .clone()
            .unwrap_or_else(|| DEFAULT_WEIGHTS.into()),
        batch: args.batch,
        batch_minmax: args.batch_minmax,
    };
    let gpu = || Gpu::new(choice);
    let bar = super::progress_bar(0, "images", args.quiet);
    let progress = |done, total| super::advance(&bar, done, total);
    if let Some(paths) = &args.save_stats {
        let (src, out) = (&paths[0], &paths[1]);
        let stats = fid::save_statistics(gpu, &FidSource::from_path(src), out, &options, progress)
            .with_context(|| format!("--save-stats {}", src.display()))?;
        bar.finish_and_clear();
        println!(
            "{}: statistics written to {}",
            stats.description,
            out.display()
        );
        return Ok(());
    }
    let (real, fake) = (args.real.as_ref(), args.fake.as_ref());
    let (real, fake) = real
        .zip(fake)
        .context("give --real and --fake, or --save-stats")?;
    let report = fid::fid(
        gpu,
        &FidSource::from_path(real),
        &FidSource::from_path(fake),
        &options,
        progress,
    )?;
    bar.finish_and_clear();
    println!("real: {}", report.real.description);
    println!("fake: {}", report.fake.description);
    println!("FID: {:.6}", report.fid);
    if let Some(n) = report.undersized() {
        eprintln!(
            "note: {n} images is not more than the 2048 feature dimensions: the covariance is \
             singular and FID biased upwards; compare only equal set sizes, or use thousands"
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report.to_json())?;
        wgsl_diff::io::write_atomic(path, json.as_bytes())?;
    }
    Ok(())
}
