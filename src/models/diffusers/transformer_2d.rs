//! diffusers' `Transformer2DModel` as Stable Diffusion 1.x's UNet builds it
//! (`transformer_2d.py`, `attention.py`, `attention_processor.py`): group norm, a 1×1
//! `proj_in`, `BasicTransformerBlock`s over the pixels as tokens — self-attention,
//! cross-attention to the text states, a GEGLU feed-forward, each pre-norm and residual — a 1×1
//! `proj_out` and the residual around the whole; with the input gradient gradient guidance
//! needs (through the self-attention's queries, keys and values, the cross-attention's queries).

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::models::layers::{Conv2d, GroupNorm, GroupNormTape, LayerNorm, LayerNormTape, Linear};
use crate::models::weights::VarBuilder;
use crate::ops::{self, AttentionMask};

/// diffusers' `Attention` with bias-free q/k/v (`attention_bias=False`) and a biased `to_out.0`:
/// self-attention, or cross-attention when its keys come from a context of another width.
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f32,
}

impl CrossAttention {
    fn load(
        vb: &VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<CrossAttention> {
        let inner = heads * head_dim;
        Ok(CrossAttention {
            to_q: Linear::load_without_bias(&vb.pp("to_q"), dim, inner)?,
            to_k: Linear::load_without_bias(&vb.pp("to_k"), context_dim, inner)?,
            to_v: Linear::load_without_bias(&vb.pp("to_v"), context_dim, inner)?,
            to_out: Linear::load(&vb.pp("to_out").pp(0), inner, dim)?,
            heads,
            scale: (head_dim as f32).powf(-0.5),
        })
    }

    /// x (B, N, dim) attending to `context` (B, M, context_dim), or to itself; with `save`, the
    /// tape of [`Self::backward`] too.
    fn run(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        context: Option<&Tensor>,
        save: bool,
    ) -> Result<(Tensor, Option<AttentionTape>)> {
        let source = context.unwrap_or(x);
        let q = self.to_q.forward(gpu, x)?;
        let (k, v) = (
            self.to_k.forward(gpu, source)?,
            self.to_v.forward(gpu, source)?,
        );
        let (heads, scale) = (self.heads, self.scale);
        let (attended, tape) = match (context, save) {
            (None, false) => (ops::attention(gpu, &q, &k, &v, heads, scale)?, None),
            (None, true) => {
                let (out, lse) = ops::attention_saving(gpu, &q, &k, &v, heads, scale)?;
                let tape = AttentionTape::SelfAttention {
                    q,
                    k,
                    v,
                    out: out.clone(),
                    lse,
                };
                (out, Some(tape))
            }
            (Some(_), _) if q.dtype() == DType::F16 => {
                // The row softmax reads f32: f16 activations are widened around it.
                let [q, k, v] = [&q, &k, &v].map(|t| ops::to_f32(gpu, t));
                let mask = AttentionMask::None;
                let out = ops::cross_attention(gpu, &q?, &k?, &v?, heads, scale, mask)?;
                (ops::to_half(gpu, &out)?, None)
            }
            (Some(_), _) => {
                let mask = AttentionMask::None;
                let (out, probs) =
                    ops::cross_attention_saving(gpu, &q, &k, &v, heads, scale, mask)?;
                (out, save.then_some(AttentionTape::Context { k, v, probs }))
            }
        };
        Ok((self.to_out.forward(gpu, &attended)?, tape))
    }

    /// ∂⟨run(x), dy⟩/∂x: through q, k and v in self-attention, through q alone in
    /// cross-attention (its keys and values are the text's).
    fn backward(&self, gpu: &Gpu, tape: &AttentionTape, dy: &Tensor) -> Result<Tensor> {
        let d_attended = self.to_out.input_grad(gpu, dy)?;
        let (heads, scale) = (self.heads, self.scale);
        match tape {
            AttentionTape::SelfAttention { q, k, v, out, lse } => {
                let saved = ops::AttentionSaved { q, k, v, out, lse };
                let (dq, dk, dv) = ops::attention_grad(gpu, saved, &d_attended, heads, scale)?;
                let d_qk = ops::add(
                    gpu,
                    &self.to_q.input_grad(gpu, &dq)?,
                    &self.to_k.input_grad(gpu, &dk)?,
                )?;
                ops::add(gpu, &d_qk, &self.to_v.input_grad(gpu, &dv)?)
            }
            AttentionTape::Context { k, v, probs } => {
                let dq =
                    ops::cross_attention_query_grad(gpu, probs, k, v, &d_attended, heads, scale)?;
                self.to_q.input_grad(gpu, &dq)
            }
        }
    }
}

/// What a [`CrossAttention`]'s backward reads.
enum AttentionTape {
    /// Self-attention: the projections, the output and the softmax log-sum-exp.
    SelfAttention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Tensor,
        lse: Tensor,
    },
    /// Cross-attention: the text's keys and values and the probabilities.
    Context { k: Tensor, v: Tensor, probs: Tensor },
}

