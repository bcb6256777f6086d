//! `wgsl-diff eval`: the command line of [`wgsl_diff::evaluation`] — parses the sets and options,
//! prints the report and writes it as JSON.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use wgsl_diff::evaluation::{
    self, EvalOptions, EvalReport, ImageRange, ImageSource, SetSpec, DEFAULT_CLASSIFIER,
};
use wgsl_diff::gpu::Gpu;
use wgsl_diff::limits::{MAX_BATCH, MAX_EVAL_IMAGES, SAMPLE_INDEX_END};

const SOURCES_HELP: &str = "\
Image sources (--real, --fake):
  DIR      a folder of grayscale sample_*.png files (e.g. a `wgsl-diff sample` output folder),
           taken in name order
  FILE     an idx3 ubyte images file, gzip-compressed or not
           (e.g. /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz)
  noise    N(0, 1) images clamped and quantised like samples: the starting noise of
           `wgsl-diff sample --seed S`, a ceiling for the distance; as many as the other set
           unless a range is given (write ./noise for a folder of that name)
Images must be 32x32 or 28x28 (padded with background like the training data); pixels map to
[-1, 1] by x/127.5 - 1. --real-range/--fake-range A..B take images A..B of a source, e.g.
t10k 0..5000 against 5000..10000 measures the distance between two real sets.";

#[derive(Args, Debug)]
#[command(after_help = SOURCES_HELP)]
pub struct EvalArgs {
    /// Real images: DIR, idx FILE or `noise` (see below)
    #[arg(long)]
    pub real: ImageSource,
    /// Generated images: DIR, idx FILE or `noise` (see below)
    #[arg(long)]
    pub fake: ImageSource,
    #[arg(long, value_name = "A..B", help = format!("Use only images A..B of --real (at most {MAX_EVAL_IMAGES}; B ≤ {SAMPLE_INDEX_END} for noise)"))]
    pub real_range: Option<ImageRange>,
    #[arg(long, value_name = "A..B", help = format!("Use only images A..B of --fake (at most {MAX_EVAL_IMAGES}; B ≤ {SAMPLE_INDEX_END} for noise)"))]
    pub fake_range: Option<ImageRange>,
    /// Classifier written by tools/train/train_classifier.py [default: weights/fashion_classifier.safetensors]
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    #[arg(long, default_value_t = 256, help = format!("Images per GPU batch (1..={MAX_BATCH})"))]
    pub batch: usize,
    /// Seed of `noise` images
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the results to this JSON file; written as RUN/eval.json into the run folder
    /// of --fake, `wgsl-diff compare` shows it beside the run
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
}

impl EvalArgs {
    fn options(&self) -> EvalOptions {
        EvalOptions {
            real: SetSpec {
                source: self.real.clone(),
                range: self.real_range.clone(),
            },
            fake: SetSpec {
                source: self.fake.clone(),
                range: self.fake_range.clone(),
            },
            classifier: self
                .classifier
                .clone()
                .unwrap_or_else(|| DEFAULT_CLASSIFIER.into()),
            batch: self.batch,
            seed: self.seed,
        }
    }
}

pub fn run(gpu: &Gpu, args: &EvalArgs) -> Result<()> {
    let bar = super::progress_bar(0, "images", args.quiet);
    let report = evaluation::evaluate_with_progress(gpu, &args.options(), |done, total| {
        super::advance(&bar, done, total)
    })?;
    bar.finish_and_clear();
    print_report(&report);
    if let Some(smallest) = report.undersized() {
        eprintln!(
            "note: {smallest} images is not more than the {} feature dimensions: the distance \
             is biased upwards; use thousands of images per set",
            report.feature_dim
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report.to_json())?;
        wgsl_diff::io::write_atomic(path, json.as_bytes())?;
    }
    Ok(())
}

fn print_report(report: &EvalReport) {
    let (real, fake) = (&report.real, &report.fake);
    println!("real: {}", real.description);
    println!("fake: {}", fake.description);
    println!(
        "Fréchet distance ({}-d classifier features): {:.4}",
        report.feature_dim, report.frechet_distance
    );
    println!(
        "mean confidence: real {:.4}, fake {:.4}",
        real.predictions.mean_confidence, fake.predictions.mean_confidence
    );
    println!("{:<16}{:>8}{:>8}", "predicted class", "real", "fake");
    for (class, name) in report.class_names.iter().enumerate() {
        println!(
            "  {:<14}{:>8}{:>8}",
            name, real.predictions.histogram[class], fake.predictions.histogram[class]
        );
    }
}
