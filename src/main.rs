//! The `wgsl-diff` command line.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use wgsl_diff::gpu::{AdapterChoice, Gpu};

#[derive(Parser)]
#[command(
    name = "wgsl-diff",
    version,
    about = "Diffusion sampling with pixel-wise uncertainty on WGSL kernels"
)]
struct Cli {
    /// GPU adapter: an index from `wgsl-diff info` or part of its name (default: high-performance).
    #[arg(long, global = true)]
    adapter: Option<AdapterChoice>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the adapters wgpu sees (honours WGPU_BACKEND) and describe the one that would be used.
    Info,
    /// Generate samples: one PNG per sample, a grid and a samples.json manifest.
    Sample(Box<cli::sample::SampleArgs>),
    /// Per-element guidance thresholds (for --threshold-file) from N unguided samples.
    Calibrate(cli::calibrate::CalibrateArgs),
    /// Real-image statistics (for --uc-reference) of the posterior-variance and residual modes.
    Reference(cli::reference::ReferenceArgs),
    /// Split a scored run into the lowest-uncertainty set and an equal random subset.
    Filter(cli::filter::FilterArgs),
    /// Runs that share x_T (same seed and samples) side by side: grids and compare.html.
    Compare(cli::compare::CompareArgs),
    /// Score generated images against real ones: Fréchet distance of classifier features, confidence.
    Eval(cli::eval::EvalArgs),
    /// FID with pytorch-fid's Inception-V3 between images or statistics, or save statistics.
    Fid(cli::fid::FidArgs),
}

fn main() -> std::process::ExitCode {
    give_headless_drivers_a_runtime_dir();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let choice = cli.adapter.unwrap_or_default();
    match cli.command {
        Command::Info => {
            for (i, a) in Gpu::adapters().iter().enumerate() {
                let info = a.get_info();
                println!(
                    "[{i}] {} ({:?}, {:?})",
                    info.name, info.backend, info.device_type
                );
            }
            let gpu = Gpu::new(&choice)?;
            println!("selected: {}", gpu.describe());
        }
        Command::Sample(args) => cli::sample::run(&choice, &args)?,
        Command::Calibrate(args) => cli::calibrate::run(&Gpu::new(&choice)?, &args)?,
        Command::Reference(args) => cli::reference::run(&Gpu::new(&choice)?, &args)?,
        Command::Filter(args) => cli::filter::run(&args)?,
        Command::Compare(args) => cli::compare::run(&args)?,
        Command::Eval(args) => cli::eval::run(&Gpu::new(&choice)?, &args)?,
        Command::Fid(args) => cli::fid::run(&choice, &args)?,
    }
    Ok(())
}

/// On a headless machine Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set"
/// several times per command when looking for a display they do not need. A private runtime
/// folder (what a login session would provide) keeps that noise from every healthy run. Done
/// first thing in `main`, before any thread exists to read the environment concurrently.
#[cfg(unix)]
fn give_headless_drivers_a_runtime_dir() {
    use std::os::unix::fs::DirBuilderExt;
    let current = std::env::var_os("XDG_RUNTIME_DIR");
    if current.is_some_and(|d| std::path::Path::new(&d).is_dir()) {
        return;
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let dir = std::env::temp_dir().join(format!("wgsl-diff-runtime-{user}"));
    let usable = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .is_ok();
    if usable {
        std::env::set_var("XDG_RUNTIME_DIR", dir);
    }
}

#[cfg(not(unix))]
fn give_headless_drivers_a_runtime_dir() {}
