//! diffusers' `resnet.py` and `downsampling.py`/`upsampling.py` as UNet2DModel uses them:
//! `ResnetBlock2D`, and the `Downsample2D`/`Upsample2D` convolutions between resolutions.

use super::layers::{Conv2d, GroupNorm, Linear};
use super::weights::VarBuilder;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops;
use serde::Deserialize;

/// How a ResnetBlock2D injects the time embedding: diffusers' `resnet_time_scale_shift`
/// (`time_embedding_norm`), spelled as in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeEmbeddingNorm {
    /// h + proj(temb) after conv1.
    Default,
    /// norm2(h)·(1 + scale) + shift with [scale | shift] = proj(temb) (ADM).
    ScaleShift,
}

/// The ResnetBlock2D settings a UNet2DModel shares between all its blocks.
#[derive(Clone, Copy, Debug)]
pub struct ResnetConfig {
    pub groups: usize,
    pub eps: f32,
    pub temb_channels: usize,
    pub time_norm: TimeEmbeddingNorm,
    pub output_scale_factor: f32,
}

/// diffusers `ResnetBlock2D`: norm1 → SiLU → conv1 → +temb → norm2 → SiLU → conv2, plus shortcut.
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    time_norm: TimeEmbeddingNorm,
    output_scale_factor: f32,
}

impl ResnetBlock2D {
    pub fn load(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        cfg: &ResnetConfig,
    ) -> Result<ResnetBlock2D> {
        let proj_out = match cfg.time_norm {
            TimeEmbeddingNorm::Default => c_out,
            TimeEmbeddingNorm::ScaleShift => 2 * c_out,
        };
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&vb.pp("norm1"), cfg.groups, c_in, cfg.eps)?,
            conv1: Conv2d::load(&vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: Linear::load(&vb.pp("time_emb_proj"), cfg.temb_channels, proj_out)?,
            norm2: GroupNorm::load(&vb.pp("norm2"), cfg.groups, c_out, cfg.eps)?,
            conv2: Conv2d::load(&vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out {
                Some(Conv2d::load(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
            } else {
                None
            },
            time_norm: cfg.time_norm,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `temb_act` is SiLU(time embedding): every block applies the same SiLU to the same
    /// embedding, so the network computes it once.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(gpu, x, true)?;
        let h = self.conv1.forward(gpu, &h)?;
        let t = self.time_emb_proj.forward(gpu, temb_act)?;
        let h = match self.time_norm {
            TimeEmbeddingNorm::Default => {
                let h = ops::add_channel_vec(gpu, &h, &t)?;
                self.norm2.forward(gpu, &h, true)?
            }
            TimeEmbeddingNorm::ScaleShift => {
                let h = self.norm2.forward(gpu, &h, false)?;
                ops::silu(gpu, &ops::scale_shift(gpu, &h, &t)?)?
            }
        };
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(gpu, x)?,
            None => x.clone(),
        };
        self.conv2
            .forward_residual(gpu, &h, Some(&shortcut), 1.0 / self.output_scale_factor)
    }
}

/// diffusers `Downsample2D` with `use_conv=True`: a 3×3 stride-2 convolution.
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    /// With `padding` 0, diffusers pads (0, 1, 0, 1) itself so that even sides halve exactly.
    pub fn load(vb: &VarBuilder, channels: usize, padding: usize) -> Result<Downsample2D> {
        let conv = Conv2d::load(&vb.pp("conv"), channels, channels, 3, 2, padding)?;
        Ok(Downsample2D {
            conv: conv.with_bottom_right_pad(usize::from(padding == 0)),
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(gpu, x)
    }
}

/// diffusers `Upsample2D` with `use_conv=True`: nearest-neighbour 2× then a 3×3 convolution.
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(vb: &VarBuilder, channels: usize) -> Result<Upsample2D> {
        Ok(Upsample2D {
            conv: Conv2d::load(&vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(gpu, &ops::upsample_nearest2x(gpu, x)?)
    }
}
