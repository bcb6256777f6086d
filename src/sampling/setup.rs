//! Opening a weight file for sampling: the network, and the scheduler its training schedule and
//! the user's sampler choice imply.

use super::{NoiseSchedule, SamplerChoice, SamplerKind, ScheduleConfig, Scheduler};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::models::{load_eps_model, open_model, EpsModel, WeightFile};
use std::path::Path;

/// The sampler a model runs with when `--sampler` names none: a Stable Diffusion folder's own
/// scheduler class (PNDM for SD 1.5), DDIM otherwise.
pub fn default_sampler(path: &Path) -> SamplerKind {
    match crate::models::pipeline::stable_diffusion_scheduler(path).as_deref() {
        Some("PNDMScheduler") => SamplerKind::Pndm,
        Some("DDPMScheduler") => SamplerKind::Ddpm,
        Some("DPMSolverMultistepScheduler") => SamplerKind::Dpmpp2m,
        _ => SamplerKind::Ddim,
    }
}

/// Validates the sampler against the file's schedule before uploading any weight, so a bad
/// choice fails fast.
pub fn load_for_sampling(
    gpu: &Gpu,
    path: &Path,
    choice: &SamplerChoice,
) -> Result<(Box<dyn EpsModel>, Scheduler)> {
    let (file, scheduler) = open_scheduler(path, choice)?;
    Ok((load_eps_model(gpu, &file)?, scheduler))
}

/// The model (a weight file or a diffusers folder, [`open_model`]) and its scheduler, without
/// loading the network.
pub fn open_scheduler(path: &Path, choice: &SamplerChoice) -> Result<(WeightFile, Scheduler)> {
    let file = open_model(path)?;
    let schedule = ScheduleConfig::from_weights(&file)?;
    let scheduler = Scheduler::new(
        choice.resolve(&schedule),
        NoiseSchedule::from_config(&schedule)?,
    )?;
    Ok((file, scheduler))
}
