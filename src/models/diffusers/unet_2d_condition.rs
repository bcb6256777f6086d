//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x uses it (`unet_2d_condition.py`,
//! `unet_2d_blocks.py`): `CrossAttnDownBlock2D` / `DownBlock2D` down the resolutions,
//! `UNetMidBlock2DCrossAttn`, `UpBlock2D` / `CrossAttnUpBlock2D` back up, each cross-attention
//! block a [`Transformer2DModel`] reading the text states. Built from the same `ResnetBlock2D`,
//! `Downsample2D`, `Upsample2D` and time embedding as [`super::unet_2d`], with the input gradient
//! gradient guidance (Rule G) needs, through both halves of classifier-free guidance.

use super::embeddings::{TimestepEmbedding, Timesteps};
use super::resnet::{
    Downsample2D, ResnetBlock2D, ResnetConfig, ResnetTape, TimeEmbeddingNorm, Upsample2D,
};
use super::transformer_2d::{Transformer2DModel, TransformerConfig, TransformerTape};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::eps_model::square_sample;
use crate::models::layers::{Conv2d, GroupNorm, GroupNormTape};
use crate::models::weights::{VarBuilder, WeightFile};
use crate::models::{Cond, EpsModel};
use crate::ops;
use serde::Deserialize;

/// The keys of diffusers' `UNet2DConditionModel` config this port reads; diffusers' defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f32,
    pub act_fn: String,
    pub norm_num_groups: usize,
    pub norm_eps: f32,
    pub cross_attention_dim: usize,
    /// Heads per block (diffusers' legacy name: an int for all blocks, or one per block).
    pub attention_head_dim: serde_json::Value,
    /// Overrides `attention_head_dim` as the head count where given.
    pub num_attention_heads: serde_json::Value,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        UNet2DConditionConfig {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
                .iter()
                .chain(&["CrossAttnDownBlock2D", "DownBlock2D"])
                .map(|s| s.to_string())
                .collect(),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D"]
                .iter()
                .chain(&["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
                .map(|s| s.to_string())
                .collect(),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 1280,
            attention_head_dim: 8.into(),
            num_attention_heads: serde_json::Value::Null,
        }
    }
}

/// Options of diffusers' config that change the network, with the values this port runs (SD
/// 1.x's). Anything else — SD 2.x's linear projections, SDXL's added embeddings, inpainting's
/// extra input channels — is refused by name rather than run wrong.
const FIXED_OPTIONS: &[(&str, &[&str])] = &[
    ("use_linear_projection", &["false"]),
    ("class_embed_type", &["null"]),
    ("addition_embed_type", &["null"]),
    ("encoder_hid_dim", &["null"]),
    ("encoder_hid_dim_type", &["null"]),
    ("num_class_embeds", &["null"]),
    ("time_embedding_type", &["\"positional\""]),
    ("time_embedding_dim", &["null"]),
    ("time_cond_proj_dim", &["null"]),
    ("timestep_post_act", &["null"]),
    ("resnet_time_scale_shift", &["\"default\""]),
    ("transformer_layers_per_block", &["1"]),
    ("reverse_transformer_layers_per_block", &["null"]),
    ("only_cross_attention", &["false"]),
    ("dual_cross_attention", &["false"]),
    ("upcast_attention", &["false", "null"]),
    ("center_input_sample", &["false"]),
    ("conv_in_kernel", &["3"]),
    ("conv_out_kernel", &["3"]),
    ("attention_type", &["\"default\""]),
    ("cross_attention_norm", &["null"]),
    ("mid_block_only_cross_attention", &["null", "false"]),
    ("addition_time_embed_dim", &["null"]),
    ("projection_class_embeddings_input_dim", &["null"]),
    ("class_embeddings_concat", &["false"]),
    ("resnet_skip_time_act", &["false"]),
    ("resnet_out_scale_factor", &["1.0", "1"]),
    ("dropout", &["0.0", "0"]),
];

