//! Counter-based Gaussian noise, reproducible per sample (rng.wgsl).

use super::ensure;
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct RngParams for RNG::Params {
        seed_lo: u32,
        seed_hi: u32,
        tag_lo: u32,
        tag_hi: u32,
        row_start: u32,
        rows: u32,
        row_len: u32,
        rows_per_copy: u32,
    }
}

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
    let u = |what, v| checked_u32("normal", what, v);
    // The shader adds a row to row_start in u32, so the batch's last sample must fit too.
    let row_start = u("the first sample index", first_sample)?;
    let last = first_sample.saturating_add(per_copy.saturating_sub(1));
    u("the last sample index", last)?;
    let rows = per_copy.saturating_mul(copies);
    let row_len = shape[1..].iter().fold(1usize, |n, &d| n.saturating_mul(d));
    let mut out_shape = shape.to_vec();
    out_shape[0] = rows;
    let p = RngParams {
        seed_lo: key.seed as u32,
        seed_hi: (key.seed >> 32) as u32,
        tag_lo: key.tag as u32,
        tag_hi: (key.tag >> 32) as u32,
        row_start,
        rows: u("rows", rows)?,
        row_len: u("row_len", row_len)?,
        rows_per_copy: u("rows_per_copy", per_copy.max(1))?,
    };
    let out = gpu.empty(&out_shape)?;
    let kernel = Kernel::new(&shaders::RNG, "normal");
    // One thread per Philox4x32 block: four deviates of a row.
    let grid = gpu.grid_1d(rows * row_len.div_ceil(4));
    gpu.dispatch(&kernel, &p, &[], &[&out], grid)?;
    Ok(out)
}
