//! Sinusoidal timestep embeddings and table look-ups (embedding.wgsl).

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct EmbeddingParams for EMBEDDING::Params {
        batch: u32,
        dim: u32,
        flip: u32,
        first: u32,
        rows: u32,
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

/// The dim/2 frequencies of a sinusoidal timestep embedding, freq_i = exp(−ln(10000)·i /
/// (dim/2 − shift)), as the f32 values diffusers and guided-diffusion compute: the exponent in f32
/// arithmetic, its exponential rounded once. Made on the host, once per model: a GPU's `exp` may
/// be a few ulps off, which t ≈ 1000 turns into ~1e-4 of phase.
pub fn timestep_frequencies(gpu: &Gpu, dim: usize, freq_shift: f32) -> Result<Tensor> {
    const OP: &str = "timestep_embedding";
    ensure(dim >= 2, OP, || format!("dim {dim} < 2"))?;
    let half = dim / 2;
    ensure(half as f32 != freq_shift, OP, || {
        format!("dim {dim} with frequency shift {freq_shift} divides by zero")
    })?;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            // −ln(10000) enters as PyTorch casts a Python float: rounded to f32 once.
            let exponent = -(10000f64.ln() as f32) * i as f32 / (half as f32 - freq_shift);
            (exponent as f64).exp() as f32
        })
        .collect();
    gpu.upload(&[half], &freqs)
}

/// diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)` for t (B),
/// with `freqs` from [`timestep_frequencies`] for that dim and shift.
pub fn timestep_embedding(
    gpu: &Gpu,
    timesteps: &Tensor,
    freqs: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
) -> Result<Tensor> {
    const OP: &str = "timestep_embedding";
    let [b] = dims::<1>(timesteps, OP, "timesteps")?;
    let [half] = dims::<1>(freqs, OP, "freqs")?;
    ensure(half == dim / 2 && half > 0, OP, || {
        format!("{half} frequencies for dim {dim}")
    })?;
    let p = EmbeddingParams {
        batch: checked_u32(OP, "batch", b)?,
        dim: checked_u32(OP, "dim", dim)?,
        flip: flip_sin_to_cos as u32,
        ..Default::default()
    };
    let out = gpu.empty(&[b, dim])?;
    launch(gpu, "timestep_embedding", &p, &[timesteps, freqs], &out)?;
    Ok(out)
}

/// `rows[b] = table[ids[b]]` for a table (V, D) and integer-valued f32 ids (B). Ids must be < V
/// (checked by the caller, which knows them on the CPU).
pub fn embedding_lookup(gpu: &Gpu, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    embedding_lookup_blocks(gpu, &[(0, table)], ids)
}

/// [`embedding_lookup`] for a table held as blocks of consecutive rows, (first row, block (R, D)),
/// covering every id: a table larger than one storage binding (CLIP's 49,408 × 768 tokens on a
/// 128 MiB device).
pub fn embedding_lookup_blocks(
    gpu: &Gpu,
    blocks: &[(usize, &Tensor)],
    ids: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "embedding_lookup";
    let [b] = dims::<1>(ids, OP, "ids")?;
    let d = match blocks.first() {
        Some((_, table)) => dims::<2>(table, OP, "table")?[1],
        None => return Err(super::shape_err(OP, "a table of no blocks".into())),
    };
    let out = gpu.empty(&[b, d])?;
    for &(first, table) in blocks {
        let [rows, block_d] = dims::<2>(table, OP, "table")?;
        ensure(block_d == d, OP, || {
            format!("table blocks of widths {d} and {block_d}")
        })?;
        let p = EmbeddingParams {
            batch: checked_u32(OP, "batch", b)?,
            dim: checked_u32(OP, "dim", d)?,
            first: checked_u32(OP, "first row", first)?,
            rows: checked_u32(OP, "rows", rows)?,
            ..Default::default()
        };
        launch(gpu, "lookup", &p, &[table, ids], &out)?;
    }
    Ok(out)
}
