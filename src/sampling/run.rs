//! A sampling run: one model, one scheduler, one noise plan and the hooks of every step, cut
//! into batches that come back finished and read back. A sample's noise depends only on its
//! index, so how the indices are batched never changes an image.

use super::labels::ClassLabels;
use super::pipeline::{sample_batch_conditioned, BatchSpec, StepContext, StepHook};
use super::scheduler::Scheduler;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::limits;
use crate::models::{Cond, Decoder, EpsModel, MapSpace};
use crate::noise::{NoiseDraw, NoisePlan};
use crate::ops;

/// A step hook with per-batch state: started before each batch, finished after it, when it
/// hands over what it collected (read back from the GPU).
pub trait BatchHook: StepHook {
    type Output;
    fn start_batch(&mut self);
    fn finish_batch(&mut self, gpu: &Gpu) -> Result<Self::Output>;
}

/// No hook: plain sampling.
impl StepHook for () {
    fn on_eps(&mut self, _: &StepContext, eps: Tensor) -> Result<Tensor> {
        Ok(eps)
    }
}

impl BatchHook for () {
    type Output = ();
    fn start_batch(&mut self) {}
    fn finish_batch(&mut self, _: &Gpu) -> Result<()> {
        Ok(())
    }
}

/// A hook that a run may or may not have.
impl<H: StepHook> StepHook for Option<H> {
    fn on_eps(&mut self, ctx: &StepContext, eps: Tensor) -> Result<Tensor> {
        match self {
            Some(hook) => hook.on_eps(ctx, eps),
            None => Ok(eps),
        }
    }
}

impl<H: BatchHook> BatchHook for Option<H> {
    type Output = Option<H::Output>;
    fn start_batch(&mut self) {
        if let Some(hook) = self {
            hook.start_batch();
        }
    }
    fn finish_batch(&mut self, gpu: &Gpu) -> Result<Self::Output> {
        self.as_mut().map(|h| h.finish_batch(gpu)).transpose()
    }
}

/// Two hooks, the first changing ε before the second sees it (e.g. guidance, then the
/// uncertainty estimator scoring the guided trajectory).
impl<A: StepHook, B: StepHook> StepHook for (A, B) {
    fn on_eps(&mut self, ctx: &StepContext, eps: Tensor) -> Result<Tensor> {
        let eps = self.0.on_eps(ctx, eps)?;
        self.1.on_eps(ctx, eps)
    }
}

impl<A: BatchHook, B: BatchHook> BatchHook for (A, B) {
    type Output = (A::Output, B::Output);
    fn start_batch(&mut self) {
        self.0.start_batch();
        self.1.start_batch();
    }
    fn finish_batch(&mut self, gpu: &Gpu) -> Result<Self::Output> {
        Ok((self.0.finish_batch(gpu)?, self.1.finish_batch(gpu)?))
    }
}

/// Starting noise given by the caller for samples `first_index ..`, (N, C, H, W) flattened.
#[derive(Clone, Debug)]
pub struct InitNoise {
    pub first_index: usize,
    pub data: Vec<f32>,
}

/// One finished batch, on the CPU.
#[derive(Clone, Debug)]
pub struct FinishedBatch<T> {
    pub first_index: usize,
    /// (C, H, W) of one decoded image.
    pub sample_shape: [usize; 3],
    /// (C, H, W) of one sample in the model's space, where the uncertainty maps live.
    pub map_shape: [usize; 3],
    /// Where the maps live relative to the images.
    pub map_space: MapSpace,
    /// The final images in [−1, 1] (unclamped), (B, C, H, W), decoded.
    pub images: Vec<f32>,
    /// Each sample's class, for class-conditional models.
    pub classes: Option<Vec<usize>>,
    /// Every noise draw of the batch and its values, when the noise plan records.
    pub noise: Vec<(NoiseDraw, Vec<f32>)>,
    /// For each sample, the first step at which its ε, x or a hook's output held a NaN or
    /// ±Inf (None: finite throughout).
    pub non_finite: Vec<Option<usize>>,
    /// What the hook collected.
    pub hook: T,
}

