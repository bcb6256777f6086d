//! diffusers `UNet2DModel` (`unet_2d.py`, the DDPM CIFAR-10 family): its config and the
//! network, built from the blocks of [`super::unet_2d_blocks`].

use super::embeddings::{TimestepEmbedding, Timesteps};
use super::layers::GroupNormTape;
use super::layers::{Conv2d, Embedding, GroupNorm};
use super::resnet::{ResnetConfig, TimeEmbeddingNorm};
use super::unet_2d_blocks::{
    BlockConfig, BlockTape, DownBlock, DownBlockArgs, DownBlockType, UNetMidBlock2D, UpBlock,
    UpBlockArgs, UpBlockType,
};
use super::weights::{VarBuilder, WeightFile};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops;
use serde::Deserialize;

/// The subset of diffusers' UNet2DModel config this port reads. A missing field takes the
/// default of diffusers' `UNet2DModel.__init__` (see the `Default` impl); unknown fields
/// (`dropout`, `num_train_timesteps`, …) are ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
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
        }
    }
}

impl UNet2DConfig {
    /// Rejects configurations this port does not implement (`Error::Weights`) and sizes that
    /// cannot build a network (`Error::Invalid`), naming the field. Unknown block types and
    /// time-embedding norms are already refused when the config is deserialised.
    pub fn validate(&self) -> Result<()> {
        self.validate_sizes()?;
        self.validate_supported()
    }

    fn validate_sizes(&self) -> Result<()> {
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
        let invalid = |what: String| {
            Err(Error::Invalid(format!(
                "invalid UNet2DModel config: {what} (it must be positive)"
            )))
        };
        // A zero here would divide by zero or build empty tensors further on.
        if self.block_out_channels.contains(&0) {
            return invalid(format!(
                "block_out_channels {:?} holds 0",
                self.block_out_channels
            ));
        }
        let positive = [
            ("in_channels", Some(self.in_channels)),
            ("out_channels", Some(self.out_channels)),
            ("attention_head_dim", self.attention_head_dim),
            ("norm_num_groups", Some(self.norm_num_groups)),
            ("attn_norm_num_groups", self.attn_norm_num_groups),
            ("num_class_embeds", self.num_class_embeds),
        ];
        match positive.iter().find(|(_, value)| *value == Some(0)) {
            Some((field, _)) => invalid(format!("{field} is 0")),
            None => Ok(()),
        }
    }

    fn validate_supported(&self) -> Result<()> {
        let unsupported = |what: String| {
            Err(Error::Weights(format!(
                "unsupported UNet2DModel config: {what}"
            )))
        };
        if self.time_embedding_type != "positional" {
            return unsupported(format!(
                "time_embedding_type {:?}",
                self.time_embedding_type
            ));
        }
        if self.act_fn != "silu" {
            return unsupported(format!("act_fn {:?}", self.act_fn));
        }
        if self.downsample_type != "conv" || self.upsample_type != "conv" {
            return unsupported(format!(
                "down/upsample types {:?}/{:?} (only conv)",
                self.downsample_type, self.upsample_type
            ));
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
}

impl UNet2DModel {
    /// The `arch` metadata of a UNet2DModel weight file (written by `tools/convert.py`).
    pub const ARCH: &'static str = "UNet2DModel";

    /// Loads a converted weight file, checking every tensor against the embedded config.
    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<UNet2DModel> {
        file.expect_arch(Self::ARCH)?;
        let config: UNet2DConfig = serde_json::from_str(file.meta("config")?).map_err(|e| {
            Error::Weights(format!(
                "{}: invalid config metadata: {e}",
                file.path().display()
            ))
        })?;
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
                temb_channels: time_embed_dim,
                time_norm: config.resnet_time_scale_shift,
                output_scale_factor: 1.0,
            },
            attention_head_dim: config.attention_head_dim,
        };
        Ok(UNet2DModel {
            conv_in: Conv2d::load(&vb.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?,
            time_proj: Timesteps::new(ch[0], config.flip_sin_to_cos, config.freq_shift),
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
    /// (2·max channels) × H × W values per sample at any level.
    pub fn max_batch(&self, gpu: &Gpu) -> usize {
        let side = self.config.sample_size.unwrap_or(1);
        let widest = 2 * self
            .config
            .block_out_channels
            .iter()
            .max()
            .copied()
            .unwrap_or(1);
        let per_sample = (widest * side * side * 4) as u64;
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

        // 1. time (and class) embedding. Every resnet applies SiLU to it first, so that is
        // done once here. It does not depend on the sample: no gradient flows through it.
        let emb = self.embed(gpu, timesteps, class_labels)?;
        let temb_act = ops::silu(gpu, &emb)?;

        // 2. pre-process
        let mut x = self.conv_in.forward(gpu, sample)?;

        // 3. down
        let mut down_block_res_samples = vec![x.clone()];
        for block in &self.down_blocks {
            let block_tape = tape.as_deref_mut().map(|t| push_default(&mut t.down));
            x = block.forward(gpu, &x, &temb_act, &mut down_block_res_samples, block_tape)?;
        }

        // 4. mid
        let mid_tape = tape.as_deref_mut().map(|t| &mut t.mid);
        x = self.mid_block.forward(gpu, &x, &temb_act, mid_tape)?;

        // 5. up
        for block in &self.up_blocks {
            let block_tape = tape.as_deref_mut().map(|t| push_default(&mut t.up));
            x = block.forward(gpu, &x, &mut down_block_res_samples, &temb_act, block_tape)?;
        }

        // 6. post-process: norm and SiLU in one kernel, then conv_out
        let x = match tape {
            Some(tape) => {
                let (x, norm_tape) = self.conv_norm_out.forward_saving(gpu, &x, true)?;
                tape.norm_out = Some(norm_tape);
                x
            }
            None => self.conv_norm_out.forward(gpu, &x, true)?,
        };
        self.conv_out.forward(gpu, &x)
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
    fn embed(
        &self,
        gpu: &Gpu,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t_emb = self.time_proj.forward(gpu, timesteps)?;
        let emb = self.time_embedding.forward(gpu, &t_emb)?;
        match (&self.class_embedding, class_labels) {
            (Some(table), Some(labels)) => ops::add(gpu, &emb, &table.forward(gpu, labels)?),
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
