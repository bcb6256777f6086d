//! openai/guided-diffusion's `UNetModel` (ADM, Dhariwal & Nichol 2021), the paper's ImageNet
//! models, laid out like that repository's `unet.py`: [`unet`] (the model) is built from the
//! [`blocks`] (`ResBlock` with scale-shift norm and res-block up/down-sampling, `Downsample`,
//! `Upsample`, `TimestepEmbedSequential`) and the [`attention`] block (`AttentionBlock` with
//! `QKVAttention` and `QKVAttentionLegacy`), with [`nn`] holding the parameters the model
//! rearranges itself. Tensor names are guided-diffusion's state-dict names, so a converted
//! checkpoint loads tensor for tensor (`tools/convert.py --adm`).

pub mod attention;
pub mod blocks;
pub mod nn;
pub mod unet;

pub use unet::AdmModel;

use crate::error::{Error, Result};
use crate::limits::{MAX_BLOCKS, MAX_CHANNELS, MAX_CLASSES, MAX_LAYERS_PER_BLOCK, MAX_SAMPLE_SIZE};
use serde::{Deserialize, Serialize};

/// Groups of every `normalization(channels)` (guided-diffusion's `GroupNorm32`).
pub const NORM_GROUPS: usize = 32;
/// `GroupNorm32`'s epsilon (PyTorch's default).
pub const NORM_EPS: f32 = 1e-5;

/// guided-diffusion's `UNetModel.__init__` arguments, as `tools/convert.py` stores them in the
/// weight file's `config` metadata. Missing optional fields take `UNetModel`'s defaults; the
/// required ones (sizes) must be present. Any other key is refused, so a misspelled one cannot
/// silently fall back to a default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmConfig {
    pub image_size: usize,
    pub in_channels: usize,
    pub model_channels: usize,
    /// `in_channels` for an ε model; twice that with `learn_sigma` (ε, then the variance).
    pub out_channels: usize,
    pub num_res_blocks: usize,
    /// Downsampling rates with attention (1 = full resolution): `create_model` turns the
    /// `--attention_resolutions 32,16,8` flag into `image_size // res` before `UNetModel`.
    pub attention_resolutions: Vec<usize>,
    /// Dropout rate of every ResBlock (off at inference; MC-Dropout turns it on).
    pub dropout: f64,
    /// Width multipliers per level; a level is `int(mult · model_channels)` wide.
    pub channel_mult: Vec<f64>,
    /// Learned 3×3 convolutions in `Downsample`/`Upsample` (else average pool / nearest only).
    pub conv_resample: bool,
    pub dims: usize,
    pub num_classes: Option<usize>,
    /// Whether the checkpoint ran its blocks in float16; informational (wgsl-diff computes in
    /// f32 whatever the stored precision).
    pub use_fp16: bool,
    pub num_heads: usize,
    /// Channels per head (−1: `num_heads` heads instead).
    pub num_head_channels: i64,
    /// Heads of the output blocks' attention when `num_head_channels` is −1 (−1: `num_heads`).
    pub num_heads_upsample: i64,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub use_new_attention_order: bool,
}

impl Default for AdmConfig {
    /// `UNetModel.__init__`'s defaults; the required sizes are 0 (refused by `validate`).
    fn default() -> AdmConfig {
        AdmConfig {
            image_size: 0,
            in_channels: 0,
            model_channels: 0,
            out_channels: 0,
            num_res_blocks: 0,
            attention_resolutions: Vec::new(),
            dropout: 0.0,
            channel_mult: vec![1.0, 2.0, 4.0, 8.0],
            conv_resample: true,
            dims: 2,
            num_classes: None,
            use_fp16: false,
            num_heads: 1,
            num_head_channels: -1,
            num_heads_upsample: -1,
            use_scale_shift_norm: false,
            resblock_updown: false,
            use_new_attention_order: false,
        }
    }
}

impl AdmConfig {
    /// Refuses sizes that cannot build the network, or lie past their [limits], naming the
    /// field (unbounded, `2 · in_channels` and the level factor overflowed).
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: String| Err(Error::Invalid(format!("invalid ADM config: {what}")));
        for (field, value, max) in [
            ("image_size", self.image_size, MAX_SAMPLE_SIZE),
            ("in_channels", self.in_channels, MAX_CHANNELS),
            ("model_channels", self.model_channels, MAX_CHANNELS),
            ("out_channels", self.out_channels, MAX_CHANNELS),
            ("num_res_blocks", self.num_res_blocks, MAX_LAYERS_PER_BLOCK),
            ("num_heads", self.num_heads, MAX_CHANNELS),
            ("num_classes", self.num_classes.unwrap_or(1), MAX_CLASSES),
            ("channel_mult levels", self.channel_mult.len(), MAX_BLOCKS),
        ] {
            if !(1..=max).contains(&value) {
                return invalid(format!("{field} is {value}; it must be in 1..={max}"));
            }
        }
        if self.dims != 2 {
            return invalid(format!("dims {} (only 2-D models)", self.dims));
        }
        if self.out_channels != self.in_channels && self.out_channels != 2 * self.in_channels {
            return invalid(format!(
                "out_channels {} must be in_channels ({}) or twice that (learn_sigma)",
                self.out_channels, self.in_channels
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        for &mult in &self.channel_mult {
            let width = self.width(mult);
            if width == 0 || width > MAX_CHANNELS || !width.is_multiple_of(NORM_GROUPS) {
                return invalid(format!(
                    "channel_mult {mult} gives {width} channels, not a positive multiple of the \
                     {NORM_GROUPS} norm groups up to {MAX_CHANNELS}"
                ));
            }
        }
        let factor = 1usize << (self.channel_mult.len() - 1);
        if !self.image_size.is_multiple_of(factor) {
            return invalid(format!(
                "image_size {} is not divisible by {factor} ({} levels)",
                self.image_size,
                self.channel_mult.len()
            ));
        }
        Ok(())
    }

    /// Channels of a level with multiplier `mult`: Python's `int(mult * model_channels)`.
    pub fn width(&self, mult: f64) -> usize {
        (mult * self.model_channels as f64) as usize
    }

    /// Width of the time (and class) embedding.
    pub fn time_embed_dim(&self) -> usize {
        4 * self.model_channels
    }

    /// Whether the model also predicts the variance (`learn_sigma`).
    pub fn learn_sigma(&self) -> bool {
        self.out_channels == 2 * self.in_channels
    }

    /// Heads of an attention block over `channels` channels, in the output blocks when
    /// `upsample`; an error when they do not divide the channels.
    pub fn heads(&self, channels: usize, upsample: bool) -> Result<usize> {
        let heads = match usize::try_from(self.num_head_channels) {
            Ok(0) => 0,
            Ok(per_head) if channels.is_multiple_of(per_head) => channels / per_head,
            Ok(per_head) => {
                return Err(Error::Invalid(format!(
                    "invalid ADM config: {channels} channels are not divisible into heads of \
                     num_head_channels {per_head}"
                )))
            }
            Err(_) if upsample && self.num_heads_upsample != -1 => {
                usize::try_from(self.num_heads_upsample).unwrap_or(0)
            }
            Err(_) => self.num_heads,
        };
        if heads == 0 || !channels.is_multiple_of(heads) {
            return Err(Error::Invalid(format!(
                "invalid ADM config: {channels} channels cannot be split into {heads} heads \
                 (num_heads {}, num_head_channels {}, num_heads_upsample {})",
                self.num_heads, self.num_head_channels, self.num_heads_upsample
            )));
        }
        Ok(heads)
    }
}
