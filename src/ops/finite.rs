//! Non-finite detection on the GPU (finite.wgsl): which samples hold a NaN or ±Inf, and from
//! which step, recorded into a per-sample flag buffer that is read back with the batch.

use super::ensure;
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct FiniteParams for FINITE::Params {
        total: u32,
        row_len: u32,
        samples: u32,
        step: u32,
    }
}

/// The flag of a sample with no non-finite value yet (finite.wgsl's initial `first_step`).
pub const NO_STEP: u32 = u32::MAX;

/// A flag buffer for `samples` samples, every sample unflagged. It holds u32 values in an f32
/// tensor's buffer; read it back with [`decode_first_steps`].
pub fn non_finite_flags(gpu: &Gpu, samples: usize) -> Result<Tensor> {
    gpu.upload(&[samples], &vec![f32::from_bits(NO_STEP); samples])
}

/// The first step each sample went non-finite, from a read-back flag buffer.
pub fn decode_first_steps(flags: &[f32]) -> Vec<Option<usize>> {
    flags
        .iter()
        .map(|v| match v.to_bits() {
            NO_STEP => None,
            step => Some(step as usize),
        })
        .collect()
}

/// Records `step` for every sample of `first_step` (B) whose rows in `x` (k·B, …; row r is
/// sample r % B) hold a NaN or ±Inf, unless it recorded an earlier step.
pub fn record_non_finite(gpu: &Gpu, x: &Tensor, first_step: &Tensor, step: usize) -> Result<()> {
    const OP: &str = "record_non_finite";
    let samples = first_step.numel();
    let rows = x.shape().first().copied().unwrap_or(0);
    ensure(
        first_step.shape().len() == 1 && samples > 0 && rows % samples == 0,
        OP,
        || {
            format!(
                "x {:?} is not stacked rows of the {:?} flagged samples",
                x.shape(),
                first_step.shape()
            )
        },
    )?;
    let p = FiniteParams {
        total: checked_u32(OP, "total", x.numel())?,
        row_len: checked_u32(OP, "row_len", (x.numel() / rows.max(1)).max(1))?,
        samples: checked_u32(OP, "samples", samples)?,
        step: checked_u32(OP, "step", step)?.min(NO_STEP - 1),
    };
    let kernel = Kernel::new(&shaders::FINITE, "record_non_finite");
    gpu.dispatch(&kernel, &p, &[x], &[first_step], gpu.grid_1d(x.numel()))
}
