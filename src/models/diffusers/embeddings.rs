//! diffusers' `embeddings.py` for the time conditioning of UNet2DModel: the sinusoidal
//! `Timesteps` projection and the `TimestepEmbedding` MLP on top of it.

use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::models::layers::Linear;
use crate::models::weights::VarBuilder;
use crate::ops;

/// diffusers `Timesteps`: sinusoidal features of the (fractional) timestep; no parameters, only
/// the frequency table made at load.
pub struct Timesteps {
    num_channels: usize,
    flip_sin_to_cos: bool,
    freqs: Tensor,
}

impl Timesteps {
    pub fn new(
        gpu: &Gpu,
        num_channels: usize,
        flip_sin_to_cos: bool,
        downscale_freq_shift: f32,
    ) -> Result<Timesteps> {
        Ok(Timesteps {
            num_channels,
            flip_sin_to_cos,
            freqs: ops::timestep_frequencies(gpu, num_channels, downscale_freq_shift)?,
        })
    }

    /// (B, num_channels) features of `timesteps` (B).
    pub fn forward(&self, gpu: &Gpu, timesteps: &Tensor) -> Result<Tensor> {
        ops::timestep_embedding(
            gpu,
            timesteps,
            &self.freqs,
            self.num_channels,
            self.flip_sin_to_cos,
        )
    }
}

/// diffusers `TimestepEmbedding` with its default SiLU: linear_1 → SiLU → linear_2.
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(
        vb: &VarBuilder,
        in_channels: usize,
        time_embed_dim: usize,
    ) -> Result<TimestepEmbedding> {
        Ok(TimestepEmbedding {
            linear_1: Linear::load(&vb.pp("linear_1"), in_channels, time_embed_dim)?,
            linear_2: Linear::load(&vb.pp("linear_2"), time_embed_dim, time_embed_dim)?,
        })
    }

    pub fn forward(&self, gpu: &Gpu, sample: &Tensor) -> Result<Tensor> {
        let h = self.linear_1.forward(gpu, sample)?;
        self.linear_2.forward(gpu, &ops::silu(gpu, &h)?)
    }
}
