//! diffusers `UNet2DModel` (`unet_2d.py`, the DDPM CIFAR-10 family): its config and the
//! network, built from the blocks of [`super::unet_2d_blocks`].

use super::embeddings::{TimestepEmbedding, Timesteps};
use super::resnet::{ResnetConfig, TimeEmbeddingNorm};
use super::unet_2d_blocks::{
    BlockConfig, BlockTape, DownBlock, DownBlockArgs, DownBlockType, UNetMidBlock2D, UpBlock,
    UpBlockArgs, UpBlockType,
};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::limits::{
    MAX_BLOCKS, MAX_CHANNELS, MAX_CLASSES, MAX_CONFIG_SCALE, MAX_LAYERS_PER_BLOCK, MAX_SAMPLE_SIZE,
    MAX_TRAIN_TIMESTEPS,
};
use crate::models::layers::GroupNormTape;
use crate::models::layers::{Conv2d, Embedding, GroupNorm};
use crate::models::weights::{VarBuilder, WeightFile};
use crate::ops;
use serde::Deserialize;

/// An invalid (rather than unsupported) config, said once.
fn invalid<T>(what: String) -> Result<T> {
    Err(Error::Invalid(format!(
        "invalid UNet2DModel config: {what}"
    )))
}

/// diffusers' UNet2DModel config: every argument of `UNet2DModel.__init__` and the `_class_name`
/// and `_diffusers_version` keys diffusers adds. A missing key takes diffusers' default (see the
/// `Default` impl); any other key is refused, so a misspelled one cannot silently fall back to
/// a default and build a different network. [`validate`](Self::validate) checks every value.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNet2DConfig {
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: String,
    pub freq_shift: f32,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<DownBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f32,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    pub act_fn: String,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f32,
    pub resnet_time_scale_shift: TimeEmbeddingNorm,
    pub add_attention: bool,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    /// Only None: a time-embedding width other than 4 × `block_out_channels[0]` is not ported.
    pub time_embedding_dim: Option<usize>,
    /// Only `UNetMidBlock2D` (None, no mid block, is not ported).
    pub mid_block_type: Option<String>,
    /// Training only; range-checked.
    pub dropout: f64,
    /// Read by diffusers only for learned time embeddings; range-checked.
    pub num_train_timesteps: Option<usize>,
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    #[serde(rename = "_diffusers_version")]
    pub diffusers_version: Option<String>,
}

impl Default for UNet2DConfig {
    /// diffusers' `UNet2DModel.__init__` defaults, in its argument order.
    fn default() -> UNet2DConfig {
        use DownBlockType::{AttnDownBlock2D, DownBlock2D};
        use UpBlockType::{AttnUpBlock2D, UpBlock2D};
        UNet2DConfig {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: vec![
                DownBlock2D,
                AttnDownBlock2D,
                AttnDownBlock2D,
                AttnDownBlock2D,
            ],
            up_block_types: vec![AttnUpBlock2D, AttnUpBlock2D, AttnUpBlock2D, UpBlock2D],
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: TimeEmbeddingNorm::Default,
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            time_embedding_dim: None,
            mid_block_type: Some(MID_BLOCK_TYPE.into()),
            dropout: 0.0,
            num_train_timesteps: None,
            class_name: None,
            diffusers_version: None,
        }
    }
}

/// The only `mid_block_type` ported.
const MID_BLOCK_TYPE: &str = "UNetMidBlock2D";

impl UNet2DConfig {
    /// Rejects configurations this port does not implement (`Error::Weights`) and values that
    /// cannot build a sound network (`Error::Invalid`: counts outside their stated
    /// [limits](crate::limits), channels the norms cannot split, non-finite or non-positive
    /// scales), naming the key. Unknown keys, block types and time-embedding norms are already
    /// refused when the config is deserialised.
    pub fn validate(&self) -> Result<()> {
        self.validate_blocks()?;
        self.validate_counts()?;
        self.validate_divisions()?;
        self.validate_scales()?;
        self.validate_supported()
    }

