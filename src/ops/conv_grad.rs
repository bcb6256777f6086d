//! The input gradient of [`conv2d`](super::conv2d) (conv2d_grad.wgsl).

use super::conv::Conv2dArgs;
use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, DType, Gpu, Kernel, KernelClass, Tensor};

kernel_params! {
    pub(super) struct ConvGradParams for CONV2D_GRAD::Params {
        batch: u32,
        c_in: u32,
        h: u32,
        w: u32,
        c_out: u32,
        h_out: u32,
        w_out: u32,
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

/// conv2d_grad.wgsl's square tile (its `TILE_M` = `TILE_N`, 4 × 4 outputs per invocation): input
/// channels and pixels per workgroup.
pub(super) const WIDE_TILE: u32 = 64;
/// The tile for gradients of at most this many input channels, so fewer tile rows sit idle.
pub(super) const NARROW_TILE: u32 = 32;

/// The tile for an input gradient of `rows` input channels.
fn tile_for(rows: usize) -> u32 {
    if rows <= NARROW_TILE as usize {
        NARROW_TILE
    } else {
        WIDE_TILE
    }
}

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
    /// conv2d_grad.wgsl's tiled kernel, `tile` input channels and pixels per workgroup.
    Tiled { tile: u32 },
}

/// The one place the input gradient's variant is chosen: for a convolution with `c_in` input
/// channels, kernel (KH, KW), padding, stride and extra bottom/right padding.
pub fn plan_conv2d_input_grad(
    class: KernelClass,
    c_in: usize,
    (kh, kw): (usize, usize),
    pad: usize,
    stride: usize,
    pad_bottom_right: usize,
) -> ConvGradVariant {
    match class {
        KernelClass::Blocked if pad < kh && pad < kw => {
            match stride == 1 && pad_bottom_right == 0 {
                true => ConvGradVariant::FlippedConv,
                false => ConvGradVariant::FlippedConvOfSpread,
            }
        }
        _ => ConvGradVariant::Tiled {
            tile: tile_for(c_in),
        },
    }
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
    let variant = plan_conv2d_input_grad(
        gpu.kernel_class(),
        c_in,
        (kh, kw),
        pad,
        args.stride,
        args.pad_bottom_right,
    );
    let tile = match variant {
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
        ConvGradVariant::Tiled { tile } => tile,
    };
    let u = |what, v| checked_u32(OP, what, v);
    let kernel = Kernel::new(&shaders::CONV2D_GRAD, "conv2d_input_grad")
        .with("TILE_M", tile)
        .with("TILE_N", tile)
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
    };
    let dx = gpu.empty(&[b, c_in, h, w])?;
    let n = b * h * w;
    gpu.dispatch(
        &kernel,
        &params,
        &[dy, weight],
        &[&dx],
        [n.div_ceil(tile as usize), c_in.div_ceil(tile as usize), 1],
    )?;
    Ok(dx)
}
