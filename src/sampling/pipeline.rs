//! The sampling loop: noise → x_T → … → x_0, every step recorded into one command encoder and
//! submitted once; nothing is read back until the caller asks for the final images. Each step
//! also records, on the GPU, which samples hold a NaN or ±Inf in ε or x (and in what the hooks
//! check), so a broken model, schedule or starting noise is caught with the batch's one
//! read-back rather than written out as a black image.

use super::labels::upload_labels;
use super::noise::NoisePlan;
use super::scheduler::Scheduler;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::EpsModel;
use crate::ops;

/// Per-sample record, on the GPU, of the first step at which a NaN or ±Inf appeared in a
/// batch; read it back with the finished batch ([`ops::decode_first_steps`]).
pub struct NonFiniteFlags(Tensor);

impl NonFiniteFlags {
    /// Flags for a batch of `samples`, none set.
    pub fn new(gpu: &Gpu, samples: usize) -> Result<NonFiniteFlags> {
        Ok(NonFiniteFlags(ops::non_finite_flags(gpu, samples)?))
    }

    /// Records `step` for the samples whose rows of `t` ((k·B, …), row r of sample r % B) are
    /// not all finite. One cheap dispatch; nothing is read back.
    pub fn record(&self, gpu: &Gpu, t: &Tensor, step: usize) -> Result<()> {
        ops::record_non_finite(gpu, t, &self.0, step)
    }

    /// The flag buffer (B), to read back.
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }
}

/// A generated batch, still on the GPU.
pub struct SampledBatch {
    /// The final images in [−1, 1] (unclamped), (B, C, H, W).
    pub x: Tensor,
    /// Which samples went non-finite, and from which step.
    pub non_finite: NonFiniteFlags,
}

/// Everything a step hook may look at: the step, the current sample, the network, the noise.
pub struct StepContext<'a> {
    pub gpu: &'a Gpu,
    pub model: &'a dyn EpsModel,
    pub scheduler: &'a Scheduler,
    pub noise: &'a NoisePlan,
    pub first_index: usize,
    pub step: usize,
    pub timestep: usize,
    pub timesteps: &'a Tensor,
    pub labels: Option<&'a Tensor>,
    pub x: &'a Tensor,
    /// Where a hook records samples its outputs find non-finite.
    pub non_finite: &'a NonFiniteFlags,
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

/// Generates a batch: the final images in [−1, 1] (unclamped) and the non-finite flags, on the
/// GPU.
pub fn sample_batch(
    gpu: &Gpu,
    model: &dyn EpsModel,
    scheduler: &Scheduler,
    noise: &NoisePlan,
    spec: BatchSpec,
    hooks: &mut [&mut dyn StepHook],
    mut on_step: impl FnMut(usize),
) -> Result<SampledBatch> {
    let [c, h, w] = model.sample_shape()?;
    let shape = [spec.size, c, h, w];
    let labels = upload_labels(gpu, model.num_classes(), spec.labels, spec.size)?;
    // Timestep tensors are uploaded before the loop so no step waits on the CPU.
    let timesteps: Vec<Tensor> = scheduler
        .timesteps
        .iter()
        .map(|&t| gpu.upload(&[spec.size], &vec![t as f32; spec.size]))
        .collect::<Result<_>>()?;
    let mut x = match spec.init_noise {
        Some(given) if given.shape() != shape => {
            return Err(Error::Invalid(format!(
                "initial noise {:?} must be {shape:?}",
                given.shape()
            )))
        }
        Some(given) => given,
        None => noise.initial(gpu, &shape, spec.first_index)?,
    };
    let non_finite = NonFiniteFlags::new(gpu, spec.size)?;
    let mut x0_prev: Option<Tensor> = None;
    for (i, &t) in scheduler.timesteps.iter().enumerate() {
        let mut eps = model.predict_eps(gpu, &x, &timesteps[i], labels.as_ref())?;
        let ctx = StepContext {
            gpu,
            model,
            scheduler,
            noise,
            first_index: spec.first_index,
            step: i,
            timestep: t,
            timesteps: &timesteps[i],
            labels: labels.as_ref(),
            x: &x,
            non_finite: &non_finite,
        };
        for hook in hooks.iter_mut() {
            eps = hook.on_eps(&ctx, eps)?;
        }
        // ε itself: with x̂0 clamped, a NaN ε can leave x finite but meaningless.
        non_finite.record(gpu, &eps, i)?;
        let k = scheduler.coeffs(i);
        let z = if scheduler.needs_noise(i) {
            Some(noise.ancestral(gpu, &shape, i, spec.first_index)?)
        } else {
            None
        };
        let prev = if k.e != 0.0 { x0_prev.as_ref() } else { None };
        let (next, x0) = ops::sampler_step(gpu, &k, &x, &eps, prev, z.as_ref())?;
        non_finite.record(gpu, &next, i)?;
        x = next;
        x0_prev = Some(x0);
        gpu.flush();
        on_step(i);
    }
    Ok(SampledBatch { x, non_finite })
}