    fn validate_blocks(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::Weights(format!(
                "unsupported UNet2DModel config: {} block_out_channels, {} down blocks, {} up \
                 blocks (must be equal and > 0)",
                n,
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        if n > MAX_BLOCKS {
            return invalid(format!(
                "{n} blocks (block_out_channels); at most {MAX_BLOCKS}"
            ));
        }
        Ok(())
    }

    /// Every count in 1..=its limit.
    fn validate_counts(&self) -> Result<()> {
        let mut counts = vec![
            ("in_channels", Some(self.in_channels), MAX_CHANNELS),
            ("out_channels", Some(self.out_channels), MAX_CHANNELS),
            (
                "layers_per_block",
                Some(self.layers_per_block),
                MAX_LAYERS_PER_BLOCK,
            ),
            ("attention_head_dim", self.attention_head_dim, MAX_CHANNELS),
            ("norm_num_groups", Some(self.norm_num_groups), MAX_CHANNELS),
            (
                "attn_norm_num_groups",
                self.attn_norm_num_groups,
                MAX_CHANNELS,
            ),
            ("num_class_embeds", self.num_class_embeds, MAX_CLASSES),
            ("sample_size", self.sample_size, MAX_SAMPLE_SIZE),
            (
                "num_train_timesteps",
                self.num_train_timesteps,
                MAX_TRAIN_TIMESTEPS,
            ),
        ];
        counts.extend(
            self.block_out_channels
                .iter()
                .map(|&c| ("block_out_channels", Some(c), MAX_CHANNELS)),
        );
        for (key, value, max) in counts {
            if let Some(v) = value.filter(|v| !(1..=max).contains(v)) {
                return invalid(format!("`{key}` holds {v}; it must be in 1..={max}"));
            }
        }
        Ok(())
    }

    /// Channels the group norms and the resolution levels must divide evenly.
    fn validate_divisions(&self) -> Result<()> {
        let groups = self.norm_num_groups;
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| !c.is_multiple_of(groups))
        {
            return invalid(format!(
                "`block_out_channels` holds {c}, which `norm_num_groups` {groups} does not divide"
            ));
        }
        let mid = self.block_out_channels[self.block_out_channels.len() - 1];
        if let Some(g) = self
            .attn_norm_num_groups
            .filter(|&g| !mid.is_multiple_of(g))
        {
            return invalid(format!(
                "`attn_norm_num_groups` {g} does not divide the mid block's {mid} channels"
            ));
        }
        let factor = 1usize << (self.block_out_channels.len() - 1);
        if let Some(side) = self.sample_size.filter(|s| !s.is_multiple_of(factor)) {
            return invalid(format!(
                "`sample_size` {side} does not halve {} times (a multiple of {factor})",
                self.block_out_channels.len() - 1
            ));
        }
        Ok(())
    }

    /// Floats: finite and in range.
    fn validate_scales(&self) -> Result<()> {
        let half = self.block_out_channels[0] / 2;
        let shift = self.freq_shift as f64;
        if half == 0 || !(shift >= 0.0 && shift < half as f64) {
            return invalid(format!(
                "`freq_shift` {shift} with block_out_channels[0] = {}: the timestep embedding \
                 needs 0 ≤ freq_shift < block_out_channels[0] / 2",
                self.block_out_channels[0]
            ));
        }
        let ranges = [
            ("norm_eps", self.norm_eps as f64, 0.0, 1.0),
            (
                "mid_block_scale_factor",
                self.mid_block_scale_factor as f64,
                0.0,
                MAX_CONFIG_SCALE,
            ),
        ];
        for (key, v, lo, hi) in ranges {
            if !(v > lo && v <= hi) {
                return invalid(format!("`{key}` is {v}; it must be in ({lo}, {hi}]"));
            }
        }
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            return invalid(format!(
                "`dropout` is {}; it must be in [0, 1)",
                self.dropout
            ));
        }
        Ok(())
    }

