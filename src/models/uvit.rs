//! U-ViT (Bao et al., "All are Worth Words", CVPR 2023; `libs/uvit.py` of baofff/U-ViT), the
//! transformer backbone of the paper's ImageNet 256/512 rows: the input cut into patches by a
//! strided convolution, the time (and class) as extra tokens, learned position embeddings,
//! pre-norm transformer blocks whose second half joins the first half's outputs through long
//! skips (a linear over the concatenation), a linear back to patches and, optionally, a 3×3 conv.
//! Module names and shapes are U-ViT's state dict's, so its checkpoints load as they are.

use super::diffusers::embeddings::Timesteps;
use super::diffusers::vjp::{in_slices, tape_fit};
use super::layers::{Conv2d, Embedding, LayerNorm, LayerNormTape, Linear};
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
    /// head_dim^-1/2.
    scale: f32,
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
            scale: ((d / cfg.num_heads) as f32).powf(-0.5),
        })
    }

    /// x (B, N, D); with `save`, the tape of [`Self::backward`] too.
    fn run(&self, gpu: &Gpu, x: &Tensor, save: bool) -> Result<(Tensor, Option<AttentionTape>)> {
        let [b, n, d] = [x.dim(0), x.dim(1), x.dim(2)];
        let qkv = self.qkv.forward(gpu, x)?.reshape(&[b * n, 3 * d, 1, 1])?;
        let part = |i: usize| -> Result<Tensor> {
            ops::slice_channels(gpu, &qkv, i * d, d)?.reshape(&[b, n, d])
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let (heads, scale) = (self.heads, self.scale);
        let (attended, tape) = match save {
            false => (ops::attention(gpu, &q, &k, &v, heads, scale)?, None),
            true => {
                let (out, lse) = ops::attention_saving(gpu, &q, &k, &v, heads, scale)?;
                let tape = AttentionTape {
                    q,
                    k,
                    v,
                    out: out.clone(),
                    lse,
                };
                (out, Some(tape))
            }
        };
        Ok((self.proj.forward(gpu, &attended)?, tape))
    }

    /// ∂⟨run(x), dy⟩/∂x through q, k and v, which share one projection: their gradients are
    /// joined in its [q | k | v] layout and sent back through it at once.
    fn backward(&self, gpu: &Gpu, tape: &AttentionTape, dy: &Tensor) -> Result<Tensor> {
        let d_attended = self.proj.input_grad(gpu, dy)?;
        let AttentionTape { q, k, v, out, lse } = tape;
        let saved = ops::AttentionSaved { q, k, v, out, lse };
        let (dq, dk, dv) = ops::attention_grad(gpu, saved, &d_attended, self.heads, self.scale)?;
        self.qkv.input_grad(gpu, &join_last(gpu, &[&dq, &dk, &dv])?)
    }
}

/// What an [`Attention`]'s backward reads: q, k, v, the output and the softmax log-sum-exp.
struct AttentionTape {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
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

    /// x (B, N, D), joined first with `skip` (an in block's output) where the block has a skip;
    /// with `save`, the tape of [`Self::backward`] too.
    fn run(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        skip: Option<&Tensor>,
        save: bool,
    ) -> Result<(Tensor, Option<BlockTape>)> {
        let x = match (&self.skip_linear, skip) {
            (Some(linear), Some(skip)) => linear.forward(gpu, &join_last(gpu, &[x, skip])?)?,
            (None, None) => x.clone(),
            _ => {
                return Err(Error::Internal(
                    "a U-ViT block's skip and its skip linear disagree".into(),
                ))
            }
        };
        let norm = |n: &LayerNorm, x: &Tensor| -> Result<(Tensor, Option<LayerNormTape>)> {
            match save {
                true => n.forward_saving(gpu, x).map(|(y, t)| (y, Some(t))),
                false => Ok((n.forward(gpu, x)?, None)),
            }
        };
        let (n1, norm1) = norm(&self.norm1, &x)?;
        let (a, attn) = self.attn.run(gpu, &n1, save)?;
        let x = ops::add(gpu, &x, &a)?;
        let (n2, norm2) = norm(&self.norm2, &x)?;
        let hidden = self.fc1.forward(gpu, &n2)?;
        let y = ops::add(gpu, &x, &self.fc2.forward(gpu, &ops::gelu(gpu, &hidden)?)?)?;
        let tape = match (norm1, attn, norm2) {
            (Some(norm1), Some(attn), Some(norm2)) => Some(BlockTape {
                norm1,
                attn,
                norm2,
                hidden,
            }),
            _ => None,
        };
        Ok((y, tape))
    }

