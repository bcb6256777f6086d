//! Attention whose queries and keys differ in number, or with a causal mask: the cross-attention
//! of Stable Diffusion's transformer blocks (latent pixels attend to 77 text tokens) and the
//! causal self-attention of CLIP's text encoder. It runs as matrix products around a row
//! softmax (softmax.wgsl) on both kernel classes; the square unmasked case keeps
//! [`super::attention`] (fused or products, grouped to the device's tensor limit). The queries'
//! gradient (what gradient guidance needs through Stable Diffusion's cross-attention) reuses
//! the forward's probabilities.

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
    Ok(cross_attention_saving(gpu, q, k, v, heads, scale, mask)?.0)
}

/// [`cross_attention`] and its probabilities (B·heads, Nq, Nk), which the forward forms anyway:
/// what [`cross_attention_query_grad`] reads.
pub fn cross_attention_saving(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    mask: AttentionMask,
) -> Result<(Tensor, Tensor)> {
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
    check_rows(gpu, OP, pairs, nq, nk)?;
    let (q_layout, [q_h, k_h, v_h]) = split_heads(gpu, q, k, v, heads)?;
    let scores = super::matmul::matmul_impl(gpu, &q_h, &k_h, None, true)?;
    let probs = gpu.empty_typed(&[pairs, nq, nk], DType::F32)?;
    let lse = gpu.empty(&[pairs, nq])?;
    let kernel = Kernel::new(&shaders::SOFTMAX, "softmax_rows")
        .flag("CAUSAL", mask == AttentionMask::Causal);
    let p = softmax_params(OP, pairs, nq, nk, scale)?;
    gpu.dispatch(
        &kernel,
        &p,
        &[&scores],
        &[&probs, &lse],
        gpu.grid_1d(pairs * nq),
    )?;
    drop(scores);
    let out = super::matmul::matmul_impl(gpu, &probs, &v_h, None, false)?;
    Ok((q_layout.merge(gpu, &out)?, probs))
}

/// ∂⟨cross_attention(q, k, v), d_out⟩/∂q from the forward's probabilities P
/// ([`cross_attention_saving`]): per (item, head) dP = d_out·Vᵀ, the softmax's backward
/// dS = scale·P∘(dP − rowsum(P∘dP)) (softmax.wgsl), and dQ = dS·K. Only the queries' gradient is
/// formed: in Stable Diffusion the keys and values come from the text states, which do not
/// depend on the image.
pub fn cross_attention_query_grad(
    gpu: &Gpu,
    probs: &Tensor,
    k: &Tensor,
    v: &Tensor,
    d_out: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "cross_attention_query_grad";
    let [b, nq, c] = dims::<3>(d_out, OP, "d_out")?;
    let [bk, nk, ck] = dims::<3>(k, OP, "k")?;
    let pairs = b * heads;
    ensure(
        bk == b
            && ck == c
            && v.shape() == k.shape()
            && heads > 0
            && c % heads == 0
            && probs.shape() == [pairs, nq, nk],
        OP,
        || {
            format!(
                "d_out {:?}, k {:?}, v {:?}, probabilities {:?}: one batch and width, {heads} \
                 heads dividing it, (B·heads, queries, keys) probabilities",
                d_out.shape(),
                k.shape(),
                v.shape(),
                probs.shape()
            )
        },
    )?;
    for t in [probs, k, v, d_out] {
        t.ensure_f32(OP)?;
    }
    check_rows(gpu, OP, pairs, nq, nk)?;
    let (q_layout, [g_h, k_h, v_h]) = split_heads(gpu, d_out, k, v, heads)?;
    let d_probs = super::matmul::matmul_impl(gpu, &g_h, &v_h, None, true)?;
    let d_scores = gpu.empty(&[pairs, nq, nk])?;
    let kernel = Kernel::new(&shaders::SOFTMAX, "softmax_rows_grad");
    let p = softmax_params(OP, pairs, nq, nk, scale)?;
    gpu.dispatch(
        &kernel,
        &p,
        &[probs, &d_probs],
        &[&d_scores],
        gpu.grid_1d(pairs * nq),
    )?;
    drop(d_probs);
    let dq = super::matmul::matmul_impl(gpu, &d_scores, &k_h, None, false)?;
    q_layout.merge(gpu, &dq)
}

/// Queries (or their gradient) and keys and values split into (B·heads, N, D), and the queries'
/// layout to merge the result back with.
fn split_heads(
    gpu: &Gpu,
    queries: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> Result<(HeadLayout, [Tensor; 3])> {
    let (q_layout, k_layout) = (HeadLayout::of(queries, heads), HeadLayout::of(k, heads));
    let split = [
        q_layout.split(gpu, queries)?,
        k_layout.split(gpu, k)?,
        k_layout.split(gpu, v)?,
    ];
    Ok((q_layout, split))
}

/// Refuses score matrices over a binding and rows over the device's loop budget (the row
/// kernels make at most three passes).
fn check_rows(gpu: &Gpu, op: &'static str, pairs: usize, nq: usize, nk: usize) -> Result<()> {
    let score_bytes = (pairs * nq * nk * 4) as u64;
    if score_bytes > gpu.max_tensor_bytes() {
        return Err(Error::TooLarge {
            what: format!("{op}'s {pairs} × {nq} × {nk} scores"),
            bytes: score_bytes,
            limit: gpu.max_tensor_bytes(),
        });
    }
    if let Some(budget) = gpu.max_loop_iterations() {
        ensure(3 * (nk + 1) <= budget, op, || {
            format!("{nk} keys exceed this device's loop budget ({budget}) for the row softmax")
        })?;
    }
    Ok(())
}

fn softmax_params(
    op: &'static str,
    pairs: usize,
    nq: usize,
    nk: usize,
    scale: f32,
) -> Result<SoftmaxParams> {
    let u = |what, n| checked_u32(op, what, n);
    Ok(SoftmaxParams {
        rows: u("rows", pairs * nq)?,
        cols: u("keys", nk)?,
        queries: u("queries", nq)?,
        scale,
    })
}
