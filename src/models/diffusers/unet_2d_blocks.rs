//! diffusers' `unet_2d_blocks.py` for the blocks a UNet2DModel is built from: `DownBlock2D`,
//! `AttnDownBlock2D`, `UNetMidBlock2D`, `UpBlock2D` and `AttnUpBlock2D`.
//!
//! The attention blocks are their plain twins with an [`Attention`] after every resnet, so they
//! hold the plain block and pass it their attentions rather than repeating its loop.
//!
//! Each block's forward optionally records a tape (the tapes of its modules) for its backward,
//! which walks the same loop in reverse. The skip connections' gradients travel on a stack that
//! mirrors the forward's: up blocks push the gradient of each skip they consumed (in the order
//! the down path produced them), down blocks pop them as they reach the states they appended.

use super::attention::{Attention, AttentionTape};
use super::resnet::{
    Downsample2D, ResnetBlock2D, ResnetConfig, ResnetTape, TimeEmbeddingNorm, Upsample2D,
};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::weights::VarBuilder;
use crate::ops;
use serde::Deserialize;

/// A `down_block_types` entry. Deserialising refuses any other name, quoting it and listing
/// these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum DownBlockType {
    DownBlock2D,
    AttnDownBlock2D,
}

/// An `up_block_types` entry; see [`DownBlockType`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum UpBlockType {
    UpBlock2D,
    AttnUpBlock2D,
}

/// The settings UNet2DModel passes alike to every block: the `get_down_block` and
/// `get_up_block` arguments that do not depend on where the block sits.
#[derive(Clone, Copy, Debug)]
pub struct BlockConfig {
    /// Resnets per block (diffusers' `num_layers`).
    pub num_layers: usize,
    /// Its `output_scale_factor` also rescales the attentions' output, as in diffusers.
    pub resnet: ResnetConfig,
    /// None: one head spanning all channels (diffusers passes the block's width then).
    pub attention_head_dim: Option<usize>,
}

impl BlockConfig {
    /// `attentions.{j}` for j < num_layers, each normalised with the resnets' groups.
    fn attentions(&self, vb: &VarBuilder, channels: usize) -> Result<Vec<Attention>> {
        let groups = Some(self.resnet.groups);
        (0..self.num_layers)
            .map(|j| self.attention(&vb.pp("attentions").pp(j), channels, groups))
            .collect()
    }

    fn attention(
        &self,
        vb: &VarBuilder,
        channels: usize,
        groups: Option<usize>,
    ) -> Result<Attention> {
        let head_dim = self.attention_head_dim.unwrap_or(channels);
        let r = &self.resnet;
        Attention::load(vb, channels, head_dim, groups, r.eps, r.output_scale_factor)
    }

    /// `resnets.{j}` for j < num_layers, resnet j taking `in_channels(j)` channels.
    fn resnets(
        &self,
        vb: &VarBuilder,
        in_channels: impl Fn(usize) -> usize,
        out_channels: usize,
    ) -> Result<Vec<ResnetBlock2D>> {
        (0..self.num_layers)
            .map(|j| {
                let vb = vb.pp("resnets").pp(j);
                ResnetBlock2D::load(&vb, in_channels(j), out_channels, &self.resnet)
            })
            .collect()
    }
}

/// The rest of diffusers' `get_down_block` arguments: where the block sits.
#[derive(Clone, Copy, Debug)]
pub struct DownBlockArgs {
    pub in_channels: usize,
    pub out_channels: usize,
    /// False for the last block, which keeps its resolution.
    pub add_downsample: bool,
    pub downsample_padding: usize,
}

/// The rest of diffusers' `get_up_block` arguments: where the block sits.
#[derive(Clone, Copy, Debug)]
pub struct UpBlockArgs {
    /// Width of the skip the last resnet takes: the input of the down block at this level.
    pub in_channels: usize,
    /// Width of the block's input.
    pub prev_output_channel: usize,
    /// Width of the other skips and of the output.
    pub out_channels: usize,
    /// False for the last block, which keeps its resolution.
    pub add_upsample: bool,
}

