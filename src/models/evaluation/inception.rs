//! FID's Inception-V3 up to the 2048-d pool3 features: pytorch-fid's `InceptionV3` with
//! `use_fid_inception=True` — torchvision's Inception-V3 with the `FIDInceptionA/C/E` blocks,
//! whose branch pools are TensorFlow's (average pooling without the padded zeros; max pooling in
//! the last block).
//!
//! Every `BasicConv2d` (conv without bias → batch norm, eps 0.001 → ReLU) is one convolution with
//! bias and a fused ReLU: `tools/converters/fid_weights.py` folds each batch norm into its convolution.
//! Tensor names are pytorch-fid's module paths without `.conv`/`.bn`
//! (`Mixed_5b.branch1x1.weight`, `Mixed_5b.branch1x1.bias`), arch [`ARCH`].
//!
//! The network is fully convolutional up to its global average pool: it runs on any input of
//! at least 75×75 (torchvision's minimum); pytorch-fid resizes to [`INPUT_SIDE`] first.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::weights::WeightFile;
use crate::ops::{self, Conv2dArgs, ConvWeight, Pool2dArgs, PoolMode};
use crate::splitmix::SplitMix64;

/// The `arch` metadata of converted weights.
pub const ARCH: &str = "fid_inception_v3";
/// Feature dimension: the channels of the last block, averaged over space.
pub const FEATURES: usize = 2048;
/// The side pytorch-fid resizes every image to.
pub const INPUT_SIDE: usize = 299;
/// Bytes per image of the largest activation at a 299² input (Conv2d_2b_3x3's 64×147×147
/// output): what bounds the batch one GPU buffer holds.
pub const LARGEST_ACTIVATION_BYTES: usize = 64 * 147 * 147 * 4;
/// The smallest input side the stride-2 stages leave a pixel of.
pub const MIN_SIDE: usize = 75;

/// Conv + folded batch norm + ReLU.
pub struct BasicConv {
    weight: ConvWeight,
    bias: Tensor,
    stride: usize,
    /// (rows, columns) of zero padding on each side.
    pad: (usize, usize),
}

impl BasicConv {
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let args = Conv2dArgs {
            stride: self.stride,
            padding: self.pad.0,
            padding_w: Some(self.pad.1),
            relu: true,
            ..Default::default()
        };
        ops::conv2d_prepared(gpu, x, &self.weight, Some(&self.bias), args)
    }
}

/// Geometry of one [`BasicConv`]: output channels, kernel (rows, columns), stride, padding.
#[derive(Clone, Copy, Debug)]
struct ConvSpec {
    c_out: usize,
    kernel: (usize, usize),
    stride: usize,
    pad: (usize, usize),
}

const fn conv(
    c_out: usize,
    kernel: (usize, usize),
    stride: usize,
    pad: (usize, usize),
) -> ConvSpec {
    ConvSpec {
        c_out,
        kernel,
        stride,
        pad,
    }
}
/// 1×1, the branch openers.
const fn c1(c_out: usize) -> ConvSpec {
    conv(c_out, (1, 1), 1, (0, 0))
}
/// 3×3 with "same" padding.
const fn c3(c_out: usize) -> ConvSpec {
    conv(c_out, (3, 3), 1, (1, 1))
}
/// 3×3 stride 2 without padding, the reductions.
const fn c3s2(c_out: usize) -> ConvSpec {
    conv(c_out, (3, 3), 2, (0, 0))
}
/// 1×n with "same" padding along the row.
const fn c1n(c_out: usize, n: usize) -> ConvSpec {
    conv(c_out, (1, n), 1, (0, n / 2))
}
/// n×1 with "same" padding along the column.
const fn cn1(c_out: usize, n: usize) -> ConvSpec {
    conv(c_out, (n, 1), 1, (n / 2, 0))
}

