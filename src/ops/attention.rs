//! Multi-head softmax attention (attention.wgsl).
//!
//! Where the device bounds loop lengths ([`Gpu::max_loop_iterations`]: llvmpipe), the keys are
//! split into segments whose partial softmax states a combine kernel merges; elsewhere one
//! segment runs, the direct path.

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, KernelClass, Tensor};

// attention.wgsl's constants of the same names, which size its arrays (checked in ops' tests).
/// Threads per workgroup.
pub(super) const WG: usize = 64;
/// Head-vector elements per thread.
pub(super) const CHUNK: usize = 64;
/// Most keys staged per tile.
pub(super) const MAX_TILE_KEYS: usize = 16;
/// Floats of workgroup memory per staged tile of keys (and of values).
pub(super) const KV_CAP: usize = 1536;

kernel_params! {
    pub(super) struct AttentionParams for ATTENTION::Params {
        tokens: u32,
        channels: u32,
        heads: u32,
        head_dim: u32,
        chunks: u32,
        tile_keys: u32,
        scale: f32,
        batch: u32,
        segment_keys: u32,
        segments: u32,
    }
}

/// softmax(Q·Kᵀ·scale)·V per head for token-major q, k, v of shape (B, N, heads·D).
pub fn attention(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    let (p, grid) = plan(gpu, q, k, v, heads, scale)?;
    if by_products(gpu, &p) {
        return Ok(products(gpu, &p, [q, k, v])?.0);
    }
    if p.segments > 1 {
        return Ok(segmented(gpu, &p, [q, k, v], grid)?.0);
    }
    let out = gpu.empty(q.shape())?;
    let kernel = Kernel::new(&shaders::ATTENTION, "attention");
    gpu.dispatch(&kernel, &p, &[q, k, v], &[&out], grid)?;
    Ok(out)
}

/// [`attention`] and each query's softmax log-sum-exp (B, heads, N), from which its backward
/// recomputes the probabilities.
pub fn attention_saving(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    let (p, grid) = plan(gpu, q, k, v, heads, scale)?;
    if by_products(gpu, &p) {
        return products(gpu, &p, [q, k, v]);
    }
    if p.segments > 1 {
        return segmented(gpu, &p, [q, k, v], grid);
    }
    let out = gpu.empty(q.shape())?;
    let lse = gpu.empty(&[q.dim(0), heads, q.dim(1)])?;
    let kernel = Kernel::new(&shaders::ATTENTION, "attention_lse");
    gpu.dispatch(&kernel, &p, &[q, k, v], &[&out, &lse], grid)?;
    Ok((out, lse))
}

/// Whether attention runs as matmul, row softmax, matmul (attention.wgsl's `softmax_rows`): on
/// the blocked kernel class (CPU adapters, where it is over 10x faster than the fused kernel),
/// when one head's N × N scores fit one tensor and the softmax's three passes over a row fit
/// the loop budget.
fn by_products(gpu: &Gpu, p: &AttentionParams) -> bool {
    let n = p.tokens as usize;
    gpu.kernel_class() == KernelClass::Blocked
        && ((n * n * 4) as u64) <= gpu.max_tensor_bytes() / 16 * 16
        && gpu
            .max_loop_iterations()
            .is_none_or(|budget| 3 * (n + 1) <= budget)
}

/// Token-major (B, N, heads·D) as head-major (B·heads, D, N): one transpose, and each head's
/// rows are then contiguous.
fn head_major_t(gpu: &Gpu, x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, c) = (x.dim(0), x.dim(1), x.dim(2));
    super::transpose_last2(gpu, x)?.reshape(&[b * heads, c / heads, n])
}

/// Items start .. start + count of a batch (R, …), as a tensor of its own.
fn batch_items(gpu: &Gpu, x: &Tensor, start: usize, count: usize) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    let inner = x.numel() / shape[0];
    let part = super::slice_channels(gpu, &x.reshape(&[1, shape[0], inner, 1])?, start, count)?;
    shape[0] = count;
    part.reshape(&shape)
}

