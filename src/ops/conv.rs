//! 2-D convolution with a fused bias/residual/ReLU epilogue (conv2d.wgsl).

use super::{dims, ensure};
use crate::error::{Error, Result};
use crate::gpu::{
    checked_u32, kernel_params, shaders, DType, GemmTiling, Gpu, Kernel, KernelClass, PlanTarget,
    Tensor, F16_WEIGHTS, TILE_K,
};

kernel_params! {
    pub(super) struct ConvParams for CONV2D::Params {
        batch: u32,
        c_in: u32,
        h: u32,
        w: u32,
        c_out: u32,
        h_out: u32,
        w_out: u32,
        out_scale: f32,
        c_in_pad: u32,
        m_pad: u32,
        k_chunk: u32,
        splits: u32,
    }
}

kernel_params! {
    pub(super) struct StageParams for CONV2D::StageParams {
        c_out: u32,
        c_in: u32,
        taps: u32,
        c_in_pad: u32,
        m_pad: u32,
        total: u32,
    }
}

/// conv2d.wgsl's `BLOCK_ROWS` and `BLOCK_PIXELS`: output channels and pixels (along a row) one
/// invocation of `conv2d_blocked` computes (the channels: [`crate::gpu::BLOCKED_ROWS`], which
/// row sharing divides).
pub(super) const BLOCK_ROWS: usize = crate::gpu::BLOCKED_ROWS as usize;
pub(super) const BLOCK_PIXELS: usize = 8;
/// conv2d.wgsl's `ROW16_PIXELS`: pixels along a row one invocation of `conv2d_blocked_row16`
/// computes.
pub(super) const ROW16_PIXELS: usize = 16;
/// conv2d.wgsl's `ROW16_TAPS`: the taps of a kernel row `conv2d_blocked_row16` writes out.
pub(super) const ROW16_TAPS: usize = 3;
/// conv2d.wgsl's `BLOCKED_WG`: invocations per workgroup of `conv2d_blocked`.
pub(super) const BLOCKED_WG: usize = crate::gpu::BLOCKED_ROWS as usize;

/// Loop iterations `conv2d_blocked` counts per input channel against
/// [`Gpu::max_loop_iterations`]: the channel loop, the tap-row loop and its tap-column loops
/// (the driver unrolls the constant 4- and 8-trip loops inside).
fn blocked_iterations_per_channel(kh: usize, kw: usize) -> usize {
    1 + kh * (1 + kw)
}

/// The most input channels `conv2d_blocked`'s loop takes on this device (None: no budget). The
/// deepest single convolution here (ADM-64's 1536 channels, 3×3) needs about 20,000 of
/// llvmpipe's 32,768 iterations; deeper ones are split ([`ConvWeight`]).
fn max_blocked_channels(gpu: &Gpu, kh: usize, kw: usize) -> Option<usize> {
    gpu.max_loop_iterations()
        .map(|budget| budget / blocked_iterations_per_channel(kh, kw))
}

/// Refuses an input-channel count whose loop would overrun the device's loop budget (llvmpipe
/// would silently cut it short): a weight prepared for another device.
fn check_depth(gpu: &Gpu, c_in: usize, kh: usize, kw: usize) -> Result<()> {
    match max_blocked_channels(gpu, kh, kw) {
        Some(max_c_in) if c_in > max_c_in => Err(Error::Invalid(format!(
            "{OP}: {c_in} input channels with a {kh}x{kw} kernel exceed {max_c_in}, the most \
             this device ({}) runs in one invocation's loop (its driver ends loops after {} \
             counted iterations, with a margin)",
            gpu.info.name,
            gpu.max_loop_iterations().unwrap_or(0)
        ))),
        _ => Ok(()),
    }
}

/// Geometry and fused epilogue of a [`conv2d`].
#[derive(Clone, Copy, Debug)]
pub struct Conv2dArgs<'a> {
    pub stride: usize,
    /// Zero padding on every side, or above and below only when `padding_w` is set.
    pub padding: usize,
    /// Zero padding left and right when it differs from `padding` (a 1×7 kernel pads (0, 3)).
    pub padding_w: Option<usize>,
    /// Extra zero padding on the bottom and right only (diffusers' Downsample2D with padding 0
    /// pads (0, 1, 0, 1) before a stride-2 convolution).
    pub pad_bottom_right: usize,
    /// Fused `(conv + bias + residual) * out_scale`; `residual` has the output's shape.
    pub residual: Option<&'a Tensor>,
    pub out_scale: f32,
    /// Fused `max(·, 0)` after everything else (Inception's BasicConv2d).
    pub relu: bool,
}

