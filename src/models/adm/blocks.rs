//! guided-diffusion's `ResBlock`, `Downsample`, `Upsample` and `TimestepEmbedSequential`: the
//! layers a `UNetModel`'s input, middle and output blocks are made of.

use super::attention::AttentionBlock;
use super::{NORM_EPS, NORM_GROUPS};
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::models::layers::{Conv2d, GroupNorm, Linear};
use crate::models::mc_dropout::DropoutMasks;
use crate::models::weights::VarBuilder;
use crate::ops;

/// What a ResBlock does to the resolution (`up` / `down` of guided-diffusion's ResBlock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Keep,
    /// Nearest-neighbour 2× of both paths, between the input norm and conv.
    Up,
    /// 2×2 average pooling of both paths, between the input norm and conv.
    Down,
}

impl Resample {
    fn apply(self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        match self {
            Resample::Keep => Ok(x.clone()),
            Resample::Up => ops::upsample_nearest2x(gpu, x),
            Resample::Down => ops::avg_pool2x(gpu, x),
        }
    }
}

/// The settings every ResBlock of a model shares.
#[derive(Clone, Copy, Debug)]
pub struct ResConfig {
    pub emb_channels: usize,
    pub dropout: f64,
    pub use_scale_shift_norm: bool,
}

/// in_layers (norm, SiLU, [resample], conv) → + emb_layers(emb) (added, or as scale and shift
/// of the out norm) → out_layers (norm, SiLU, dropout, conv), plus the skip connection (a 1×1
/// convolution when the width changes).
pub struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    resample: Resample,
    emb_proj: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip_connection: Option<Conv2d>,
    use_scale_shift_norm: bool,
    dropout: f64,
}

impl ResBlock {
    pub fn load(
        vb: &VarBuilder,
        channels: usize,
        out_channels: usize,
        resample: Resample,
        cfg: &ResConfig,
    ) -> Result<ResBlock> {
        let emb_out = match cfg.use_scale_shift_norm {
            true => 2 * out_channels,
            false => out_channels,
        };
        let (in_layers, out_layers) = (vb.pp("in_layers"), vb.pp("out_layers"));
        Ok(ResBlock {
            in_norm: GroupNorm::load(&in_layers.pp(0), NORM_GROUPS, channels, NORM_EPS)?,
            in_conv: Conv2d::load(&in_layers.pp(2), channels, out_channels, 3, 1, 1)?,
            resample,
            emb_proj: Linear::load(&vb.pp("emb_layers").pp(1), cfg.emb_channels, emb_out)?,
            out_norm: GroupNorm::load(&out_layers.pp(0), NORM_GROUPS, out_channels, NORM_EPS)?,
            out_conv: Conv2d::load(&out_layers.pp(3), out_channels, out_channels, 3, 1, 1)?,
            skip_connection: match channels == out_channels {
                true => None,
                false => Some(Conv2d::load(
                    &vb.pp("skip_connection"),
                    channels,
                    out_channels,
                    1,
                    1,
                    0,
                )?),
            },
            use_scale_shift_norm: cfg.use_scale_shift_norm,
            dropout: cfg.dropout,
        })
    }

    /// `emb_act` is SiLU(emb), the first layer of every block's emb_layers, computed once per
    /// forward. Dropout applies only with `masks` (MC-Dropout); otherwise it is the identity.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        emb_act: &Tensor,
        masks: Option<&DropoutMasks>,
    ) -> Result<Tensor> {
        // `h` is reassigned, not shadowed, so each intermediate is freed once replaced.
        let mut h = self.in_norm.forward(gpu, x, true)?;
        h = self.resample.apply(gpu, &h)?;
        let x = self.resample.apply(gpu, x)?;
        h = self.in_conv.forward(gpu, &h)?;
        let emb_out = self.emb_proj.forward(gpu, emb_act)?;
        h = match self.use_scale_shift_norm {
            true => {
                let n = self.out_norm.forward(gpu, &h, false)?;
                ops::silu(gpu, &ops::scale_shift(gpu, &n, &emb_out)?)?
            }
            false => {
                let sum = ops::add_channel_vec(gpu, &h, &emb_out)?;
                self.out_norm.forward(gpu, &sum, true)?
            }
        };
        h = match masks {
            Some(masks) if self.dropout > 0.0 => masks.apply(gpu, &h, self.dropout)?,
            _ => h,
        };
        let skip = match &self.skip_connection {
            Some(conv) => conv.forward(gpu, &x)?,
            None => x,
        };
        self.out_conv.forward_residual(gpu, &h, Some(&skip), 1.0)
    }
}

/// `Downsample`: a 3×3 stride-2 convolution (`op`) with `conv_resample`, else 2×2 average
/// pooling.
pub struct Downsample {
    op: Option<Conv2d>,
}

impl Downsample {
    pub fn load(vb: &VarBuilder, channels: usize, use_conv: bool) -> Result<Downsample> {
        Ok(Downsample {
            op: match use_conv {
                true => Some(Conv2d::load(&vb.pp("op"), channels, channels, 3, 2, 1)?),
                false => None,
            },
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        match &self.op {
            Some(conv) => conv.forward(gpu, x),
            None => ops::avg_pool2x(gpu, x),
        }
    }
}

/// `Upsample`: nearest-neighbour 2×, then a 3×3 convolution (`conv`) with `conv_resample`.
pub struct Upsample {
    conv: Option<Conv2d>,
}

impl Upsample {
    pub fn load(vb: &VarBuilder, channels: usize, use_conv: bool) -> Result<Upsample> {
        Ok(Upsample {
            conv: match use_conv {
                true => Some(Conv2d::load(&vb.pp("conv"), channels, channels, 3, 1, 1)?),
                false => None,
            },
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let up = ops::upsample_nearest2x(gpu, x)?;
        match &self.conv {
            Some(conv) => conv.forward(gpu, &up),
            None => Ok(up),
        }
    }
}

/// One layer of a `TimestepEmbedSequential`.
pub enum Layer {
    Conv(Conv2d),
    Res(Box<ResBlock>),
    Attention(Box<AttentionBlock>),
    Down(Downsample),
    Up(Upsample),
}

/// `TimestepEmbedSequential`: layers in order, the ResBlocks also taking the embedding.
pub struct TimestepEmbedSequential(pub Vec<Layer>);

impl TimestepEmbedSequential {
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        emb_act: &Tensor,
        masks: Option<&DropoutMasks>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (k, layer) in self.0.iter().enumerate() {
            let _scope = gpu.scope(k);
            h = match layer {
                Layer::Conv(conv) => conv.forward(gpu, &h)?,
                Layer::Res(block) => block.forward(gpu, &h, emb_act, masks)?,
                Layer::Attention(block) => block.forward(gpu, &h)?,
                Layer::Down(down) => down.forward(gpu, &h)?,
                Layer::Up(up) => up.forward(gpu, &h)?,
            };
        }
        Ok(h)
    }
}
