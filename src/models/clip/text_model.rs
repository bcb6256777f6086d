//! transformers' `CLIPTextModel` (`modeling_clip.py`), the text tower Stable Diffusion 1.x
//! conditions on, module by module: `CLIPTextEmbeddings` (token and position tables),
//! `CLIPEncoderLayer`s (pre-norm causal self-attention and MLP, each residual) and the final
//! layer norm. Its output is `last_hidden_state` (B, 77, hidden), what the UNet's
//! cross-attention reads; CLIP's pooled projection is not needed.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::layers::{Embedding, LayerNorm, Linear};
use crate::models::weights::{VarBuilder, WeightFile};
use crate::ops::{self, AttentionMask};
use serde::Deserialize;

/// The keys of transformers' `CLIPTextConfig` this model reads. Its config.json also carries
/// PretrainedConfig's generic keys (ids, labels, output flags, versions), which vary between
/// transformers versions and do not change the network; those are not checked.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI's CLIP, Stable Diffusion 1.x) or `gelu` (exact).
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl ClipTextConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("CLIPTextModel config: {what}")));
        if !["quick_gelu", "gelu"].contains(&self.hidden_act.as_str()) {
            return bad(format!(
                "hidden_act {:?} is not implemented (quick_gelu, gelu)",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "{} heads do not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        let sizes = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.max_position_embeddings,
        ];
        if sizes.contains(&0) || !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return bad("sizes must be positive and layer_norm_eps in (0, 1)".into());
        }
        Ok(())
    }
}

/// `CLIPAttention`: causal multi-head self-attention with biased projections.
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    scale: f32,
}

impl ClipAttention {
    fn load(vb: &VarBuilder, c: &ClipTextConfig) -> Result<ClipAttention> {
        let h = c.hidden_size;
        Ok(ClipAttention {
            q_proj: Linear::load(&vb.pp("q_proj"), h, h)?,
            k_proj: Linear::load(&vb.pp("k_proj"), h, h)?,
            v_proj: Linear::load(&vb.pp("v_proj"), h, h)?,
            out_proj: Linear::load(&vb.pp("out_proj"), h, h)?,
            heads: c.num_attention_heads,
            scale: ((h / c.num_attention_heads) as f32).powf(-0.5),
        })
    }

    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let (q, k, v) = (
            self.q_proj.forward(gpu, x)?,
            self.k_proj.forward(gpu, x)?,
            self.v_proj.forward(gpu, x)?,
        );
        let attended = ops::cross_attention(
            gpu,
            &q,
            &k,
            &v,
            self.heads,
            self.scale,
            AttentionMask::Causal,
        )?;
        self.out_proj.forward(gpu, &attended)
    }
}

/// `CLIPMLP`: fc1 → activation → fc2.
struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    quick_gelu: bool,
}

impl ClipMlp {
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(gpu, x)?;
        let h = match self.quick_gelu {
            true => ops::quick_gelu(gpu, &h)?,
            false => ops::gelu(gpu, &h)?,
        };
        self.fc2.forward(gpu, &h)
    }
}

/// `CLIPEncoderLayer`: x + attn(ln1(x)), then + mlp(ln2(·)).
struct ClipEncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    mlp: ClipMlp,
}

impl ClipEncoderLayer {
    fn load(vb: &VarBuilder, c: &ClipTextConfig) -> Result<ClipEncoderLayer> {
        let (h, eps) = (c.hidden_size, c.layer_norm_eps as f32);
        Ok(ClipEncoderLayer {
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), h, eps)?,
            self_attn: ClipAttention::load(&vb.pp("self_attn"), c)?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), h, eps)?,
            mlp: ClipMlp {
                fc1: Linear::load(&vb.pp("mlp").pp("fc1"), h, c.intermediate_size)?,
                fc2: Linear::load(&vb.pp("mlp").pp("fc2"), c.intermediate_size, h)?,
                quick_gelu: c.hidden_act == "quick_gelu",
            },
        })
    }

    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let attended = self
            .self_attn
            .forward(gpu, &self.layer_norm1.forward(gpu, x)?)?;
        let x = ops::add(gpu, x, &attended)?;
        let fed = self.mlp.forward(gpu, &self.layer_norm2.forward(gpu, &x)?)?;
        ops::add(gpu, &x, &fed)
    }
}

/// transformers' `CLIPTextModel`.
pub struct ClipTextModel {
    pub config: ClipTextConfig,
    token_embedding: Embedding,
    /// (1, positions, hidden), added to every item of a batch.
    position_embedding: Tensor,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// The `arch` metadata of a CLIPTextModel weight file.
    pub const ARCH: &'static str = "CLIPTextModel";

    /// Loads the weights of transformers' state_dict, with or without the `text_model.` prefix
    /// older transformers versions (and Stable Diffusion checkpoints) write.
    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<ClipTextModel> {
        file.expect_arch(Self::ARCH)?;
        let config: ClipTextConfig = file.config()?;
        config.validate()?;
        let root = file.var_builder(gpu);
        let prefixed = file
            .tensor_names()
            .iter()
            .any(|n| n.starts_with("text_model."));
        let vb = match prefixed {
            true => root.pp("text_model"),
            false => root.clone(),
        };
        let model = Self::build(&vb, config)?;
        root.finish()?;
        Ok(model)
    }

    fn build(vb: &VarBuilder, config: ClipTextConfig) -> Result<ClipTextModel> {
        let (h, positions) = (config.hidden_size, config.max_position_embeddings);
        let embeddings = vb.pp("embeddings");
        let position_embedding = embeddings
            .pp("position_embedding")
            .get("weight", &[positions, h])?
            .reshape(&[1, positions, h])?;
        Ok(ClipTextModel {
            token_embedding: Embedding::load(
                &embeddings.pp("token_embedding"),
                config.vocab_size,
                h,
            )?,
            position_embedding,
            layers: (0..config.num_hidden_layers)
                .map(|i| ClipEncoderLayer::load(&vb.pp("encoder").pp("layers").pp(i), &config))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::load(
                &vb.pp("final_layer_norm"),
                h,
                config.layer_norm_eps as f32,
            )?,
            config,
        })
    }

    /// `last_hidden_state` (B, N, hidden) for token ids (B, N) held as f32 (N ≤ the position
    /// table; 77 for CLIP).
    pub fn forward(&self, gpu: &Gpu, input_ids: &Tensor) -> Result<Tensor> {
        let shape = input_ids.shape();
        let (b, n, h) = match shape {
            [b, n] => (*b, *n, self.config.hidden_size),
            _ => {
                return Err(Error::Invalid(format!(
                    "CLIP input ids must be (B, N), got {shape:?}"
                )))
            }
        };
        let positions = self.config.max_position_embeddings;
        if n > positions {
            return Err(Error::Invalid(format!(
                "{n} tokens exceed the text encoder's {positions} positions"
            )));
        }
        let tokens = self
            .token_embedding
            .forward(gpu, &input_ids.reshape(&[b * n])?)?
            .reshape(&[b, n, h])?;
        let table = match n == positions {
            true => self.position_embedding.clone(),
            false => ops::slice_channels(
                gpu,
                &self.position_embedding.reshape(&[1, positions, h, 1])?,
                0,
                n,
            )?
            .reshape(&[1, n, h])?,
        };
        let mut x = ops::broadcast_lincomb(gpu, 1.0, &table, 1.0, &tokens)?;
        for layer in &self.layers {
            x = layer.forward(gpu, &x)?;
        }
        self.final_layer_norm.forward(gpu, &x)
    }
}