/// Where parameters come from while the network is built: a weight file, or seeded random
/// values (for tests and benchmarks without the 95 MB checkpoint).
enum Source<'a> {
    File(crate::models::weights::VarBuilder<'a>),
    Random(SplitMix64),
}

/// Builds [`BasicConv`]s in module order, tracking each one's input channels.
struct Builder<'a> {
    gpu: &'a Gpu,
    source: Source<'a>,
}

impl Builder<'_> {
    fn conv(&mut self, name: &str, c_in: usize, spec: ConvSpec) -> Result<BasicConv> {
        let (kh, kw) = spec.kernel;
        let w_shape = [spec.c_out, c_in, kh, kw];
        let (weight, bias) = match &mut self.source {
            Source::File(vb) => (
                vb.get(&format!("{name}.weight"), &w_shape)?,
                vb.get(&format!("{name}.bias"), &[spec.c_out])?,
            ),
            Source::Random(rng) => {
                let (w, b) = random_conv(rng, &w_shape);
                (
                    self.gpu.upload(&w_shape, &w)?,
                    self.gpu.upload(&[spec.c_out], &b)?,
                )
            }
        };
        Ok(BasicConv {
            weight: ConvWeight::new(self.gpu, weight)?,
            bias,
            stride: spec.stride,
            pad: spec.pad,
        })
    }

    /// Convolutions applied one after another, named `{prefix}{suffix}`.
    fn chain(
        &mut self,
        prefix: &str,
        c_in: usize,
        convs: &[(&str, ConvSpec)],
    ) -> Result<Vec<BasicConv>> {
        let mut c = c_in;
        let mut out = Vec::with_capacity(convs.len());
        for (suffix, spec) in convs {
            out.push(self.conv(&format!("{prefix}.{suffix}"), c, *spec)?);
            c = spec.c_out;
        }
        Ok(out)
    }
}

/// The random parameters of one convolution: He-uniform weights U(−1, 1)·√(6 / fan-in), so
/// activations keep their scale through the ReLU stack, and biases U(−1, 1)·0.1, drawn in that
/// order from one SplitMix64 stream (tools/fixtures/fid.py draws the same numbers).
pub fn random_conv(rng: &mut SplitMix64, w_shape: &[usize; 4]) -> (Vec<f32>, Vec<f32>) {
    let fan_in = w_shape[1] * w_shape[2] * w_shape[3];
    let scale = (6.0 / fan_in as f64).sqrt();
    let weight = (0..w_shape.iter().product::<usize>())
        .map(|_| (rng.symmetric() * scale) as f32)
        .collect();
    let bias = (0..w_shape[0])
        .map(|_| (rng.symmetric() * 0.1) as f32)
        .collect();
    (weight, bias)
}

/// Runs `x` through `convs` in order.
fn run_chain(gpu: &Gpu, convs: &[BasicConv], x: &Tensor) -> Result<Tensor> {
    let mut h = convs[0].forward(gpu, x)?;
    for c in &convs[1..] {
        h = c.forward(gpu, &h)?;
    }
    Ok(h)
}

fn pool(
    gpu: &Gpu,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    mode: PoolMode,
) -> Result<Tensor> {
    ops::pool2d(
        gpu,
        x,
        Pool2dArgs {
            kernel,
            stride,
            padding,
            mode,
        },
    )
}

/// 3×3 stride-2 max pooling of the stem and the reduction blocks.
fn max_pool_s2(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    pool(gpu, x, 3, 2, 0, PoolMode::Max)
}

/// The branch pool of blocks A, C and E: 3×3 stride 1, "same" padding.
fn branch_pool(gpu: &Gpu, x: &Tensor, mode: PoolMode) -> Result<Tensor> {
    pool(gpu, x, 3, 1, 1, mode)
}

/// FIDInceptionA (Mixed_5b–d): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1.
struct BlockA {
    branch1x1: BasicConv,
    branch5x5: Vec<BasicConv>,
    branch3x3dbl: Vec<BasicConv>,
    branch_pool: BasicConv,
}

