//! diffusers `UNet2DModel` (the DDPM CIFAR-10 family), module for module.

use super::layers::{
    Conv2d, GroupNorm, Linear, ResnetBlock2D, ResnetConfig, SpatialAttention, TimeEmbeddingNorm,
};
use super::weights::{VarBuilder, WeightFile};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops;
use serde::Deserialize;

/// The subset of diffusers' UNet2DModel config this port reads; defaults are diffusers'.
#[derive(Clone, Debug, Deserialize)]
pub struct UNet2DConfig {
    pub sample_size: Option<usize>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f32,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f32,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "conv")]
    pub downsample_type: String,
    #[serde(default = "conv")]
    pub upsample_type: String,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "eight")]
    pub attention_head_dim: Option<usize>,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    pub attn_norm_num_groups: Option<usize>,
    #[serde(default = "eps")]
    pub norm_eps: f32,
    #[serde(default = "default_norm")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "yes")]
    pub add_attention: bool,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
}

fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn one() -> usize {
    1
}
fn one_f() -> f32 {
    1.0
}
fn eight() -> Option<usize> {
    Some(8)
}
fn thirty_two() -> usize {
    32
}
fn eps() -> f32 {
    1e-5
}
fn yes() -> bool {
    true
}
fn positional() -> String {
    "positional".into()
}
fn conv() -> String {
    "conv".into()
}
fn silu() -> String {
    "silu".into()
}
fn default_norm() -> String {
    "default".into()
}

impl UNet2DConfig {
    /// Rejects configurations this port does not implement, naming the field.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |what: String| {
            Err(Error::Weights(format!(
                "unsupported UNet2DModel config: {what}"
            )))
        };
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return unsupported(format!(
                "{} block_out_channels, {} down blocks, {} up blocks (must be equal and > 0)",
                n,
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for t in &self.down_block_types {
            if t != "DownBlock2D" && t != "AttnDownBlock2D" {
                return unsupported(format!(
                    "down block type {t:?} (supported: DownBlock2D, AttnDownBlock2D)"
                ));
            }
        }
        for t in &self.up_block_types {
            if t != "UpBlock2D" && t != "AttnUpBlock2D" {
                return unsupported(format!(
                    "up block type {t:?} (supported: UpBlock2D, AttnUpBlock2D)"
                ));
            }
        }
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
        self.time_norm()?;
        Ok(())
    }

    fn time_norm(&self) -> Result<TimeEmbeddingNorm> {
        match self.resnet_time_scale_shift.as_str() {
            "default" => Ok(TimeEmbeddingNorm::Default),
            "scale_shift" => Ok(TimeEmbeddingNorm::ScaleShift),
            other => Err(Error::Weights(format!(
                "unsupported resnet_time_scale_shift {other:?}"
            ))),
        }
    }

    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }
}

struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialAttention>,
    downsampler: Option<Conv2d>,
}

struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialAttention>,
    upsampler: Option<Conv2d>,
}

struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attention: Option<SpatialAttention>,
}