impl Default for Conv2dArgs<'_> {
    fn default() -> Self {
        Conv2dArgs {
            stride: 1,
            padding: 0,
            padding_w: None,
            pad_bottom_right: 0,
            residual: None,
            out_scale: 1.0,
            relu: false,
        }
    }
}

impl<'a> Conv2dArgs<'a> {
    pub fn padded(padding: usize) -> Self {
        Conv2dArgs {
            padding,
            ..Default::default()
        }
    }

    /// Padding (rows, columns) on each side.
    fn pad_hw(&self) -> (usize, usize) {
        (self.padding, self.padding_w.unwrap_or(self.padding))
    }
}

const OP: &str = "conv2d";

/// Checks the operands of a [`conv2d`] against each other and returns the output's shape.
fn output_shape(
    x: &Tensor,
    weight_shape: [usize; 4],
    bias: Option<&Tensor>,
    args: &Conv2dArgs,
) -> Result<[usize; 4]> {
    let [b, c_in, h, w] = dims::<4>(x, OP, "input")?;
    let [c_out, wc_in, kh, kw] = weight_shape;
    // The weight may be f16, and so may the activations (input, residual, output) together;
    // the bias stays f32.
    bias.map_or(Ok(()), |t| t.ensure_f32(OP))?;
    if let Some(r) = args.residual {
        ensure(r.dtype() == x.dtype(), OP, || {
            format!("residual {r:?} and input {x:?} differ in storage type")
        })?;
    }
    ensure(wc_in == c_in, OP, || {
        format!(
            "weight {weight_shape:?} expects {wc_in} input channels, input {:?} has {c_in}",
            x.shape()
        )
    })?;
    ensure(args.stride >= 1, OP, || "stride must be ≥ 1".into())?;
    let (pad_h, pad_w) = args.pad_hw();
    let h_padded = h + 2 * pad_h + args.pad_bottom_right;
    let w_padded = w + 2 * pad_w + args.pad_bottom_right;
    ensure(h_padded >= kh && w_padded >= kw, OP, || {
        format!("kernel {kh}x{kw} larger than padded input {h_padded}x{w_padded}")
    })?;
    if let Some(bias) = bias {
        ensure(bias.shape() == [c_out], OP, || {
            format!("bias {:?} must be [{c_out}]", bias.shape())
        })?;
    }
    let h_out = (h_padded - kh) / args.stride + 1;
    let w_out = (w_padded - kw) / args.stride + 1;
    if let Some(r) = args.residual {
        ensure(r.shape() == [b, c_out, h_out, w_out], OP, || {
            format!(
                "residual {:?} must match the output [{b}, {c_out}, {h_out}, {w_out}]",
                r.shape()
            )
        })?;
    }
    Ok([b, c_out, h_out, w_out])
}

/// A convolution weight (C_out, C_in, KH, KW) held once, in the layout this device's forward
/// kernel reads. Layers make it at load, so the forward rearranges nothing.
#[derive(Clone, Debug)]
pub struct ConvWeight {
    shape: [usize; 4],
    layout: WeightLayout,
}

#[derive(Clone, Debug)]
enum WeightLayout {
    Whole {
        tensor: Tensor,
        stored: Stored,
    },
    /// Where the blocked kernel's channel loop cannot take every input channel within the
    /// device's loop budget (Stable Diffusion's 2,560-channel joins on llvmpipe): runs of input
    /// channels from their first, each a weight of its own, whose convolutions are summed
    /// through the fused residual.
    Split(Vec<(usize, ConvWeight)>),
}