impl BlockA {
    fn load(b: &mut Builder, name: &str, c_in: usize, pool_features: usize) -> Result<BlockA> {
        Ok(BlockA {
            branch1x1: b.conv(&format!("{name}.branch1x1"), c_in, c1(64))?,
            branch5x5: b.chain(
                name,
                c_in,
                &[
                    ("branch5x5_1", c1(48)),
                    ("branch5x5_2", conv(64, (5, 5), 1, (2, 2))),
                ],
            )?,
            branch3x3dbl: b.chain(
                name,
                c_in,
                &[
                    ("branch3x3dbl_1", c1(64)),
                    ("branch3x3dbl_2", c3(96)),
                    ("branch3x3dbl_3", c3(96)),
                ],
            )?,
            branch_pool: b.conv(&format!("{name}.branch_pool"), c_in, c1(pool_features))?,
        })
    }

    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let pooled = branch_pool(gpu, x, PoolMode::AvgValid)?;
        ops::concat_channels(
            gpu,
            &[
                &self.branch1x1.forward(gpu, x)?,
                &run_chain(gpu, &self.branch5x5, x)?,
                &run_chain(gpu, &self.branch3x3dbl, x)?,
                &self.branch_pool.forward(gpu, &pooled)?,
            ],
        )
    }
}

/// InceptionB (Mixed_6a), a reduction: 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2.
struct BlockB {
    branch3x3: BasicConv,
    branch3x3dbl: Vec<BasicConv>,
}

impl BlockB {
    fn load(b: &mut Builder, name: &str, c_in: usize) -> Result<BlockB> {
        Ok(BlockB {
            branch3x3: b.conv(&format!("{name}.branch3x3"), c_in, c3s2(384))?,
            branch3x3dbl: b.chain(
                name,
                c_in,
                &[
                    ("branch3x3dbl_1", c1(64)),
                    ("branch3x3dbl_2", c3(96)),
                    ("branch3x3dbl_3", c3s2(96)),
                ],
            )?,
        })
    }

    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ops::concat_channels(
            gpu,
            &[
                &self.branch3x3.forward(gpu, x)?,
                &run_chain(gpu, &self.branch3x3dbl, x)?,
                &max_pool_s2(gpu, x)?,
            ],
        )
    }
}

/// FIDInceptionC (Mixed_6b–e): 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avg-pool→1×1.
struct BlockC {
    branch1x1: BasicConv,
    branch7x7: Vec<BasicConv>,
    branch7x7dbl: Vec<BasicConv>,
    branch_pool: BasicConv,
}

impl BlockC {
    fn load(b: &mut Builder, name: &str, c_in: usize, c7: usize) -> Result<BlockC> {
        Ok(BlockC {
            branch1x1: b.conv(&format!("{name}.branch1x1"), c_in, c1(192))?,
            branch7x7: b.chain(
                name,
                c_in,
                &[
                    ("branch7x7_1", c1(c7)),
                    ("branch7x7_2", c1n(c7, 7)),
                    ("branch7x7_3", cn1(192, 7)),
                ],
            )?,
            branch7x7dbl: b.chain(
                name,
                c_in,
                &[
                    ("branch7x7dbl_1", c1(c7)),
                    ("branch7x7dbl_2", cn1(c7, 7)),
                    ("branch7x7dbl_3", c1n(c7, 7)),
                    ("branch7x7dbl_4", cn1(c7, 7)),
                    ("branch7x7dbl_5", c1n(192, 7)),
                ],
            )?,
            branch_pool: b.conv(&format!("{name}.branch_pool"), c_in, c1(192))?,
        })
    }

    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let pooled = branch_pool(gpu, x, PoolMode::AvgValid)?;
        ops::concat_channels(
            gpu,
            &[
                &self.branch1x1.forward(gpu, x)?,
                &run_chain(gpu, &self.branch7x7, x)?,
                &run_chain(gpu, &self.branch7x7dbl, x)?,
                &self.branch_pool.forward(gpu, &pooled)?,
            ],
        )
    }
}

