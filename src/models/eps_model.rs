//! What samplers, the uncertainty estimator and guidance need from a network: an ε prediction
//! under a [`Cond`], the shape of what it denoises and, for gradient guidance, its input
//! gradient. Every model family implements [`EpsModel`], so none of them forks the sampling
//! code; classifier-free guidance wraps any of them ([`super::denoise`]).

use super::cond::Cond;
use super::mc_dropout::DropoutMasks;
use super::UNet2DModel;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

/// A noise-prediction network ε_θ(x_t, t, y).
pub trait EpsModel {
    /// The network's ε for `x` (B, C, H, W) at `timesteps` (B) under one condition (`cond`
    /// holds no classifier-free guidance: [`denoise`](super::denoise) resolves that around
    /// this call, and is what samplers and hooks call).
    fn predict_eps(&self, gpu: &Gpu, x: &Tensor, timesteps: &Tensor, cond: &Cond)
        -> Result<Tensor>;

    /// (C, H, W) of one sample.
    fn sample_shape(&self) -> Result<[usize; 3]>;

    /// The number of classes of a class-conditional model (that a sample may be drawn from).
    fn num_classes(&self) -> Option<usize>;

    /// The label a class-conditional model was trained to read as "no class", which
    /// classifier-free guidance over classes needs (None: it has none).
    fn null_class(&self) -> Option<usize> {
        None
    }

    /// Whether the network also predicts the variance (its extra output channels are not ε).
    fn learned_variance(&self) -> bool {
        false
    }

    /// ε and, for a model with [`learned_variance`](Self::learned_variance), its variance
    /// output v in [−1, 1] (ADM's learned-range interpolation, shaped like ε) from one pass.
    fn predict_eps_and_variance(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
    ) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.predict_eps(gpu, x, timesteps, cond)?, None))
    }

    /// The rate of the network's dropout layers (0: it has none, or they are disabled).
    fn dropout_rate(&self) -> f64 {
        0.0
    }

    /// ε with dropout active, for `x` holding stacked copies of a batch, with the masks of
    /// `masks` (MC-Dropout).
    fn predict_eps_mc_dropout(
        &self,
        _gpu: &Gpu,
        _x: &Tensor,
        _timesteps: &Tensor,
        _cond: &Cond,
        _masks: &DropoutMasks,
    ) -> Result<Tensor> {
        Err(Error::Invalid(
            "MC-Dropout needs a model with dropout layers; this one has none".into(),
        ))
    }

    /// The largest batch one call can take on `gpu` without a binding over the device limit.
    fn max_batch(&self, gpu: &Gpu) -> usize;

    /// ∂⟨ε_θ(x, t, y), v⟩/∂x, shaped like `x`, for a cotangent `v` shaped like ε: the
    /// vector-Jacobian product gradient guidance needs (any batch size; implementations split
    /// it as the device requires).
    fn vjp(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
        v: &Tensor,
    ) -> Result<Tensor> {
        let _ = (gpu, x, timesteps, cond, v);
        Err(Error::Invalid(
            "this model has no backward pass implemented; gradient guidance needs one".into(),
        ))
    }
}

impl EpsModel for UNet2DModel {
    fn predict_eps(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
    ) -> Result<Tensor> {
        self.forward(gpu, x, timesteps, cond.class_labels()?)
    }

    /// Refused for a network whose output is not one ε per input channel (a diffusers UNet
    /// with learned variance, or another task's network): it loads, but cannot sample.
    fn sample_shape(&self) -> Result<[usize; 3]> {
        let config = &self.config;
        if config.out_channels != config.in_channels {
            return Err(Error::Invalid(format!(
                "unsupported UNet2DModel for sampling: out_channels {} ≠ in_channels {} (only ε \
                 prediction, no learned variance)",
                config.out_channels, config.in_channels
            )));
        }
        square_sample(config.in_channels, config.sample_size)
    }

    fn num_classes(&self) -> Option<usize> {
        UNet2DModel::num_classes(self)
    }

    fn max_batch(&self, gpu: &Gpu) -> usize {
        UNet2DModel::max_batch(self, gpu)
    }

    fn vjp(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
        v: &Tensor,
    ) -> Result<Tensor> {
        UNet2DModel::vjp(self, gpu, x, timesteps, cond.class_labels()?, v)
    }
}

/// (C, side, side) of a diffusers model's samples, from its config's `sample_size`.
pub(crate) fn square_sample(channels: usize, sample_size: Option<usize>) -> Result<[usize; 3]> {
    let side =
        sample_size.ok_or_else(|| Error::Invalid("the model config has no sample_size".into()))?;
    Ok([channels, side, side])
}
