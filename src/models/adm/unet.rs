//! guided-diffusion's `UNetModel`: its constructor's block layout and its forward pass, behind
//! [`EpsModel`].

use super::attention::AttentionBlock;
use super::blocks::{
    Downsample, Layer, ResBlock, ResConfig, Resample, TimestepEmbedSequential, Upsample,
};
use super::nn::{Dense, HostParams};
use super::{AdmConfig, NORM_EPS, NORM_GROUPS};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::diffusers::embeddings::Timesteps;
use crate::models::layers::{Conv2d, Embedding, GroupNorm, Linear};
use crate::models::mc_dropout::DropoutMasks;
use crate::models::weights::{VarBuilder, WeightFile};
use crate::models::{Cond, EpsModel};
use crate::ops;

/// ADM: ε (and, with `learn_sigma`, the variance interpolation v) for a noisy image at a
/// timestep, optionally class-conditional. Fields follow `UNetModel`'s module tree.
pub struct AdmModel {
    pub config: AdmConfig,
    time_proj: Timesteps,
    time_embed: [Linear; 2],
    label_emb: Option<Embedding>,
    input_blocks: Vec<TimestepEmbedSequential>,
    middle_block: TimestepEmbedSequential,
    output_blocks: Vec<TimestepEmbedSequential>,
    out_norm: GroupNorm,
    /// `out.2` split by output channel: ε, then the variance part when `learn_sigma`.
    out_eps: Dense,
    out_var: Option<Dense>,
}

/// The constructor's running state: the current width, the widths the input blocks leave for
/// the skips, and the downsampling rate.
struct Cursor<'a> {
    config: &'a AdmConfig,
    res: ResConfig,
    ch: usize,
    input_block_chans: Vec<usize>,
    ds: usize,
}

impl Cursor<'_> {
    /// A ResBlock from the current width to `out`, which becomes the current width.
    fn res_block(&mut self, vb: &VarBuilder, out: usize, resample: Resample) -> Result<Layer> {
        let block = ResBlock::load(vb, self.ch, out, resample, &self.res)?;
        self.ch = out;
        Ok(Layer::Res(Box::new(block)))
    }

    /// The attention block at the current width, if the current rate has one.
    fn attention(&self, vb: &VarBuilder, upsample: bool) -> Result<Option<Layer>> {
        if !self.config.attention_resolutions.contains(&self.ds) {
            return Ok(None);
        }
        let heads = self.config.heads(self.ch, upsample)?;
        let new_order = self.config.use_new_attention_order;
        let block = AttentionBlock::load(vb, self.ch, heads, new_order)?;
        Ok(Some(Layer::Attention(Box::new(block))))
    }
}

impl AdmModel {
    /// The `arch` metadata of an ADM weight file (written by `tools/convert.py --adm`).
    pub const ARCH: &'static str = "ADMUNetModel";

    /// Loads a converted weight file, checking every tensor against the embedded config.
    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<AdmModel> {
        file.expect_arch(Self::ARCH)?;
        let config: AdmConfig = file.config()?;
        config.validate()?;
        let vb = file.var_builder(gpu);
        let model = Self::build(&vb, config)?;
        vb.finish()?;
        Ok(model)
    }

    /// A model of the configured architecture with seeded random weights (for benchmarks).
    pub fn random(gpu: &Gpu, config: AdmConfig, seed: u64) -> Result<AdmModel> {
        config.validate()?;
        Self::build(&VarBuilder::random(gpu, seed), config)
    }

    /// `UNetModel.__init__` for a validated config, in its order.
    fn build(vb: &VarBuilder, config: AdmConfig) -> Result<AdmModel> {
        let mc = config.model_channels;
        let ted = config.time_embed_dim();
        let input_ch = config.width(config.channel_mult[0]);
        let mut cursor = Cursor {
            config: &config,
            res: ResConfig {
                emb_channels: ted,
                dropout: config.dropout,
                use_scale_shift_norm: config.use_scale_shift_norm,
            },
            ch: input_ch,
            input_block_chans: Vec::new(),
            ds: 1,
        };
        let input_blocks = Self::build_input_blocks(&vb.pp("input_blocks"), &mut cursor)?;
        let middle_block = Self::build_middle_block(&vb.pp("middle_block"), &mut cursor)?;
        let output_blocks = Self::build_output_blocks(&vb.pp("output_blocks"), &mut cursor)?;
        let time_embed = vb.pp("time_embed");
        let out = vb.pp("out");
        let c = config.in_channels;
        let out_conv = HostParams::load(&out.pp(2), config.out_channels, &[input_ch, 3, 3])?;
        let kernel = [input_ch, 3, 3];
        let eps_rows: Vec<usize> = (0..c).collect();
        let var_rows: Vec<usize> = (c..config.out_channels).collect();
        Ok(AdmModel {
            time_proj: Timesteps::new(vb.gpu(), mc, true, 0.0)?,
            time_embed: [
                Linear::load(&time_embed.pp(0), mc, ted)?,
                Linear::load(&time_embed.pp(2), ted, ted)?,
            ],
            label_emb: match config.num_classes {
                Some(n) => Some(Embedding::load(&vb.pp("label_emb"), n, ted)?),
                None => None,
            },
            input_blocks,
            middle_block,
            output_blocks,
            out_norm: GroupNorm::load(&out.pp(0), NORM_GROUPS, cursor.ch, NORM_EPS)?,
            out_eps: out_conv.select(vb.gpu(), &eps_rows, &kernel)?,
            out_var: match config.learn_sigma() {
                true => Some(out_conv.select(vb.gpu(), &var_rows, &kernel)?),
                false => None,
            },
            config,
        })
    }

