//! The sampling loop: noise → x_T → … → x_0, every step recorded into one command encoder and
//! submitted once; nothing is read back until the caller asks for the final images.

use super::scheduler::Scheduler;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::UNet2DModel;
use crate::ops::{self, NoiseKey};

/// What a noise tensor is for; with the seed, step and copy index it selects the Philox stream,
/// so every draw is reproducible on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum NoisePurpose {
    Initial = 1,
    Ancestral = 2,
    Uncertainty = 3,
}

pub fn noise_key(seed: u64, purpose: NoisePurpose, step: usize, copy: usize) -> NoiseKey {
    NoiseKey {
        seed,
        tag: (purpose as u64) << 48 | (copy as u64 & 0xffff) << 32 | step as u64,
    }
}

/// Everything a step hook may look at: the step, the current sample, the network.
pub struct StepContext<'a> {
    pub gpu: &'a Gpu,
    pub model: &'a UNet2DModel,
    pub scheduler: &'a Scheduler,
    pub seed: u64,
    pub first_index: usize,
    pub step: usize,
    pub timestep: usize,
    pub timesteps: &'a Tensor,
    pub labels: Option<&'a Tensor>,
    pub x: &'a Tensor,
}

/// Runs inside each step after the network's ε prediction and before the update; may replace ε
/// (guidance) or only observe it (uncertainty estimation).
pub trait StepHook {
    fn on_eps(&mut self, ctx: &StepContext, eps: Tensor) -> Result<Tensor>;
}

/// One batch of samples `first_index .. first_index + size`.
pub struct BatchSpec<'a> {
    pub first_index: usize,
    pub size: usize,
    pub labels: Option<&'a [usize]>,
    /// Replaces the generated starting noise (B, C, H, W).
    pub init_noise: Option<Tensor>,
}

/// Generates a batch and returns the final images in [−1, 1] (unclamped) on the GPU.
pub fn sample_batch(
    gpu: &Gpu,
    model: &UNet2DModel,
    scheduler: &Scheduler,
    seed: u64,
    spec: BatchSpec,
    hooks: &mut [&mut dyn StepHook],
    mut on_step: impl FnMut(usize),
) -> Result<Tensor> {
    let cfg = &model.config;
    let side = cfg
        .sample_size
        .ok_or_else(|| Error::Invalid("the model config has no sample_size".into()))?;
    let shape = [spec.size, cfg.in_channels, side, side];
    let labels = match (spec.labels, model.num_classes()) {
        (Some(l), Some(n)) => {
            if let Some(bad) = l.iter().find(|&&c| c >= n) {
                return Err(Error::Invalid(format!(
                    "class {bad} out of range: the model has {n} classes"
                )));
            }
            if l.len() != spec.size {
                return Err(Error::Invalid(format!(
                    "{} labels for {} samples",
                    l.len(),
                    spec.size
                )));
            }
            Some(gpu.upload(
                &[spec.size],
                &l.iter().map(|&c| c as f32).collect::<Vec<_>>(),
            )?)
        }
        (None, Some(_)) => {
            return Err(Error::Invalid(
                "this model is class-conditional: give --class".into(),
            ))
        }
        (Some(_), None) => {
            return Err(Error::Invalid(
                "this model is unconditional: --class does not apply".into(),
            ))
        }
        (None, None) => None,
    };
    // Timestep tensors are uploaded before the loop so no step waits on the CPU.
    let timesteps: Vec<Tensor> = scheduler
        .timesteps
        .iter()
        .map(|&t| gpu.upload(&[spec.size], &vec![t as f32; spec.size]))
        .collect::<Result<_>>()?;
    let mut x = match spec.init_noise {
        Some(noise) => {
            if noise.shape() != shape {
                return Err(Error::Invalid(format!(
                    "initial noise {:?} must be {shape:?}",
                    noise.shape()
                )));
            }
            noise
        }
        None => ops::normal(
            gpu,
            &shape,
            noise_key(seed, NoisePurpose::Initial, 0, 0),
            spec.first_index,
        )?,
    };
    let mut x0_prev: Option<Tensor> = None;
    for (i, &t) in scheduler.timesteps.iter().enumerate() {
        let mut eps = model.forward(gpu, &x, &timesteps[i], labels.as_ref())?;
        let ctx = StepContext {
            gpu,
            model,
            scheduler,
            seed,
            first_index: spec.first_index,
            step: i,
            timestep: t,
            timesteps: &timesteps[i],
            labels: labels.as_ref(),
            x: &x,
        };
        for hook in hooks.iter_mut() {
            eps = hook.on_eps(&ctx, eps)?;
        }
        let k = scheduler.coeffs(i);
        let noise = if k.c != 0.0 {
            Some(ops::normal(
                gpu,
                &shape,
                noise_key(seed, NoisePurpose::Ancestral, i, 0),
                spec.first_index,
            )?)
        } else {
            None
        };
        let prev = if k.e != 0.0 { x0_prev.as_ref() } else { None };
        let (next, x0) = ops::sampler_step(gpu, &k, &x, &eps, prev, noise.as_ref())?;
        x = next;
        x0_prev = Some(x0);
        gpu.flush();
        on_step(i);
    }
    Ok(x)
}
