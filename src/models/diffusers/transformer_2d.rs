//! diffusers' `Transformer2DModel` as Stable Diffusion 1.x's UNet builds it
//! (`transformer_2d.py`, `attention.py`, `attention_processor.py`): group norm, a 1×1
//! `proj_in`, `BasicTransformerBlock`s over the pixels as tokens — self-attention,
//! cross-attention to the text states, a GEGLU feed-forward, each pre-norm and residual — a 1×1
//! `proj_out` and the residual around the whole. Forward only for now.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::layers::{Conv2d, GroupNorm, LayerNorm, Linear};
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

    /// x (B, N, dim) attending to `context` (B, M, context_dim), or to itself.
    fn forward(&self, gpu: &Gpu, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let source = context.unwrap_or(x);
        let q = self.to_q.forward(gpu, x)?;
        let (k, v) = (
            self.to_k.forward(gpu, source)?,
            self.to_v.forward(gpu, source)?,
        );
        let attended = match context {
            None => ops::attention(gpu, &q, &k, &v, self.heads, self.scale)?,
            Some(_) => {
                ops::cross_attention(gpu, &q, &k, &v, self.heads, self.scale, AttentionMask::None)?
            }
        };
        self.to_out.forward(gpu, &attended)
    }
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

    fn forward(&self, gpu: &Gpu, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let a = self
            .attn1
            .forward(gpu, &self.norm1.forward(gpu, x)?, None)?;
        let x = ops::add(gpu, &a, x)?;
        let a = self
            .attn2
            .forward(gpu, &self.norm2.forward(gpu, &x)?, Some(context))?;
        let x = ops::add(gpu, &a, &x)?;
        let h = ops::geglu(
            gpu,
            &self.ff_proj.forward(gpu, &self.norm3.forward(gpu, &x)?)?,
        )?;
        ops::add(gpu, &self.ff_out.forward(gpu, &h)?, &x)
    }
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
        let &[b, c, h, w] = x.shape() else {
            return Err(Error::Invalid(format!(
                "Transformer2DModel input {:?} is not NCHW",
                x.shape()
            )));
        };
        let projected = self
            .proj_in
            .forward(gpu, &self.norm.forward(gpu, x, false)?)?;
        let mut tokens = ops::transpose_last2(gpu, &projected.reshape(&[b, c, h * w])?)?;
        for block in &self.blocks {
            tokens = block.forward(gpu, &tokens, context)?;
        }
        let planes = ops::transpose_last2(gpu, &tokens)?.reshape(&[b, c, h, w])?;
        self.proj_out.forward_residual(gpu, &planes, Some(x), 1.0)
    }
}
