//! The input gradients of [`attention`](super::attention) (attention_grad.wgsl). Where one
//! head's scores fit a group, as batched products per (item, head) (see `products`); else flash
//! style: the probabilities are recomputed from the forward's saved log-sum-exp, a tile of rows
//! at a time, so memory stays linear in the sequence length whatever the image size. Where the
//! device bounds loop lengths the row loops are split into segments whose partial gradients are
//! summed (see [`segment_rows`]).

use super::attention::{scores_fit, segment_rows, HeadLayout};
use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

// attention_grad.wgsl's constants of the same names (checked in ops' tests).
/// Threads per workgroup of `grad_q` and `grad_kv`.
pub(super) const WG: usize = 64;
/// Head-vector elements per thread.
pub(super) const CHUNK: usize = 64;
/// Most rows staged per tile.
pub(super) const MAX_TILE_ROWS: usize = 16;
/// Floats of workgroup memory per staged tile: it bounds the head dimension.
pub(super) const TILE_CAP: usize = 1024;
/// Threads per workgroup of `row_dot`.
pub(super) const ROW_WG: usize = 64;

kernel_params! {
    pub(super) struct AttentionGradParams for ATTENTION_GRAD::Params {
        batch: u32,
        tokens: u32,
        channels: u32,
        heads: u32,
        head_dim: u32,
        chunks: u32,
        tile_rows: u32,
        scale: f32,
        segment_rows: u32,
        segments: u32,
    }
}

/// The forward's activations that its backward reads.
#[derive(Clone, Copy)]
pub struct AttentionSaved<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// The attention output.
    pub out: &'a Tensor,
    /// Per-query log-sum-exp (B, heads, N) from [`attention_saving`](super::attention_saving).
    pub lse: &'a Tensor,
}

const OP: &str = "attention_grad";

/// (dq, dk, dv) = the gradients of ⟨attention(q, k, v, heads, scale), d_out⟩.
pub fn attention_grad(
    gpu: &Gpu,
    saved: AttentionSaved,
    d_out: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let AttentionSaved { q, k, v, out, lse } = saved;
    let [b, n, c] = dims::<3>(q, OP, "q")?;
    let same = [k, v, out, d_out].iter().all(|t| t.shape() == q.shape());
    ensure(same, OP, || {
        format!(
            "q {:?}, k {:?}, v {:?}, out {:?}, d_out {:?} must match",
            q.shape(),
            k.shape(),
            v.shape(),
            out.shape(),
            d_out.shape()
        )
    })?;
    ensure(heads > 0 && c % heads == 0, OP, || {
        format!("{c} channels not divisible into {heads} heads")
    })?;
    ensure(lse.shape() == [b, heads, n], OP, || {
        format!("lse {:?} must be [{b}, {heads}, {n}]", lse.shape())
    })?;
    let head_dim = c / heads;
    ensure(head_dim <= TILE_CAP, OP, || {
        format!("head dim {head_dim} exceeds the backward's {TILE_CAP}")
    })?;
    let chunks = head_dim.div_ceil(CHUNK);
    let tile_rows = (TILE_CAP / head_dim).clamp(1, MAX_TILE_ROWS);
    let (rows_per_segment, segments) = segment_rows(gpu, n, tile_rows, head_dim);
    let u = |what, v| checked_u32(OP, what, v);
    let p = AttentionGradParams {
        batch: u("batch", b)?,
        tokens: u("tokens", n)?,
        channels: u("channels", c)?,
        heads: u("heads", heads)?,
        head_dim: u("head_dim", head_dim)?,
        chunks: u("chunks", chunks)?,
        tile_rows: u("tile_rows", tile_rows)?,
        scale,
        segment_rows: u("segment_rows", rows_per_segment)?,
        segments: u("segments", segments)?,
    };

    let delta = gpu.empty(lse.shape())?;
    let row_dot = Kernel::new(&shaders::ATTENTION_GRAD, "row_dot");
    let grid = [lse.numel().div_ceil(ROW_WG), 1, 1];
    gpu.dispatch(&row_dot, &p, &[out, d_out], &[&delta], grid)?;
    if !gpu.fused_attention() && scores_fit(gpu, n) {
        return products(gpu, &p, saved, d_out, &delta);
    }

    let inputs = [q, k, v, d_out, lse, &delta];
    let grid = [n.div_ceil(WG / chunks), b * heads, segments];
    // Per-segment partials when split, else the gradients themselves.
    let part_shape = if segments > 1 {
        vec![segments, b, n, c]
    } else {
        q.shape().to_vec()
    };
    let dq = gpu.empty(&part_shape)?;
    let kernel = Kernel::new(&shaders::ATTENTION_GRAD, "grad_q");
    gpu.dispatch(&kernel, &p, &inputs, &[&dq], grid)?;
    let (dk, dv) = (gpu.empty(&part_shape)?, gpu.empty(&part_shape)?);
    let kernel = Kernel::new(&shaders::ATTENTION_GRAD, "grad_kv");
    gpu.dispatch(&kernel, &p, &inputs, &[&dk, &dv], grid)?;
    if segments == 1 {
        return Ok((dq, dk, dv));
    }
    let sum = |parts: Tensor| -> Result<Tensor> {
        let total = gpu.empty(q.shape())?;
        let kernel = Kernel::new(&shaders::ATTENTION_GRAD, "segment_sum");
        gpu.dispatch(
            &kernel,
            &p,
            &[&parts],
            &[&total],
            gpu.grid_1d(total.numel()),
        )?;
        Ok(total)
    };
    Ok((sum(dq)?, sum(dk)?, sum(dv)?))
}

