use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{shaders, Gpu, Kernel, Params, Tensor};

const WG: u32 = 256;

/// The elementwise.wgsl parameter block: total, inner, outer, offset, alpha, beta.
fn params(
    total: usize,
    inner: usize,
    outer: usize,
    offset: usize,
    alpha: f32,
    beta: f32,
) -> Params {
    Params::new()
        .u(total)
        .u(inner)
        .u(outer)
        .u(offset)
        .f(alpha)
        .f(beta)
}

fn launch(
    gpu: &Gpu,
    entry: &'static str,
    op: u32,
    p: Params,
    inputs: &[&Tensor],
    out: &Tensor,
    threads: usize,
) -> Result<()> {
    let kernel = Kernel::new(&shaders::ELEMENTWISE, entry).with("OP", op);
    gpu.dispatch(&kernel, &p, inputs, &[out], gpu.grid_1d(threads, WG))
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    ensure(a.shape() == b.shape(), op, || {
        format!("shapes differ: {:?} vs {:?}", a.shape(), b.shape())
    })
}

/// SiLU(x) = x·sigmoid(x).
pub fn silu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let out = gpu.empty(x.shape())?;
    launch(
        gpu,
        "unary",
        0,
        params(x.numel(), 0, 0, 0, 0.0, 0.0),
        &[x],
        &out,
        x.numel(),
    )?;
    Ok(out)
}

/// alpha·x + beta.
pub fn affine(gpu: &Gpu, x: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    let out = gpu.empty(x.shape())?;
    launch(
        gpu,
        "unary",
        1,
        params(x.numel(), 0, 0, 0, alpha, beta),
        &[x],
        &out,
        x.numel(),
    )?;
    Ok(out)
}

/// alpha·a + beta·b.
pub fn lincomb(gpu: &Gpu, alpha: f32, a: &Tensor, beta: f32, b: &Tensor) -> Result<Tensor> {
    same_shape("lincomb", a, b)?;
    let out = gpu.empty(a.shape())?;
    launch(
        gpu,
        "binary",
        0,
        params(a.numel(), 0, 0, 0, alpha, beta),
        &[a, b],
        &out,
        a.numel(),
    )?;
    Ok(out)
}

/// a + b.
pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    lincomb(gpu, 1.0, a, 1.0, b)
}

/// alpha·a + beta·b where a (B, …) is repeated along the leading axis of b (M·B, …).
pub fn broadcast_lincomb(
    gpu: &Gpu,
    alpha: f32,
    a: &Tensor,
    beta: f32,
    b: &Tensor,
) -> Result<Tensor> {
    ensure(
        a.shape()[1..] == b.shape()[1..] && a.dim(0) > 0 && b.dim(0).is_multiple_of(a.dim(0)),
        "broadcast_lincomb",
        || {
            format!(
                "{:?} does not tile {:?} along the first axis",
                a.shape(),
                b.shape()
            )
        },
    )?;
    let out = gpu.empty(b.shape())?;
    let p = params(b.numel(), a.numel(), 0, 0, alpha, beta);
    launch(gpu, "broadcast_lincomb", 0, p, &[a, b], &out, b.numel())?;
    Ok(out)
}

/// `copies` copies of x stacked along the first axis (B, …) → (copies·B, …).
pub fn repeat_batch(gpu: &Gpu, x: &Tensor, copies: usize) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    ensure(!shape.is_empty() && copies > 0, "repeat_batch", || {
        "need a leading axis and ≥ 1 copy".into()
    })?;
    shape[0] *= copies;
    let out = gpu.empty(&shape)?;
    for m in 0..copies as u64 {
        gpu.copy_into(x, &out, m * x.byte_len())?;
    }
    Ok(out)
}

/// a · b element-wise.
pub fn mul(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape("mul", a, b)?;
    let out = gpu.empty(a.shape())?;
    launch(
        gpu,
        "binary",
        1,
        params(a.numel(), 0, 0, 0, 0.0, 0.0),
        &[a, b],
        &out,
        a.numel(),
    )?;
    Ok(out)
}

/// x (B, C, H, W) combined with a vector v of shape (B, C) or (C) broadcast over pixels.
fn channel_op(gpu: &Gpu, name: &'static str, op: u32, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    let [b, c, h, w] = dims::<4>(x, name, "x")?;
    ensure(v.shape() == [b, c] || v.shape() == [c], name, || {
        format!(
            "vector {:?} must be [{b}, {c}] or [{c}] for x {:?}",
            v.shape(),
            x.shape()
        )
    })?;
    let out = gpu.empty(x.shape())?;
    let p = params(x.numel(), h * w, v.numel(), 0, 0.0, 0.0);
    launch(gpu, "channel_op", op, p, &[x, v], &out, x.numel())?;
    Ok(out)
}

