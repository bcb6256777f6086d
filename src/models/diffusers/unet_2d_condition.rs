//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x uses it (`unet_2d_condition.py`,
//! `unet_2d_blocks.py`): `CrossAttnDownBlock2D` / `DownBlock2D` down the resolutions,
//! `UNetMidBlock2DCrossAttn`, `UpBlock2D` / `CrossAttnUpBlock2D` back up, each cross-attention
//! block a [`Transformer2DModel`] reading the text states. Built from the same `ResnetBlock2D`,
//! `Downsample2D`, `Upsample2D` and time embedding as [`super::unet_2d`]. Forward only: the input
//! gradient gradient guidance needs on this network is not written yet.

use super::embeddings::{TimestepEmbedding, Timesteps};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, TimeEmbeddingNorm, Upsample2D};
use super::transformer_2d::{Transformer2DModel, TransformerConfig};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::eps_model::square_sample;
use crate::models::layers::{Conv2d, GroupNorm};
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
        let raw: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
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
}

impl UNet2DConditionModel {
    pub const ARCH: &'static str = "UNet2DConditionModel";

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
        let emb = self
            .time_embedding
            .forward(gpu, &self.time_proj.forward(gpu, timesteps)?)?;
        let temb = ops::silu(gpu, &emb)?;
        let mut x = self.conv_in.forward(gpu, sample)?;
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(gpu, &x, Some(&temb))?;
                if let Some(attention) = block.attentions.get(j) {
                    x = attention.forward(gpu, &x, context)?;
                }
                skips.push(x.clone());
            }
            if let Some(down) = &block.down {
                x = down.forward(gpu, &x)?;
                skips.push(x.clone());
            }
        }
        x = self.mid_resnets[0].forward(gpu, &x, Some(&temb))?;
        x = self.mid_attention.forward(gpu, &x, context)?;
        x = self.mid_resnets[1].forward(gpu, &x, Some(&temb))?;
        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    Error::Internal("the up path ran out of skip connections".into())
                })?;
                x = resnet.forward(gpu, &ops::concat_channels(gpu, &[&x, &skip])?, Some(&temb))?;
                if let Some(attention) = block.attentions.get(j) {
                    x = attention.forward(gpu, &x, context)?;
                }
            }
            if let Some(up) = &block.up {
                x = up.forward(gpu, &x)?;
            }
        }
        let normed = self.conv_norm_out.forward(gpu, &x, true)?;
        self.conv_out.forward(gpu, &normed)
    }
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

    fn sample_shape(&self) -> Result<[usize; 3]> {
        square_sample(self.config.in_channels, self.config.sample_size)
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }

    /// The widest activation is a transformer's (B, HW, 8·C) GEGLU projection at the first
    /// level; a batch fits while it fits one binding.
    fn max_batch(&self, gpu: &Gpu) -> usize {
        let side = self.config.sample_size.unwrap_or(64);
        let per_sample = (8 * self.config.block_out_channels[0] * side * side * 4) as u64;
        (gpu.max_tensor_bytes() / per_sample.max(1)).max(1) as usize
    }
}