pub struct UNet2DModel {
    pub config: UNet2DConfig,
    time_linear_1: Linear,
    time_linear_2: Linear,
    class_embedding: Option<Tensor>,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

pub const ARCH: &str = "UNet2DModel";

impl UNet2DModel {
    /// Loads a converted weight file, checking every tensor against the embedded config.
    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<UNet2DModel> {
        file.expect_arch(ARCH)?;
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

    fn build(vb: &VarBuilder, config: UNet2DConfig) -> Result<UNet2DModel> {
        let ch = &config.block_out_channels;
        let temb = config.time_embed_dim();
        let groups = config.norm_num_groups;
        let eps = config.norm_eps;
        let resnet = |scale: f32| ResnetConfig {
            groups,
            eps,
            temb_channels: temb,
            time_norm: config.time_norm().expect("validated"),
            output_scale_factor: scale,
        };
        let head_dim = |channels: usize| config.attention_head_dim.unwrap_or(channels);
        let attention = |vb: &VarBuilder, channels: usize, scale: f32| {
            SpatialAttention::load(vb, channels, head_dim(channels), Some(groups), eps, scale)
        };

        let mut down_blocks = Vec::new();
        let mut out_c = ch[0];
        for (i, kind) in config.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = ch[i];
            let last = i + 1 == ch.len();
            let vb = vb.pp("down_blocks").pp(i);
            let with_attn = kind == "AttnDownBlock2D";
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..config.layers_per_block {
                let c = if j == 0 { in_c } else { out_c };
                resnets.push(ResnetBlock2D::load(
                    &vb.pp("resnets").pp(j),
                    c,
                    out_c,
                    &resnet(1.0),
                )?);
                if with_attn {
                    attentions.push(attention(&vb.pp("attentions").pp(j), out_c, 1.0)?);
                }
            }
            let downsampler = if last {
                None
            } else {
                Some(Conv2d::load_downsample(
                    &vb.pp("downsamplers").pp(0).pp("conv"),
                    out_c,
                    config.downsample_padding,
                )?)
            };
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
        }

        let mid_c = *ch.last().unwrap();
        let mid_vb = vb.pp("mid_block");
        let mid_scale = config.mid_block_scale_factor;
        // diffusers' UNetMidBlock2D: without attn_norm_num_groups the attention is normalised
        // only under the default time-embedding norm.
        let mid_attn_groups = config
            .attn_norm_num_groups
            .or((config.resnet_time_scale_shift == "default").then_some(groups));
        let mid_block = MidBlock {
            resnets: vec![
                ResnetBlock2D::load(
                    &mid_vb.pp("resnets").pp(0),
                    mid_c,
                    mid_c,
                    &resnet(mid_scale),
                )?,
                ResnetBlock2D::load(
                    &mid_vb.pp("resnets").pp(1),
                    mid_c,
                    mid_c,
                    &resnet(mid_scale),
                )?,
            ],
            attention: if config.add_attention {
                Some(SpatialAttention::load(
                    &mid_vb.pp("attentions").pp(0),
                    mid_c,
                    head_dim(mid_c),
                    mid_attn_groups,
                    eps,
                    mid_scale,
                )?)
            } else {
                None
            },
        };

        let mut up_blocks = Vec::new();
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let mut out_c = reversed[0];
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let prev_c = out_c;
            out_c = reversed[i];
            let in_c = reversed[(i + 1).min(ch.len() - 1)];
            let last = i + 1 == ch.len();
            let vb = vb.pp("up_blocks").pp(i);
            let with_attn = kind == "AttnUpBlock2D";
            let layers = config.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip_c = if j + 1 == layers { in_c } else { out_c };
                let res_in = if j == 0 { prev_c } else { out_c };
                resnets.push(ResnetBlock2D::load(
                    &vb.pp("resnets").pp(j),
                    res_in + skip_c,
                    out_c,
                    &resnet(1.0),
                )?);
                if with_attn {
                    attentions.push(attention(&vb.pp("attentions").pp(j), out_c, 1.0)?);
                }
            }
            let upsampler = if last {
                None
            } else {
                Some(Conv2d::load(
                    &vb.pp("upsamplers").pp(0).pp("conv"),
                    out_c,
                    out_c,
                    3,
                    1,
                    1,
                )?)
            };
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
        }

        let class_embedding = match config.num_class_embeds {
            Some(n) => Some(vb.pp("class_embedding").get("weight", &[n, temb])?),
            None => None,
        };
        Ok(UNet2DModel {
            time_linear_1: Linear::load(&vb.pp("time_embedding").pp("linear_1"), ch[0], temb)?,
            time_linear_2: Linear::load(&vb.pp("time_embedding").pp("linear_2"), temb, temb)?,
            class_embedding,
            conv_in: Conv2d::load(&vb.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), groups, ch[0], eps)?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
            config,
        })
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
        if !shape_ok {
            return Err(Error::Shape {
                op: "UNet2DModel",
                msg: format!(
                    "sample {:?} with timesteps {:?}: need {} channels, sides divisible by {factor}, one timestep per sample",
                    sample.shape(),
                    timesteps.shape(),
                    self.config.in_channels
                ),
            });
        }

        let t_proj = ops::timestep_embedding(
            gpu,
            timesteps,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )?;
        let emb = self.time_linear_1.forward(gpu, &t_proj)?;
        let emb = self.time_linear_2.forward(gpu, &ops::silu(gpu, &emb)?)?;
        let emb = match (&self.class_embedding, class_labels) {
            (Some(table), Some(labels)) => {
                ops::add(gpu, &emb, &ops::embedding_lookup(gpu, table, labels)?)?
            }
            (Some(_), None) => {
                return Err(Error::Invalid(
                    "this model is class-conditional: class labels are required".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Invalid("this model takes no class labels".into()))
            }
            (None, None) => emb,
        };
        let temb_act = ops::silu(gpu, &emb)?;

        let mut x = self.conv_in.forward(gpu, sample)?;
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(gpu, &x, &temb_act)?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(gpu, &x)?;
                }
                skips.push(x.clone());
            }
            if let Some(down) = &block.downsampler {
                x = down.forward(gpu, &x)?;
                skips.push(x.clone());
            }
        }

        x = self.mid_block.resnets[0].forward(gpu, &x, &temb_act)?;
        if let Some(attn) = &self.mid_block.attention {
            x = attn.forward(gpu, &x)?;
        }
        x = self.mid_block.resnets[1].forward(gpu, &x, &temb_act)?;

        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up-block resnet");
                x = resnet.forward(gpu, &ops::concat_channels(gpu, &[&x, &skip])?, &temb_act)?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(gpu, &x)?;
                }
            }
            if let Some(up) = &block.upsampler {
                x = up.forward(gpu, &ops::upsample_nearest2x(gpu, &x)?)?;
            }
        }

        let x = self.conv_norm_out.forward(gpu, &x, true)?;
        self.conv_out.forward(gpu, &x)
    }
}