impl UNet2DConditionConfig {
    /// Parses a config JSON, refusing the options this port does not run by name.
    pub fn parse(json: &str) -> Result<UNet2DConditionConfig> {
        let raw: serde_json::Map<String, serde_json::Value> = crate::json::from_str(json)
            .map_err(|e| Error::Invalid(format!("UNet2DConditionModel config: {e}")))?;
        for (key, allowed) in FIXED_OPTIONS {
            if let Some(value) = raw.get(*key) {
                if !allowed.contains(&value.to_string().as_str()) {
                    return Err(Error::Invalid(format!(
                        "UNet2DConditionModel config: `{key}` = {value} is not supported (this \
                         version runs Stable Diffusion 1.x UNets: {key} {})",
                        allowed.join(" or ")
                    )));
                }
            }
        }
        let config: UNet2DConditionConfig = serde_json::from_value(raw.into())
            .map_err(|e| Error::Invalid(format!("UNet2DConditionModel config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::Invalid(format!(
                "UNet2DConditionModel config: {what}"
            )))
        };
        let levels = self.block_out_channels.len();
        if levels == 0
            || self.down_block_types.len() != levels
            || self.up_block_types.len() != levels
        {
            return bad("one down and one up block per block_out_channels entry".into());
        }
        for t in &self.down_block_types {
            if !["CrossAttnDownBlock2D", "DownBlock2D"].contains(&t.as_str()) {
                return bad(format!("down block {t} is not implemented"));
            }
        }
        for t in &self.up_block_types {
            if !["CrossAttnUpBlock2D", "UpBlock2D"].contains(&t.as_str()) {
                return bad(format!("up block {t} is not implemented"));
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return bad(format!(
                "mid block {:?} is not implemented",
                self.mid_block_type
            ));
        }
        if self.act_fn != "silu" || self.in_channels != self.out_channels {
            return bad(format!(
                "act_fn {} with {} → {} channels: silu ε-models only (inpainting UNets take 9 \
                 channels)",
                self.act_fn, self.in_channels, self.out_channels
            ));
        }
        let heads = self.heads()?;
        for (c, h) in self.block_out_channels.iter().zip(&heads) {
            if *h == 0 || c % h != 0 || c % self.norm_num_groups.max(1) != 0 {
                return bad(format!(
                    "{c} channels: not divisible into {h} heads and {} groups",
                    self.norm_num_groups
                ));
            }
        }
        Ok(())
    }

    /// Attention heads per level.
    fn heads(&self) -> Result<Vec<usize>> {
        let spec = match &self.num_attention_heads {
            serde_json::Value::Null => &self.attention_head_dim,
            given => given,
        };
        let levels = self.block_out_channels.len();
        let as_count = |v: &serde_json::Value| v.as_u64().map(|n| n as usize);
        match spec {
            serde_json::Value::Array(list) if list.len() == levels => list
                .iter()
                .map(|v| as_count(v).ok_or(()))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| Error::Invalid("attention heads must be integers".into())),
            v => as_count(v).map(|n| vec![n; levels]).ok_or_else(|| {
                Error::Invalid(format!("attention heads {v}: an integer or one per block"))
            }),
        }
    }
}

/// A down or up block: resnets, each followed by a transformer in the cross-attention kinds,
/// and the resampler between levels.
struct Block {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

impl Block {
    /// One resnet per entry of `inputs` (its input channels) to `c_out`, each followed by a
    /// transformer when the block attends; no resampler yet.
    fn load(
        vb: &VarBuilder,
        inputs: &[usize],
        c_out: usize,
        resnet: &ResnetConfig,
        attention: Option<&TransformerConfig>,
    ) -> Result<Block> {
        let mut block = Block {
            resnets: Vec::new(),
            attentions: Vec::new(),
            down: None,
            up: None,
        };
        for (j, &c_in) in inputs.iter().enumerate() {
            let vb_resnet = vb.pp("resnets").pp(j);
            block
                .resnets
                .push(ResnetBlock2D::load(&vb_resnet, c_in, c_out, resnet)?);
            if let Some(t) = attention {
                let vb_attention = vb.pp("attentions").pp(j);
                block
                    .attentions
                    .push(Transformer2DModel::load(&vb_attention, c_out, t)?);
            }
        }
        Ok(block)
    }
}

/// diffusers' `UNet2DConditionModel`.
pub struct UNet2DConditionModel {
    pub config: UNet2DConditionConfig,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    conv_in: Conv2d,
    down_blocks: Vec<Block>,
    mid_resnets: [ResnetBlock2D; 2],
    mid_attention: Transformer2DModel,
    up_blocks: Vec<Block>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Activations stored as f16 between kernels (sampling only; the backward reads f32).
    f16_activations: bool,
    /// (height, width) of the samples it draws, in place of the config's square sample_size.
    sample_hw: Option<(usize, usize)>,
}

impl UNet2DConditionModel {
    pub const ARCH: &'static str = "UNet2DConditionModel";

