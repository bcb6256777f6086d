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
    /// Split a scored run into the lowest-uncertainty set and an equal random subset.
    Filter(cli::filter::FilterArgs),
    /// Score generated images against real ones: Fréchet distance of classifier features, confidence.
    Eval(cli::eval::EvalArgs),
}

fn main() -> std::process::ExitCode {
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
        Command::Filter(args) => cli::filter::run(&args)?,
        Command::Eval(args) => cli::eval::run(&Gpu::new(&choice)?, &args)?,
    }
    Ok(())
}
