//! `wgsl-diff filter DIR`: split an existing run with uncertainty scores into the kept
//! (lowest-score) set and a same-size seeded random subset.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FilterArgs {
    /// A folder written by `wgsl-diff sample --uncertainty`
    pub dir: PathBuf,
    /// Fraction of samples to keep (the paper drops 15%: 0.85)
    #[arg(long, default_value_t = 0.85)]
    pub keep_fraction: f64,
    /// Seed of the random comparison subset
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &FilterArgs) -> Result<()> {
    let filtered = wgsl_diff::run_dir::filter_run(&args.dir, args.keep_fraction, args.seed)?;
    println!(
        "kept the {} lowest-score of {} samples (fraction {}, random subset seed {}) in {}; a \
         random subset of {} in {}",
        filtered.count,
        filtered.of,
        args.keep_fraction,
        args.seed,
        filtered.kept.display(),
        filtered.count,
        filtered.random.display()
    );
    if let Some(report) = &filtered.report {
        println!("report updated: {}", report.display());
    }
    Ok(())
}