    /// Stores activations as f16 between kernels: the sample, the time embedding's input and the
    /// text states enter as f16, ε leaves as f32. Cross-attention's row softmax reads f32, so its
    /// q, k and v are widened around it (small beside the convolutions).
    pub fn with_f16_activations(mut self, on: bool) -> UNet2DConditionModel {
        self.f16_activations = on;
        self
    }

    /// Samples at (height, width) latent elements instead of the config's square
    /// `sample_size` (None keeps it); both sides must halve through every level.
    pub fn with_sample_size(mut self, size: Option<(usize, usize)>) -> Result<Self> {
        let factor = 1 << (self.config.block_out_channels.len() - 1);
        if let Some((h, w)) = size {
            if h == 0 || w == 0 || h % factor != 0 || w % factor != 0 {
                return Err(Error::Invalid(format!(
                    "a {h} × {w} latent does not halve through the UNet's levels: both sides \
                     must be positive multiples of {factor}"
                )));
            }
        }
        self.sample_hw = size;
        Ok(self)
    }

    /// (height, width) of one sample: the asked size, else the config's (or SD 1.x's).
    fn sample_hw(&self) -> (usize, usize) {
        let side = self.config.sample_size.unwrap_or(DEFAULT_SIDE);
        self.sample_hw.unwrap_or((side, side))
    }

    /// An f32 tensor entering the network in the activations' storage.
    fn to_act(&self, gpu: &Gpu, t: &Tensor) -> Result<Tensor> {
        match self.f16_activations {
            true => ops::to_half(gpu, t),
            false => Ok(t.clone()),
        }
    }

    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<UNet2DConditionModel> {
        file.expect_arch(Self::ARCH)?;
        let config = UNet2DConditionConfig::parse(file.meta("config")?)?;
        let vb = file.var_builder(gpu);
        let model = Self::build(gpu, &vb, config)?;
        vb.finish()?;
        Ok(model)
    }

    fn build(gpu: &Gpu, vb: &VarBuilder, config: UNet2DConditionConfig) -> Result<Self> {
        let ch = config.block_out_channels.clone();
        let levels = ch.len();
        let heads = config.heads()?;
        let temb = 4 * ch[0];
        let resnet = ResnetConfig {
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            temb_channels: Some(temb),
            time_norm: TimeEmbeddingNorm::Default,
            output_scale_factor: 1.0,
        };
        let transformer = |h: usize| TransformerConfig {
            heads: h,
            context_dim: config.cross_attention_dim,
            groups: config.norm_num_groups,
            group_norm_eps: 1e-6,
            layer_norm_eps: 1e-5,
        };
        let mut down_blocks = Vec::new();
        for i in 0..levels {
            let vb = vb.pp("down_blocks").pp(i);
            let (c_in, c_out) = (if i == 0 { ch[0] } else { ch[i - 1] }, ch[i]);
            let cross = config.down_block_types[i] == "CrossAttnDownBlock2D";
            let inputs: Vec<usize> = (0..config.layers_per_block)
                .map(|j| if j == 0 { c_in } else { c_out })
                .collect();
            let attention = cross.then(|| transformer(heads[i]));
            let mut block = Block::load(&vb, &inputs, c_out, &resnet, attention.as_ref())?;
            if i + 1 < levels {
                let vb = vb.pp("downsamplers").pp(0);
                block.down = Some(Downsample2D::load(&vb, c_out, config.downsample_padding)?);
            }
            down_blocks.push(block);
        }
        let mid = vb.pp("mid_block");
        let c_mid = ch[levels - 1];
        let mid_resnet = ResnetConfig {
            output_scale_factor: config.mid_block_scale_factor,
            ..resnet
        };
        let mid_resnets = [
            ResnetBlock2D::load(&mid.pp("resnets").pp(0), c_mid, c_mid, &mid_resnet)?,
            ResnetBlock2D::load(&mid.pp("resnets").pp(1), c_mid, c_mid, &mid_resnet)?,
        ];
        let mid_attention = Transformer2DModel::load(
            &mid.pp("attentions").pp(0),
            c_mid,
            &transformer(heads[levels - 1]),
        )?;
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let reversed_heads: Vec<usize> = heads.iter().rev().copied().collect();
        let mut up_blocks = Vec::new();
        for i in 0..levels {
            let vb = vb.pp("up_blocks").pp(i);
            let prev = if i == 0 { reversed[0] } else { reversed[i - 1] };
            let c_out = reversed[i];
            let c_skip_last = reversed[(i + 1).min(levels - 1)];
            let cross = config.up_block_types[i] == "CrossAttnUpBlock2D";
            let inputs: Vec<usize> = (0..=config.layers_per_block)
                .map(|j| {
                    let skip = if j == config.layers_per_block {
                        c_skip_last
                    } else {
                        c_out
                    };
                    (if j == 0 { prev } else { c_out }) + skip
                })
                .collect();
            let attention = cross.then(|| transformer(reversed_heads[i]));
            let mut block = Block::load(&vb, &inputs, c_out, &resnet, attention.as_ref())?;
            if i + 1 < levels {
                block.up = Some(Upsample2D::load(&vb.pp("upsamplers").pp(0), c_out)?);
            }
            up_blocks.push(block);
        }
        Ok(UNet2DConditionModel {
            time_proj: Timesteps::new(gpu, ch[0], config.flip_sin_to_cos, config.freq_shift)?,
            time_embedding: TimestepEmbedding::load(&vb.pp("time_embedding"), ch[0], temb)?,
            conv_in: Conv2d::load(&vb.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_resnets,
            mid_attention,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                &vb.pp("conv_norm_out"),
                config.norm_num_groups,
                ch[0],
                config.norm_eps,
            )?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
            config,
            f16_activations: false,
            sample_hw: None,
        })
    }

