//! The input gradient of [`conv2d`](super::conv2d) (conv2d_grad.wgsl).

use super::conv::Conv2dArgs;
use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{
    checked_u32, kernel_params, shaders, DType, GemmTiling, Gpu, Kernel, KernelClass, PlanTarget,
    Tensor,
};

kernel_params! {
    pub(super) struct ConvGradParams for CONV2D_GRAD::Params {
        batch: u32,
        c_in: u32,
        h: u32,
        w: u32,
        c_out: u32,
        h_out: u32,
        w_out: u32,
        k_chunk: u32,
        splits: u32,
    }
}

kernel_params! {
    pub(super) struct FlipParams for CONV2D_GRAD::FlipParams {
        c_out: u32,
        c_in: u32,
        taps: u32,
    }
}

kernel_params! {
    pub(super) struct DilateParams for CONV2D_GRAD::DilateParams {
        planes: u32,
        h_out: u32,
        w_out: u32,
        h_pad: u32,
        w_pad: u32,
        stride: u32,
        top: u32,
        left: u32,
    }
}

const OP: &str = "conv2d_input_grad";

/// The square tile (input channels and pixels per workgroup, 4 × 4 per invocation) the tiled
/// gradient takes on the blocked class, which reaches it only where the padding is as large as
/// the kernel; conv2d_grad.wgsl's default `TILE_M`.
pub(super) const WIDE_TILE: u32 = 64;
/// That tile for gradients of at most this many input channels, so fewer tile rows sit idle.
const NARROW_TILE: u32 = 32;

/// dy' of conv2d_grad.wgsl's `dilate_pad`: dy (B, C_out, H_out, W_out) spread `stride` apart
/// from (KH − 1 − pad, KW − 1 − pad) in zeros of (B, C_out, H + KH − 1, W + KW − 1).
fn dilate_pad(
    gpu: &Gpu,
    dy: &Tensor,
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let [b, c_out, h_out, w_out] = dims::<4>(dy, OP, "dy")?;
    let (h_pad, w_pad) = (h + kh - 1, w + kw - 1);
    let u = |what, v| checked_u32(OP, what, v);
    let params = DilateParams {
        planes: u("planes", b * c_out)?,
        h_out: u("h_out", h_out)?,
        w_out: u("w_out", w_out)?,
        h_pad: u("h_pad", h_pad)?,
        w_pad: u("w_pad", w_pad)?,
        stride: u("stride", stride)?,
        top: u("top", kh - 1 - pad)?,
        left: u("left", kw - 1 - pad)?,
    };
    let out = gpu.empty(&[b, c_out, h_pad, w_pad])?;
    let kernel = Kernel::new(&shaders::CONV2D_GRAD, "dilate_pad");
    gpu.dispatch(&kernel, &params, &[dy], &[&out], gpu.grid_1d(out.numel()))?;
    Ok(out)
}

/// w'[ci, co, ky, kx] = w[co, ci, KH − 1 − ky, KW − 1 − kx] of a weight (C_out, C_in, KH, KW).
fn flip_weight(gpu: &Gpu, weight: &Tensor) -> Result<Tensor> {
    let [c_out, c_in, kh, kw] = dims::<4>(weight, OP, "weight")?;
    let u = |what, v| checked_u32(OP, what, v);
    let params = FlipParams {
        c_out: u("c_out", c_out)?,
        c_in: u("c_in", c_in)?,
        taps: u("taps", kh * kw)?,
    };
    let flipped = gpu.empty(&[c_in, c_out, kh, kw])?;
    let kernel = Kernel::new(&shaders::CONV2D_GRAD, "flip_weight");
    let grid = gpu.grid_1d(weight.numel());
    gpu.dispatch(&kernel, &params, &[weight], &[&flipped], grid)?;
    Ok(flipped)
}

/// How the input gradient of a convolution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvGradVariant {
    /// A forward convolution of dy padded by K − 1 − p with the flipped weight (stride 1): on
    /// the blocked class its kernels are many times faster than the tiled gradient.
    FlippedConv,
    /// The same of dy spread out in zeros (`dilate_pad`), for strided convolutions.
    FlippedConvOfSpread,
    /// conv2d_grad.wgsl's tiled GEMM in this tiling; with split-K, `conv2d_input_grad_partial`
    /// then `conv2d_input_grad_reduce`.
    Tiled(GemmTiling),
}

/// An input gradient as the planner sees it: the forward convolution's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGradProblem {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub pad: usize,
    pub stride: usize,
    /// Extra bottom/right padding of the forward.
    pub pad_bottom_right: usize,
}

/// The one place the input gradient's variant is chosen, from the device's plan target and the
/// problem: a GEMM of C_in rows, B·H·W columns and C_out·KH·KW deep on the tiled class.
pub fn plan_conv2d_input_grad(target: &PlanTarget, p: &ConvGradProblem) -> ConvGradVariant {
    let k = p.c_out * p.kh * p.kw;
    let tiling = match target.class {
        KernelClass::Blocked if p.pad < p.kh && p.pad < p.kw => {
            return match p.stride == 1 && p.pad_bottom_right == 0 {
                true => ConvGradVariant::FlippedConv,
                false => ConvGradVariant::FlippedConvOfSpread,
            };
        }
        KernelClass::Blocked => {
            let tile = if p.c_in <= NARROW_TILE as usize {
                NARROW_TILE
            } else {
                WIDE_TILE
            };
            GemmTiling::shape((tile, tile, 4))
        }
        KernelClass::Tiled => target.tiling(1, p.c_in, p.batch * p.h * p.w, k),
    };
    ConvGradVariant::Tiled(GemmTiling {
        splits: tiling.k_slices(k).1 as u32,
        ..tiling
    })
}