    fn validate_supported(&self) -> Result<()> {
        let unsupported = |what: String| {
            Err(Error::Weights(format!(
                "unsupported UNet2DModel config: {what}"
            )))
        };
        let strings = [
            (
                "_class_name",
                self.class_name.as_deref(),
                Some(UNet2DModel::ARCH),
            ),
            (
                "time_embedding_type",
                Some(self.time_embedding_type.as_str()),
                Some("positional"),
            ),
            ("act_fn", Some(self.act_fn.as_str()), Some("silu")),
            (
                "downsample_type",
                Some(self.downsample_type.as_str()),
                Some("conv"),
            ),
            (
                "upsample_type",
                Some(self.upsample_type.as_str()),
                Some("conv"),
            ),
            (
                "mid_block_type",
                self.mid_block_type.as_deref(),
                Some(MID_BLOCK_TYPE),
            ),
        ];
        for (key, value, only) in strings {
            // An absent `_class_name` is fine; every other key has a value.
            if value != only && !(key == "_class_name" && value.is_none()) {
                return unsupported(format!("`{key}` {value:?} (only {only:?})"));
            }
        }
        if self.downsample_padding > 1 {
            return unsupported(format!("downsample_padding {}", self.downsample_padding));
        }
        if self.center_input_sample {
            return unsupported("center_input_sample".into());
        }
        if let Some(t) = &self.class_embed_type {
            return unsupported(format!(
                "class_embed_type {t:?} (only a plain num_class_embeds table)"
            ));
        }
        if let Some(d) = self.time_embedding_dim {
            return unsupported(format!(
                "time_embedding_dim {d} (only 4 × block_out_channels[0])"
            ));
        }
        Ok(())
    }

    /// Width of the time embedding every resnet receives (diffusers' `time_embed_dim`).
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }
}

/// diffusers `UNet2DModel`: ε prediction for a noisy image at a timestep, optionally
/// class-conditional. Fields and tensor names follow diffusers' module tree.
pub struct UNet2DModel {
    pub config: UNet2DConfig,
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<Embedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Activations stored as f16 between kernels ([`Self::with_f16_activations`]).
    f16_activations: bool,
}

impl UNet2DModel {
    /// This model with its activations stored as f16 between kernels (products and sums stay
    /// f32; input and ε stay f32): half the activation memory and traffic. Needs the device's
    /// `SHADER_F16`; sampling only (the backward pass refuses it), and attention as products
    /// (one head's scores within a group).
    pub fn with_f16_activations(mut self, on: bool) -> UNet2DModel {
        self.f16_activations = on;
        self
    }

    /// The `arch` metadata of a UNet2DModel weight file (written by `tools/convert.py`).
    pub const ARCH: &'static str = "UNet2DModel";

    /// Loads a converted weight file, checking every tensor against the embedded config.
    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<UNet2DModel> {
        file.expect_arch(Self::ARCH)?;
        let config: UNet2DConfig = file.config()?;
        config.validate()?;
        let vb = file.var_builder(gpu);
        let model = Self::build(&vb, config)?;
        vb.finish()?;
        Ok(model)
    }

    /// A model of the configured architecture with seeded random weights (for benchmarks).
    pub fn random(gpu: &Gpu, config: UNet2DConfig, seed: u64) -> Result<UNet2DModel> {
        config.validate()?;
        Self::build(&VarBuilder::random(gpu, seed), config)
    }

