//! The decoder half of diffusers' `AutoencoderKL` (`autoencoder_kl.py`, `vae.py`'s `Decoder`),
//! the [`Decoder`] of Stable Diffusion's latent space: latents divided by `scaling_factor`,
//! `post_quant_conv`, `conv_in`, a mid block (resnet, one-head attention, resnet),
//! `UpDecoderBlock2D`s (resnets without time embedding, nearest-neighbour upsampling), group norm,
//! SiLU, `conv_out`. The encoder's tensors are skipped: sampling only decodes.

use super::attention::Attention;
use super::resnet::{ResnetBlock2D, ResnetConfig, TimeEmbeddingNorm, Upsample2D};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::layers::{Conv2d, GroupNorm};
use crate::models::weights::{VarBuilder, WeightFile};
use crate::models::{Decoder, MapSpace};
use crate::ops;
use serde::Deserialize;

/// The keys of diffusers' `AutoencoderKL` config the decoder reads; diffusers' defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AutoencoderKlConfig {
    pub out_channels: usize,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f32,
    pub act_fn: String,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    pub force_upcast: bool,
    /// Only None: shifted latents (SD 3's VAE) are not decoded here.
    pub shift_factor: Option<f32>,
    /// Only None: per-channel latent statistics are not applied here.
    pub latents_mean: Option<serde_json::Value>,
    pub latents_std: Option<serde_json::Value>,
}

impl Default for AutoencoderKlConfig {
    fn default() -> Self {
        AutoencoderKlConfig {
            out_channels: 3,
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            act_fn: "silu".into(),
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            force_upcast: true,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
        }
    }
}

/// The VAE's group norms' epsilon (fixed in diffusers' Decoder).
const EPS: f32 = 1e-6;

struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

/// `AutoencoderKL`'s decode path.
pub struct AutoencoderKlDecoder {
    pub config: AutoencoderKlConfig,
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_resnets: [ResnetBlock2D; 2],
    mid_attention: Option<Attention>,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl AutoencoderKlDecoder {
    pub const ARCH: &'static str = "AutoencoderKL";

    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<AutoencoderKlDecoder> {
        file.expect_arch(Self::ARCH)?;
        let config: AutoencoderKlConfig = file.config()?;
        let vb = file.var_builder(gpu);
        vb.skip("encoder.");
        vb.skip("quant_conv.");
        let model = Self::build(&vb, config)?;
        vb.finish()?;
        Ok(model)
    }

    fn build(vb: &VarBuilder, config: AutoencoderKlConfig) -> Result<AutoencoderKlDecoder> {
        let ch = &config.block_out_channels;
        let levels = ch.len();
        let bad = |what: String| Err(Error::Invalid(format!("AutoencoderKL config: {what}")));
        if levels == 0 || config.up_block_types.len() != levels {
            return bad("one up block per block_out_channels entry".into());
        }
        if config
            .up_block_types
            .iter()
            .any(|t| t != "UpDecoderBlock2D")
            || config.act_fn != "silu"
        {
            return bad(format!(
                "{:?} with {}: UpDecoderBlock2D and silu only",
                config.up_block_types, config.act_fn
            ));
        }
        if ch.iter().any(|c| c % config.norm_num_groups.max(1) != 0) || config.norm_num_groups == 0
        {
            return bad(format!(
                "{ch:?} not divisible into {} groups",
                config.norm_num_groups
            ));
        }
        if config.shift_factor.is_some()
            || config.latents_mean.is_some()
            || config.latents_std.is_some()
        {
            return bad(
                "shift_factor and latents_mean/std are not implemented (SD 1.x VAEs have none)"
                    .into(),
            );
        }
        if !(config.scaling_factor.is_finite() && config.scaling_factor > 0.0) {
            return bad(format!("scaling_factor {}", config.scaling_factor));
        }
        let d = vb.pp("decoder");
        let resnet = ResnetConfig {
            groups: config.norm_num_groups,
            eps: EPS,
            temb_channels: None,
            time_norm: TimeEmbeddingNorm::Default,
            output_scale_factor: 1.0,
        };
        let top = ch[levels - 1];
        let post_quant_conv = match config.use_post_quant_conv {
            true => Some(Conv2d::load(
                &vb.pp("post_quant_conv"),
                config.latent_channels,
                config.latent_channels,
                1,
                1,
                0,
            )?),
            false => None,
        };
        let conv_in = Conv2d::load(&d.pp("conv_in"), config.latent_channels, top, 3, 1, 1)?;
        let mid = d.pp("mid_block");
        let mid_resnets = [
            ResnetBlock2D::load(&mid.pp("resnets").pp(0), top, top, &resnet)?,
            ResnetBlock2D::load(&mid.pp("resnets").pp(1), top, top, &resnet)?,
        ];
        let mid_attention = match config.mid_block_add_attention {
            true => Some(Attention::load(
                &mid.pp("attentions").pp(0),
                top,
                top,
                Some(config.norm_num_groups),
                EPS,
                1.0,
            )?),
            false => None,
        };
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::new();
        for (i, &c_out) in reversed.iter().enumerate() {
            let vb = d.pp("up_blocks").pp(i);
            let prev = if i == 0 { top } else { reversed[i - 1] };
            let resnets = (0..=config.layers_per_block)
                .map(|j| {
                    let c_in = if j == 0 { prev } else { c_out };
                    ResnetBlock2D::load(&vb.pp("resnets").pp(j), c_in, c_out, &resnet)
                })
                .collect::<Result<_>>()?;
            let upsampler = match i + 1 < levels {
                true => Some(Upsample2D::load(&vb.pp("upsamplers").pp(0), c_out)?),
                false => None,
            };
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
        }
        Ok(AutoencoderKlDecoder {
            post_quant_conv,
            conv_in,
            mid_resnets,
            mid_attention,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                &d.pp("conv_norm_out"),
                config.norm_num_groups,
                ch[0],
                EPS,
            )?,
            conv_out: Conv2d::load(&d.pp("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
            config,
        })
    }

    /// Each latent element covers this many pixels along each side.
    pub fn factor(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }
}

impl Decoder for AutoencoderKlDecoder {
    fn image_shape(&self, [_, h, w]: [usize; 3]) -> [usize; 3] {
        let f = self.factor();
        [self.config.out_channels, h * f, w * f]
    }

    /// Images in [−1, 1] (unclamped) of latents (B, latent_channels, h, w) in the diffusion's
    /// scale, divided by `scaling_factor` first as Stable Diffusion's pipeline does.
    fn decode(&self, gpu: &Gpu, samples: &Tensor) -> Result<Tensor> {
        let z = ops::affine(gpu, samples, 1.0 / self.config.scaling_factor, 0.0)?;
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(gpu, &z)?,
            None => z,
        };
        let mut x = self.conv_in.forward(gpu, &z)?;
        x = self.mid_resnets[0].forward(gpu, &x, None)?;
        if let Some(attention) = &self.mid_attention {
            x = attention.forward(gpu, &x)?;
        }
        x = self.mid_resnets[1].forward(gpu, &x, None)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(gpu, &x, None)?;
            }
            if let Some(up) = &block.upsampler {
                x = up.forward(gpu, &x)?;
            }
        }
        let normed = self.conv_norm_out.forward(gpu, &x, true)?;
        self.conv_out.forward(gpu, &normed)
    }

    fn map_space(&self) -> MapSpace {
        MapSpace::Latent {
            factor: self.factor(),
        }
    }
}