impl<T> FinishedBatch<T> {
    pub fn len(&self) -> usize {
        self.images.len() / self.sample_len()
    }
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }
    /// Sample `k` of the batch (C·H·W values).
    pub fn image(&self, k: usize) -> &[f32] {
        let len = self.sample_len();
        &self.images[k * len..(k + 1) * len]
    }
    /// The sample indices of the batch.
    pub fn indices(&self) -> std::ops::Range<usize> {
        self.first_index..self.first_index + self.len()
    }
}

/// Everything fixed for a run, shared by its batches.
pub struct Run<'a> {
    pub gpu: &'a Gpu,
    pub model: &'a dyn EpsModel,
    pub scheduler: &'a Scheduler,
    pub noise: &'a NoisePlan,
    pub labels: ClassLabels,
    pub init_noise: Option<InitNoise>,
    /// Turns finished samples into images before they are read back.
    pub decoder: &'a dyn Decoder,
    /// A condition given whole for every sample (a prompt's text states, one row, with its
    /// classifier-free guidance); `labels` must then be unconditional.
    pub prompt: Option<&'a Cond>,
}

impl Run<'_> {
    /// (C, H, W) of one sample, in the model's space.
    pub fn sample_shape(&self) -> Result<[usize; 3]> {
        self.model.sample_shape()
    }

    /// (C, H, W) of one decoded image.
    pub fn image_shape(&self) -> Result<[usize; 3]> {
        Ok(self.decoder.image_shape(self.sample_shape()?))
    }

    /// Samples `first .. first + size` as one batch, with `hook` running at every step;
    /// `on_step` is called after each step is recorded.
    pub fn sample<H: BatchHook>(
        &self,
        first: usize,
        size: usize,
        hook: &mut H,
        on_step: impl FnMut(usize),
    ) -> Result<FinishedBatch<H::Output>> {
        let gpu = self.gpu;
        limits::sample_range("a batch", first, size)?;
        let sample_shape = self.sample_shape()?;
        let classes = self.labels.batch(first, size);
        let spec = BatchSpec {
            first_index: first,
            size,
            labels: None,
            init_noise: self.init_tensor(first, size, sample_shape)?,
        };
        let cond = match self.prompt {
            None => self.labels.condition(gpu, first, size)?,
            Some(prompt) => prompt.repeat(gpu, size)?,
        };
        hook.start_batch();
        let hooks = &mut [hook as &mut dyn StepHook];
        let out = sample_batch_conditioned(
            gpu,
            self.model,
            self.scheduler,
            self.noise,
            spec,
            &cond,
            hooks,
            on_step,
        )?;
        let decoded = self.decoder.decode(gpu, &out.x)?;
        let [images, flags] =
            <[Vec<f32>; 2]>::try_from(gpu.read_many(&[&decoded, out.non_finite.tensor()])?)
                .map_err(|_| {
                    Error::Internal("two tensors read, a different count returned".into())
                })?;
        let hook = hook.finish_batch(gpu)?;
        let mut noise = Vec::new();
        for draw in self.noise.take_draws() {
            let values = gpu.read(&self.noise.redraw(gpu, &draw)?)?;
            noise.push((draw, values));
        }
        Ok(FinishedBatch {
            first_index: first,
            sample_shape: self.decoder.image_shape(sample_shape),
            map_shape: sample_shape,
            map_space: self.decoder.map_space(),
            images,
            classes,
            noise,
            non_finite: ops::decode_first_steps(&flags),
            hook,
        })
    }

    /// The caller's starting noise for samples `first .. first + size`, on the GPU.
    fn init_tensor(&self, first: usize, size: usize, shape: [usize; 3]) -> Result<Option<Tensor>> {
        let Some(init) = &self.init_noise else {
            return Ok(None);
        };
        let len: usize = shape.iter().product();
        let start = first.checked_sub(init.first_index).map(|k| k * len);
        let range = start.map(|s| s..s + size * len);
        match range.filter(|r| r.end <= init.data.len()) {
            Some(r) => Ok(Some(
                self.gpu
                    .upload(&[size, shape[0], shape[1], shape[2]], &init.data[r])?,
            )),
            None => Err(Error::Invalid(format!(
                "the given starting noise does not cover samples {first}..{}",
                first + size
            ))),
        }
    }
}

/// Splits sorted indices into runs of consecutive values, each at most `batch` long: the
/// batches a run samples.
pub fn contiguous_batches(indices: &[usize], batch: usize) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for &i in indices {
        match out.last_mut() {
            Some(r) if r.len() < batch && r.end == i => r.end += 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}