/// `BasicTransformerBlock` with layer norms and a GEGLU `FeedForward` (mult 4).
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    fn load(vb: &VarBuilder, dim: usize, cfg: &TransformerConfig) -> Result<BasicTransformerBlock> {
        let (heads, head_dim, eps) = (cfg.heads, dim / cfg.heads, cfg.layer_norm_eps);
        let inner = 4 * dim;
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(&vb.pp("norm1"), dim, eps)?,
            attn1: CrossAttention::load(&vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), dim, eps)?,
            attn2: CrossAttention::load(&vb.pp("attn2"), dim, cfg.context_dim, heads, head_dim)?,
            norm3: LayerNorm::load(&vb.pp("norm3"), dim, eps)?,
            ff_proj: Linear::load(&vb.pp("ff").pp("net").pp(0).pp("proj"), dim, 2 * inner)?,
            ff_out: Linear::load(&vb.pp("ff").pp("net").pp(2), inner, dim)?,
        })
    }

    /// Tokens x (B, N, dim) through the three residual sub-blocks; with `save`, their tape.
    fn run(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        context: &Tensor,
        save: bool,
    ) -> Result<(Tensor, Option<BlockTape>)> {
        let norm = |n: &LayerNorm, x: &Tensor| -> Result<(Tensor, Option<LayerNormTape>)> {
            match save {
                true => n.forward_saving(gpu, x).map(|(y, t)| (y, Some(t))),
                false => Ok((n.forward(gpu, x)?, None)),
            }
        };
        let (n1, norm1) = norm(&self.norm1, x)?;
        let (a, attn1) = self.attn1.run(gpu, &n1, None, save)?;
        let x = ops::add(gpu, &a, x)?;
        let (n2, norm2) = norm(&self.norm2, &x)?;
        let (a, attn2) = self.attn2.run(gpu, &n2, Some(context), save)?;
        let x = ops::add(gpu, &a, &x)?;
        let (n3, norm3) = norm(&self.norm3, &x)?;
        let projected = self.ff_proj.forward(gpu, &n3)?;
        let h = ops::geglu(gpu, &projected)?;
        let y = ops::add(gpu, &self.ff_out.forward(gpu, &h)?, &x)?;
        let tape = match (norm1, attn1, norm2, attn2, norm3) {
            (Some(norm1), Some(attn1), Some(norm2), Some(attn2), Some(norm3)) => Some(BlockTape {
                norm1,
                attn1,
                norm2,
                attn2,
                norm3,
                projected,
            }),
            _ => None,
        };
        Ok((y, tape))
    }

    /// ∂⟨run(x), dy⟩/∂x, the sub-blocks in reverse, each residual passing dy through.
    fn backward(&self, gpu: &Gpu, tape: &BlockTape, dy: &Tensor) -> Result<Tensor> {
        let d_h = self.ff_out.input_grad(gpu, dy)?;
        let d_projected = ops::geglu_grad(gpu, &tape.projected, &d_h)?;
        let d_n3 = self.ff_proj.input_grad(gpu, &d_projected)?;
        let dx = ops::add(gpu, dy, &self.norm3.backward(gpu, &tape.norm3, &d_n3)?)?;
        let d_n2 = self.attn2.backward(gpu, &tape.attn2, &dx)?;
        let dx = ops::add(gpu, &dx, &self.norm2.backward(gpu, &tape.norm2, &d_n2)?)?;
        let d_n1 = self.attn1.backward(gpu, &tape.attn1, &dx)?;
        ops::add(gpu, &dx, &self.norm1.backward(gpu, &tape.norm1, &d_n1)?)
    }
}

/// What a [`BasicTransformerBlock`]'s backward reads: each norm's and attention's tape and the
/// GEGLU's input.
struct BlockTape {
    norm1: LayerNormTape,
    attn1: AttentionTape,
    norm2: LayerNormTape,
    attn2: AttentionTape,
    norm3: LayerNormTape,
    projected: Tensor,
}

