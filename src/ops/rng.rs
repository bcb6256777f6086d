use super::ensure;
use crate::error::Result;
use crate::gpu::{shaders, Gpu, Kernel, Params, Tensor};

/// What a noise tensor is for: with the seed, it fixes the Philox counter stream.
/// `tag` should encode (purpose, step, m); rows are sample indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseKey {
    pub seed: u64,
    pub tag: u64,
}

/// Standard normal noise of `shape`, whose first axis is the sample axis: row r is sample
/// `first_sample + r`, so its values do not depend on how samples are batched.
pub fn normal(gpu: &Gpu, shape: &[usize], key: NoiseKey, first_sample: usize) -> Result<Tensor> {
    ensure(!shape.is_empty(), "normal", || {
        "shape must have a sample axis".into()
    })?;
    let rows = shape[0];
    let row_len: usize = shape[1..].iter().product();
    let out = gpu.empty(shape)?;
    let p = Params::new()
        .u(key.seed as u32 as usize)
        .u((key.seed >> 32) as usize)
        .u(key.tag as u32 as usize)
        .u((key.tag >> 32) as usize)
        .u(first_sample)
        .u(rows)
        .u(row_len);
    let kernel = Kernel::new(&shaders::RNG, "normal");
    gpu.dispatch(
        &kernel,
        &p,
        &[],
        &[&out],
        gpu.grid_1d(rows * row_len.div_ceil(4), 256),
    )?;
    Ok(out)
}