/// diffusers `DownBlock2D`: `num_layers` resnets, then a stride-2 convolution unless it is the
/// last block.
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsamplers: Option<Downsample2D>,
}

impl DownBlock2D {
    pub fn load(vb: &VarBuilder, cfg: &BlockConfig, args: &DownBlockArgs) -> Result<DownBlock2D> {
        let out = args.out_channels;
        let in_channels = |j| if j == 0 { args.in_channels } else { out };
        let resnets = cfg.resnets(vb, in_channels, out)?;
        let downsamplers = if args.add_downsample {
            let vb = vb.pp("downsamplers").pp(0);
            Some(Downsample2D::load(&vb, out, args.downsample_padding)?)
        } else {
            None
        };
        Ok(DownBlock2D {
            resnets,
            downsamplers,
        })
    }

    /// Appends every resnet's output and the downsampled result to `output_states` (the skip
    /// connections the up path consumes) and returns the last of them. With a `tape`, records
    /// what [`Self::backward`] needs.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        temb_act: &Tensor,
        output_states: &mut Vec<Tensor>,
        tape: Option<&mut BlockTape>,
    ) -> Result<Tensor> {
        self.forward_attending(gpu, x, temb_act, &[], output_states, tape)
    }

    /// `attentions[j]`, where there is one, follows `resnets[j]`.
    fn forward_attending(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        temb_act: &Tensor,
        attentions: &[Attention],
        output_states: &mut Vec<Tensor>,
        mut tape: Option<&mut BlockTape>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = tape.record_resnet(gpu, j, resnet, &x, temb_act)?;
            if let Some(attn) = attentions.get(j) {
                x = tape.record_attention(gpu, j, attn, &x)?;
            }
            output_states.push(x.clone());
        }
        if let Some(down) = &self.downsamplers {
            let _scope = gpu.scope("downsamplers.0");
            if let Some(tape) = tape {
                tape.sampler_input_hw = Some((x.dim(2), x.dim(3)));
            }
            x = down.forward(gpu, &x)?;
            output_states.push(x.clone());
        }
        Ok(x)
    }

    /// ∂⟨outputs, cotangents⟩/∂x: `dy` is the gradient of the returned tensor, and the
    /// gradients of the states the forward appended are popped off `skip_grads`.
    pub fn backward(
        &self,
        gpu: &Gpu,
        tape: &BlockTape,
        dy: &Tensor,
        skip_grads: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        self.backward_attending(gpu, tape, &[], dy, skip_grads)
    }

    fn backward_attending(
        &self,
        gpu: &Gpu,
        tape: &BlockTape,
        attentions: &[Attention],
        dy: &Tensor,
        skip_grads: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut d = dy.clone();
        if let (Some(down), Some(hw)) = (&self.downsamplers, tape.sampler_input_hw) {
            d = ops::add(gpu, &d, &pop_skip(skip_grads)?)?;
            d = down.backward(gpu, &d, hw)?;
        }
        for (j, resnet) in self.resnets.iter().enumerate().rev() {
            d = ops::add(gpu, &d, &pop_skip(skip_grads)?)?;
            d = tape.backward_attention(gpu, attentions.get(j), j, &d)?;
            d = resnet.backward(gpu, tape.resnet(j)?, &d)?;
        }
        Ok(d)
    }
}

/// The gradient of the next skip connection back.
fn pop_skip(skip_grads: &mut Vec<Tensor>) -> Result<Tensor> {
    skip_grads
        .pop()
        .ok_or_else(|| Error::Invalid("UNet backward: fewer skip gradients than skips".into()))
}

