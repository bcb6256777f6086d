//! Typed wrappers over the WGSL kernels: each checks shapes, returns a new tensor and records
//! its dispatches into the open encoder. No op reads data back.

mod attention;
mod conv;
mod elementwise;
mod embedding;
mod finite;
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
pub use finite::{decode_first_steps, non_finite_flags, record_non_finite, NO_STEP};
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

/// Every host-side mirror of a shader declaration is held to the shader as naga parses it, so
/// each value is defined once and a change on one side fails here rather than on the GPU.
#[cfg(test)]
mod tests {
    use super::elementwise::{BinaryOp, ChannelOp, UnaryOp};
    use super::*;
    use crate::gpu::{shaders, wgsl, Shader, LINEAR_WORKGROUP};

    #[test]
    fn parameter_structs_mirror_the_wgsl_structs() {
        wgsl::assert_params_mirror::<attention::AttentionParams>();
        wgsl::assert_params_mirror::<conv::ConvParams>();
        wgsl::assert_params_mirror::<elementwise::ElementwiseParams>();
        wgsl::assert_params_mirror::<elementwise::ResampleParams>();
        wgsl::assert_params_mirror::<embedding::EmbeddingParams>();
        wgsl::assert_params_mirror::<finite::FiniteParams>();
        wgsl::assert_params_mirror::<matmul::MatmulParams>();
        wgsl::assert_params_mirror::<norm::GroupNormParams>();
        wgsl::assert_params_mirror::<rng::RngParams>();
        wgsl::assert_params_mirror::<sampler::SamplerParams>();
        wgsl::assert_params_mirror::<uncertainty::MapParams>();
        wgsl::assert_params_mirror::<uncertainty::SumParams>();
    }

    #[test]
    fn host_constants_match_the_shaders() {
        use UncertaintyMode as Mode;
        let wg = LINEAR_WORKGROUP as u64;
        let mode = |m| uncertainty::mode_code(m).into();
        let checks: [(&Shader, &[(&str, u64)]); 10] = [
            // Workgroup sizes and tiles the host sizes its grids by, and the operation
            // selectors it passes as the `OP` and `MODE` overrides.
            (
                &shaders::ELEMENTWISE,
                &[
                    ("WG", wg),
                    ("UNARY_SILU", UnaryOp::Silu as u64),
                    ("UNARY_AFFINE", UnaryOp::Affine as u64),
                    ("BINARY_LINCOMB", BinaryOp::Lincomb as u64),
                    ("BINARY_MUL", BinaryOp::Mul as u64),
                    ("CHANNEL_ADD", ChannelOp::Add as u64),
                    ("CHANNEL_MUL", ChannelOp::Mul as u64),
                ],
            ),
            (
                &shaders::UNCERTAINTY,
                &[
                    ("WG", wg),
                    ("MODE_CENTRED", mode(Mode::Centred)),
                    ("MODE_VARIANCE", mode(Mode::Variance)),
                    ("MODE_VARIANCE_BIASED", mode(Mode::VarianceBiased)),
                ],
            ),
            (&shaders::RESAMPLE, &[("WG", wg)]),
            (&shaders::RNG, &[("WG", wg)]),
            (&shaders::SAMPLER, &[("WG", wg)]),
            (&shaders::FINITE, &[("WG", wg)]),
            (
                &shaders::GROUP_NORM,
                &[("WG", wg), ("FINALIZE_WG", norm::FINALIZE_WG as u64)],
            ),
            (&shaders::EMBEDDING, &[("WG", embedding::WG as u64)]),
            (&shaders::MATMUL, &[("TILE", matmul::TILE as u64)]),
            (
                &shaders::ATTENTION,
                &[
                    ("WG", attention::WG as u64),
                    ("CHUNK", attention::CHUNK as u64),
                    ("MAX_TILE_KEYS", attention::MAX_TILE_KEYS as u64),
                    ("KV_CAP", attention::KV_CAP as u64),
                ],
            ),
        ];
        for (shader, constants) in checks {
            for &(name, host) in constants {
                let wgsl = wgsl::constant(shader, name);
                assert_eq!(wgsl, host, "{}::{name}", shader.name);
            }
        }
    }
}
