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
    normal_copies(gpu, shape, 1, key, first_sample)
}

/// `copies` independent draws of [`normal`] stacked along the first axis: copy m uses the tag
/// `key.tag + (m << 32)`, so it equals `normal(shape, NoiseKey { tag: key.tag + (m << 32), .. })`.
pub fn normal_copies(
    gpu: &Gpu,
    shape: &[usize],
    copies: usize,
    key: NoiseKey,
    first_sample: usize,
) -> Result<Tensor> {
    ensure(!shape.is_empty() && copies > 0, "normal", || {
        "shape must have a sample axis and at least one copy".into()
    })?;
    let per_copy = shape[0];
    let rows = per_copy * copies;
    let row_len: usize = shape[1..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape[0] = rows;
    let out = gpu.empty(&out_shape)?;
    let p = Params::new()
        .u(key.seed as u32 as usize)
        .u((key.seed >> 32) as usize)
        .u(key.tag as u32 as usize)
        .u((key.tag >> 32) as usize)
        .u(first_sample)
        .u(rows)
        .u(row_len)
        .u(per_copy.max(1));
    let kernel = Kernel::new(&shaders::RNG, "normal");
    let grid = gpu.grid_1d(rows * row_len.div_ceil(4), 256);
    gpu.dispatch(&kernel, &p, &[], &[&out], grid)?;
    Ok(out)
}