/// What every `Transformer2DModel` of a UNet shares.
#[derive(Clone, Copy, Debug)]
pub struct TransformerConfig {
    pub heads: usize,
    pub context_dim: usize,
    pub groups: usize,
    /// The group norm's (diffusers fixes 1e-6).
    pub group_norm_eps: f32,
    /// The blocks' layer norms' (diffusers' default 1e-5).
    pub layer_norm_eps: f32,
}

/// `Transformer2DModel` on continuous input with 1×1-convolution projections.
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Conv2d,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Conv2d,
}

impl Transformer2DModel {
    pub fn load(
        vb: &VarBuilder,
        channels: usize,
        cfg: &TransformerConfig,
    ) -> Result<Transformer2DModel> {
        if cfg.heads == 0 || !channels.is_multiple_of(cfg.heads) {
            return Err(Error::Invalid(format!(
                "{channels} channels do not split into {} attention heads",
                cfg.heads
            )));
        }
        Ok(Transformer2DModel {
            norm: GroupNorm::load(&vb.pp("norm"), cfg.groups, channels, cfg.group_norm_eps)?,
            proj_in: Conv2d::load(&vb.pp("proj_in"), channels, channels, 1, 1, 0)?,
            blocks: vec![BasicTransformerBlock::load(
                &vb.pp("transformer_blocks").pp(0),
                channels,
                cfg,
            )?],
            proj_out: Conv2d::load(&vb.pp("proj_out"), channels, channels, 1, 1, 0)?,
        })
    }

    /// x (B, C, H, W) conditioned on `context` (B, M, context_dim).
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        Ok(self.run(gpu, x, context, false)?.0)
    }

    /// [`Self::forward`] and what [`Self::backward`] needs.
    pub fn forward_saving(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, TransformerTape)> {
        let (y, tape) = self.run(gpu, x, context, true)?;
        Ok((y, tape.expect("a saving run keeps its tape")))
    }

    fn run(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        context: &Tensor,
        save: bool,
    ) -> Result<(Tensor, Option<TransformerTape>)> {
        let &[b, c, h, w] = x.shape() else {
            return Err(Error::Invalid(format!(
                "Transformer2DModel input {:?} is not NCHW",
                x.shape()
            )));
        };
        let (normed, norm) = match save {
            true => {
                let (y, tape) = self.norm.forward_saving(gpu, x, false)?;
                (y, Some(tape))
            }
            false => (self.norm.forward(gpu, x, false)?, None),
        };
        let projected = self.proj_in.forward(gpu, &normed)?;
        drop(normed);
        let mut tokens = ops::transpose_last2(gpu, &projected.reshape(&[b, c, h * w])?)?;
        let mut blocks = Vec::new();
        for block in &self.blocks {
            let (y, tape) = block.run(gpu, &tokens, context, save)?;
            tokens = y;
            blocks.extend(tape);
        }
        let planes = ops::transpose_last2(gpu, &tokens)?.reshape(&[b, c, h, w])?;
        let y = self.proj_out.forward_residual(gpu, &planes, Some(x), 1.0)?;
        Ok((y, norm.map(|norm| TransformerTape { norm, blocks })))
    }

    /// ∂⟨forward(x), dy⟩/∂x: through the residual and through norm → proj_in → the blocks →
    /// proj_out.
    pub fn backward(&self, gpu: &Gpu, tape: &TransformerTape, dy: &Tensor) -> Result<Tensor> {
        let &[b, c, h, w] = dy.shape() else {
            return Err(Error::Invalid(format!(
                "Transformer2DModel gradient {:?} is not NCHW",
                dy.shape()
            )));
        };
        if tape.blocks.len() != self.blocks.len() {
            return Err(Error::Internal(
                "Transformer2DModel backward needs the tape of its forward_saving".into(),
            ));
        }
        let d_planes = self.proj_out.same_size_input_grad(gpu, dy)?;
        let mut d_tokens = ops::transpose_last2(gpu, &d_planes.reshape(&[b, c, h * w])?)?;
        for (block, block_tape) in self.blocks.iter().zip(&tape.blocks).rev() {
            d_tokens = block.backward(gpu, block_tape, &d_tokens)?;
        }
        let d_projected = ops::transpose_last2(gpu, &d_tokens)?.reshape(&[b, c, h, w])?;
        let d_normed = self.proj_in.same_size_input_grad(gpu, &d_projected)?;
        ops::add(gpu, &self.norm.backward(gpu, &tape.norm, &d_normed)?, dy)
    }
}

/// What a [`Transformer2DModel`]'s backward reads: the group norm's tape and each block's.
pub struct TransformerTape {
    norm: GroupNormTape,
    blocks: Vec<BlockTape>,
}