/// Output and lse as S = Q·Kᵀ, P = softmax(S·scale) by rows, P·V, per (batch item, head). With
/// more than one head the operands are laid out head-major by transposes first (memory-bound,
/// a small cost beside the N²·D products) and the output back to token-major after. Where the
/// scores of every (item, head) would exceed one tensor, they run in groups that fit.
fn products(gpu: &Gpu, p: &AttentionParams, [q, k, v]: [&Tensor; 3]) -> Result<(Tensor, Tensor)> {
    let (b, n, c) = (q.dim(0), q.dim(1), q.dim(2));
    let heads = p.heads as usize;
    let rows = b * heads;
    // Q (rows, N, D); K as Kᵀ (rows, D, N), or as stored (transposed by the product) for one
    // head; V (rows, N, D).
    let (q_h, k_op, k_stored, v_h) = if heads == 1 {
        (q.clone(), k.clone(), true, v.clone())
    } else {
        (
            super::transpose_last2(gpu, &head_major_t(gpu, q, heads)?)?,
            head_major_t(gpu, k, heads)?,
            false,
            super::transpose_last2(gpu, &head_major_t(gpu, v, heads)?)?,
        )
    };
    // Tensors occupy whole 16-byte units.
    let usable = gpu.max_tensor_bytes() / 16 * 16;
    let group = ((usable / (n * n * 4) as u64) as usize).clamp(1, rows);
    let softmax = Kernel::new(&shaders::ATTENTION, "softmax_rows");
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for start in (0..rows).step_by(group) {
        let count = group.min(rows - start);
        let pick = |t: &Tensor| match count == rows {
            true => Ok(t.clone()),
            false => batch_items(gpu, t, start, count),
        };
        let scores = super::matmul::matmul_impl(gpu, &pick(&q_h)?, &pick(&k_op)?, None, k_stored)?;
        let probs = gpu.empty(&[count, n, n])?;
        let lse = gpu.empty(&[1, count, n, 1])?;
        let per_row = AttentionParams {
            batch: checked_u32("attention", "rows", count)?,
            ..*p
        };
        let grid = gpu.grid_1d(count * n);
        gpu.dispatch(&softmax, &per_row, &[&scores], &[&probs, &lse], grid)?;
        drop(scores);
        let out = super::matmul::matmul_impl(gpu, &probs, &pick(&v_h)?, None, false)?;
        outs.push(out.reshape(&[1, count, n, c / heads])?);
        lses.push(lse);
    }
    drop((q_h, k_op, v_h));
    let join = |parts: Vec<Tensor>| match parts.len() {
        1 => Ok(parts.into_iter().next().expect("one part")),
        _ => super::concat_channels(gpu, &parts.iter().collect::<Vec<_>>()),
    };
    let lse = join(lses)?.reshape(&[b, heads, n])?;
    let out_h = join(outs)?;
    if heads == 1 {
        return Ok((out_h.reshape(&[b, n, c])?, lse));
    }
    let out_t = super::transpose_last2(gpu, &out_h.reshape(&[rows, n, c / heads])?)?;
    let out = super::transpose_last2(gpu, &out_t.reshape(&[b, c, n])?)?;
    Ok((out, lse))
}

