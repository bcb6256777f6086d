//! Multi-head softmax attention (attention.wgsl).
//!
//! Where the device bounds loop lengths ([`Gpu::max_loop_iterations`]: llvmpipe), the keys are
//! split into segments whose partial softmax states a combine kernel merges; elsewhere one
//! segment runs, the direct path.

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, DType, Gpu, Kernel, Tensor};

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
    fused_reads_f32(q)?;
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
    fused_reads_f32(q)?;
    if p.segments > 1 {
        return segmented(gpu, &p, [q, k, v], grid);
    }
    let out = gpu.empty(q.shape())?;
    let lse = gpu.empty(&[q.dim(0), heads, q.dim(1)])?;
    let kernel = Kernel::new(&shaders::ATTENTION, "attention_lse");
    gpu.dispatch(&kernel, &p, &[q, k, v], &[&out, &lse], grid)?;
    Ok((out, lse))
}

/// The fused kernels read f32 only: f16 activations need the products path.
fn fused_reads_f32(q: &Tensor) -> Result<()> {
    ensure(q.dtype() == DType::F32, "attention", || {
        format!(
            "{q:?}: f16 activations run attention as products, which need one head's {n} × {n} \
             scores within a group (or a loop budget for 3·{n} steps); the fused kernels read f32",
            n = q.dim(1)
        )
    })
}

/// Whether attention runs as matmul, row softmax, matmul (attention.wgsl's `softmax_rows`):
/// when one head's N × N scores fit a group and the softmax's three passes over a row fit the
/// loop budget, on both kernel classes. On lavapipe (blocked) it is over 10x faster than the
/// fused kernel. On an H200 (tiled) the fused kernel took 1.64 ms a dispatch at the CIFAR-10
/// UNet's 16 × 16 attention (256 tokens, 256 channels), its per-thread query and accumulator
/// arrays indexed by runtime bounds (which a GPU may keep in memory); the products path was not
/// measured there (the tiled matmul ran the model's linear layers at 139 µs a dispatch).
fn by_products(gpu: &Gpu, p: &AttentionParams) -> bool {
    let n = p.tokens as usize;
    !gpu.fused_attention()
        && scores_fit(gpu, n)
        && gpu
            .max_loop_iterations()
            .is_none_or(|budget| 3 * (n + 1) <= budget)
}

/// The most bytes one group's N × N scores take: the device's tensor limit (128 MiB on lavapipe),
/// and at most 256 MiB where the limit is larger (GiBs on a GPU), since the gradient holds
/// several such tensors at once.
const MAX_SCORE_BYTES: u64 = 256 << 20;

fn score_bytes(gpu: &Gpu) -> u64 {
    gpu.max_tensor_bytes().min(MAX_SCORE_BYTES) / 16 * 16
}

/// Whether one (item, head) pair's N × N scores fit one group (the products path's condition;
/// tensors occupy whole 16-byte units).
pub(super) fn scores_fit(gpu: &Gpu, n: usize) -> bool {
    ((n * n * 4) as u64) <= score_bytes(gpu)
}

/// The layout of attention's products: token-major (B, N, heads·D)
/// operands as head-major (B·heads, N, D), one batch entry per (item, head) pair, run in groups
/// of pairs whose N × N scores fit one tensor.
pub(super) struct HeadLayout {
    b: usize,
    n: usize,
    c: usize,
    heads: usize,
}

impl HeadLayout {
    pub(super) fn of(x: &Tensor, heads: usize) -> HeadLayout {
        HeadLayout {
            b: x.dim(0),
            n: x.dim(1),
            c: x.dim(2),
            heads,
        }
    }

    /// (item, head) pairs.
    pub(super) fn rows(&self) -> usize {
        self.b * self.heads
    }

    /// (B, N, heads·D) → (B·heads, N, D): two transposes (memory-bound, small beside the N²·D
    /// products), none for one head.
    pub(super) fn split(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        if self.heads == 1 {
            return Ok(x.clone());
        }
        let (d, n) = (self.c / self.heads, self.n);
        let t = super::transpose_last2(gpu, x)?.reshape(&[self.rows(), d, n])?;
        super::transpose_last2(gpu, &t)
    }

