//! diffusers' `resnet.py` and `downsampling.py`/`upsampling.py` as UNet2DModel uses them:
//! `ResnetBlock2D`, and the `Downsample2D`/`Upsample2D` convolutions between resolutions, each
//! with the input gradient of the UNet's backward pass.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::layers::{Conv2d, GroupNorm, GroupNormTape, Linear};
use crate::models::weights::VarBuilder;
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
    /// The time embedding's width; None for a block without one (diffusers' `temb_channels=None`,
    /// as the VAE's blocks are).
    pub temb_channels: Option<usize>,
    pub time_norm: TimeEmbeddingNorm,
    pub output_scale_factor: f32,
}

/// diffusers `ResnetBlock2D`: norm1 → SiLU → conv1 → (+temb) → norm2 → SiLU → conv2, plus
/// shortcut.
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
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
        if cfg.temb_channels.is_none() && cfg.time_norm == TimeEmbeddingNorm::ScaleShift {
            return Err(Error::Invalid(
                "a ResnetBlock2D with scale-shift time embedding needs temb_channels".into(),
            ));
        }
        let norm1 = GroupNorm::load(&vb.pp("norm1"), cfg.groups, c_in, cfg.eps)?;
        let conv1 = Conv2d::load(&vb.pp("conv1"), c_in, c_out, 3, 1, 1)?;
        Ok(ResnetBlock2D {
            norm1,
            conv1,
            time_emb_proj: cfg
                .temb_channels
                .map(|t| Linear::load(&vb.pp("time_emb_proj"), t, proj_out))
                .transpose()?,
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
    /// embedding, so the network computes it once. A block loaded without `temb_channels`
    /// takes None.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, temb_act: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.run(gpu, x, temb_act, false)?.0)
    }

    /// [`Self::forward`] and what [`Self::backward`] needs, all of which the forward computes
    /// anyway (the tape only holds on to them).
    pub fn forward_saving(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        temb_act: Option<&Tensor>,
    ) -> Result<(Tensor, ResnetTape)> {
        let (y, tape) = self.run(gpu, x, temb_act, true)?;
        Ok((y, tape.expect("a saving run keeps its tape")))
    }

    /// The forward, keeping the tape only when `save`: without one, each intermediate is
    /// freed at its last use, so its buffer can serve the next op.
    fn run(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        temb_act: Option<&Tensor>,
        save: bool,
    ) -> Result<(Tensor, Option<ResnetTape>)> {
        let norm =
            |n: &GroupNorm, h: &Tensor, silu: bool| -> Result<(Tensor, Option<GroupNormTape>)> {
                match save {
                    true => n.forward_saving(gpu, h, silu).map(|(y, t)| (y, Some(t))),
                    false => Ok((n.forward(gpu, h, silu)?, None)),
                }
            };
        // Each intermediate is dropped (not shadowed, which would keep it alive) after its
        // last use.
        let (n1, norm1) = norm(&self.norm1, x, true)?;
        let h = self.conv1.forward(gpu, &n1)?;
        drop(n1);
        let t = match (&self.time_emb_proj, temb_act) {
            (Some(proj), Some(temb)) => Some(proj.forward(gpu, temb)?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::Invalid(
                    "this ResnetBlock2D projects a time embedding: it needs one".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Invalid(
                    "this ResnetBlock2D has no time_emb_proj: it takes no time embedding".into(),
                ))
            }
        };
        let (a, norm2, scale_shift) = match (self.time_norm, t) {
            (_, None) => {
                let (a, norm2) = norm(&self.norm2, &h, true)?;
                drop(h);
                (a, norm2, None)
            }
            (TimeEmbeddingNorm::Default, Some(t)) => {
                let sum = ops::add_channel_vec(gpu, &h, &t)?;
                drop(h);
                let (a, norm2) = norm(&self.norm2, &sum, true)?;
                (a, norm2, None)
            }
            (TimeEmbeddingNorm::ScaleShift, Some(t)) => {
                let (n2, norm2) = norm(&self.norm2, &h, false)?;
                drop(h);
                let u = ops::scale_shift(gpu, &n2, &t)?;
                drop(n2);
                (ops::silu(gpu, &u)?, norm2, save.then_some((u, t)))
            }
        };
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(gpu, x)?,
            None => x.clone(),
        };
        let y = self
            .conv2
            .forward_residual(gpu, &a, Some(&shortcut), self.out_scale())?;
        let tape = match (norm1, norm2) {
            (Some(norm1), Some(norm2)) => Some(ResnetTape {
                norm1,
                norm2,
                scale_shift,
            }),
            _ => None,
        };
        Ok((y, tape))
    }

    fn out_scale(&self) -> f32 {
        1.0 / self.output_scale_factor
    }

    /// ∂⟨forward(x), dy⟩/∂x. The time embedding does not depend on x; under scale-shift norm it
    /// still scales the path through norm2 by (1 + scale).
    pub fn backward(&self, gpu: &Gpu, tape: &ResnetTape, dy: &Tensor) -> Result<Tensor> {
        let g = scaled(gpu, dy, self.out_scale())?;
        let d_h = self.conv2.same_size_input_grad(gpu, &g)?;
        let d_h = match &tape.scale_shift {
            None => self.norm2.backward(gpu, &tape.norm2, &d_h)?,
            Some((u, t)) => {
                let d_u = ops::silu_grad(gpu, u, &d_h)?;
                let (b, c) = (u.dim(0), u.dim(1));
                let scale = ops::slice_channels(gpu, &t.reshape(&[b, 2 * c, 1, 1])?, 0, c)?;
                let one_plus_scale = ops::affine(gpu, &scale.reshape(&[b, c])?, 1.0, 1.0)?;
                let d_n = ops::mul_channel_vec(gpu, &d_u, &one_plus_scale)?;
                self.norm2.backward(gpu, &tape.norm2, &d_n)?
            }
        };
        let d_h = self.conv1.same_size_input_grad(gpu, &d_h)?;
        let d_x = self.norm1.backward(gpu, &tape.norm1, &d_h)?;
        let d_shortcut = match &self.conv_shortcut {
            Some(conv) => conv.same_size_input_grad(gpu, &g)?,
            None => g,
        };
        ops::add(gpu, &d_x, &d_shortcut)
    }
}

/// What a [`ResnetBlock2D`]'s backward needs: its norms' inputs and statistics (the SiLU inputs
/// are recomputed from them) and, under scale-shift norm, the SiLU input u = norm2·(1 + scale)
/// + shift and the projection [scale | shift].
pub struct ResnetTape {
    norm1: GroupNormTape,
    norm2: GroupNormTape,
    scale_shift: Option<(Tensor, Tensor)>,
}

/// `scale`·x, skipping the dispatch when the factor is 1.
pub(super) fn scaled(gpu: &Gpu, x: &Tensor, scale: f32) -> Result<Tensor> {
    if scale == 1.0 {
        Ok(x.clone())
    } else {
        ops::affine(gpu, x, scale, 0.0)
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

    /// ∂⟨forward(x), dy⟩/∂x for an input of spatial size `input_hw` (an odd side and its
    /// successor downsample alike, so the output does not tell).
    pub fn backward(&self, gpu: &Gpu, dy: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        self.conv.input_grad(gpu, dy, input_hw)
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

    /// ∂⟨forward(x), dy⟩/∂x.
    pub fn backward(&self, gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
        let d_up = self.conv.same_size_input_grad(gpu, dy)?;
        ops::upsample_nearest2x_grad(gpu, &d_up)
    }
}