    /// ∂⟨run(x, skip), dy⟩ with respect to x and, for a block with a skip, to the skip: the
    /// MLP and attention residuals in reverse, then the skip linear's two halves.
    fn backward(
        &self,
        gpu: &Gpu,
        tape: &BlockTape,
        dy: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let d_hidden = ops::gelu_grad(gpu, &tape.hidden, &self.fc2.input_grad(gpu, dy)?)?;
        let d_n2 = self.fc1.input_grad(gpu, &d_hidden)?;
        let dx = ops::add(gpu, dy, &self.norm2.backward(gpu, &tape.norm2, &d_n2)?)?;
        let d_n1 = self.attn.backward(gpu, &tape.attn, &dx)?;
        let dx = ops::add(gpu, &dx, &self.norm1.backward(gpu, &tape.norm1, &d_n1)?)?;
        match &self.skip_linear {
            None => Ok((dx, None)),
            Some(linear) => {
                let d_join = linear.input_grad(gpu, &dx)?;
                let [b, n, d2] = [d_join.dim(0), d_join.dim(1), d_join.dim(2)];
                let rows = d_join.reshape(&[b * n, d2, 1, 1])?;
                let half = |i: usize| -> Result<Tensor> {
                    ops::slice_channels(gpu, &rows, i * d2 / 2, d2 / 2)?.reshape(&[b, n, d2 / 2])
                };
                Ok((half(0)?, Some(half(1)?)))
            }
        }
    }
}

/// What a [`Block`]'s backward reads: its norms' and attention's tapes and the GELU's input.
struct BlockTape {
    norm1: LayerNormTape,
    attn: AttentionTape,
    norm2: LayerNormTape,
    hidden: Tensor,
}