    /// The stem convolution, `num_res_blocks` (ResBlock, [attention]) per level and a
    /// downsampler between levels; every block's output width is kept for the skips.
    fn build_input_blocks(
        vb: &VarBuilder,
        cur: &mut Cursor,
    ) -> Result<Vec<TimestepEmbedSequential>> {
        let config = cur.config;
        let stem = Conv2d::load(&vb.pp(0).pp(0), config.in_channels, cur.ch, 3, 1, 1)?;
        let mut blocks = vec![TimestepEmbedSequential(vec![Layer::Conv(stem)])];
        cur.input_block_chans.push(cur.ch);
        let levels = config.channel_mult.len();
        for (level, &mult) in config.channel_mult.iter().enumerate() {
            for _ in 0..config.num_res_blocks {
                let vb = vb.pp(blocks.len());
                let mut layers =
                    vec![cur.res_block(&vb.pp(0), config.width(mult), Resample::Keep)?];
                layers.extend(cur.attention(&vb.pp(1), false)?);
                blocks.push(TimestepEmbedSequential(layers));
                cur.input_block_chans.push(cur.ch);
            }
            if level + 1 != levels {
                let vb = vb.pp(blocks.len()).pp(0);
                let layer = match config.resblock_updown {
                    true => cur.res_block(&vb, cur.ch, Resample::Down)?,
                    false => Layer::Down(Downsample::load(&vb, cur.ch, config.conv_resample)?),
                };
                blocks.push(TimestepEmbedSequential(vec![layer]));
                cur.input_block_chans.push(cur.ch);
                cur.ds *= 2;
            }
        }
        Ok(blocks)
    }

    /// ResBlock, attention, ResBlock at the lowest resolution (attention whatever the rates).
    fn build_middle_block(vb: &VarBuilder, cur: &mut Cursor) -> Result<TimestepEmbedSequential> {
        let ch = cur.ch;
        let heads = cur.config.heads(ch, false)?;
        let new_order = cur.config.use_new_attention_order;
        Ok(TimestepEmbedSequential(vec![
            cur.res_block(&vb.pp(0), ch, Resample::Keep)?,
            Layer::Attention(Box::new(AttentionBlock::load(
                &vb.pp(1),
                ch,
                heads,
                new_order,
            )?)),
            cur.res_block(&vb.pp(2), ch, Resample::Keep)?,
        ]))
    }

    /// Per level from the bottom, `num_res_blocks + 1` (ResBlock over [h | skip], [attention])
    /// with an upsampler after the last one except at the top level.
    fn build_output_blocks(
        vb: &VarBuilder,
        cur: &mut Cursor,
    ) -> Result<Vec<TimestepEmbedSequential>> {
        let config = cur.config;
        let mut blocks = Vec::new();
        for (level, &mult) in config.channel_mult.iter().enumerate().rev() {
            for i in 0..=config.num_res_blocks {
                let vb = vb.pp(blocks.len());
                let ich = cur
                    .input_block_chans
                    .pop()
                    .expect("one skip per input block");
                cur.ch += ich;
                let mut layers =
                    vec![cur.res_block(&vb.pp(0), config.width(mult), Resample::Keep)?];
                layers.extend(cur.attention(&vb.pp(1), true)?);
                if level > 0 && i == config.num_res_blocks {
                    let vb = vb.pp(layers.len());
                    layers.push(match config.resblock_updown {
                        true => cur.res_block(&vb, cur.ch, Resample::Up)?,
                        false => Layer::Up(Upsample::load(&vb, cur.ch, config.conv_resample)?),
                    });
                    cur.ds /= 2;
                }
                blocks.push(TimestepEmbedSequential(layers));
            }
        }
        Ok(blocks)
    }