    /// ε for `sample` (B, C, H, W) at `timesteps` (B) under text states (B, tokens, width);
    /// H and W divisible by 2^(levels − 1).
    pub fn forward(
        &self,
        gpu: &Gpu,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        self.run(gpu, sample, timesteps, context, None)
    }

    /// [`Self::forward`] and the tape [`Self::backward`] differentiates it with.
    pub fn forward_saving(
        &self,
        gpu: &Gpu,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, UNet2DConditionTape)> {
        let mut tape = UNet2DConditionTape::default();
        let eps = self.run(gpu, sample, timesteps, context, Some(&mut tape))?;
        Ok((eps, tape))
    }

    fn check_inputs(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor) -> Result<()> {
        let levels = self.config.block_out_channels.len();
        let &[b, _, h, w] = sample.shape() else {
            return Err(Error::Invalid(format!(
                "sample {:?} is not NCHW",
                sample.shape()
            )));
        };
        let factor = 1 << (levels - 1);
        if h % factor != 0 || w % factor != 0 || timesteps.shape() != [b] {
            return Err(Error::Invalid(format!(
                "sample {:?} with timesteps {:?}: sides divisible by {factor}, one timestep per \
                 sample",
                sample.shape(),
                timesteps.shape()
            )));
        }
        if context.shape().len() != 3
            || context.dim(0) != b
            || context.dim(2) != self.config.cross_attention_dim
        {
            return Err(Error::Invalid(format!(
                "text states {:?} must be (B = {b}, tokens, {})",
                context.shape(),
                self.config.cross_attention_dim
            )));
        }
        Ok(())
    }