/// What a block's backward needs: its modules' tapes in forward order, and the spatial size
/// entering its down- or upsampler.
#[derive(Default)]
pub struct BlockTape {
    resnets: Vec<ResnetTape>,
    attentions: Vec<AttentionTape>,
    sampler_input_hw: Option<(usize, usize)>,
    /// Up blocks: the channels of the input each resnet concatenated with its skip.
    x_channels: Vec<usize>,
}

impl BlockTape {
    fn resnet(&self, j: usize) -> Result<&ResnetTape> {
        self.resnets
            .get(j)
            .ok_or_else(|| Error::Invalid("UNet backward: a resnet has no tape".into()))
    }

    /// `attention`'s backward when the block has one at `j`, else `dy` unchanged.
    fn backward_attention(
        &self,
        gpu: &Gpu,
        attention: Option<&Attention>,
        j: usize,
        dy: &Tensor,
    ) -> Result<Tensor> {
        let Some(attention) = attention else {
            return Ok(dy.clone());
        };
        let tape = self
            .attentions
            .get(j)
            .ok_or_else(|| Error::Invalid("UNet backward: an attention has no tape".into()))?;
        attention.backward(gpu, tape, dy)
    }
}

/// Running a module with or without recording its tape.
trait Record {
    fn record_resnet(
        &mut self,
        gpu: &Gpu,
        j: usize,
        resnet: &ResnetBlock2D,
        x: &Tensor,
        temb_act: &Tensor,
    ) -> Result<Tensor>;
    fn record_attention(
        &mut self,
        gpu: &Gpu,
        j: usize,
        attention: &Attention,
        x: &Tensor,
    ) -> Result<Tensor>;
}

/// Each runs in the module's profile scope, `resnets.{j}` or `attentions.{j}`.
impl Record for Option<&mut BlockTape> {
    fn record_resnet(
        &mut self,
        gpu: &Gpu,
        j: usize,
        resnet: &ResnetBlock2D,
        x: &Tensor,
        temb_act: &Tensor,
    ) -> Result<Tensor> {
        let _scope = gpu.scope(format_args!("resnets.{j}"));
        match self {
            Some(block) => {
                let (y, tape) = resnet.forward_saving(gpu, x, Some(temb_act))?;
                block.resnets.push(tape);
                Ok(y)
            }
            None => resnet.forward(gpu, x, Some(temb_act)),
        }
    }

    fn record_attention(
        &mut self,
        gpu: &Gpu,
        j: usize,
        attention: &Attention,
        x: &Tensor,
    ) -> Result<Tensor> {
        let _scope = gpu.scope(format_args!("attentions.{j}"));
        match self {
            Some(block) => {
                let (y, tape) = attention.forward_saving(gpu, x)?;
                block.attentions.push(tape);
                Ok(y)
            }
            None => attention.forward(gpu, x),
        }
    }
}

/// diffusers `AttnDownBlock2D`: a [`DownBlock2D`] with an attention after each resnet.
pub struct AttnDownBlock2D {
    block: DownBlock2D,
    attentions: Vec<Attention>,
}

impl AttnDownBlock2D {
    pub fn load(
        vb: &VarBuilder,
        cfg: &BlockConfig,
        args: &DownBlockArgs,
    ) -> Result<AttnDownBlock2D> {
        Ok(AttnDownBlock2D {
            block: DownBlock2D::load(vb, cfg, args)?,
            attentions: cfg.attentions(vb, args.out_channels)?,
        })
    }

    /// As [`DownBlock2D::forward`].
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        temb_act: &Tensor,
        output_states: &mut Vec<Tensor>,
        tape: Option<&mut BlockTape>,
    ) -> Result<Tensor> {
        self.block
            .forward_attending(gpu, x, temb_act, &self.attentions, output_states, tape)
    }

    /// As [`DownBlock2D::backward`].
    pub fn backward(
        &self,
        gpu: &Gpu,
        tape: &BlockTape,
        dy: &Tensor,
        skip_grads: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        self.block
            .backward_attending(gpu, tape, &self.attentions, dy, skip_grads)
    }
}

