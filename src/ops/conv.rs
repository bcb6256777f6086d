use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{shaders, Gpu, Kernel, Params, Tensor};

/// Geometry and fused epilogue of a [`conv2d`].
#[derive(Clone, Copy, Debug)]
pub struct Conv2dArgs<'a> {
    pub stride: usize,
    pub padding: usize,
    /// Extra zero padding on the bottom and right only (diffusers' Downsample2D with padding 0
    /// pads (0, 1, 0, 1) before a stride-2 convolution).
    pub pad_bottom_right: usize,
    /// Fused `(conv + bias + residual) * out_scale`; `residual` has the output's shape.
    pub residual: Option<&'a Tensor>,
    pub out_scale: f32,
}

impl Default for Conv2dArgs<'_> {
    fn default() -> Self {
        Conv2dArgs {
            stride: 1,
            padding: 0,
            pad_bottom_right: 0,
            residual: None,
            out_scale: 1.0,
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
}

/// 2-D convolution: x (B, C_in, H, W), weight (C_out, C_in, KH, KW), bias (C_out).
pub fn conv2d(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    args: Conv2dArgs,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let [b, c_in, h, w] = dims::<4>(x, OP, "input")?;
    let [c_out, wc_in, kh, kw] = dims::<4>(weight, OP, "weight")?;
    ensure(wc_in == c_in, OP, || {
        format!(
            "weight {:?} expects {wc_in} input channels, input {:?} has {c_in}",
            weight.shape(),
            x.shape()
        )
    })?;
    ensure(args.stride >= 1, OP, || "stride must be ≥ 1".into())?;
    let pad = 2 * args.padding + args.pad_bottom_right;
    let (h_padded, w_padded) = (h + pad, w + pad);
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
    let out = gpu.empty(&[b, c_out, h_out, w_out])?;
    // Narrow layers get a narrower tile so fewer output rows sit idle.
    let tile = if c_out <= 32 { 32 } else { 64 };
    let kernel = Kernel::new(&shaders::CONV2D, "conv2d")
        .with("TILE", tile as u32)
        .with("KH", kh as u32)
        .with("KW", kw as u32)
        .with("STRIDE", args.stride as u32)
        .with("PAD", args.padding as u32)
        .with("HAS_BIAS", bias.is_some() as u32)
        .with("HAS_RESIDUAL", args.residual.is_some() as u32);
    let params = Params::new()
        .u(b)
        .u(c_in)
        .u(h)
        .u(w)
        .u(c_out)
        .u(h_out)
        .u(w_out)
        .f(args.out_scale);
    let n = b * h_out * w_out;
    gpu.dispatch(
        &kernel,
        &params,
        &[
            x,
            weight,
            bias.unwrap_or(weight),
            args.residual.unwrap_or(x),
        ],
        &[&out],
        [n.div_ceil(tile) as u32, c_out.div_ceil(tile) as u32, 1],
    )?;
    Ok(out)
}
