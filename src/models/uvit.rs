//! U-ViT (Bao et al., "All are Worth Words", CVPR 2023; `libs/uvit.py` of baofff/U-ViT), the
//! transformer backbone of the paper's ImageNet 256/512 rows: the input cut into patches by a
//! strided convolution, the time (and class) as extra tokens, learned position embeddings,
//! pre-norm transformer blocks whose second half joins the first half's outputs through long
//! skips (a linear over the concatenation), a linear back to patches and, optionally, a 3×3 conv.
//! Module names and shapes are U-ViT's state dict's, so its checkpoints load as they are.

use super::diffusers::embeddings::Timesteps;
use super::layers::{Conv2d, Embedding, LayerNorm, Linear};
use super::weights::{VarBuilder, WeightFile};
use super::{Cond, EpsModel};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops;
use serde::Deserialize;

/// The keyword arguments of U-ViT's `UViT` (its `config.nnet`, less `name` and the training-only
/// `use_checkpoint`), with its defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UViTConfig {
    /// The side of the (latent) image, in elements.
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    /// Blocks in all: depth / 2 in, one middle, depth / 2 out.
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    /// An attention scale other than head_dim^-1/2 (U-ViT's default path ignores it: refused).
    pub qk_scale: Option<f64>,
    /// A Linear–SiLU–Linear on the time sinusoid (else the sinusoid is the token).
    pub mlp_time_embed: bool,
    /// Classes of a class-conditional model (ImageNet's: 1000 and the null class of
    /// classifier-free guidance); −1: unconditional.
    pub num_classes: i64,
    /// A final 3×3 convolution on the unpatchified output.
    pub conv: bool,
    /// Long skips into the out blocks.
    pub skip: bool,
}

impl Default for UViTConfig {
    fn default() -> Self {
        UViTConfig {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: false,
            qk_scale: None,
            mlp_time_embed: false,
            num_classes: -1,
            conv: true,
            skip: true,
        }
    }
}

impl UViTConfig {
    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("UViT config: {what}")));
        let sizes = [
            self.img_size,
            self.patch_size,
            self.in_chans,
            self.embed_dim,
            self.num_heads,
        ];
        if sizes.contains(&0) || self.depth < 1 {
            return bad(format!("sizes must be positive: {self:?}"));
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "img_size {} is not a multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad(format!(
                "embed_dim {} does not split into {} heads",
                self.embed_dim, self.num_heads
            ));
        }
        if self.qk_scale.is_some() {
            return bad("qk_scale is not supported (U-ViT's attention ignores it)".into());
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) || self.num_classes < -1 {
            return bad(format!(
                "mlp_ratio {} or num_classes {} out of range",
                self.mlp_ratio, self.num_classes
            ));
        }
        Ok(())
    }

    /// Patches per side.
    fn side(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Tokens ahead of the patches: the time token, and the class token when conditional.
    fn extras(&self) -> usize {
        if self.num_classes > 0 {
            2
        } else {
            1
        }
    }

    fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
}

/// Multi-head self-attention with one fused q/k/v projection (laid out [q | k | v], each
/// head-major) and an output projection.
struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    fn load(vb: &VarBuilder, cfg: &UViTConfig) -> Result<Attention> {
        let d = cfg.embed_dim;
        let qkv = vb.pp("qkv");
        Ok(Attention {
            qkv: match cfg.qkv_bias {
                true => Linear::load(&qkv, d, 3 * d)?,
                false => Linear::load_without_bias(&qkv, d, 3 * d)?,
            },
            proj: Linear::load(&vb.pp("proj"), d, d)?,
            heads: cfg.num_heads,
        })
    }

    /// x (B, N, D).
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let [b, n, d] = [x.dim(0), x.dim(1), x.dim(2)];
        let qkv = self.qkv.forward(gpu, x)?.reshape(&[b * n, 3 * d, 1, 1])?;
        let part = |i: usize| -> Result<Tensor> {
            ops::slice_channels(gpu, &qkv, i * d, d)?.reshape(&[b, n, d])
        };
        let scale = ((d / self.heads) as f32).powf(-0.5);
        let attended = ops::attention(gpu, &part(0)?, &part(1)?, &part(2)?, self.heads, scale)?;
        self.proj.forward(gpu, &attended)
    }
}

/// A pre-norm transformer block (timm's `Mlp` with exact GELU), with the skip linear of the
/// out blocks.
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    skip_linear: Option<Linear>,
}

/// PyTorch's `nn.LayerNorm` default.
const LAYER_NORM_EPS: f32 = 1e-5;

