//! `wgsl-diff filter DIR`: split an existing run with uncertainty scores into the kept
//! (lowest-score) set and a same-size seeded random subset.

use super::report;
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
    let manifest = report::read_manifest(&args.dir)?;
    let indices: Vec<usize> = manifest.samples.iter().map(|s| s.index).collect();
    let records = report::collect(&args.dir, &indices)?;
    let (kept, random) = report::filter(&args.dir, &records, args.keep_fraction, args.seed)?;
    println!(
        "kept set in {}, random subset in {}",
        kept.display(),
        random.display()
    );
    Ok(())
}
