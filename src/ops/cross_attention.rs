//! Attention whose queries and keys differ in number, or with a causal mask: the cross-attention
//! of Stable Diffusion's transformer blocks (latent pixels attend to 77 text tokens) and the
//! causal self-attention of CLIP's text encoder. It runs as matrix products around a row
//! softmax (softmax.wgsl) on both kernel classes; the square unmasked case keeps
//! [`super::attention`] (fused or products, grouped to the device's tensor limit).

use super::attention::HeadLayout;
use super::{dims, ensure};
use crate::error::{Error, Result};
use crate::gpu::{checked_u32, kernel_params, shaders, DType, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct SoftmaxParams for SOFTMAX::Params {
        rows: u32,
        cols: u32,
        queries: u32,
        scale: f32,
    }
}

/// Which keys each query sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionMask {
    /// Every key.
    None,
    /// Query i sees keys 0..=i (queries and keys equal in number): a text encoder's causal mask.
    Causal,
}

/// softmax(Q·Kᵀ·scale, masked)·V per head for token-major q (B, Nq, heads·D) and k, v
/// (B, Nk, heads·D); the output is shaped like q.
pub fn cross_attention(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
) -> Result<Tensor> {
    const OP: &str = "cross_attention";
    let [b, nq, c] = dims::<3>(q, OP, "q")?;
    let [bk, nk, ck] = dims::<3>(k, OP, "k")?;
    ensure(
        bk == b && ck == c && v.shape() == k.shape() && heads > 0 && c % heads == 0,
        OP,
        || {
            format!(
                "q {:?}, k {:?}, v {:?}: keys and values alike, one batch and width, {heads} heads \
                 dividing it",
                q.shape(),
                k.shape(),
                v.shape()
            )
        },
    )?;
    ensure(mask == AttentionMask::None || nq == nk, OP, || {
        format!("a causal mask needs as many queries as keys, got {nq} and {nk}")
    })?;
    for t in [q, k, v] {
        t.ensure_f32(OP)?;
    }
    let pairs = b * heads;
    let score_bytes = (pairs * nq * nk * 4) as u64;
    if score_bytes > gpu.max_tensor_bytes() {
        return Err(Error::TooLarge {
            what: format!("{OP}'s {pairs} × {nq} × {nk} scores"),
            bytes: score_bytes,
            limit: gpu.max_tensor_bytes(),
        });
    }
    if let Some(budget) = gpu.max_loop_iterations() {
        ensure(3 * (nk + 1) <= budget, OP, || {
            format!("{nk} keys exceed this device's loop budget ({budget}) for the row softmax")
        })?;
    }
    let (q_layout, k_layout) = (HeadLayout::of(q, heads), HeadLayout::of(k, heads));
    let (q_h, k_h, v_h) = (
        q_layout.split(gpu, q)?,
        k_layout.split(gpu, k)?,
        k_layout.split(gpu, v)?,
    );
    let scores = super::matmul::matmul_impl(gpu, &q_h, &k_h, None, true)?;
    let probs = gpu.empty_typed(&[pairs, nq, nk], DType::F32)?;
    let lse = gpu.empty(&[pairs, nq])?;
    let u = |what, n| checked_u32(OP, what, n);
    let p = SoftmaxParams {
        rows: u("rows", pairs * nq)?,
        cols: u("keys", nk)?,
        queries: u("queries", nq)?,
        scale,
    };
    let kernel = Kernel::new(&shaders::SOFTMAX, "softmax_rows")
        .flag("CAUSAL", mask == AttentionMask::Causal);
    gpu.dispatch(
        &kernel,
        &p,
        &[&scores],
        &[&probs, &lse],
        gpu.grid_1d(pairs * nq),
    )?;
    drop(scores);
    let out = super::matmul::matmul_impl(gpu, &probs, &v_h, None, false)?;
    q_layout.merge(gpu, &out)
}
