//! Typed wrappers over the WGSL kernels: each checks shapes, returns a new tensor and records
//! its dispatches into the open encoder. No op reads data back, except [`quantiles`], the
//! read-back of per-sample thresholds that must be numbers.

mod attention;
mod attention_grad;
mod conv;
mod conv_grad;
mod cross_attention;
mod elementwise;
mod elementwise_grad;
mod embedding;
mod finite;
mod guidance;
mod matmul;
mod noise_scale;
mod norm;
mod norm_grad;
mod pool;
mod resize;
mod rng;
mod sampler;
mod select;
mod uncertainty;

pub use attention::{attention, attention_saving};
pub use attention_grad::{attention_grad, AttentionSaved};
pub use conv::{
    conv2d, conv2d_prepared, plan_conv2d, Conv2dArgs, ConvLaunch, ConvProblem, ConvVariant,
    ConvWeight,
};
pub use conv_grad::{conv2d_input_grad, plan_conv2d_input_grad, ConvGradProblem, ConvGradVariant};
pub use cross_attention::{
    cross_attention, cross_attention_query_grad, cross_attention_saving, AttentionMask,
};
pub use elementwise::{
    add, add_channel_vec, affine, avg_pool2x, broadcast_lincomb, concat_channels, geglu, gelu,
    lincomb, mul, mul_channel_vec, quick_gelu, repeat_batch, scale_shift, silu, slice_channels,
    to_f32, to_half, transpose_last2, upsample_nearest2x,
};
pub use elementwise_grad::{
    geglu_grad, gelu_grad, quick_gelu_grad, silu_grad, upsample_nearest2x_grad,
};
pub use embedding::{
    embedding_lookup, embedding_lookup_blocks, timestep_embedding, timestep_frequencies,
};
pub use finite::{decode_first_steps, non_finite_flags, record_non_finite, NO_STEP};
pub use guidance::{gradient_cotangent, masked_update, posterior, sum_copies, MaskedRule};
pub use matmul::{
    linear, linear_input_grad, linear_input_grad_prepared, linear_prepared, matmul, plan_matmul,
    LinearWeight, MatmulLaunch, MatmulProblem,
};
pub use noise_scale::{dropout, dropout_threshold, learned_range_noise, normal_quantile};
pub use norm::{group_norm, group_norm_saving, layer_norm, layer_norm_saving};
pub use norm_grad::{group_norm_input_grad, layer_norm_input_grad};
pub use pool::{global_avg_pool, pool2d, Pool2dArgs, PoolMode};
pub use resize::resize_bilinear;
pub use rng::{normal, normal_copies, NoiseKey};
pub use sampler::{sampler_step, StepCoeffs};
pub use select::{
    order_statistics, quantile_per_sample, quantile_per_sample_with, quantiles, SelectPath,
};
pub use uncertainty::{stein_map, sum_per_sample, uncertainty_map, UncertaintyMode};

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
    use super::elementwise_grad::Activation;
    use super::*;
    use crate::gpu::{shaders, wgsl, Shader, LINEAR_WORKGROUP};

    /// Every `act` read and write typechecks with activations stored as f16 as well as f32.
    #[test]
    fn every_shader_parses_in_both_activation_types() {
        for shader in shaders::ALL {
            for half in [false, true] {
                wgsl::parse_variant(shader, half);
            }
        }
    }

    #[test]
    fn parameter_structs_mirror_the_wgsl_structs() {
        wgsl::assert_params_mirror::<attention::AttentionParams>();
        wgsl::assert_params_mirror::<conv::ConvParams>();
        wgsl::assert_params_mirror::<conv::StageParams>();
        wgsl::assert_params_mirror::<elementwise::ElementwiseParams>();
        wgsl::assert_params_mirror::<elementwise::ResampleParams>();
        wgsl::assert_params_mirror::<embedding::EmbeddingParams>();
        wgsl::assert_params_mirror::<guidance::GuidanceParams>();
        wgsl::assert_params_mirror::<finite::FiniteParams>();
        wgsl::assert_params_mirror::<matmul::MatmulParams>();
        wgsl::assert_params_mirror::<noise_scale::NoiseScaleParams>();
        wgsl::assert_params_mirror::<norm::GroupNormParams>();
        wgsl::assert_params_mirror::<pool::PoolParams>();
        wgsl::assert_params_mirror::<resize::ResizeParams>();
        wgsl::assert_params_mirror::<rng::RngParams>();
        wgsl::assert_params_mirror::<sampler::SamplerParams>();
        wgsl::assert_params_mirror::<select::SelectParams>();
        wgsl::assert_params_mirror::<uncertainty::MapParams>();
        wgsl::assert_params_mirror::<uncertainty::SumParams>();
        wgsl::assert_params_mirror::<uncertainty::SteinParams>();
        wgsl::assert_params_mirror::<attention_grad::AttentionGradParams>();
        wgsl::assert_params_mirror::<conv_grad::ConvGradParams>();
        wgsl::assert_params_mirror::<conv_grad::FlipParams>();
        wgsl::assert_params_mirror::<conv_grad::DilateParams>();
        wgsl::assert_params_mirror::<elementwise_grad::ElementwiseGradParams>();
        wgsl::assert_params_mirror::<norm_grad::GroupNormGradParams>();
    }

    #[test]
    fn host_constants_match_the_shaders() {
        use UncertaintyMode as Mode;
        let wg = LINEAR_WORKGROUP as u64;
        let mode = |m| uncertainty::mode_code(m).into();
        let checks: [(&Shader, &[(&str, u64)]); 21] = [
            // Workgroup sizes and tiles the host sizes its grids by, and the operation
            // selectors it passes as the `OP` and `MODE` overrides.
            (
                &shaders::ELEMENTWISE,
                &[
                    ("WG", wg),
                    ("UNARY_SILU", UnaryOp::Silu as u64),
                    ("UNARY_AFFINE", UnaryOp::Affine as u64),
                    ("UNARY_GELU", UnaryOp::Gelu as u64),
                    ("UNARY_QUICK_GELU", UnaryOp::QuickGelu as u64),
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
                    ("MODE_TYPICALITY", mode(Mode::Typicality)),
                    ("MODE_POSTERIOR_VARIANCE", mode(Mode::PosteriorVariance)),
                    ("MODE_RESIDUAL", mode(Mode::Residual)),
                ],
            ),
            (
                &shaders::GUIDANCE,
                &[
                    ("WG", wg),
                    ("RULE_ADD", guidance::MaskedRule::Add as u64),
                    ("RULE_REPLACE", guidance::MaskedRule::Replace as u64),
                    (
                        "THRESHOLD_PER_SAMPLE",
                        guidance::ThresholdKind::PerSample as u64,
                    ),
                    (
                        "THRESHOLD_PER_ELEMENT",
                        guidance::ThresholdKind::PerElement as u64,
                    ),
                ],
            ),
            (&shaders::RESAMPLE, &[("WG", wg)]),
            (&shaders::RESIZE, &[("WG", wg)]),
            (
                &shaders::POOL,
                &[
                    ("WG", wg),
                    ("MODE_MAX", PoolMode::Max as u64),
                    ("MODE_AVG", PoolMode::Avg as u64),
                    ("MODE_AVG_VALID", PoolMode::AvgValid as u64),
                ],
            ),
            (&shaders::RNG, &[("WG", wg)]),
            (&shaders::NOISE_SCALE, &[("WG", wg)]),
            (&shaders::SAMPLER, &[("WG", wg)]),
            // Scratch buffer sizes: a histogram and a search state per row.
            (
                &shaders::SELECT,
                &[
                    ("BINS", select::BINS as u64),
                    ("PASSES", select::PASSES as u64),
                    ("STATE_WORDS", select::STATE_WORDS as u64),
                ],
            ),
            (&shaders::FINITE, &[("WG", wg)]),
            (&shaders::SOFTMAX, &[("WG", wg)]),
            (
                &shaders::GROUP_NORM,
                &[("WG", wg), ("FINALIZE_WG", norm::FINALIZE_WG as u64)],
            ),
            (&shaders::EMBEDDING, &[("WG", embedding::WG as u64)]),
            (
                &shaders::MATMUL,
                &[
                    ("TILE_K", crate::gpu::TILE_K as u64),
                    ("WG", wg),
                    ("BLOCK_ROWS", matmul::BLOCK_ROWS as u64),
                    ("BLOCK_COLS", matmul::BLOCK_COLS as u64),
                    ("VEC4_COLS", matmul::VEC4_COLS as u64),
                    ("BLOCKED_WG", matmul::BLOCKED_WG as u64),
                ],
            ),
            (
                &shaders::ATTENTION,
                &[
                    ("WG", attention::WG as u64),
                    ("CHUNK", attention::CHUNK as u64),
                    ("MAX_TILE_KEYS", attention::MAX_TILE_KEYS as u64),
                    ("KV_CAP", attention::KV_CAP as u64),
                    ("LINEAR_WG", wg),
                ],
            ),
            (
                &shaders::ATTENTION_GRAD,
                &[
                    ("WG", attention_grad::WG as u64),
                    ("CHUNK", attention_grad::CHUNK as u64),
                    ("MAX_TILE_ROWS", attention_grad::MAX_TILE_ROWS as u64),
                    ("TILE_CAP", attention_grad::TILE_CAP as u64),
                    ("ROW_WG", attention_grad::ROW_WG as u64),
                    ("LINEAR_WG", wg),
                ],
            ),
            (
                &shaders::CONV2D_GRAD,
                &[
                    ("TILE_M", conv_grad::WIDE_TILE as u64),
                    ("TILE_K", crate::gpu::TILE_K as u64),
                    ("LINEAR_WG", wg),
                ],
            ),
            (
                &shaders::CONV2D,
                &[
                    ("TILE_K", crate::gpu::TILE_K as u64),
                    ("WG", wg),
                    ("BLOCK_ROWS", conv::BLOCK_ROWS as u64),
                    ("ROW16_TAPS", conv::ROW16_TAPS as u64),
                    ("BLOCK_PIXELS", conv::BLOCK_PIXELS as u64),
                    ("ROW16_PIXELS", conv::ROW16_PIXELS as u64),
                    ("BLOCKED_WG", conv::BLOCKED_WG as u64),
                ],
            ),
            (
                &shaders::GROUP_NORM_GRAD,
                &[("WG", wg), ("FINALIZE_WG", norm::FINALIZE_WG as u64)],
            ),
            (
                &shaders::ELEMENTWISE_GRAD,
                &[
                    ("WG", wg),
                    ("ACTIVATION_SILU", Activation::Silu as u64),
                    ("ACTIVATION_GELU", Activation::Gelu as u64),
                    ("ACTIVATION_QUICK_GELU", Activation::QuickGelu as u64),
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