/// How a whole weight's elements are arranged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    /// As given, (C_out, C_in, KH, KW).
    Oihw,
    /// The blocked class (f32, C_out % 4 = 0): (C_in·KH·KW, C_out), conv2d_blocked's WEIGHT_T
    /// layout, so that a block's rows under one tap are aligned vec4s.
    Transposed,
    /// The tiled class: tap-major (KH·KW, C_in_pad, M_pad) from conv2d.wgsl's `restage_weight`,
    /// input channels padded to a multiple of [`TILE_K`] and output channels to one of 4.
    TapMajor { c_in_pad: usize, m_pad: usize },
}

impl ConvWeight {
    pub fn new(gpu: &Gpu, weight: Tensor) -> Result<ConvWeight> {
        let shape = dims::<4>(&weight, OP, "weight")?;
        let [c_out, c_in, kh, kw] = shape;
        if gpu.kernel_class() == KernelClass::Tiled {
            let (c_in_pad, m_pad) = (c_in.next_multiple_of(TILE_K), c_out.next_multiple_of(4));
            let stored = Stored::TapMajor { c_in_pad, m_pad };
            let staged = restage(gpu, &weight, shape, stored, false)?;
            return Ok(ConvWeight {
                shape,
                layout: WeightLayout::Whole {
                    tensor: staged,
                    stored,
                },
            });
        }
        if let Some(max) = max_blocked_channels(gpu, kh, kw).filter(|&max| c_in > max) {
            let per = c_in.div_ceil(c_in.div_ceil(max.max(1)));
            let mut runs = Vec::new();
            for first in (0..c_in).step_by(per) {
                let part = super::slice_channels(gpu, &weight, first, per.min(c_in - first))?;
                runs.push((first, ConvWeight::new(gpu, part)?));
            }
            return Ok(ConvWeight {
                shape,
                layout: WeightLayout::Split(runs),
            });
        }
        let (tensor, stored) = match c_out % 4 == 0 && weight.dtype() != DType::F16 {
            true => {
                let k = c_in * kh * kw;
                let t = super::transpose_last2(gpu, &weight.reshape(&[1, c_out, k])?)?;
                (t.reshape(&[k, c_out])?, Stored::Transposed)
            }
            false => (weight, Stored::Oihw),
        };
        Ok(ConvWeight {
            shape,
            layout: WeightLayout::Whole { tensor, stored },
        })
    }

    /// (C_out, C_in, KH, KW).
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The weight as stored, (C_out, C_in, KH, KW), rearranged back where it is held otherwise
    /// and joined where it is held split: the input gradient reads it so.
    pub fn oihw(&self, gpu: &Gpu) -> Result<Tensor> {
        let (tensor, stored) = match &self.layout {
            WeightLayout::Whole { tensor, stored } => (tensor, *stored),
            WeightLayout::Split(runs) => {
                let parts = runs
                    .iter()
                    .map(|(_, w)| w.oihw(gpu))
                    .collect::<Result<Vec<_>>>()?;
                return super::concat_channels(gpu, &parts.iter().collect::<Vec<_>>());
            }
        };
        let [c_out, c_in, kh, kw] = self.shape;
        match stored {
            Stored::Oihw => Ok(tensor.clone()),
            Stored::Transposed => {
                let k = c_in * kh * kw;
                super::transpose_last2(gpu, &tensor.reshape(&[1, k, c_out])?)?.reshape(&self.shape)
            }
            Stored::TapMajor { .. } => restage(gpu, tensor, self.shape, stored, true),
        }
    }
}

