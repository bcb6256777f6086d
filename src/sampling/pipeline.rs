//! The sampling loop: noise → x_T → … → x_0, every step recorded into one command encoder and
//! submitted once; nothing is read back until the caller asks for the final images. Each step
//! also records, on the GPU, which samples hold a NaN or ±Inf in ε or x (and in what the hooks
//! check), so a broken model, schedule or starting noise is caught with the batch's one
//! read-back rather than written out as a black image.

use super::labels::upload_labels;
use super::scheduler::Scheduler;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::{denoise, denoise_vjp, Cond, EpsModel};
use crate::noise::NoisePlan;
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
    /// The batch's conditioning, one row per sample.
    pub cond: &'a Cond,
    pub x: &'a Tensor,
    /// Where a hook records samples its outputs find non-finite.
    pub non_finite: &'a NonFiniteFlags,
}

impl StepContext<'_> {
    /// The step's timesteps and conditioning repeated for `copies` stacked copies of the batch.
    pub fn repeated(&self, copies: usize) -> Result<(Tensor, Cond)> {
        let timesteps = ops::repeat_batch(self.gpu, self.timesteps, copies)?;
        Ok((timesteps, self.cond.repeat(self.gpu, copies)?))
    }

    /// ε_θ at `noisy`, `copies` stacked copies of the batch (M·B, C, H, W), at this step's
    /// timestep and conditioning: one network call, or as few as the device's binding limit (and
    /// `max_copies_per_call`) allow.
    pub fn predict_copies(
        &self,
        noisy: &Tensor,
        copies: usize,
        max_copies_per_call: Option<usize>,
    ) -> Result<Tensor> {
        let (gpu, batch) = (self.gpu, self.x.dim(0));
        let rows = batch.max(1) * self.cond.passes();
        let fit = (self.model.max_batch(gpu) / rows).max(1);
        let per_call = max_copies_per_call.unwrap_or(copies).min(fit).min(copies);
        let (timesteps, cond) = self.repeated(per_call)?;
        if per_call == copies {
            return denoise(self.model, gpu, noisy, &timesteps, &cond);
        }
        let out = gpu.empty(noisy.shape())?;
        let sample_bytes = noisy.byte_len() / (copies * batch) as u64;
        let mut first = 0;
        while first < copies {
            let n = per_call.min(copies - first);
            let mut shape = noisy.shape().to_vec();
            shape[0] = n * batch;
            let chunk = gpu.empty(&shape)?;
            let offset = (first * batch) as u64 * sample_bytes;
            gpu.copy_range(noisy, offset, &chunk)?;
            let (t, c) = match n == per_call {
                true => (timesteps.clone(), cond.clone()),
                false => self.repeated(n)?,
            };
            let eps = denoise(self.model, gpu, &chunk, &t, &c)?;
            gpu.copy_into(&eps, &out, offset)?;
            first += n;
        }
        Ok(out)
    }

    /// ∂⟨ε_θ(noisy), v⟩/∂noisy for `copies` stacked copies of the batch.
    pub fn vjp_copies(&self, noisy: &Tensor, v: &Tensor, copies: usize) -> Result<Tensor> {
        let (timesteps, cond) = self.repeated(copies)?;
        denoise_vjp(self.model, self.gpu, noisy, &timesteps, &cond, v)
    }
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
/// GPU, conditioned on the batch's class labels (or nothing).
pub fn sample_batch(
    gpu: &Gpu,
    model: &dyn EpsModel,
    scheduler: &Scheduler,
    noise: &NoisePlan,
    spec: BatchSpec,
    hooks: &mut [&mut dyn StepHook],
    on_step: impl FnMut(usize),
) -> Result<SampledBatch> {
    let cond = upload_labels(gpu, model.num_classes(), spec.labels, spec.size)?;
    let spec = BatchSpec {
        labels: None,
        ..spec
    };
    sample_batch_conditioned(gpu, model, scheduler, noise, spec, &cond, hooks, on_step)
}