impl Block {
    fn load(vb: &VarBuilder, cfg: &UViTConfig, skip: bool) -> Result<Block> {
        let (d, hidden) = (cfg.embed_dim, cfg.mlp_hidden());
        Ok(Block {
            norm1: LayerNorm::load(&vb.pp("norm1"), d, LAYER_NORM_EPS)?,
            attn: Attention::load(&vb.pp("attn"), cfg)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), d, LAYER_NORM_EPS)?,
            fc1: Linear::load(&vb.pp("mlp").pp("fc1"), d, hidden)?,
            fc2: Linear::load(&vb.pp("mlp").pp("fc2"), hidden, d)?,
            skip_linear: match skip {
                true => Some(Linear::load(&vb.pp("skip_linear"), 2 * d, d)?),
                false => None,
            },
        })
    }

    /// x (B, N, D), joined first with `skip` (an in block's output) where the block has a skip.
    fn forward(&self, gpu: &Gpu, x: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        let x = match (&self.skip_linear, skip) {
            (Some(linear), Some(skip)) => linear.forward(gpu, &join_last(gpu, x, skip)?)?,
            (None, None) => x.clone(),
            _ => {
                return Err(Error::Internal(
                    "a U-ViT block's skip and its skip linear disagree".into(),
                ))
            }
        };
        let x = ops::add(
            gpu,
            &x,
            &self.attn.forward(gpu, &self.norm1.forward(gpu, &x)?)?,
        )?;
        let h = ops::gelu(gpu, &self.fc1.forward(gpu, &self.norm2.forward(gpu, &x)?)?)?;
        ops::add(gpu, &x, &self.fc2.forward(gpu, &h)?)
    }
}

/// [a | b] along the last axis of two (B, N, D) tensors: torch.cat([a, b], dim=-1).
fn join_last(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let [bt, n, d] = [a.dim(0), a.dim(1), a.dim(2)];
    let rows = |t: &Tensor| t.reshape(&[bt * n, d, 1, 1]);
    ops::concat_channels(gpu, &[&rows(a)?, &rows(b)?])?.reshape(&[bt, n, 2 * d])
}

/// U-ViT's `UViT`.
pub struct UViT {
    pub config: UViTConfig,
    patch_embed: Conv2d,
    time_proj: Timesteps,
    time_embed: Option<(Linear, Linear)>,
    label_emb: Option<Embedding>,
    /// (1, extras + patches, D), added to every item of a batch.
    pos_embed: Tensor,
    in_blocks: Vec<Block>,
    mid_block: Block,
    out_blocks: Vec<Block>,
    norm: LayerNorm,
    decoder_pred: Linear,
    final_layer: Option<Conv2d>,
}

impl UViT {
    pub const ARCH: &'static str = "UViT";

    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<UViT> {
        file.expect_arch(Self::ARCH)?;
        let config: UViTConfig = file.config()?;
        config.validate()?;
        let vb = file.var_builder(gpu);
        let model = Self::build(gpu, &vb, config)?;
        vb.finish()?;
        Ok(model)
    }

    fn build(gpu: &Gpu, vb: &VarBuilder, config: UViTConfig) -> Result<UViT> {
        let (d, p, c) = (config.embed_dim, config.patch_size, config.in_chans);
        let tokens = config.extras() + config.side() * config.side();
        let blocks = |name: &str, skip: bool| -> Result<Vec<Block>> {
            (0..config.depth / 2)
                .map(|i| Block::load(&vb.pp(name).pp(i), &config, skip))
                .collect()
        };
        Ok(UViT {
            patch_embed: Conv2d::load(&vb.pp("patch_embed").pp("proj"), c, d, p, p, 0)?,
            time_proj: Timesteps::new(gpu, d, true, 0.0)?,
            time_embed: match config.mlp_time_embed {
                true => Some((
                    Linear::load(&vb.pp("time_embed").pp(0), d, 4 * d)?,
                    Linear::load(&vb.pp("time_embed").pp(2), 4 * d, d)?,
                )),
                false => None,
            },
            label_emb: match config.num_classes > 0 {
                true => Some(Embedding::load(
                    &vb.pp("label_emb"),
                    config.num_classes as usize,
                    d,
                )?),
                false => None,
            },
            pos_embed: vb.get("pos_embed", &[1, tokens, d])?,
            in_blocks: blocks("in_blocks", false)?,
            mid_block: Block::load(&vb.pp("mid_block"), &config, false)?,
            out_blocks: blocks("out_blocks", config.skip)?,
            norm: LayerNorm::load(&vb.pp("norm"), d, LAYER_NORM_EPS)?,
            decoder_pred: Linear::load(&vb.pp("decoder_pred"), d, p * p * c)?,
            final_layer: match config.conv {
                true => Some(Conv2d::load(&vb.pp("final_layer"), c, c, 3, 1, 1)?),
                false => None,
            },
            config,
        })
    }