    /// diffusers' `__init__` for a validated config, in its order.
    fn build(vb: &VarBuilder, config: UNet2DConfig) -> Result<UNet2DModel> {
        let ch = &config.block_out_channels;
        let time_embed_dim = config.time_embed_dim();
        let groups = config.norm_num_groups;
        let blocks = BlockConfig {
            num_layers: config.layers_per_block,
            resnet: ResnetConfig {
                groups,
                eps: config.norm_eps,
                temb_channels: Some(time_embed_dim),
                time_norm: config.resnet_time_scale_shift,
                output_scale_factor: 1.0,
            },
            attention_head_dim: config.attention_head_dim,
        };
        Ok(UNet2DModel {
            conv_in: Conv2d::load(&vb.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?,
            time_proj: Timesteps::new(vb.gpu(), ch[0], config.flip_sin_to_cos, config.freq_shift)?,
            time_embedding: TimestepEmbedding::load(
                &vb.pp("time_embedding"),
                ch[0],
                time_embed_dim,
            )?,
            class_embedding: match config.num_class_embeds {
                Some(n) => Some(Embedding::load(
                    &vb.pp("class_embedding"),
                    n,
                    time_embed_dim,
                )?),
                None => None,
            },
            down_blocks: Self::build_down_blocks(vb, &config, &blocks)?,
            mid_block: Self::build_mid_block(vb, &config, &blocks)?,
            up_blocks: Self::build_up_blocks(vb, &config, &blocks)?,
            conv_norm_out: GroupNorm::load(
                &vb.pp("conv_norm_out"),
                groups,
                ch[0],
                config.norm_eps,
            )?,
            f16_activations: false,
            conv_out: Conv2d::load(&vb.pp("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
            config,
        })
    }

    fn build_down_blocks(
        vb: &VarBuilder,
        config: &UNet2DConfig,
        blocks: &BlockConfig,
    ) -> Result<Vec<DownBlock>> {
        let ch = &config.block_out_channels;
        let mut output_channel = ch[0];
        let mut down_blocks = Vec::new();
        for (i, &kind) in config.down_block_types.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = ch[i];
            let is_final_block = i + 1 == ch.len();
            let args = DownBlockArgs {
                in_channels: input_channel,
                out_channels: output_channel,
                add_downsample: !is_final_block,
                downsample_padding: config.downsample_padding,
            };
            let vb = vb.pp("down_blocks").pp(i);
            down_blocks.push(DownBlock::load(kind, &vb, blocks, &args)?);
        }
        Ok(down_blocks)
    }

    /// diffusers' `UNetMidBlock2D` defaults as UNet2DModel keeps them: one (attention, resnet)
    /// layer, and the mid block's own output scale.
    fn build_mid_block(
        vb: &VarBuilder,
        config: &UNet2DConfig,
        blocks: &BlockConfig,
    ) -> Result<UNetMidBlock2D> {
        let cfg = BlockConfig {
            num_layers: 1,
            resnet: ResnetConfig {
                output_scale_factor: config.mid_block_scale_factor,
                ..blocks.resnet
            },
            ..*blocks
        };
        UNetMidBlock2D::load(
            &vb.pp("mid_block"),
            &cfg,
            config.block_out_channels[config.block_out_channels.len() - 1],
            config.attn_norm_num_groups,
            config.add_attention,
        )
    }

    /// Up blocks have one resnet more than down blocks: the extra one takes the skip the level
    /// above's downsampler (or conv_in, at the top) left.
    fn build_up_blocks(
        vb: &VarBuilder,
        config: &UNet2DConfig,
        blocks: &BlockConfig,
    ) -> Result<Vec<UpBlock>> {
        let cfg = BlockConfig {
            num_layers: config.layers_per_block + 1,
            ..*blocks
        };
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let last = reversed.len() - 1;
        let mut output_channel = reversed[0];
        let mut up_blocks = Vec::new();
        for (i, &kind) in config.up_block_types.iter().enumerate() {
            let prev_output_channel = output_channel;
            output_channel = reversed[i];
            let args = UpBlockArgs {
                in_channels: reversed[(i + 1).min(last)],
                prev_output_channel,
                out_channels: output_channel,
                add_upsample: i != last,
            };
            let vb = vb.pp("up_blocks").pp(i);
            up_blocks.push(UpBlock::load(kind, &vb, &cfg, &args)?);
        }
        Ok(up_blocks)
    }

    /// The largest batch whose biggest activation fits one storage binding. The widest tensors
    /// are the up path's concatenations and the attention sequences: at most
    /// (2·max channels) × H × W values per sample at any level, of 2 bytes with f16 activations.
    pub fn max_batch(&self, gpu: &Gpu) -> usize {
        let side = self.config.sample_size.unwrap_or(1);
        let widest = 2 * self
            .config
            .block_out_channels
            .iter()
            .max()
            .copied()
            .unwrap_or(1);
        let bytes = if self.f16_activations { 2 } else { 4 };
        let per_sample = (widest * side * side * bytes) as u64;
        (gpu.max_tensor_bytes() / per_sample.max(1)).max(1) as usize
    }

    /// Number of classes when the model is class-conditional.
    pub fn num_classes(&self) -> Option<usize> {
        self.config.num_class_embeds
    }

    /// ε prediction for `sample` (B, C, H, W) at `timesteps` (B) with optional integer-valued
    /// `class_labels` (B). H and W must be divisible by 2^(number of down blocks − 1).
    pub fn forward(
        &self,
        gpu: &Gpu,
        sample: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.run(gpu, sample, timesteps, class_labels, None)
    }

    /// [`Self::forward`] and the tape [`Self::backward`] differentiates it with.
    pub fn forward_saving(
        &self,
        gpu: &Gpu,
        sample: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Result<(Tensor, UNetTape)> {
        let mut tape = UNetTape::default();
        let eps = self.run(gpu, sample, timesteps, class_labels, Some(&mut tape))?;
        Ok((eps, tape))
    }

    /// The forward pass, recording each block's tape when given one.
    fn run(
        &self,
        gpu: &Gpu,
        sample: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        mut tape: Option<&mut UNetTape>,
    ) -> Result<Tensor> {
        self.check_inputs(sample, timesteps)?;
        if self.f16_activations && tape.is_some() {
            return Err(Error::Invalid(
                "the UNet's backward pass reads f32 activations: f16 activations are for sampling \
                 (not gradient guidance)"
                    .into(),
            ));
        }
        // 1. time (and class) embedding. Every resnet applies SiLU to it first, so that is
        // done once here. It does not depend on the sample: no gradient flows through it.
        let temb_act = {
            let _scope = gpu.scope("time_embedding");
            let emb = self.embed(gpu, timesteps, class_labels)?;
            ops::silu(gpu, &emb)?
        };

        // 2. pre-process
        let mut x = {
            let _scope = gpu.scope("conv_in");
            self.conv_in.forward(gpu, &self.to_act(gpu, sample)?)?
        };

        // 3. down (each block in its profile scope, named as in diffusers)
        let mut down_block_res_samples = vec![x.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let _scope = gpu.scope(format_args!("down_blocks.{i}"));
            let block_tape = tape.as_deref_mut().map(|t| push_default(&mut t.down));
            x = block.forward(gpu, &x, &temb_act, &mut down_block_res_samples, block_tape)?;
        }

        // 4. mid
        {
            let _scope = gpu.scope("mid_block");
            let mid_tape = tape.as_deref_mut().map(|t| &mut t.mid);
            x = self.mid_block.forward(gpu, &x, &temb_act, mid_tape)?;
        }

        // 5. up
        for (i, block) in self.up_blocks.iter().enumerate() {
            let _scope = gpu.scope(format_args!("up_blocks.{i}"));
            let block_tape = tape.as_deref_mut().map(|t| push_default(&mut t.up));
            // Taken by value: the block frees its input once joined with the first skip.
            x = block.forward(gpu, x, &mut down_block_res_samples, &temb_act, block_tape)?;
        }

        // 6. post-process: norm and SiLU in one kernel, then conv_out
        let normed = {
            let _scope = gpu.scope("conv_norm_out");
            match tape {
                Some(tape) => {
                    let (y, norm_tape) = self.conv_norm_out.forward_saving(gpu, &x, true)?;
                    tape.norm_out = Some(norm_tape);
                    y
                }
                None => self.conv_norm_out.forward(gpu, &x, true)?,
            }
        };
        drop((x, down_block_res_samples));
        let _scope = gpu.scope("conv_out");
        ops::to_f32(gpu, &self.conv_out.forward(gpu, &normed)?)
    }

    /// ∂⟨ε, v⟩/∂sample for the forward that recorded `tape`: the forward's steps in reverse,
    /// the skip connections' gradients on a stack between the up and the down path.
    pub fn backward(&self, gpu: &Gpu, tape: &UNetTape, v: &Tensor) -> Result<Tensor> {
        let norm_tape = tape.norm_out.as_ref().ok_or_else(incomplete_tape)?;
        let recorded =
            tape.down.len() == self.down_blocks.len() && tape.up.len() == self.up_blocks.len();
        if !recorded {
            return Err(incomplete_tape());
        }
        let _scope = gpu.scope("backward");
        let d = self.conv_out.same_size_input_grad(gpu, v)?;
        let mut d = self.conv_norm_out.backward(gpu, norm_tape, &d)?;
        let mut skip_grads = Vec::new();
        for (block, block_tape) in self.up_blocks.iter().zip(&tape.up).rev() {
            d = block.backward(gpu, block_tape, &d, &mut skip_grads)?;
        }
        d = self.mid_block.backward(gpu, &tape.mid, &d)?;
        for (block, block_tape) in self.down_blocks.iter().zip(&tape.down).rev() {
            d = block.backward(gpu, block_tape, &d, &mut skip_grads)?;
        }
        // What is left is the gradient of conv_in's output as the first skip.
        match (skip_grads.pop(), skip_grads.is_empty()) {
            (Some(first_skip), true) => {
                let d = ops::add(gpu, &d, &first_skip)?;
                self.conv_in.same_size_input_grad(gpu, &d)
            }
            _ => Err(Error::Invalid(
                "UNet backward: the skip gradients do not match the skips".into(),
            )),
        }
    }

    fn check_inputs(&self, sample: &Tensor, timesteps: &Tensor) -> Result<()> {
        let &[b, c, h, w] = sample.shape() else {
            return Err(Error::Shape {
                op: "UNet2DModel",
                msg: format!("sample {:?} is not NCHW", sample.shape()),
            });
        };
        let factor = 1 << (self.down_blocks.len() - 1);
        let shape_ok = c == self.config.in_channels
            && h % factor == 0
            && w % factor == 0
            && timesteps.shape() == [b];
        if shape_ok {
            return Ok(());
        }
        Err(Error::Shape {
            op: "UNet2DModel",
            msg: format!(
                "sample {:?} with timesteps {:?}: need {} channels, sides divisible by {factor}, one timestep per sample",
                sample.shape(),
                timesteps.shape(),
                self.config.in_channels
            ),
        })
    }

    /// diffusers' step 1: the time embedding plus, for a class-conditional model, the label's.
    /// An f32 tensor entering the network (the sample, the sinusoid, a class row) in the
    /// activations' storage: f16 with f16 activations, else itself.
    fn to_act(&self, gpu: &Gpu, t: &Tensor) -> Result<Tensor> {
        match self.f16_activations {
            true => ops::to_half(gpu, t),
            false => Ok(t.clone()),
        }
    }

    /// The time (and class) embedding in the activations' storage (made in f32: the sinusoid
    /// and the class table, then converted before the MLP).
    fn embed(
        &self,
        gpu: &Gpu,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t_emb = self.to_act(gpu, &self.time_proj.forward(gpu, timesteps)?)?;
        let emb = self.time_embedding.forward(gpu, &t_emb)?;
        match (&self.class_embedding, class_labels) {
            (Some(table), Some(labels)) => {
                ops::add(gpu, &emb, &self.to_act(gpu, &table.forward(gpu, labels)?)?)
            }
            (Some(_), None) => Err(Error::Invalid(
                "this model is class-conditional: class labels are required".into(),
            )),
            (None, Some(_)) => Err(Error::Invalid("this model takes no class labels".into())),
            (None, None) => Ok(emb),
        }
    }
}

/// What [`UNet2DModel::backward`] needs from a forward: every block's tape and the final norm's.
/// Tensors are shared with the forward (no copies); the tape holds them until it drops.
#[derive(Default)]
pub struct UNetTape {
    down: Vec<BlockTape>,
    mid: BlockTape,
    up: Vec<BlockTape>,
    norm_out: Option<GroupNormTape>,
}

/// Appends a fresh tape and returns it.
fn push_default(tapes: &mut Vec<BlockTape>) -> &mut BlockTape {
    tapes.push(BlockTape::default());
    tapes.last_mut().expect("just pushed")
}

fn incomplete_tape() -> Error {
    Error::Invalid("UNet backward needs the tape of a whole forward_saving pass".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::weights::parse_config;

    fn parse(json: &str) -> serde_json::Result<UNet2DConfig> {
        serde_json::from_str(json)
    }

    #[test]
    fn missing_fields_take_diffusers_defaults() {
        let config = parse("{}").unwrap();
        config.validate().unwrap();
        assert_eq!(config.block_out_channels, [224, 448, 672, 896]);
        assert_eq!(config.down_block_types[1], DownBlockType::AttnDownBlock2D);
        assert_eq!(config.up_block_types[3], UpBlockType::UpBlock2D);
        assert_eq!(config.attention_head_dim, Some(8));
        assert_eq!(config.resnet_time_scale_shift, TimeEmbeddingNorm::Default);
        // An explicit null is diffusers' "one head per block", not the default 8.
        let config = parse(r#"{"attention_head_dim": null}"#).unwrap();
        assert_eq!(config.attention_head_dim, None);
    }

    #[test]
    fn unknown_block_types_are_named() {
        let err = parse(r#"{"up_block_types": ["UpBlock2D", "SkipUpBlock2D"]}"#).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("SkipUpBlock2D") && err.contains("AttnUpBlock2D"),
            "{err}"
        );
        let err = parse(r#"{"resnet_time_scale_shift": "ada_group"}"#).unwrap_err();
        assert!(err.to_string().contains("ada_group"), "{err}");
    }

    #[test]
    fn unknown_repeated_and_mistyped_keys_name_the_key() {
        for (json, key) in [
            (r#"{"flip_sin_to_cs": true}"#, "flip_sin_to_cs"),
            (r#"{"in_channels": 1, "in_channels": 3}"#, "in_channels"),
            (r#"{"layers_per_block": 1e6}"#, "layers_per_block"),
            (r#"{"norm_eps": "small"}"#, "norm_eps"),
        ] {
            let err = parse_config::<UNet2DConfig>(json).unwrap_err();
            let err = err.to_string();
            assert!(err.contains(key), "{json}: {err}");
        }
        // The keys diffusers itself adds, with the values it writes, are accepted.
        let diffusers = r#"{"_class_name": "UNet2DModel", "_diffusers_version": "0.30.0",
            "dropout": 0.0, "mid_block_type": "UNetMidBlock2D", "num_train_timesteps": null,
            "time_embedding_dim": null}"#;
        parse(diffusers).unwrap().validate().unwrap();
    }

    #[test]
    fn zero_sizes_are_refused_naming_the_field() {
        for (field, value) in [
            ("block_out_channels", "[224, 0, 672, 896]"),
            ("attention_head_dim", "0"),
            ("norm_num_groups", "0"),
            ("attn_norm_num_groups", "0"),
            ("num_class_embeds", "0"),
            ("in_channels", "0"),
        ] {
            let config = parse(&format!(r#"{{"{field}": {value}}}"#)).unwrap();
            match config.validate() {
                Err(Error::Invalid(msg)) => assert!(msg.contains(field), "{msg}"),
                other => panic!("{field} = {value}: {other:?}"),
            }
        }
    }
}
