use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{shaders, Gpu, Kernel, Params, Tensor};

// Must match attention.wgsl.
const WG: usize = 64;
const CHUNK: usize = 64;
const MAX_TILE_KEYS: usize = 16;
const KV_CAP: usize = 1536;

/// softmax(Q·Kᵀ·scale)·V per head for token-major q, k, v of shape (B, N, heads·D).
pub fn attention(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
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
    let out = gpu.empty(q.shape())?;
    let p = Params::new()
        .u(n)
        .u(c)
        .u(heads)
        .u(head_dim)
        .u(chunks)
        .u(tile_keys)
        .f(scale);
    let kernel = Kernel::new(&shaders::ATTENTION, "attention");
    gpu.dispatch(
        &kernel,
        &p,
        &[q, k, v],
        &[&out],
        [n.div_ceil(queries_per_group) as u32, (b * heads) as u32, 1],
    )?;
    Ok(out)
}
