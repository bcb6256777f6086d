//! Multi-head softmax attention (attention.wgsl).

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

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
    let (p, grid) = plan(q, k, v, heads, scale)?;
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
    let (p, grid) = plan(q, k, v, heads, scale)?;
    let out = gpu.empty(q.shape())?;
    let lse = gpu.empty(&[q.dim(0), heads, q.dim(1)])?;
    let kernel = Kernel::new(&shaders::ATTENTION, "attention_lse");
    gpu.dispatch(&kernel, &p, &[q, k, v], &[&out, &lse], grid)?;
    Ok((out, lse))
}

/// Checks the operands and returns the kernel parameters and grid.
fn plan(
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
    let u = |what, v| checked_u32(OP, what, v);
    let p = AttentionParams {
        tokens: u("tokens", n)?,
        channels: u("channels", c)?,
        heads: u("heads", heads)?,
        head_dim: u("head_dim", head_dim)?,
        chunks: u("chunks", chunks)?,
        tile_keys: u("tile_keys", tile_keys)?,
        scale,
    };
    Ok((p, [n.div_ceil(queries_per_group), b * heads, 1]))
}