/// The parts (B, N, D_i) joined along the last axis: torch.cat(parts, dim=-1).
fn join_last(gpu: &Gpu, parts: &[&Tensor]) -> Result<Tensor> {
    let [b, n] = [parts[0].dim(0), parts[0].dim(1)];
    let rows = parts
        .iter()
        .map(|t| t.reshape(&[b * n, t.dim(2), 1, 1]))
        .collect::<Result<Vec<_>>>()?;
    let joined = ops::concat_channels(gpu, &rows.iter().collect::<Vec<_>>())?;
    let width = joined.dim(1);
    joined.reshape(&[b, n, width])
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

    /// A model of `config` with random weights, for benchmarks (the cost does not depend on
    /// the weights).
    pub fn random(gpu: &Gpu, config: UViTConfig, seed: u64) -> Result<UViT> {
        config.validate()?;
        Self::build(gpu, &VarBuilder::random(gpu, seed), config)
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
        Ok(self.run(gpu, x, timesteps, labels, false)?.0)
    }

    /// [`Self::forward`] and what [`Self::backward`] needs.
    pub fn forward_saving(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<(Tensor, UViTTape)> {
        let (eps, tape) = self.run(gpu, x, timesteps, labels, true)?;
        Ok((eps, tape.expect("a saving run keeps its tape")))
    }

    fn run(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        labels: Option<&Tensor>,
        save: bool,
    ) -> Result<(Tensor, Option<UViTTape>)> {
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
        let mut tapes = Vec::new();
        let mut skips = Vec::new();
        for block in &self.in_blocks {
            let (y, tape) = block.run(gpu, &h, None, save)?;
            h = y;
            tapes.extend(tape);
            skips.push(h.clone());
        }
        let (y, tape) = self.mid_block.run(gpu, &h, None, save)?;
        h = y;
        tapes.extend(tape);
        for block in &self.out_blocks {
            let skip = skips.pop().filter(|_| cfg.skip);
            let (y, tape) = block.run(gpu, &h, skip.as_ref(), save)?;
            h = y;
            tapes.extend(tape);
        }
        let (normed, norm) = match save {
            true => {
                let (y, tape) = self.norm.forward_saving(gpu, &h)?;
                (y, Some(tape))
            }
            false => (self.norm.forward(gpu, &h)?, None),
        };
        let pred = self.decoder_pred.forward(gpu, &normed)?;
        let patch_values = cfg.patch_size * cfg.patch_size * c;
        let pred = ops::slice_channels(
            gpu,
            &pred.reshape(&[b, n, patch_values, 1])?,
            cfg.extras(),
            patches,
        )?;
        let image = unpatchify(gpu, &pred, b, cfg.side(), cfg.patch_size, c)?;
        let eps = match &self.final_layer {
            Some(conv) => conv.forward(gpu, &image)?,
            None => image,
        };
        Ok((
            eps,
            norm.map(|norm| UViTTape {
                blocks: tapes,
                norm,
            }),
        ))
    }

    /// ∂⟨forward(x), dy⟩/∂x from the tape of [`Self::forward_saving`]: back through the final
    /// conv, unpatchify (patchify), the prediction head (the extra tokens get no gradient), the
    /// out blocks (each handing its skip's gradient to the in block that made it), the middle
    /// and in blocks, to the patch tokens and through the patch embedding. The time and class
    /// tokens and the position embedding do not depend on x.
    pub fn backward(&self, gpu: &Gpu, tape: &UViTTape, dy: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let (s, c, d) = (cfg.img_size, cfg.in_chans, cfg.embed_dim);
        let b = dy.dim(0);
        let half = cfg.depth / 2;
        if dy.shape() != [b, c, s, s] || tape.blocks.len() != 2 * half + 1 {
            return Err(Error::Internal(format!(
                "U-ViT backward of {:?} needs ε's shape and the tape of its forward_saving",
                dy.shape()
            )));
        }
        let d_image = match &self.final_layer {
            Some(conv) => conv.same_size_input_grad(gpu, dy)?,
            None => dy.clone(),
        };
        let (side, p) = (cfg.side(), cfg.patch_size);
        let patches = side * side;
        let d_pred =
            patchify(gpu, &d_image, b, side, p, c)?.reshape(&[b, patches, p * p * c, 1])?;
        let extras = gpu.zeros(&[b, cfg.extras(), p * p * c, 1])?;
        let n = cfg.extras() + patches;
        let d_pred = ops::concat_channels(gpu, &[&extras, &d_pred])?.reshape(&[b, n, p * p * c])?;
        let d_normed = self.decoder_pred.input_grad(gpu, &d_pred)?;
        let mut dh = self.norm.backward(gpu, &tape.norm, &d_normed)?;
        let (in_tapes, rest) = tape.blocks.split_at(half);
        let (mid_tape, out_tapes) = (&rest[0], &rest[1..]);
        // The last out block took the first in block's output: walking the out blocks backward
        // collects the skips' gradients in the in blocks' order.
        let mut d_skips = Vec::new();
        for (block, block_tape) in self.out_blocks.iter().zip(out_tapes).rev() {
            let (dx, d_skip) = block.backward(gpu, block_tape, &dh)?;
            dh = dx;
            d_skips.extend(d_skip);
        }
        dh = self.mid_block.backward(gpu, mid_tape, &dh)?.0;
        for (i, (block, block_tape)) in self.in_blocks.iter().zip(in_tapes).enumerate().rev() {
            if let Some(d_skip) = d_skips.get(i) {
                dh = ops::add(gpu, &dh, d_skip)?;
            }
            dh = block.backward(gpu, block_tape, &dh)?.0;
        }
        let d_tokens =
            ops::slice_channels(gpu, &dh.reshape(&[b, n, d, 1])?, cfg.extras(), patches)?;
        let d_embedded = ops::transpose_last2(gpu, &d_tokens.reshape(&[b, patches, d])?)?;
        self.patch_embed
            .input_grad(gpu, &d_embedded.reshape(&[b, d, side, side])?, (s, s))
    }

    /// ∂⟨ε_θ(x, t, y), v⟩/∂x for `x` (B, C, S, S) and `v` shaped like ε, in slices whose tapes
    /// fit the backward budget all models share.
    pub fn vjp(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        labels: Option<&Tensor>,
        v: &Tensor,
    ) -> Result<Tensor> {
        self.vjp_sliced(gpu, x, timesteps, labels, v, self.vjp_max_batch(gpu))
    }

    /// [`Self::vjp`] running at most `per_call` (≥ 1) samples at once.
    pub fn vjp_sliced(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        labels: Option<&Tensor>,
        v: &Tensor,
        per_call: usize,
    ) -> Result<Tensor> {
        if v.shape() != x.shape() {
            return Err(Error::Invalid(format!(
                "cotangent {:?} must be shaped like ε for x {:?}",
                v.shape(),
                x.shape()
            )));
        }
        in_slices(gpu, x, v, per_call, |rows| {
            let labels = labels.map(|l| rows.of(gpu, l)).transpose()?;
            let (x, t) = (rows.of(gpu, x)?, rows.of(gpu, timesteps)?);
            let (_, tape) = self.forward_saving(gpu, &x, &t, labels.as_ref())?;
            self.backward(gpu, &tape, &rows.of(gpu, v)?)
        })
    }

    /// The largest batch one backward runs at once: the forward's limit, and the tape within
    /// the shared budget ([`tape_fit`]).
    pub fn vjp_max_batch(&self, gpu: &Gpu) -> usize {
        EpsModel::max_batch(self, gpu).min(tape_fit(gpu, self.tape_values_per_sample()))
    }

    /// The values a tape holds per sample: per block, two norms' inputs, q, k, v, the attention
    /// output and a skip (each a token of D), the MLP's hidden layer and the softmax
    /// log-sum-exp per head; and the final norm's input.
    fn tape_values_per_sample(&self) -> usize {
        let cfg = &self.config;
        let tokens = cfg.extras() + cfg.side() * cfg.side();
        let per_token_per_block = 7 * cfg.embed_dim + cfg.mlp_hidden() + cfg.num_heads;
        tokens * ((cfg.depth + 1) * per_token_per_block + cfg.embed_dim)
    }
}

/// What [`UViT::backward`] reads: every block's tape (in blocks, middle, out blocks) and the
/// final norm's.
pub struct UViTTape {
    blocks: Vec<BlockTape>,
    norm: LayerNormTape,
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

/// The inverse of [`unpatchify`], 'B C (h p1) (w p2) -> B (h w) (p1 p2 C)': its three
/// transposes undone in reverse order (the gradient of unpatchify).
fn patchify(gpu: &Gpu, x: &Tensor, b: usize, side: usize, p: usize, c: usize) -> Result<Tensor> {
    // [B C h p1][w][p2] → [B C h p1][p2][w]
    let x = ops::transpose_last2(gpu, &x.reshape(&[b * c * side * p, side, p])?)?;
    // [B C h][p1 p2][w] → [B C h][w][p1 p2]
    let x = ops::transpose_last2(gpu, &x.reshape(&[b * c * side, p * p, side])?)?;
    // [B][C][h w p1 p2] → [B][h w p1 p2][C]
    let x = ops::transpose_last2(gpu, &x.reshape(&[b, c, side * side * p * p])?)?;
    x.reshape(&[b, side * side, p * p * c])
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

    fn vjp(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        cond: &Cond,
        v: &Tensor,
    ) -> Result<Tensor> {
        UViT::vjp(self, gpu, x, timesteps, cond.class_labels()?, v)
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