/// One of `UNet2DModel.down_blocks`, as diffusers' `get_down_block` picks it.
pub enum DownBlock {
    DownBlock2D(DownBlock2D),
    AttnDownBlock2D(AttnDownBlock2D),
}

impl DownBlock {
    pub fn load(
        kind: DownBlockType,
        vb: &VarBuilder,
        cfg: &BlockConfig,
        args: &DownBlockArgs,
    ) -> Result<DownBlock> {
        Ok(match kind {
            DownBlockType::DownBlock2D => Self::DownBlock2D(DownBlock2D::load(vb, cfg, args)?),
            DownBlockType::AttnDownBlock2D => {
                Self::AttnDownBlock2D(AttnDownBlock2D::load(vb, cfg, args)?)
            }
        })
    }

    /// As [`DownBlock2D::forward`].
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        temb_act: &Tensor,
        output_states: &mut Vec<Tensor>,
        tape: Option<&mut BlockTape>,
    ) -> Result<Tensor> {
        match self {
            Self::DownBlock2D(block) => block.forward(gpu, x, temb_act, output_states, tape),
            Self::AttnDownBlock2D(block) => block.forward(gpu, x, temb_act, output_states, tape),
        }
    }

    /// As [`DownBlock2D::backward`].
    pub fn backward(
        &self,
        gpu: &Gpu,
        tape: &BlockTape,
        dy: &Tensor,
        skip_grads: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        match self {
            Self::DownBlock2D(block) => block.backward(gpu, tape, dy, skip_grads),
            Self::AttnDownBlock2D(block) => block.backward(gpu, tape, dy, skip_grads),
        }
    }
}

/// diffusers `UNetMidBlock2D`: a resnet, then `num_layers` × (attention, resnet), all at the
/// lowest resolution; `add_attention` false leaves the attentions out.
pub struct UNetMidBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Option<Attention>>,
}

impl UNetMidBlock2D {
    /// Without `attn_groups`, diffusers normalises the attention input only under the default
    /// time-embedding norm.
    pub fn load(
        vb: &VarBuilder,
        cfg: &BlockConfig,
        channels: usize,
        attn_groups: Option<usize>,
        add_attention: bool,
    ) -> Result<UNetMidBlock2D> {
        let default_norm = cfg.resnet.time_norm == TimeEmbeddingNorm::Default;
        let attn_groups = attn_groups.or(default_norm.then_some(cfg.resnet.groups));
        let resnet = |j: usize| {
            ResnetBlock2D::load(&vb.pp("resnets").pp(j), channels, channels, &cfg.resnet)
        };
        let mut resnets = vec![resnet(0)?];
        let mut attentions = Vec::new();
        for j in 0..cfg.num_layers {
            attentions.push(if add_attention {
                Some(cfg.attention(&vb.pp("attentions").pp(j), channels, attn_groups)?)
            } else {
                None
            });
            resnets.push(resnet(j + 1)?);
        }
        Ok(UNetMidBlock2D {
            resnets,
            attentions,
        })
    }

    /// With a `tape`, records what [`Self::backward`] needs.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        temb_act: &Tensor,
        mut tape: Option<&mut BlockTape>,
    ) -> Result<Tensor> {
        let mut x = tape.record_resnet(gpu, 0, &self.resnets[0], x, temb_act)?;
        for (j, (attn, resnet)) in self.attentions.iter().zip(&self.resnets[1..]).enumerate() {
            if let Some(attn) = attn {
                x = tape.record_attention(gpu, j, attn, &x)?;
            }
            x = tape.record_resnet(gpu, j + 1, resnet, &x, temb_act)?;
        }
        Ok(x)
    }

    /// ∂⟨forward(x), dy⟩/∂x.
    pub fn backward(&self, gpu: &Gpu, tape: &BlockTape, dy: &Tensor) -> Result<Tensor> {
        let mut d = dy.clone();
        for (j, (attn, resnet)) in self
            .attentions
            .iter()
            .zip(&self.resnets[1..])
            .enumerate()
            .rev()
        {
            d = resnet.backward(gpu, tape.resnet(j + 1)?, &d)?;
            d = tape.backward_attention(gpu, attn.as_ref(), j, &d)?;
        }
        self.resnets[0].backward(gpu, tape.resnet(0)?, &d)
    }
}

