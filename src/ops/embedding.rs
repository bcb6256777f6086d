//! Sinusoidal timestep embeddings and table look-ups (embedding.wgsl).

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct EmbeddingParams for EMBEDDING::Params {
        batch: u32,
        dim: u32,
        freq_shift: f32,
        flip: u32,
        log_max_period: f32,
        scale: f32,
    }
}

/// embedding.wgsl's `WG`: threads per workgroup, one per output element.
pub(super) const WG: usize = 64;

/// One launch of `entry` over the `batch · dim` output elements.
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    p: &EmbeddingParams,
    inputs: &[&Tensor],
    out: &Tensor,
) -> Result<()> {
    let kernel = Kernel::new(&shaders::EMBEDDING, entry);
    gpu.dispatch(&kernel, p, inputs, &[out], [out.numel().div_ceil(WG), 1, 1])
}

/// diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)` for t (B).
pub fn timestep_embedding(
    gpu: &Gpu,
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Result<Tensor> {
    const OP: &str = "timestep_embedding";
    let [b] = dims::<1>(timesteps, OP, "timesteps")?;
    ensure(dim >= 2, OP, || format!("dim {dim} < 2"))?;
    let p = EmbeddingParams {
        batch: checked_u32(OP, "batch", b)?,
        dim: checked_u32(OP, "dim", dim)?,
        freq_shift,
        flip: flip_sin_to_cos as u32,
        log_max_period: 10000f32.ln(),
        scale: 1.0,
    };
    let out = gpu.empty(&[b, dim])?;
    launch(gpu, "timestep_embedding", &p, &[timesteps], &out)?;
    Ok(out)
}

/// `rows[b] = table[ids[b]]` for a table (V, D) and integer-valued f32 ids (B). Ids must be < V
/// (checked by the caller, which knows them on the CPU).
pub fn embedding_lookup(gpu: &Gpu, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding_lookup";
    let [_, d] = dims::<2>(table, OP, "table")?;
    let [b] = dims::<1>(ids, OP, "ids")?;
    let p = EmbeddingParams {
        batch: checked_u32(OP, "batch", b)?,
        dim: checked_u32(OP, "dim", d)?,
        ..Default::default()
    };
    let out = gpu.empty(&[b, d])?;
    launch(gpu, "lookup", &p, &[table, ids], &out)?;
    Ok(out)
}
