//! Typed wrappers over the WGSL kernels: each checks shapes, returns a new tensor and records
//! its dispatches into the open encoder. No op reads data back.

mod attention;
mod conv;
mod elementwise;
mod embedding;
mod matmul;
mod norm;
mod rng;
mod sampler;
mod uncertainty;

pub use attention::attention;
pub use conv::{conv2d, Conv2dArgs};
pub use elementwise::{
    add, add_channel_vec, affine, avg_pool2x, broadcast_lincomb, concat_channels, lincomb, mul,
    mul_channel_vec, repeat_batch, scale_shift, silu, transpose_last2, upsample_nearest2x,
};
pub use embedding::{embedding_lookup, timestep_embedding};
pub use matmul::{linear, matmul};
pub use norm::group_norm;
pub use rng::{normal, normal_copies, NoiseKey};
pub use sampler::{sampler_step, StepCoeffs};
pub use uncertainty::{sum_per_sample, uncertainty_map, UncertaintyMode};

use crate::error::{Error, Result};

pub(crate) fn shape_err(op: &'static str, msg: String) -> Error {
    Error::Shape { op, msg }
}

pub(crate) use crate::error::ensure;

/// Checks a tensor's rank and returns its dimensions.
pub(crate) fn dims<const R: usize>(
    t: &crate::gpu::Tensor,
    op: &'static str,
    what: &str,
) -> Result<[usize; R]> {
    <[usize; R]>::try_from(t.shape()).map_err(|_| {
        shape_err(
            op,
            format!("{what} must have rank {R}, got shape {:?}", t.shape()),
        )
    })
}