/// conv2d.wgsl's `restage_weight`: an OIHW weight of `shape` into the tap-major layout `stored`,
/// or with `unstage` the way back. An f16 weight stays f16 (the kernel's half variant, which
/// needs the device's SHADER_F16).
fn restage(
    gpu: &Gpu,
    from: &Tensor,
    shape: [usize; 4],
    stored: Stored,
    unstage: bool,
) -> Result<Tensor> {
    let Stored::TapMajor { c_in_pad, m_pad } = stored else {
        return Err(Error::Internal("restage: not a tap-major layout".into()));
    };
    let [c_out, c_in, kh, kw] = shape;
    let u = |what, v| checked_u32(OP, what, v);
    let out = match unstage {
        true => gpu.empty_typed(&shape, from.dtype())?,
        false => gpu.empty_typed(&[kh * kw * c_in_pad, m_pad], from.dtype())?,
    };
    let params = StageParams {
        c_out: u("c_out", c_out)?,
        c_in: u("c_in", c_in)?,
        taps: u("taps", kh * kw)?,
        c_in_pad: u("c_in_pad", c_in_pad)?,
        m_pad: u("m_pad", m_pad)?,
        total: u("weight elements", out.numel())?,
    };
    let f16 = from.dtype() == DType::F16;
    let kernel = Kernel::new(&shaders::CONV2D, "restage_weight")
        .flag("UNSTAGE", unstage)
        .flag(F16_WEIGHTS, f16)
        .half(f16);
    // The input slot and the bias and residual slots take stand-ins: only the weight is read.
    let grid = gpu.grid_1d(out.numel());
    gpu.dispatch(&kernel, &params, &[from, from, from, from], &[&out], grid)?;
    Ok(out)
}

/// A convolution as the planner sees it: what decides the kernel variant and its grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvProblem {
    pub batch: usize,
    pub c_in: usize,
    pub w: usize,
    pub c_out: usize,
    pub h_out: usize,
    pub w_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_y: usize,
    pub pad_x: usize,
}

/// Which conv2d.wgsl entry runs a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvVariant {
    /// The tiled implicit GEMM (GPU class) in this tiling; with split-K, `conv2d_partial` then
    /// `conv2d_reduce`.
    Tiled(GemmTiling),
    /// Register blocks (CPU class): 16 channels (32 when `wide`) × 8 pixels per invocation;
    /// `aligned` reads the input row window as vec4s.
    Blocked { aligned: bool, wide: bool },
    /// 16 channels (32 when `wide`) × 16 pixels per invocation, where every row holds whole
    /// blocks; `share_rows`: input rows shared across the subgroup (conv2d.wgsl's SHARE_ROWS).
    Row16 { wide: bool, share_rows: bool },
}

/// A planned launch: the variant and its workgroup grid (split-K's first pass for a split
/// tiling; its reduce covers the output one element per invocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLaunch {
    pub variant: ConvVariant,
    pub workgroups: [usize; 3],
    /// Subgroup lanes a blocked variant shares its weight rows across (its `_lanes` entry, in
    /// conv2d_lanes.wgsl); 1 otherwise.
    pub lanes: u32,
}

/// The one place a convolution's kernel variant and grid are chosen, from the device's plan
/// target and the problem's shape alone (so it is tested on its own, per class).
pub fn plan_conv2d(target: &PlanTarget, p: &ConvProblem) -> ConvLaunch {
    let pixels = p.batch * p.h_out * p.w_out;
    match target.class {
        KernelClass::Tiled => {
            let k = p.kh * p.kw * p.c_in.next_multiple_of(TILE_K);
            let tiling = target.tiling(1, p.c_out, pixels, k);
            let [x, y] = tiling.tiles(p.c_out, pixels);
            let (_, splits) = tiling.k_slices(k);
            ConvLaunch {
                variant: ConvVariant::Tiled(GemmTiling {
                    splits: splits as u32,
                    ..tiling
                }),
                workgroups: [x, y, splits],
                lanes: 1,
            }
        }
        KernelClass::Blocked => {
            // The vec4 window path (see conv2d.wgsl's ALIGNED_ROWS).
            let aligned =
                p.stride == 1 && p.w.is_multiple_of(4) && p.pad_x <= 4 && p.kw <= p.pad_x + 5;
            // 32 channels per invocation where they divide C_out (see conv2d.wgsl's WIDE_BLOCK).
            let wide = p.c_out.is_multiple_of(2 * BLOCK_ROWS);
            let rows = if wide { 2 * BLOCK_ROWS } else { BLOCK_ROWS };
            if aligned && p.w.is_multiple_of(ROW16_PIXELS) && p.kw <= ROW16_TAPS {
                let blocks = p.batch * p.h_out * p.w_out.div_ceil(ROW16_PIXELS);
                // Only at 8 lanes: lavapipe shuffles by lanes that differ per lane in one
                // permute there (lanes_subgroup.wgsl's lane_before), elsewhere one lane at a time.
                let share_rows = target.lanes == 8 && p.kh == 3 && p.pad_y == 1;
                return ConvLaunch {
                    variant: ConvVariant::Row16 { wide, share_rows },
                    workgroups: [blocks.div_ceil(BLOCKED_WG), p.c_out.div_ceil(rows), 1],
                    lanes: target.lanes,
                };
            }
            let blocks = p.batch * p.h_out * p.w_out.div_ceil(BLOCK_PIXELS);
            ConvLaunch {
                variant: ConvVariant::Blocked { aligned, wide },
                workgroups: [blocks.div_ceil(BLOCKED_WG), p.c_out.div_ceil(rows), 1],
                lanes: target.lanes,
            }
        }
    }
}

