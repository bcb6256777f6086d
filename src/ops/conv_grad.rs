//! The input gradient of [`conv2d`](super::conv2d) (conv2d_grad.wgsl).

use super::conv::{tile_for, Conv2dArgs};
use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, DType, Gpu, Kernel, Tensor};

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

const OP: &str = "conv2d_input_grad";

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
    let u = |what, v| checked_u32(OP, what, v);
    let tile = tile_for(c_in);
    let kernel = Kernel::new(&shaders::CONV2D_GRAD, "conv2d_input_grad")
        .with("TILE", tile)
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