/// ∂⟨conv2d(x, weight, args), dy⟩/∂x for an input x of spatial size `input_hw`: dy (B, C_out,
/// H_out, W_out) is the gradient of the convolution's output, weight (C_out, C_in, KH, KW).
/// Bias and residual do not enter the input gradient, so `args` may carry none (its stride and
/// paddings are what matter).
pub fn conv2d_input_grad(
    gpu: &Gpu,
    dy: &Tensor,
    weight: &Tensor,
    input_hw: (usize, usize),
    args: Conv2dArgs,
) -> Result<Tensor> {
    let [b, c_out, h_out, w_out] = dims::<4>(dy, OP, "dy")?;
    let [wc_out, c_in, kh, kw] = dims::<4>(weight, OP, "weight")?;
    let (h, w) = input_hw;
    ensure(weight.dtype() == DType::F32, OP, || {
        "the input gradient (guidance through the network) needs f32 weights; load the model \
         without f16 weights"
            .into()
    })?;
    ensure(
        args.residual.is_none() && args.out_scale == 1.0 && !args.relu,
        OP,
        || "a fused residual, output scale or ReLU is the caller's to differentiate".into(),
    )?;
    ensure(args.padding_w.is_none_or(|p| p == args.padding), OP, || {
        "separate row and column padding is not supported".into()
    })?;
    ensure(args.stride >= 1, OP, || "stride must be ≥ 1".into())?;
    let pad = 2 * args.padding + args.pad_bottom_right;
    ensure(h + pad >= kh && w + pad >= kw, OP, || {
        format!("kernel {kh}x{kw} larger than the padded input {h}x{w} + {pad}")
    })?;
    let expect = [
        b,
        wc_out,
        (h + pad - kh) / args.stride + 1,
        (w + pad - kw) / args.stride + 1,
    ];
    ensure(dy.shape() == expect, OP, || {
        format!(
            "dy {:?} is not the output of weight {:?} on a {h}x{w} input ({expect:?})",
            dy.shape(),
            weight.shape()
        )
    })?;
    let pad = args.padding;
    let problem = ConvGradProblem {
        batch: b,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        pad,
        stride: args.stride,
        pad_bottom_right: args.pad_bottom_right,
    };
    let tiling = match plan_conv2d_input_grad(&gpu.plan_target(), &problem) {
        ConvGradVariant::FlippedConv => {
            let as_conv = Conv2dArgs {
                padding: kh - 1 - pad,
                padding_w: Some(kw - 1 - pad),
                ..Default::default()
            };
            return super::conv2d(gpu, dy, &flip_weight(gpu, weight)?, None, as_conv);
        }
        ConvGradVariant::FlippedConvOfSpread => {
            let flipped = flip_weight(gpu, weight)?;
            let spread = dilate_pad(gpu, dy, (h, w), (kh, kw), args.stride, pad)?;
            return super::conv2d(gpu, &spread, &flipped, None, Conv2dArgs::default());
        }
        ConvGradVariant::Tiled(tiling) => tiling,
    };
    let (k_chunk, splits) = tiling.k_slices(c_out * kh * kw);
    let u = |what, v| checked_u32(OP, what, v);
    let entry = match splits {
        1 => "conv2d_input_grad",
        _ => "conv2d_input_grad_partial",
    };
    let kernel = Kernel::new(&shaders::CONV2D_GRAD, entry)
        .with("TILE_M", tiling.tile_m)
        .with("TILE_N", tiling.tile_n)
        .with("BLOCK", tiling.block)
        .with("KH", u("kernel height", kh)?)
        .with("KW", u("kernel width", kw)?)
        .with("STRIDE", u("stride", args.stride)?)
        .with("PAD", u("padding", args.padding)?);
    let params = ConvGradParams {
        batch: u("batch", b)?,
        c_in: u("c_in", c_in)?,
        h: u("h", h)?,
        w: u("w", w)?,
        c_out: u("c_out", c_out)?,
        h_out: u("h_out", h_out)?,
        w_out: u("w_out", w_out)?,
        k_chunk: u("k_chunk", k_chunk)?,
        splits: u("splits", splits)?,
    };
    let dx = gpu.empty(&[b, c_in, h, w])?;
    let [x, y] = tiling.tiles(c_in, b * h * w);
    if splits == 1 {
        gpu.dispatch(&kernel, &params, &[dy, weight], &[&dx], [x, y, 1])?;
        return Ok(dx);
    }
    // Split-K: the slices' sums, then their sum.
    let sums = gpu.empty(&[splits, c_in, b * h * w])?;
    gpu.dispatch(&kernel, &params, &[dy, weight], &[&sums], [x, y, splits])?;
    let reduce = Kernel {
        entry: "conv2d_input_grad_reduce",
        ..kernel
    };
    let grid = gpu.grid_1d(dx.numel());
    gpu.dispatch(&reduce, &params, &[&sums, weight], &[&dx], grid)?;
    Ok(dx)
}