/// InceptionD (Mixed_7a), a reduction: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2.
struct BlockD {
    branch3x3: Vec<BasicConv>,
    branch7x7x3: Vec<BasicConv>,
}

impl BlockD {
    fn load(b: &mut Builder, name: &str, c_in: usize) -> Result<BlockD> {
        Ok(BlockD {
            branch3x3: b.chain(
                name,
                c_in,
                &[("branch3x3_1", c1(192)), ("branch3x3_2", c3s2(320))],
            )?,
            branch7x7x3: b.chain(
                name,
                c_in,
                &[
                    ("branch7x7x3_1", c1(192)),
                    ("branch7x7x3_2", c1n(192, 7)),
                    ("branch7x7x3_3", cn1(192, 7)),
                    ("branch7x7x3_4", c3s2(192)),
                ],
            )?,
        })
    }

    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ops::concat_channels(
            gpu,
            &[
                &run_chain(gpu, &self.branch3x3, x)?,
                &run_chain(gpu, &self.branch7x7x3, x)?,
                &max_pool_s2(gpu, x)?,
            ],
        )
    }
}

/// FIDInceptionE_1/E_2 (Mixed_7b, 7c): 1×1 | 1×1→(1×3 ‖ 3×1) | 1×1→3×3→(1×3 ‖ 3×1) |
/// pool→1×1, the pool averaging without padding in E_1 and taking the maximum in E_2.
struct BlockE {
    branch1x1: BasicConv,
    branch3x3_1: BasicConv,
    branch3x3_2: [BasicConv; 2],
    branch3x3dbl: Vec<BasicConv>,
    branch3x3dbl_3: [BasicConv; 2],
    branch_pool: BasicConv,
    pool_mode: PoolMode,
}

impl BlockE {
    fn load(b: &mut Builder, name: &str, c_in: usize, pool_mode: PoolMode) -> Result<BlockE> {
        let n = |suffix: &str| format!("{name}.{suffix}");
        Ok(BlockE {
            branch1x1: b.conv(&n("branch1x1"), c_in, c1(320))?,
            branch3x3_1: b.conv(&n("branch3x3_1"), c_in, c1(384))?,
            branch3x3_2: [
                b.conv(&n("branch3x3_2a"), 384, c1n(384, 3))?,
                b.conv(&n("branch3x3_2b"), 384, cn1(384, 3))?,
            ],
            branch3x3dbl: b.chain(
                name,
                c_in,
                &[("branch3x3dbl_1", c1(448)), ("branch3x3dbl_2", c3(384))],
            )?,
            branch3x3dbl_3: [
                b.conv(&n("branch3x3dbl_3a"), 384, c1n(384, 3))?,
                b.conv(&n("branch3x3dbl_3b"), 384, cn1(384, 3))?,
            ],
            branch_pool: b.conv(&n("branch_pool"), c_in, c1(192))?,
            pool_mode,
        })
    }

    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let a = self.branch3x3_1.forward(gpu, x)?;
        let d = run_chain(gpu, &self.branch3x3dbl, x)?;
        let pooled = branch_pool(gpu, x, self.pool_mode)?;
        ops::concat_channels(
            gpu,
            &[
                &self.branch1x1.forward(gpu, x)?,
                &self.branch3x3_2[0].forward(gpu, &a)?,
                &self.branch3x3_2[1].forward(gpu, &a)?,
                &self.branch3x3dbl_3[0].forward(gpu, &d)?,
                &self.branch3x3dbl_3[1].forward(gpu, &d)?,
                &self.branch_pool.forward(gpu, &pooled)?,
            ],
        )
    }
}