/// diffusers `UpBlock2D`: `num_layers` resnets, each on its input concatenated with a skip
/// connection, then a 2× upsampling convolution unless it is the last block.
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsamplers: Option<Upsample2D>,
}

impl UpBlock2D {
    pub fn load(vb: &VarBuilder, cfg: &BlockConfig, args: &UpBlockArgs) -> Result<UpBlock2D> {
        let (n, out) = (cfg.num_layers, args.out_channels);
        let in_channels = |j| {
            let res_skip_channels = if j + 1 == n { args.in_channels } else { out };
            let resnet_in_channels = if j == 0 {
                args.prev_output_channel
            } else {
                out
            };
            resnet_in_channels + res_skip_channels
        };
        let resnets = cfg.resnets(vb, in_channels, out)?;
        let upsamplers = if args.add_upsample {
            Some(Upsample2D::load(&vb.pp("upsamplers").pp(0), out)?)
        } else {
            None
        };
        Ok(UpBlock2D {
            resnets,
            upsamplers,
        })
    }

    /// Takes one skip per resnet off the end of `res_hidden_states` (what the down path
    /// appended, consumed in reverse). With a `tape`, records what [`Self::backward`] needs.
    /// `x` is taken by value so that it is freed once joined with the first skip.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: Tensor,
        res_hidden_states: &mut Vec<Tensor>,
        temb_act: &Tensor,
        tape: Option<&mut BlockTape>,
    ) -> Result<Tensor> {
        self.forward_attending(gpu, x, res_hidden_states, temb_act, &[], tape)
    }

    /// `attentions[j]`, where there is one, follows `resnets[j]`.
    fn forward_attending(
        &self,
        gpu: &Gpu,
        mut x: Tensor,
        res_hidden_states: &mut Vec<Tensor>,
        temb_act: &Tensor,
        attentions: &[Attention],
        mut tape: Option<&mut BlockTape>,
    ) -> Result<Tensor> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            // UNet2DModel builds as many up-block resnets as the down path leaves skips.
            let skip = res_hidden_states
                .pop()
                .expect("one skip per up-block resnet");
            if let Some(tape) = tape.as_deref_mut() {
                tape.x_channels.push(x.dim(1));
            }
            let joined = {
                let _scope = gpu.scope(format_args!("resnets.{j}"));
                ops::concat_channels(gpu, &[&x, &skip])?
            };
            // The parts are dead once joined: freed now, their buffers serve the resnet.
            drop((x, skip));
            x = tape.record_resnet(gpu, j, resnet, &joined, temb_act)?;
            drop(joined);
            if let Some(attn) = attentions.get(j) {
                x = tape.record_attention(gpu, j, attn, &x)?;
            }
        }
        match &self.upsamplers {
            Some(up) => {
                let _scope = gpu.scope("upsamplers.0");
                up.forward(gpu, &x)
            }
            None => Ok(x),
        }
    }

    /// ∂⟨forward(x), dy⟩/∂x; pushes the gradient of each skip it consumed onto `skip_grads`.
    pub fn backward(
        &self,
        gpu: &Gpu,
        tape: &BlockTape,
        dy: &Tensor,
        skip_grads: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        self.backward_attending(gpu, tape, &[], dy, skip_grads)
    }

    fn backward_attending(
        &self,
        gpu: &Gpu,
        tape: &BlockTape,
        attentions: &[Attention],
        dy: &Tensor,
        skip_grads: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut d = match &self.upsamplers {
            Some(up) => up.backward(gpu, dy)?,
            None => dy.clone(),
        };
        for (j, resnet) in self.resnets.iter().enumerate().rev() {
            d = tape.backward_attention(gpu, attentions.get(j), j, &d)?;
            let d_joined = resnet.backward(gpu, tape.resnet(j)?, &d)?;
            let x_channels = *tape.x_channels.get(j).ok_or_else(|| {
                Error::Invalid("UNet backward: an up-block resnet has no tape".into())
            })?;
            let skip_channels = d_joined.dim(1) - x_channels;
            skip_grads.push(ops::slice_channels(
                gpu,
                &d_joined,
                x_channels,
                skip_channels,
            )?);
            d = ops::slice_channels(gpu, &d_joined, 0, x_channels)?;
        }
        Ok(d)
    }
}