    /// The forward pass, recording every module's tape when given one.
    fn run(
        &self,
        gpu: &Gpu,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        mut tape: Option<&mut UNet2DConditionTape>,
    ) -> Result<Tensor> {
        self.check_inputs(sample, timesteps, context)?;
        if self.f16_activations && tape.is_some() {
            return Err(Error::Invalid(
                "the UNet's backward pass reads f32 activations: f16 activations are for sampling \
                 (not gradient guidance)"
                    .into(),
            ));
        }
        // The time embedding does not depend on the sample: no gradient flows through it.
        let sinusoid = self.to_act(gpu, &self.time_proj.forward(gpu, timesteps)?)?;
        let temb = ops::silu(gpu, &self.time_embedding.forward(gpu, &sinusoid)?)?;
        let context = &self.to_act(gpu, context)?;
        let mut x = self.conv_in.forward(gpu, &self.to_act(gpu, sample)?)?;
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = record_resnet(gpu, resnet, &x, &temb, tape.as_deref_mut())?;
                if let Some(attention) = block.attentions.get(j) {
                    x = record_transformer(gpu, attention, &x, context, tape.as_deref_mut())?;
                }
                skips.push(x.clone());
            }
            if let Some(down) = &block.down {
                if let Some(tape) = tape.as_deref_mut() {
                    tape.down_input_hw.push((x.dim(2), x.dim(3)));
                }
                x = down.forward(gpu, &x)?;
                skips.push(x.clone());
            }
        }
        x = record_resnet(gpu, &self.mid_resnets[0], &x, &temb, tape.as_deref_mut())?;
        x = record_transformer(gpu, &self.mid_attention, &x, context, tape.as_deref_mut())?;
        x = record_resnet(gpu, &self.mid_resnets[1], &x, &temb, tape.as_deref_mut())?;
        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    Error::Internal("the up path ran out of skip connections".into())
                })?;
                if let Some(tape) = tape.as_deref_mut() {
                    tape.x_channels.push(x.dim(1));
                }
                let joined = ops::concat_channels(gpu, &[&x, &skip])?;
                x = record_resnet(gpu, resnet, &joined, &temb, tape.as_deref_mut())?;
                if let Some(attention) = block.attentions.get(j) {
                    x = record_transformer(gpu, attention, &x, context, tape.as_deref_mut())?;
                }
            }
            if let Some(up) = &block.up {
                x = up.forward(gpu, &x)?;
            }
        }
        let normed = match tape {
            Some(tape) => {
                let (y, norm_tape) = self.conv_norm_out.forward_saving(gpu, &x, true)?;
                tape.norm_out = Some(norm_tape);
                y
            }
            None => self.conv_norm_out.forward(gpu, &x, true)?,
        };
        ops::to_f32(gpu, &self.conv_out.forward(gpu, &normed)?)
    }

    /// ∂⟨ε, v⟩/∂sample for the forward that recorded `tape`: the forward's steps in reverse,
    /// the skips' gradients on a stack between the up and the down path. The text states and
    /// timesteps are constants.
    pub fn backward(&self, gpu: &Gpu, tape: &UNet2DConditionTape, v: &Tensor) -> Result<Tensor> {
        let norm_tape = tape.norm_out.as_ref().ok_or_else(incomplete_tape)?;
        let mut replay = Replay {
            resnets: tape.resnets.iter().rev(),
            transformers: tape.transformers.iter().rev(),
            down_input_hw: tape.down_input_hw.iter().rev(),
            x_channels: tape.x_channels.iter().rev(),
        };
        let d = self.conv_out.same_size_input_grad(gpu, v)?;
        let mut d = self.conv_norm_out.backward(gpu, norm_tape, &d)?;
        let mut skip_grads = Vec::new();
        for block in self.up_blocks.iter().rev() {
            if let Some(up) = &block.up {
                d = up.backward(gpu, &d)?;
            }
            for (j, resnet) in block.resnets.iter().enumerate().rev() {
                if let Some(attention) = block.attentions.get(j) {
                    d = attention.backward(gpu, next(&mut replay.transformers)?, &d)?;
                }
                let d_joined = resnet.backward(gpu, next(&mut replay.resnets)?, &d)?;
                let x_channels = *next(&mut replay.x_channels)?;
                let skip_channels = d_joined.dim(1) - x_channels;
                skip_grads.push(ops::slice_channels(
                    gpu,
                    &d_joined,
                    x_channels,
                    skip_channels,
                )?);
                d = ops::slice_channels(gpu, &d_joined, 0, x_channels)?;
            }
        }
        d = self.mid_resnets[1].backward(gpu, next(&mut replay.resnets)?, &d)?;
        d = self
            .mid_attention
            .backward(gpu, next(&mut replay.transformers)?, &d)?;
        d = self.mid_resnets[0].backward(gpu, next(&mut replay.resnets)?, &d)?;
        let mut pop_skip = || skip_grads.pop().ok_or_else(incomplete_tape);
        for block in self.down_blocks.iter().rev() {
            if let Some(down) = &block.down {
                d = ops::add(gpu, &d, &pop_skip()?)?;
                d = down.backward(gpu, &d, *next(&mut replay.down_input_hw)?)?;
            }
            for (j, resnet) in block.resnets.iter().enumerate().rev() {
                d = ops::add(gpu, &d, &pop_skip()?)?;
                if let Some(attention) = block.attentions.get(j) {
                    d = attention.backward(gpu, next(&mut replay.transformers)?, &d)?;
                }
                d = resnet.backward(gpu, next(&mut replay.resnets)?, &d)?;
            }
        }
        // What is left is conv_in's output as the first skip.
        d = ops::add(gpu, &d, &pop_skip()?)?;
        if !skip_grads.is_empty() || !replay.is_spent() {
            return Err(incomplete_tape());
        }
        self.conv_in.same_size_input_grad(gpu, &d)
    }

    /// ∂⟨ε(x, t, text), v⟩/∂x for any batch, in slices of at most [`Self::vjp_max_batch`]
    /// samples, each a saving forward and its backward.
    pub fn vjp(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        self.vjp_sliced(gpu, x, timesteps, context, v, self.vjp_max_batch(gpu))
    }

    /// [`Self::vjp`] running at most `per_call` (≥ 1) samples at once.
    pub fn vjp_sliced(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        v: &Tensor,
        per_call: usize,
    ) -> Result<Tensor> {
        self.check_inputs(x, timesteps, context)?;
        if v.shape() != x.shape() {
            return Err(Error::Invalid(format!(
                "cotangent {:?} must be shaped like ε for x {:?}",
                v.shape(),
                x.shape()
            )));
        }
        super::vjp::in_slices(gpu, x, v, per_call, |rows| {
            let (_, tape) = self.forward_saving(
                gpu,
                &rows.of(gpu, x)?,
                &rows.of(gpu, timesteps)?,
                &rows.of(gpu, context)?,
            )?;
            self.backward(gpu, &tape, &rows.of(gpu, v)?)
        })
    }

    /// The largest batch one backward runs at once: the forward's limit, and the tape within
    /// the budget all backward passes share ([`super::vjp::tape_fit`]).
    pub fn vjp_max_batch(&self, gpu: &Gpu) -> usize {
        let fit = super::vjp::tape_fit(gpu, self.tape_values_per_sample());
        EpsModel::max_batch(self, gpu).min(fit)
    }

    /// An upper bound on the values a tape holds per sample, level by level: each resnet's
    /// maps at the width of an up block's concatenation, each transformer's
    /// (`TRANSFORMER_MAPS` maps and its cross-attention probabilities over `TEXT_TOKENS`).
    fn tape_values_per_sample(&self) -> usize {
        let cfg = &self.config;
        let (h, w) = self.sample_hw();
        let levels = cfg.block_out_channels.len();
        let heads = cfg.heads().unwrap_or_else(|_| vec![1; levels]);
        let layers = cfg.layers_per_block;
        let mut values = 0;
        for (level, &c) in cfg.block_out_channels.iter().enumerate() {
            let down_cross = cfg.down_block_types[level] == "CrossAttnDownBlock2D";
            let up_cross = cfg.up_block_types[levels - 1 - level] == "CrossAttnUpBlock2D";
            let mut resnets = layers + (layers + 1);
            let mut transformers =
                usize::from(down_cross) * layers + usize::from(up_cross) * (layers + 1);
            if level + 1 == levels {
                resnets += 2;
                transformers += 1;
            }
            let pixels = h.div_ceil(1 << level) * w.div_ceil(1 << level);
            let per_pixel = resnets * RESNET_MAPS * 2 * c
                + transformers * (TRANSFORMER_MAPS * c + heads[level] * TEXT_TOKENS);
            values += per_pixel * pixels;
        }
        values
    }
}