    /// The inverse of [`Self::split`].
    pub(super) fn merge(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = (self.b, self.n, self.c);
        if self.heads == 1 {
            return x.reshape(&[b, n, c]);
        }
        let t = super::transpose_last2(gpu, &x.reshape(&[self.rows(), n, c / self.heads])?)?;
        super::transpose_last2(gpu, &t.reshape(&[b, c, n])?)
    }

    /// (first pair, pairs) of each group.
    pub(super) fn groups(&self, gpu: &Gpu) -> Vec<(usize, usize)> {
        let usable = score_bytes(gpu);
        let rows = self.rows();
        let group = ((usable / (self.n * self.n * 4) as u64) as usize).clamp(1, rows);
        (0..rows)
            .step_by(group)
            .map(|start| (start, group.min(rows - start)))
            .collect()
    }

    /// The batch entries of group `(start, count)` of `x` (B·heads, …), `x` itself for all.
    pub(super) fn pick(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        (start, count): (usize, usize),
    ) -> Result<Tensor> {
        if count == self.rows() {
            return Ok(x.clone());
        }
        let mut shape = x.shape().to_vec();
        let inner = x.numel() / shape[0];
        let part = super::slice_channels(gpu, &x.reshape(&[1, shape[0], inner, 1])?, start, count)?;
        shape[0] = count;
        part.reshape(&shape)
    }

    /// The groups' parts, each (pairs, …), joined along the batch axis.
    pub(super) fn join(&self, gpu: &Gpu, parts: Vec<Tensor>) -> Result<Tensor> {
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one part"));
        }
        let mut shape = parts[0].shape().to_vec();
        let flat = parts
            .iter()
            .map(|t| t.reshape(&[1, t.dim(0), t.numel() / t.dim(0), 1]))
            .collect::<Result<Vec<_>>>()?;
        shape[0] = self.rows();
        super::concat_channels(gpu, &flat.iter().collect::<Vec<_>>())?.reshape(&shape)
    }
}

/// Output and lse as S = Q·Kᵀ, P = softmax(S·scale) by rows, P·V, per (item, head), in the
/// groups of [`HeadLayout`].
fn products(gpu: &Gpu, p: &AttentionParams, [q, k, v]: [&Tensor; 3]) -> Result<(Tensor, Tensor)> {
    let layout = HeadLayout::of(q, p.heads as usize);
    let n = layout.n;
    let half = q.dtype() == DType::F16;
    // With f16 activations the scores are stored as f16: Q is scaled first, so what is stored
    // is the logits (a raw q·k could pass f16's 65504 where the logits do not).
    let (q_h, softmax_scale) = match half {
        true => (
            super::affine(gpu, &layout.split(gpu, q)?, p.scale, 0.0)?,
            1.0,
        ),
        false => (layout.split(gpu, q)?, p.scale),
    };
    let (k_h, v_h) = (layout.split(gpu, k)?, layout.split(gpu, v)?);
    let softmax = Kernel::new(&shaders::ATTENTION, "softmax_rows").half(half);
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for group in layout.groups(gpu) {
        let count = group.1;
        let pick = |t: &Tensor| layout.pick(gpu, t, group);
        let scores = super::matmul::matmul_impl(gpu, &pick(&q_h)?, &pick(&k_h)?, None, true)?;
        let probs = gpu.empty_typed(&[count, n, n], scores.dtype())?;
        let lse = gpu.empty(&[count, n])?;
        let per_pair = AttentionParams {
            batch: checked_u32("attention", "pairs", count)?,
            scale: softmax_scale,
            ..*p
        };
        let grid = gpu.grid_1d(count * n);
        gpu.dispatch(&softmax, &per_pair, &[&scores], &[&probs, &lse], grid)?;
        drop(scores);
        outs.push(super::matmul::matmul_impl(
            gpu,
            &probs,
            &pick(&v_h)?,
            None,
            false,
        )?);
        lses.push(lse);
    }
    drop((q_h, k_h, v_h));
    let lse = layout
        .join(gpu, lses)?
        .reshape(&[layout.b, layout.heads, n])?;
    let out = layout.merge(gpu, &layout.join(gpu, outs)?)?;
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
