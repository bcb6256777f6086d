use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{shaders, Gpu, Kernel, Params, Tensor};

/// diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)` for t (B).
pub fn timestep_embedding(
    gpu: &Gpu,
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Result<Tensor> {
    let [b] = dims::<1>(timesteps, "timestep_embedding", "timesteps")?;
    ensure(dim >= 2, "timestep_embedding", || format!("dim {dim} < 2"))?;
    let out = gpu.empty(&[b, dim])?;
    let p = Params::new()
        .u(b)
        .u(dim)
        .f(freq_shift)
        .u(flip_sin_to_cos as usize)
        .f(10000f32.ln())
        .f(1.0);
    let kernel = Kernel::new(&shaders::EMBEDDING, "timestep_embedding");
    gpu.dispatch(
        &kernel,
        &p,
        &[timesteps],
        &[&out],
        [(b * dim).div_ceil(64) as u32, 1, 1],
    )?;
    Ok(out)
}

/// rows[b] = table[ids[b]] for a table (V, D) and integer-valued f32 ids (B). Ids must be < V
/// (checked by the caller, which knows them on the CPU).
pub fn embedding_lookup(gpu: &Gpu, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let [_, d] = dims::<2>(table, "embedding_lookup", "table")?;
    let [b] = dims::<1>(ids, "embedding_lookup", "ids")?;
    let out = gpu.empty(&[b, d])?;
    let p = Params::new().u(b).u(d).f(0.0).u(0).f(0.0).f(0.0);
    let kernel = Kernel::new(&shaders::EMBEDDING, "lookup");
    gpu.dispatch(
        &kernel,
        &p,
        &[table, ids],
        &[&out],
        [(b * d).div_ceil(64) as u32, 1, 1],
    )?;
    Ok(out)
}