/// The side assumed of a config without `sample_size` (Stable Diffusion 1.x's latent side).
const DEFAULT_SIDE: usize = 64;
/// Per resnet, the maps its tape keeps (its norms' inputs).
const RESNET_MAPS: usize = 3;
/// Per transformer, the channel-wide maps its tape keeps: the group norm's input, three layer
/// norms' inputs, self-attention's q, k, v and output, and the GEGLU input (8 wide).
const TRANSFORMER_MAPS: usize = 1 + 3 + 4 + 8;
/// Text tokens a cross-attention's probabilities are counted for (CLIP's context length).
const TEXT_TOKENS: usize = 77;

/// `resnet` on x, recording its tape when given one.
fn record_resnet(
    gpu: &Gpu,
    resnet: &ResnetBlock2D,
    x: &Tensor,
    temb: &Tensor,
    tape: Option<&mut UNet2DConditionTape>,
) -> Result<Tensor> {
    record(
        tape.map(|t| &mut t.resnets),
        || resnet.forward_saving(gpu, x, Some(temb)),
        || resnet.forward(gpu, x, Some(temb)),
    )
}

/// `transformer` on x, recording its tape when given one.
fn record_transformer(
    gpu: &Gpu,
    transformer: &Transformer2DModel,
    x: &Tensor,
    context: &Tensor,
    tape: Option<&mut UNet2DConditionTape>,
) -> Result<Tensor> {
    record(
        tape.map(|t| &mut t.transformers),
        || transformer.forward_saving(gpu, x, context),
        || transformer.forward(gpu, x, context),
    )
}