    /// (ε, v): the network's output split into its ε channels and, with `learn_sigma`, the
    /// variance channels (computed only when `variance`). Dropout is active with `masks`.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        y: Option<&Tensor>,
        masks: Option<&DropoutMasks>,
        variance: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.check_inputs(x, timesteps)?;
        // Each block runs in its profile scope, named as in guided-diffusion.
        let emb_act = {
            let _scope = gpu.scope("time_embed");
            ops::silu(gpu, &self.embed(gpu, timesteps, y)?)?
        };
        let mut hs = Vec::with_capacity(self.input_blocks.len());
        let mut h = x.clone();
        for (i, block) in self.input_blocks.iter().enumerate() {
            let _scope = gpu.scope(format_args!("input_blocks.{i}"));
            h = block.forward(gpu, &h, &emb_act, masks)?;
            hs.push(h.clone());
        }
        {
            let _scope = gpu.scope("middle_block");
            h = self.middle_block.forward(gpu, &h, &emb_act, masks)?;
        }
        for (i, block) in self.output_blocks.iter().enumerate() {
            let _scope = gpu.scope(format_args!("output_blocks.{i}"));
            let skip = hs.pop().expect("one skip per output block");
            h = ops::concat_channels(gpu, &[&h, &skip])?;
            // Dead once joined: freed now, its buffer serves the block.
            drop(skip);
            h = block.forward(gpu, &h, &emb_act, masks)?;
        }
        let _scope = gpu.scope("out");
        let h = self.out_norm.forward(gpu, &h, true)?;
        let eps = self.out_eps.conv3x3(gpu, &h)?;
        let var = match (&self.out_var, variance) {
            (Some(conv), true) => Some(conv.conv3x3(gpu, &h)?),
            _ => None,
        };
        Ok((eps, var))
    }

    fn check_inputs(&self, x: &Tensor, timesteps: &Tensor) -> Result<()> {
        let c = self.config.in_channels;
        let side = self.config.image_size;
        match x.shape() {
            &[b, xc, h, w] if xc == c && h == side && w == side && timesteps.shape() == [b] => {
                Ok(())
            }
            shape => Err(Error::Shape {
                op: "ADM UNetModel",
                msg: format!(
                    "x {shape:?} with timesteps {:?}: need (B, {c}, {side}, {side}) and one \
                     timestep per sample",
                    timesteps.shape()
                ),
            }),
        }
    }

    /// time_embed(timestep_embedding(t)) plus, for a class-conditional model, label_emb(y).
    fn embed(&self, gpu: &Gpu, timesteps: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let t_emb = self.time_proj.forward(gpu, timesteps)?;
        let h = self.time_embed[0].forward(gpu, &t_emb)?;
        let emb = self.time_embed[1].forward(gpu, &ops::silu(gpu, &h)?)?;
        match (&self.label_emb, y) {
            (Some(table), Some(y)) => ops::add(gpu, &emb, &table.forward(gpu, y)?),
            (Some(_), None) => Err(Error::Invalid(
                "this ADM model is class-conditional: class labels are required".into(),
            )),
            (None, Some(_)) => Err(Error::Invalid(
                "this ADM model is unconditional: it takes no class labels".into(),
            )),
            (None, None) => Ok(emb),
        }
    }

    /// The widest activation per sample (f32 values): the output blocks' [h | skip]
    /// concatenations, at most twice a level's width (or the next level's, upsampled).
    fn widest_activation(&self) -> usize {
        let c = &self.config;
        let widths: Vec<usize> = c.channel_mult.iter().map(|&m| c.width(m)).collect();
        (0..widths.len())
            .map(|l| {
                let wide = widths[l].max(*widths.get(l + 1).unwrap_or(&0));
                let side = c.image_size >> l;
                2 * wide * side * side
            })
            .max()
            .unwrap_or(1)
    }
}

impl EpsModel for AdmModel {
    fn predict_eps(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
    ) -> Result<Tensor> {
        Ok(self
            .forward(gpu, x, timesteps, cond.class_labels()?, None, false)?
            .0)
    }

    fn predict_eps_and_variance(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.forward(gpu, x, timesteps, cond.class_labels()?, None, true)
    }

    fn sample_shape(&self) -> Result<[usize; 3]> {
        let side = self.config.image_size;
        Ok([self.config.in_channels, side, side])
    }

    fn num_classes(&self) -> Option<usize> {
        self.config.num_classes
    }

    fn learned_variance(&self) -> bool {
        self.config.learn_sigma()
    }

    fn max_batch(&self, gpu: &Gpu) -> usize {
        let per_sample = (self.widest_activation() * 4) as u64;
        (gpu.max_tensor_bytes() / per_sample.max(1)).max(1) as usize
    }

    fn dropout_rate(&self) -> f64 {
        self.config.dropout
    }

    fn predict_eps_mc_dropout(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
        masks: &DropoutMasks,
    ) -> Result<Tensor> {
        if self.config.dropout == 0.0 {
            return Err(Error::Invalid(
                "MC-Dropout needs dropout layers: this ADM model was configured with dropout 0"
                    .into(),
            ));
        }
        Ok(self
            .forward(gpu, x, timesteps, cond.class_labels()?, Some(masks), false)?
            .0)
    }
}
