//! `wgsl-diff reference`: the real-image statistics the z-scored uncertainty modes need.

use super::sample::SamplerArgs;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use wgsl_diff::gpu::Gpu;
use wgsl_diff::limits::{MAX_BATCH, MAX_COPIES, MAX_EVAL_IMAGES};
use wgsl_diff::uncertainty::{build_reference, ReferenceRequest};

#[derive(Args, Debug)]
pub struct ReferenceArgs {
    /// The sampler whose timesteps the reference covers: use the run's model, sampler, --steps
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Real images: an idx file (e.g. Fashion-MNIST's train-images-idx3-ubyte.gz) or a folder
    /// of PNGs; 28×28 images are padded to the model's 32×32 as in training
    #[arg(long)]
    pub images: PathBuf,
    #[arg(long, help = format!("Use only the first N images (1..={MAX_EVAL_IMAGES}) [default: all]"))]
    pub count: Option<usize>,
    #[arg(short = 'M', long = "mc-samples", default_value_t = 5, help = format!("M: re-noised copies per step, as the scored run will use (2..={MAX_COPIES})"))]
    pub mc_samples: usize,
    /// Seed of the noise that noises the images and re-noises x̂0
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 16, help = format!("Images per GPU batch (1..={MAX_BATCH})"))]
    pub batch: usize,
    /// The reference file to write (.npz, float64; README.md "Uncertainty modes")
    #[arg(long)]
    pub out: PathBuf,
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(gpu: &Gpu, args: &ReferenceArgs) -> Result<()> {
    let request = ReferenceRequest {
        model: args.sampler.model(),
        sampler: args.sampler.choice(),
        images: args.images.clone(),
        count: args.count,
        copies: args.mc_samples,
        seed: args.seed,
        batch: args.batch,
        max_copies_per_forward: None,
    };
    let bar = super::progress_bar(0, "images", args.quiet);
    let reference = build_reference(gpu, &request, |done, total| {
        super::advance(&bar, done, total)
    })?;
    bar.finish_and_clear();
    reference.save(&args.out)?;
    println!(
        "reference of {} ({} steps, M = {}) in {}",
        reference.source,
        reference.timesteps.len(),
        reference.copies,
        args.out.display()
    );
    Ok(())
}