/// 2-D convolution: x (B, C_in, H, W), weight (C_out, C_in, KH, KW), bias (C_out). The weight
/// may be f16 ([`DType::F16`]); the products still accumulate in f32. Where the device reads
/// the weight in another layout this rearranges it on every call; a layer applied many times
/// holds a [`ConvWeight`] and calls [`conv2d_prepared`].
pub fn conv2d(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    args: Conv2dArgs,
) -> Result<Tensor> {
    // Checked before any rearranging, so a bad call fails with the operands' own shapes.
    output_shape(x, dims::<4>(weight, OP, "weight")?, bias, &args)?;
    conv2d_prepared(gpu, x, &ConvWeight::new(gpu, weight.clone())?, bias, args)
}

/// [`conv2d`] with the weight in the layout the device reads.
pub fn conv2d_prepared(
    gpu: &Gpu,
    x: &Tensor,
    weight: &ConvWeight,
    bias: Option<&Tensor>,
    args: Conv2dArgs,
) -> Result<Tensor> {
    let [b, c_out, h_out, w_out] = output_shape(x, weight.shape, bias, &args)?;
    let [_, _, kh, kw] = weight.shape;
    let (weight, stored) = match &weight.layout {
        WeightLayout::Whole { tensor, stored } => (tensor, *stored),
        WeightLayout::Split(runs) => return conv2d_split(gpu, x, runs, bias, args),
    };
    let [_, c_in, h, w] = dims::<4>(x, OP, "input")?;
    let u = |what, v| checked_u32(OP, what, v);
    let f16 = weight.dtype() == DType::F16;
    let problem = ConvProblem {
        batch: b,
        c_in,
        w,
        c_out,
        h_out,
        w_out,
        kh,
        kw,
        stride: args.stride,
        pad_y: args.pad_hw().0,
        pad_x: args.pad_hw().1,
    };
    let launch = plan_conv2d(&gpu.plan_target(), &problem);
    let weight_t = stored == Stored::Transposed;
    let (kernel, (c_in_pad, m_pad), tiling) = match (launch.variant, stored) {
        (ConvVariant::Tiled(tiling), Stored::TapMajor { c_in_pad, m_pad }) => {
            let entry = match tiling.splits {
                1 => "conv2d",
                _ => "conv2d_partial",
            };
            let kernel = Kernel::new(&shaders::CONV2D, entry)
                .with("TILE_M", tiling.tile_m)
                .with("TILE_N", tiling.tile_n)
                .with("BLOCK", tiling.block);
            (kernel, (c_in_pad, m_pad), Some(tiling))
        }
        (ConvVariant::Row16 { wide, share_rows }, _) => {
            check_depth(gpu, c_in, kh, kw)?;
            let entry = ["conv2d_blocked_row16", "conv2d_blocked_row16_lanes"];
            let kernel = blocked_kernel(entry, launch.lanes)
                .flag("WEIGHT_T", weight_t)
                .flag("WIDE_BLOCK", wide)
                .flag("SHARE_ROWS", share_rows);
            (kernel, (c_in, c_out), None)
        }
        (ConvVariant::Blocked { aligned, wide }, _) => {
            check_depth(gpu, c_in, kh, kw)?;
            let entry = ["conv2d_blocked", "conv2d_blocked_lanes"];
            let kernel = blocked_kernel(entry, launch.lanes)
                .flag("ALIGNED_ROWS", aligned)
                .flag("WEIGHT_T", weight_t)
                .flag("WIDE_BLOCK", wide);
            (kernel, (c_in, c_out), None)
        }
        (ConvVariant::Tiled(_), _) => {
            return Err(Error::Internal(format!(
                "{OP}: a {stored:?} weight on the tiled class (made for another device)"
            )))
        }
    };
    let k_total = kh * kw * c_in_pad;
    let (k_chunk, splits) = tiling.map_or((k_total, 1), |t| t.k_slices(k_total));
    let kernel = kernel
        .with("KH", u("kernel height", kh)?)
        .with("KW", u("kernel width", kw)?)
        .with("STRIDE", u("stride", args.stride)?)
        .with("PAD_Y", u("padding", args.pad_hw().0)?)
        .with("PAD_X", u("padding", args.pad_hw().1)?)
        .flag("HAS_BIAS", bias.is_some())
        .flag("HAS_RESIDUAL", args.residual.is_some())
        .flag("RELU", args.relu)
        .flag(F16_WEIGHTS, f16)
        .half(x.dtype() == DType::F16);
    let params = ConvParams {
        batch: u("batch", b)?,
        c_in: u("c_in", c_in)?,
        h: u("h", h)?,
        w: u("w", w)?,
        c_out: u("c_out", c_out)?,
        h_out: u("h_out", h_out)?,
        w_out: u("w_out", w_out)?,
        out_scale: args.out_scale,
        c_in_pad: u("c_in_pad", c_in_pad)?,
        m_pad: u("m_pad", m_pad)?,
        k_chunk: u("k_chunk", k_chunk)?,
        splits: u("splits", splits)?,
    };
    let out = gpu.empty_typed(&[b, c_out, h_out, w_out], x.dtype())?;
    let bias = bias.unwrap_or(weight);
    let residual = args.residual.unwrap_or(x);
    if splits == 1 {
        let inputs = [x, weight, bias, residual];
        gpu.dispatch(&kernel, &params, &inputs, &[&out], launch.workgroups)?;
        return Ok(out);
    }
    // Split-K: the slices' f32 sums, then their sum through the epilogue.
    let sums = gpu.empty(&[splits, c_out, b * h_out * w_out])?;
    let inputs = [x, weight, bias, residual];
    gpu.dispatch(&kernel, &params, &inputs, &[&sums], launch.workgroups)?;
    let reduce = Kernel {
        entry: "conv2d_reduce",
        ..kernel
    };
    let inputs = [&sums, weight, bias, residual];
    gpu.dispatch(&reduce, &params, &inputs, &[&out], gpu.grid_1d(out.numel()))?;
    Ok(out)
}