/// The gradients as batched products per (item, head), in the groups of [`HeadLayout`]
/// (attention_grad.wgsl's `softmax_grad_rows` says how): faster than the flash kernels where the
/// forward's products are (see attention.rs's `by_products`), at the cost of N × N scores per
/// pair.
fn products(
    gpu: &Gpu,
    p: &AttentionGradParams,
    saved: AttentionSaved,
    d_out: &Tensor,
    delta: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let AttentionSaved { q, k, v, lse, .. } = saved;
    let layout = HeadLayout::of(q, p.heads as usize);
    let (rows, n) = (layout.rows(), p.tokens as usize);
    let [q_h, k_h, v_h, g_h] = [q, k, v, d_out].map(|t| layout.split(gpu, t));
    let (q_h, k_h, v_h, g_h) = (q_h?, k_h?, v_h?, g_h?);
    let (lse, delta) = (lse.reshape(&[rows, n])?, delta.reshape(&[rows, n])?);
    let kernel = Kernel::new(&shaders::ATTENTION_GRAD, "softmax_grad_rows");
    let matmul = super::matmul::matmul_impl;
    let (mut dqs, mut dks, mut dvs) = (Vec::new(), Vec::new(), Vec::new());
    for group in layout.groups(gpu) {
        let count = group.1;
        let pick = |t: &Tensor| layout.pick(gpu, t, group);
        let (q_g, k_g) = (pick(&q_h)?, pick(&k_h)?);
        let (v_g, g_g) = (pick(&v_h)?, pick(&g_h)?);
        let scores = matmul(gpu, &q_g, &k_g, None, true)?;
        let d_probs = matmul(gpu, &g_g, &v_g, None, true)?;
        let probs = gpu.empty(&[count, n, n])?;
        let d_scores = gpu.empty(&[count, n, n])?;
        let per_pair = AttentionGradParams {
            batch: checked_u32(OP, "pairs", count)?,
            ..*p
        };
        let inputs = [&scores, &d_probs, &pick(&lse)?, &pick(&delta)?];
        let grid = gpu.grid_1d(count * n * n);
        gpu.dispatch(&kernel, &per_pair, &inputs, &[&probs, &d_scores], grid)?;
        drop((scores, d_probs));
        let probs_t = super::transpose_last2(gpu, &probs)?;
        dvs.push(matmul(gpu, &probs_t, &g_g, None, false)?);
        dqs.push(matmul(gpu, &d_scores, &k_g, None, false)?);
        let d_scores_t = super::transpose_last2(gpu, &d_scores)?;
        dks.push(matmul(gpu, &d_scores_t, &q_g, None, false)?);
    }
    let merge = |parts| layout.merge(gpu, &layout.join(gpu, parts)?);
    Ok((merge(dqs)?, merge(dks)?, merge(dvs)?))
}