/// x + v[b, c] (or v[c]) at every pixel: a time-embedding projection added to a feature map.
pub fn add_channel_vec(gpu: &Gpu, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    channel_op(gpu, "add_channel_vec", 0, x, v)
}

/// x · v[b, c] (or v[c]) at every pixel.
pub fn mul_channel_vec(gpu: &Gpu, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    channel_op(gpu, "mul_channel_vec", 1, x, v)
}

/// x·(1 + scale) + shift with `emb` = [scale | shift] of shape (B, 2C): ADM's scale-shift norm.
pub fn scale_shift(gpu: &Gpu, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
    const OP: &str = "scale_shift";
    let [b, c, h, w] = dims::<4>(x, OP, "x")?;
    ensure(emb.shape() == [b, 2 * c], OP, || {
        format!("emb {:?} must be [{b}, {}]", emb.shape(), 2 * c)
    })?;
    let out = gpu.empty(x.shape())?;
    launch(
        gpu,
        "scale_shift",
        0,
        params(x.numel(), h * w, c, 0, 0.0, 0.0),
        &[x, emb],
        &out,
        x.numel(),
    )?;
    Ok(out)
}

/// Concatenates NCHW tensors along channels.
pub fn concat_channels(gpu: &Gpu, parts: &[&Tensor]) -> Result<Tensor> {
    const OP: &str = "concat_channels";
    ensure(!parts.is_empty(), OP, || "nothing to concatenate".into())?;
    let [b, _, h, w] = dims::<4>(parts[0], OP, "input")?;
    let mut c_total = 0;
    for t in parts {
        let [tb, tc, th, tw] = dims::<4>(t, OP, "input")?;
        ensure((tb, th, tw) == (b, h, w), OP, || {
            format!(
                "{:?} and {:?} differ outside the channel axis",
                parts[0].shape(),
                t.shape()
            )
        })?;
        c_total += tc;
    }
    let out = gpu.empty(&[b, c_total, h, w])?;
    let mut offset = 0;
    for t in parts {
        let c = t.dim(1);
        let p = params(
            t.numel(),
            c * h * w,
            c_total * h * w,
            offset * h * w,
            0.0,
            0.0,
        );
        launch(gpu, "copy_channels", 0, p, &[t], &out, t.numel())?;
        offset += c;
    }
    Ok(out)
}

/// (B, R, C) → (B, C, R).
pub fn transpose_last2(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let [b, r, c] = dims::<3>(x, "transpose_last2", "x")?;
    let out = gpu.empty(&[b, c, r])?;
    launch(
        gpu,
        "transpose",
        0,
        params(x.numel(), c, r, 0, 0.0, 0.0),
        &[x],
        &out,
        x.numel(),
    )?;
    Ok(out)
}

fn resample(gpu: &Gpu, entry: &'static str, x: &Tensor, out_hw: (usize, usize)) -> Result<Tensor> {
    let [b, c, h, w] = dims::<4>(x, entry, "x")?;
    let out = gpu.empty(&[b, c, out_hw.0, out_hw.1])?;
    let p = Params::new().u(out.numel()).u(h).u(w);
    let kernel = Kernel::new(&shaders::RESAMPLE, entry);
    gpu.dispatch(&kernel, &p, &[x], &[&out], gpu.grid_1d(out.numel(), WG))?;
    Ok(out)
}

/// Nearest-neighbour ×2 upsampling of (B, C, H, W).
pub fn upsample_nearest2x(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let [_, _, h, w] = dims::<4>(x, "upsample_nearest2x", "x")?;
    resample(gpu, "upsample_nearest2x", x, (2 * h, 2 * w))
}

/// 2×2 average pooling with stride 2 (odd edges dropped, as torch does).
pub fn avg_pool2x(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let [_, _, h, w] = dims::<4>(x, "avg_pool2x", "x")?;
    ensure(h >= 2 && w >= 2, "avg_pool2x", || {
        format!("input {h}x{w} smaller than 2x2")
    })?;
    resample(gpu, "avg_pool2x", x, (h / 2, w / 2))
}