/// diffusers `AttnUpBlock2D`: an [`UpBlock2D`] with an attention after each resnet.
pub struct AttnUpBlock2D {
    block: UpBlock2D,
    attentions: Vec<Attention>,
}

impl AttnUpBlock2D {
    pub fn load(vb: &VarBuilder, cfg: &BlockConfig, args: &UpBlockArgs) -> Result<AttnUpBlock2D> {
        Ok(AttnUpBlock2D {
            block: UpBlock2D::load(vb, cfg, args)?,
            attentions: cfg.attentions(vb, args.out_channels)?,
        })
    }

    /// As [`UpBlock2D::forward`].
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: Tensor,
        res_hidden_states: &mut Vec<Tensor>,
        temb_act: &Tensor,
        tape: Option<&mut BlockTape>,
    ) -> Result<Tensor> {
        self.block
            .forward_attending(gpu, x, res_hidden_states, temb_act, &self.attentions, tape)
    }

    /// As [`UpBlock2D::backward`].
    pub fn backward(
        &self,
        gpu: &Gpu,
        tape: &BlockTape,
        dy: &Tensor,
        skip_grads: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        self.block
            .backward_attending(gpu, tape, &self.attentions, dy, skip_grads)
    }
}

/// One of `UNet2DModel.up_blocks`, as diffusers' `get_up_block` picks it.
pub enum UpBlock {
    UpBlock2D(UpBlock2D),
    AttnUpBlock2D(AttnUpBlock2D),
}

impl UpBlock {
    pub fn load(
        kind: UpBlockType,
        vb: &VarBuilder,
        cfg: &BlockConfig,
        args: &UpBlockArgs,
    ) -> Result<UpBlock> {
        Ok(match kind {
            UpBlockType::UpBlock2D => Self::UpBlock2D(UpBlock2D::load(vb, cfg, args)?),
            UpBlockType::AttnUpBlock2D => Self::AttnUpBlock2D(AttnUpBlock2D::load(vb, cfg, args)?),
        })
    }

    /// As [`UpBlock2D::forward`].
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: Tensor,
        res_hidden_states: &mut Vec<Tensor>,
        temb_act: &Tensor,
        tape: Option<&mut BlockTape>,
    ) -> Result<Tensor> {
        match self {
            Self::UpBlock2D(block) => block.forward(gpu, x, res_hidden_states, temb_act, tape),
            Self::AttnUpBlock2D(block) => block.forward(gpu, x, res_hidden_states, temb_act, tape),
        }
    }

    /// As [`UpBlock2D::backward`].
    pub fn backward(
        &self,
        gpu: &Gpu,
        tape: &BlockTape,
        dy: &Tensor,
        skip_grads: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        match self {
            Self::UpBlock2D(block) => block.backward(gpu, tape, dy, skip_grads),
            Self::AttnUpBlock2D(block) => block.backward(gpu, tape, dy, skip_grads),
        }
    }
}