/// Output and lse by key segments: each segment's partial output and softmax state, then their
/// merge.
fn segmented(
    gpu: &Gpu,
    p: &AttentionParams,
    [q, k, v]: [&Tensor; 3],
    grid: [usize; 3],
) -> Result<(Tensor, Tensor)> {
    let (b, n, c) = (q.dim(0), q.dim(1), q.dim(2));
    let (heads, segments) = (p.heads as usize, p.segments as usize);
    let parts = gpu.empty(&[segments, b, n, c])?;
    let stats = gpu.empty(&[segments, b * heads, n, 2])?;
    let kernel = Kernel::new(&shaders::ATTENTION, "attention_lse");
    gpu.dispatch(&kernel, p, &[q, k, v], &[&parts, &stats], grid)?;
    let out = gpu.empty(q.shape())?;
    let lse = gpu.empty(&[b, heads, n])?;
    let combine = Kernel::new(&shaders::ATTENTION, "attention_combine");
    let grid = gpu.grid_1d(out.numel());
    gpu.dispatch(&combine, p, &[&parts, &stats], &[&out, &lse], grid)?;
    Ok((out, lse))
}

/// Splits `rows` keys (or queries) into the fewest equal runs, whole tiles of `tile` rows each,
/// that keep one invocation's loop nest within the device's budget: (rows per run, runs).
///
/// The cost model is attention.wgsl's and attention_grad.wgsl's key loop, which share its
/// shape: per tile, the tile loop, the staging loop, and per staged row one loop over the
/// thread's `min(head_dim, CHUNK)` slice for the score, one over the `chunks` partials and one
/// more over the slice to accumulate. llvmpipe counts one iteration more than a loop's trip
/// count (the pass that finds every lane done), so each loop is charged trips + 1.
pub(super) fn segment_rows(gpu: &Gpu, rows: usize, tile: usize, head_dim: usize) -> (usize, usize) {
    let Some(budget) = gpu.max_loop_iterations() else {
        return (rows.max(1), 1);
    };
    let width = head_dim.min(CHUNK);
    let chunks = head_dim.div_ceil(CHUNK);
    let per_row = (width + 2) + (chunks + 2) + (width + 1);
    let per_tile = 1 + ((tile * head_dim).div_ceil(WG) + 1) + 2 + tile * per_row;
    let max_rows = (budget / per_tile).max(1) * tile;
    let runs = rows.div_ceil(max_rows).max(1);
    // Equal runs of whole tiles, so the last is not a sliver.
    let per_run = (rows.div_ceil(runs).div_ceil(tile) * tile).max(tile);
    (per_run, rows.div_ceil(per_run).max(1))
}

/// Checks the operands and returns the kernel parameters and grid.
fn plan(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<(AttentionParams, [usize; 3])> {
    const OP: &str = "attention";
    let [b, n, c] = dims::<3>(q, OP, "q")?;
    ensure(k.shape() == q.shape() && v.shape() == q.shape(), OP, || {
        format!(
            "q {:?}, k {:?}, v {:?} must match",
            q.shape(),
            k.shape(),
            v.shape()
        )
    })?;
    ensure(heads > 0 && c % heads == 0, OP, || {
        format!("{c} channels not divisible into {heads} heads")
    })?;
    let head_dim = c / heads;
    ensure(head_dim <= KV_CAP, OP, || {
        format!("head dim {head_dim} exceeds {KV_CAP}")
    })?;
    let chunks = head_dim.div_ceil(CHUNK);
    ensure(chunks <= WG, OP, || {
        format!("head dim {head_dim} too large")
    })?;
    let tile_keys = (KV_CAP / head_dim).clamp(1, MAX_TILE_KEYS);
    let queries_per_group = WG / chunks;
    let (segment_keys, segments) = segment_rows(gpu, n, tile_keys, head_dim);
    let u = |what, v| checked_u32(OP, what, v);
    let p = AttentionParams {
        tokens: u("tokens", n)?,
        channels: u("channels", c)?,
        heads: u("heads", heads)?,
        head_dim: u("head_dim", head_dim)?,
        chunks: u("chunks", chunks)?,
        tile_keys: u("tile_keys", tile_keys)?,
        scale,
        batch: u("batch", b)?,
        segment_keys: u("segment_keys", segment_keys)?,
        segments: u("segments", segments)?,
    };
    Ok((p, [n.div_ceil(queries_per_group), b * heads, segments]))
}
