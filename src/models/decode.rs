//! The decode stage between the space a model samples in and the images a run writes: the
//! identity for pixel-space models; a latent model's autoencoder decoder (Stable Diffusion's
//! `AutoencoderKL`, U-ViT's) is another [`Decoder`]. The sampler, the uncertainty maps and
//! guidance stay in the model's space; only the finished batch is decoded, once, before it is
//! read back.

use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use serde::Serialize;

/// Where a run's samples (and so its uncertainty maps) live relative to its images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapSpace {
    /// The maps are pixel maps of the images themselves.
    Image,
    /// The maps are latent maps: each latent element covers `factor`×`factor` image pixels.
    Latent { factor: usize },
}

/// Turns finished samples into images in [−1, 1].
pub trait Decoder {
    /// (C, H, W) of a decoded image for a sample of `sample` (C, H, W).
    fn image_shape(&self, sample: [usize; 3]) -> [usize; 3];

    /// The decoded images (B, C', H', W') of a batch of samples (B, C, H, W), on the GPU.
    fn decode(&self, gpu: &Gpu, samples: &Tensor) -> Result<Tensor>;

    /// Where the samples and maps live relative to the images.
    fn map_space(&self) -> MapSpace;
}

/// Pixel-space models: the samples are the images.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl Decoder for Identity {
    fn image_shape(&self, sample: [usize; 3]) -> [usize; 3] {
        sample
    }

    /// The batch itself, not a copy: decoding a pixel model adds no GPU work.
    fn decode(&self, _: &Gpu, samples: &Tensor) -> Result<Tensor> {
        Ok(samples.clone())
    }

    fn map_space(&self) -> MapSpace {
        MapSpace::Image
    }
}