/// A module's output from `saving` (pushing its tape onto `tapes`) when the forward records,
/// else from `plain`.
fn record<T>(
    tapes: Option<&mut Vec<T>>,
    saving: impl FnOnce() -> Result<(Tensor, T)>,
    plain: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    match tapes {
        Some(tapes) => {
            let (y, tape) = saving()?;
            tapes.push(tape);
            Ok(y)
        }
        None => plain(),
    }
}

/// What [`UNet2DConditionModel::backward`] reads, in forward order: every resnet's and
/// transformer's tape, the sizes entering the downsamplers, the widths the up path joined with
/// its skips, and the output norm's tape. Tensors are shared with the forward, not copied.
#[derive(Default)]
pub struct UNet2DConditionTape {
    resnets: Vec<ResnetTape>,
    transformers: Vec<TransformerTape>,
    down_input_hw: Vec<(usize, usize)>,
    x_channels: Vec<usize>,
    norm_out: Option<GroupNormTape>,
}

/// The tape read back to front.
struct Replay<'a> {
    resnets: std::iter::Rev<std::slice::Iter<'a, ResnetTape>>,
    transformers: std::iter::Rev<std::slice::Iter<'a, TransformerTape>>,
    down_input_hw: std::iter::Rev<std::slice::Iter<'a, (usize, usize)>>,
    x_channels: std::iter::Rev<std::slice::Iter<'a, usize>>,
}

impl Replay<'_> {
    fn is_spent(&mut self) -> bool {
        self.resnets.next().is_none()
            && self.transformers.next().is_none()
            && self.down_input_hw.next().is_none()
            && self.x_channels.next().is_none()
    }
}

/// The next record back, or the error of a tape that is not this network's.
fn next<T>(records: &mut impl Iterator<Item = T>) -> Result<T> {
    records.next().ok_or_else(incomplete_tape)
}

fn incomplete_tape() -> Error {
    Error::Internal("UNet2DConditionModel backward needs the tape of its forward_saving".into())
}

impl EpsModel for UNet2DConditionModel {
    fn predict_eps(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
    ) -> Result<Tensor> {
        self.forward(gpu, x, timesteps, cond.text_states()?)
    }

    fn vjp(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
        v: &Tensor,
    ) -> Result<Tensor> {
        UNet2DConditionModel::vjp(self, gpu, x, timesteps, cond.text_states()?, v)
    }

    fn sample_shape(&self) -> Result<[usize; 3]> {
        match self.sample_hw {
            Some((h, w)) => Ok([self.config.in_channels, h, w]),
            None => square_sample(self.config.in_channels, self.config.sample_size),
        }
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }

    /// The widest activation is a transformer's (B, HW, 8·C) GEGLU projection at the first
    /// level (or its self-attention's scores); a batch fits while it fits one binding.
    fn max_batch(&self, gpu: &Gpu) -> usize {
        let (h, w) = self.sample_hw();
        let bytes = if self.f16_activations { 2 } else { 4 };
        let per_sample = (8 * self.config.block_out_channels[0] * h * w * bytes) as u64;
        (gpu.max_tensor_bytes() / per_sample.max(1)).max(1) as usize
    }
}