/// The network, from an input in [−1, 1] to its pool3 features.
pub struct FidInception {
    /// Conv2d_1a_3x3, 2a, 2b, (max-pool), 3b, 4a, (max-pool).
    stem: Vec<BasicConv>,
    mixed_5: [BlockA; 3],
    mixed_6a: BlockB,
    mixed_6: [BlockC; 4],
    mixed_7a: BlockD,
    mixed_7: [BlockE; 2],
}

impl FidInception {
    /// Loads weights converted by `tools/converters/fid_weights.py`.
    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<FidInception> {
        file.expect_arch(ARCH)?;
        let vb = file.var_builder(gpu);
        let net = FidInception::build(&mut Builder {
            gpu,
            source: Source::File(vb.clone()),
        })?;
        vb.finish()?;
        Ok(net)
    }

    /// The architecture with seeded random parameters (see [`random_conv`]).
    pub fn random(gpu: &Gpu, seed: u64) -> Result<FidInception> {
        FidInception::build(&mut Builder {
            gpu,
            source: Source::Random(SplitMix64::new(seed)),
        })
    }

    /// Every convolution in pytorch-fid's module (state-dict) order.
    fn build(b: &mut Builder) -> Result<FidInception> {
        let stem_specs = [
            ("Conv2d_1a_3x3", 3, conv(32, (3, 3), 2, (0, 0))),
            ("Conv2d_2a_3x3", 32, conv(32, (3, 3), 1, (0, 0))),
            ("Conv2d_2b_3x3", 32, c3(64)),
            ("Conv2d_3b_1x1", 64, c1(80)),
            ("Conv2d_4a_3x3", 80, conv(192, (3, 3), 1, (0, 0))),
        ];
        let stem = stem_specs
            .into_iter()
            .map(|(name, c_in, spec)| b.conv(name, c_in, spec))
            .collect::<Result<Vec<_>>>()?;
        Ok(FidInception {
            stem,
            mixed_5: [
                BlockA::load(b, "Mixed_5b", 192, 32)?,
                BlockA::load(b, "Mixed_5c", 256, 64)?,
                BlockA::load(b, "Mixed_5d", 288, 64)?,
            ],
            mixed_6a: BlockB::load(b, "Mixed_6a", 288)?,
            mixed_6: [
                BlockC::load(b, "Mixed_6b", 768, 128)?,
                BlockC::load(b, "Mixed_6c", 768, 160)?,
                BlockC::load(b, "Mixed_6d", 768, 160)?,
                BlockC::load(b, "Mixed_6e", 768, 192)?,
            ],
            mixed_7a: BlockD::load(b, "Mixed_7a", 768)?,
            mixed_7: [
                BlockE::load(b, "Mixed_7b", 1280, PoolMode::AvgValid)?,
                BlockE::load(b, "Mixed_7c", 2048, PoolMode::Max)?,
            ],
        })
    }

    /// pool3 features (B, 2048) of `x` (B, 3, H, W) in [−1, 1], H and W ≥ [`MIN_SIDE`].
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape();
        if shape.len() != 4 || shape[1] != 3 || shape[2] < MIN_SIDE || shape[3] < MIN_SIDE {
            return Err(Error::Invalid(format!(
                "FID Inception takes (B, 3, H, W) with H, W ≥ {MIN_SIDE}, got {shape:?}"
            )));
        }
        let mut h = run_chain(gpu, &self.stem[..3], x)?;
        h = max_pool_s2(gpu, &h)?;
        h = run_chain(gpu, &self.stem[3..], &h)?;
        h = max_pool_s2(gpu, &h)?;
        for block in &self.mixed_5 {
            h = block.forward(gpu, &h)?;
        }
        h = self.mixed_6a.forward(gpu, &h)?;
        for block in &self.mixed_6 {
            h = block.forward(gpu, &h)?;
        }
        h = self.mixed_7a.forward(gpu, &h)?;
        for block in &self.mixed_7 {
            h = block.forward(gpu, &h)?;
        }
        ops::global_avg_pool(gpu, &h)
    }
}