/// A blocked entry point (`entries`: its own form and the form sharing weight rows across the
/// subgroup, in conv2d_lanes.wgsl) for `lanes` lanes.
fn blocked_kernel(entries: [&'static str; 2], lanes: u32) -> Kernel {
    match lanes {
        1 => Kernel::new(&shaders::CONV2D, entries[0]),
        _ => Kernel::new(&shaders::CONV2D_LANES, entries[1]).with("LANES", lanes),
    }
}

/// A convolution over runs of input channels ([`WeightLayout::Split`]), summed through the fused
/// residual: the first run adds the bias and the caller's residual, the last applies the scale
/// and the ReLU, so the result is (Σ_runs conv + bias + residual)·out_scale as one call makes.
fn conv2d_split(
    gpu: &Gpu,
    x: &Tensor,
    runs: &[(usize, ConvWeight)],
    bias: Option<&Tensor>,
    args: Conv2dArgs,
) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    for (i, (first, weight)) in runs.iter().enumerate() {
        let last = i + 1 == runs.len();
        let part = super::slice_channels(gpu, x, *first, weight.shape[1])?;
        let run_args = Conv2dArgs {
            residual: if i == 0 { args.residual } else { sum.as_ref() },
            out_scale: if last { args.out_scale } else { 1.0 },
            relu: last && args.relu,
            ..args
        };
        let run_bias = if i == 0 { bias } else { None };
        sum = Some(conv2d_prepared(gpu, &part, weight, run_bias, run_args)?);
    }
    sum.ok_or_else(|| Error::Internal("a split convolution weight with no runs".into()))
}