/// [`sample_batch`] under a condition given whole (text states, classifier-free guidance), one
/// row per sample; `spec.labels` must be None.
#[allow(clippy::too_many_arguments)] // sample_batch's inputs and the condition
pub fn sample_batch_conditioned(
    gpu: &Gpu,
    model: &dyn EpsModel,
    scheduler: &Scheduler,
    noise: &NoisePlan,
    spec: BatchSpec,
    cond: &Cond,
    hooks: &mut [&mut dyn StepHook],
    mut on_step: impl FnMut(usize),
) -> Result<SampledBatch> {
    if spec.labels.is_some() || cond.rows().is_some_and(|r| r != spec.size) {
        return Err(Error::Invalid(format!(
            "a batch of {} samples takes one condition row per sample and no separate labels \
             (the condition holds {:?} rows)",
            spec.size,
            cond.rows()
        )));
    }
    let [c, h, w] = model.sample_shape()?;
    let shape = [spec.size, c, h, w];
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
    let ancestral = |i: usize, variance: Option<&Tensor>| {
        step_noise(gpu, scheduler, noise, i, &shape, spec.first_index, variance)
    };
    let non_finite = NonFiniteFlags::new(gpu, spec.size)?;
    let mut state = scheduler.start();
    for (i, &t) in scheduler.timesteps.iter().enumerate() {
        // A profile counts per step; the scopes name what is not the network.
        let _step = gpu.profile_step(format_args!("sample {} step {i}", spec.first_index));
        let (mut eps, variance) = predict(gpu, model, scheduler, &x, &timesteps[i], cond)?;
        let ctx = StepContext {
            gpu,
            model,
            scheduler,
            noise,
            first_index: spec.first_index,
            step: i,
            timestep: t,
            timesteps: &timesteps[i],
            cond,
            x: &x,
            non_finite: &non_finite,
        };
        for hook in hooks.iter_mut() {
            let _scope = gpu.scope("hooks");
            eps = hook.on_eps(&ctx, eps)?;
        }
        x = {
            let _scope = gpu.scope("scheduler");
            // ε itself: with x̂0 clamped, a NaN ε can leave x finite but meaningless.
            non_finite.record(gpu, &eps, i)?;
            let z = ancestral(i, variance.as_ref())?;
            let next = state.step(gpu, i, &x, &eps, z.as_ref())?;
            non_finite.record(gpu, &next, i)?;
            next
        };
        gpu.flush();
        gpu.trim_idle_memory();
        on_step(i);
    }
    Ok(SampledBatch { x, non_finite })
}

/// ε at x, and the model's variance output where the schedule samples with it.
fn predict(
    gpu: &Gpu,
    model: &dyn EpsModel,
    scheduler: &Scheduler,
    x: &Tensor,
    timesteps: &Tensor,
    cond: &Cond,
) -> Result<(Tensor, Option<Tensor>)> {
    if !scheduler.needs_model_variance() {
        return Ok((denoise(model, gpu, x, timesteps, cond)?, None));
    }
    if !model.learned_variance() {
        return Err(Error::Invalid(
            "the schedule asks for learned-range variance but the model predicts no variance"
                .into(),
        ));
    }
    model.predict_eps_and_variance(gpu, x, timesteps, cond)
}

/// The noise term of step `i` (None for a deterministic step): z, scaled by the model's
/// learned-range standard deviation where the schedule asks for it.
fn step_noise(
    gpu: &Gpu,
    scheduler: &Scheduler,
    noise: &NoisePlan,
    i: usize,
    shape: &[usize],
    first_index: usize,
    variance: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if !scheduler.needs_noise(i) {
        return Ok(None);
    }
    let z = noise.ancestral(gpu, shape, i, first_index)?;
    match (scheduler.learned_range(i), variance) {
        (Some((lo, hi)), Some(v)) => Ok(Some(ops::learned_range_noise(gpu, v, &z, lo, hi)?)),
        (Some(_), None) => Err(Error::Invalid(
            "the model returned no variance for a learned-range step".into(),
        )),
        (None, _) => Ok(Some(z)),
    }
}
