//! `wgsl-diff compare RUN_A RUN_B [...] --out DIR`: flags → [`wgsl_diff::run_dir::compare`],
//! and each run's distance from the first and metric values printed.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use wgsl_diff::run_dir::METRICS;

/// The metric files `compare` reads, and the commands that write them.
fn metrics_help() -> String {
    let commands: Vec<String> = METRICS
        .iter()
        .map(|kind| format!("  {:<30}{}", kind.name, kind.how_to_write()))
        .collect();
    format!(
        "Metrics: where a run folder holds the JSON of `eval` or `fid` (written there with \
         --json), the page and the output show its value and the sets it compared:\n{}",
        commands.join("\n")
    )
}

#[derive(Args, Debug)]
#[command(after_help = metrics_help())]
pub struct CompareArgs {
    /// Run folders of `wgsl-diff sample` that share x_T (the same --seed and sample indices),
    /// e.g. guided and unguided; differences are taken against the first
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Folder for the grids and compare.html (not inside a run folder)
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &CompareArgs) -> Result<()> {
    let c = wgsl_diff::run_dir::compare(&args.runs, &args.out)?;
    for (r, run) in c.runs.iter().enumerate().skip(1) {
        let d = c.overall(r);
        println!(
            "{} against {}: largest difference {} levels, mean {:.3} (8-bit)",
            run.dir.display(),
            c.runs[0].dir.display(),
            d.max,
            d.mean
        );
    }
    for run in &c.runs {
        for (kind, value) in METRICS.iter().zip(&run.metrics) {
            if let Some(v) = value {
                println!(
                    "{}: {} {} (real: {}; fake: {})",
                    run.dir.display(),
                    kind.name,
                    kind.format(v.value),
                    v.real,
                    v.fake
                );
            }
        }
    }
    println!(
        "{} samples of {} runs: {} grid(s) and the page {}",
        c.indices.len(),
        c.runs.len(),
        c.grids.len(),
        c.page.display()
    );
    Ok(())
}