    /// ε for x (B, C, S, S) at `timesteps` (B), with integer-valued class `labels` (B) for a
    /// class-conditional model.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (s, c, d) = (cfg.img_size, cfg.in_chans, cfg.embed_dim);
        let b = x.dim(0);
        if x.shape() != [b, c, s, s] || timesteps.shape() != [b] {
            return Err(Error::Invalid(format!(
                "U-ViT input {:?} with timesteps {:?}: needs ({b}, {c}, {s}, {s}) and one timestep \
                 per sample",
                x.shape(),
                timesteps.shape()
            )));
        }
        let patches = cfg.side() * cfg.side();
        let embedded = self
            .patch_embed
            .forward(gpu, x)?
            .reshape(&[b, d, patches])?;
        let mut tokens = vec![ops::transpose_last2(gpu, &embedded)?.reshape(&[b, patches, d, 1])?];
        let mut time = self.time_proj.forward(gpu, timesteps)?;
        if let Some((linear_1, linear_2)) = &self.time_embed {
            time = linear_2.forward(gpu, &ops::silu(gpu, &linear_1.forward(gpu, &time)?)?)?;
        }
        tokens.insert(0, time.reshape(&[b, 1, d, 1])?);
        match (&self.label_emb, labels) {
            (Some(table), Some(labels)) if labels.shape() == [b] => {
                tokens.insert(0, table.forward(gpu, labels)?.reshape(&[b, 1, d, 1])?)
            }
            (None, None) => {}
            (Some(_), _) => {
                return Err(Error::Invalid(
                    "this U-ViT is class-conditional: it needs one class label per sample".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Invalid("this U-ViT takes no class labels".into()))
            }
        }
        let n = cfg.extras() + patches;
        let joined = ops::concat_channels(gpu, &tokens.iter().collect::<Vec<_>>())?;
        let mut h =
            ops::broadcast_lincomb(gpu, 1.0, &self.pos_embed, 1.0, &joined.reshape(&[b, n, d])?)?;
        let mut skips = Vec::new();
        for block in &self.in_blocks {
            h = block.forward(gpu, &h, None)?;
            skips.push(h.clone());
        }
        h = self.mid_block.forward(gpu, &h, None)?;
        for block in &self.out_blocks {
            let skip = skips.pop().filter(|_| cfg.skip);
            h = block.forward(gpu, &h, skip.as_ref())?;
        }
        let pred = self
            .decoder_pred
            .forward(gpu, &self.norm.forward(gpu, &h)?)?;
        let patch_values = cfg.patch_size * cfg.patch_size * c;
        let pred = ops::slice_channels(
            gpu,
            &pred.reshape(&[b, n, patch_values, 1])?,
            cfg.extras(),
            patches,
        )?;
        let image = unpatchify(gpu, &pred, b, cfg.side(), cfg.patch_size, c)?;
        match &self.final_layer {
            Some(conv) => conv.forward(gpu, &image),
            None => Ok(image),
        }
    }
}

/// U-ViT's `unpatchify`, 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)' for `side` patches a side of
/// `p` × `p` × `c` values, as three transposes: patch values to the front, then p1 past w, then
/// w past p2.
fn unpatchify(gpu: &Gpu, x: &Tensor, b: usize, side: usize, p: usize, c: usize) -> Result<Tensor> {
    // [B][h w p1 p2][C] → [B][C][h w p1 p2]
    let x = ops::transpose_last2(gpu, &x.reshape(&[b, side * side * p * p, c])?)?;
    // [B C h][w][p1 p2] → [B C h][p1 p2][w]
    let x = ops::transpose_last2(gpu, &x.reshape(&[b * c * side, side, p * p])?)?;
    // [B C h p1][p2][w] → [B C h p1][w][p2]
    let x = ops::transpose_last2(gpu, &x.reshape(&[b * c * side * p, p, side])?)?;
    x.reshape(&[b, c, side * p, side * p])
}

impl EpsModel for UViT {
    fn predict_eps(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
    ) -> Result<Tensor> {
        self.forward(gpu, x, timesteps, cond.class_labels()?)
    }

    fn sample_shape(&self) -> Result<[usize; 3]> {
        let cfg = &self.config;
        Ok([cfg.in_chans, cfg.img_size, cfg.img_size])
    }

    /// U-ViT's class-conditional models are trained for classifier-free guidance with the last
    /// label as the null class (ImageNet's 1000 of 1001): samples are drawn from the others.
    fn num_classes(&self) -> Option<usize> {
        self.null_class()
    }

    fn null_class(&self) -> Option<usize> {
        (self.config.num_classes > 1).then_some(self.config.num_classes as usize - 1)
    }

    /// The widest activation is the MLP's hidden layer or the fused q/k/v (B, N, ·D); a batch
    /// fits while it fits one binding.
    fn max_batch(&self, gpu: &Gpu) -> usize {
        let cfg = &self.config;
        let tokens = cfg.extras() + cfg.side() * cfg.side();
        let widest = cfg.mlp_hidden().max(3 * cfg.embed_dim);
        let per_sample = (tokens * widest * 4) as u64;
        (gpu.max_tensor_bytes() / per_sample.max(1)).max(1) as usize
    }
}
