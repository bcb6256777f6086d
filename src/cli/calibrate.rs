//! `wgsl-diff calibrate`: per-element guidance thresholds from N unguided samples.

use super::named;
use super::sample::SamplerArgs;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use wgsl_diff::gpu::Gpu;
use wgsl_diff::guidance::{calibrate_with_progress, CalibrateRequest, GuidanceRule};
use wgsl_diff::io::check_output_file;
use wgsl_diff::limits::{MAX_BATCH, MAX_CALIBRATION_BYTES, SAMPLE_INDEX_END};
use wgsl_diff::sampling::ClassChoice;

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// The guidance rule whose uncertainty map is thresholded
    #[arg(long, default_value = "gradient", value_parser = named::<GuidanceRule>(GuidanceRule::NAMES))]
    pub rule: GuidanceRule,
    /// M: re-noised copies per step, as the guided run will use
    #[arg(short = 'M', long = "mc-samples", default_value_t = 5)]
    pub mc_samples: usize,
    /// Each threshold is the value at sorted index ⌊N·p⌋ of the N calibration samples
    #[arg(long, default_value_t = 0.95)]
    pub percentile: f64,
    #[arg(long, default_value_t = 64, help = format!("Number of calibration samples N; start-index + num ≤ {SAMPLE_INDEX_END}, and their maps at most {MAX_CALIBRATION_BYTES} bytes"))]
    pub num: usize,
    #[arg(long, default_value_t = 16, help = format!("Samples per GPU batch (1..={MAX_BATCH})"))]
    pub batch: usize,
    /// Seed of the calibration samples (use another than the guided run's)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Index of the first calibration sample
    #[arg(long, default_value_t = 0)]
    pub start_index: usize,
    /// Class of a class-conditional model's samples (required for one): an index, or `cycle`
    /// (sample i gets class i mod the number of classes)
    #[arg(long, value_name = "N|cycle")]
    pub class: Option<ClassChoice>,
    /// The threshold file to write: float32 .npy of shape (steps, C, H, W)
    #[arg(long)]
    pub out: PathBuf,
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(gpu: &Gpu, args: &CalibrateArgs) -> Result<()> {
    // The output is checked before the sampling, not after it.
    check_output_file(&args.out)?;
    let request = CalibrateRequest {
        model: args.sampler.model(),
        sampler: args.sampler.choice(),
        rule: args.rule,
        copies: args.mc_samples,
        percentile: args.percentile,
        seed: args.seed,
        start_index: args.start_index,
        num: args.num,
        batch: args.batch,
        class: args.class,
    };
    let bar = super::progress_bar(args.num, "samples", args.quiet);
    let threshold = calibrate_with_progress(gpu, &request, |done, total| {
        super::advance(&bar, done, total)
    })?;
    bar.finish_and_clear();
    threshold.save(&args.out)?;
    println!(
        "thresholds {:?} (steps × C × H × W) from {} samples in {}",
        threshold.shape,
        args.num,
        args.out.display()
    );
    Ok(())
}
