//! Element-wise arithmetic and layout kernels (elementwise.wgsl) and resampling (resample.wgsl).

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, DType, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct ElementwiseParams for ELEMENTWISE::Params {
        total: u32,
        inner: u32,
        outer: u32,
        offset: u32,
        alpha: f32,
        beta: f32,
    }
}

kernel_params! {
    pub(super) struct ResampleParams for RESAMPLE::Params {
        total: u32,
        h_in: u32,
        w_in: u32,
    }
}

/// The `unary` entry's operations: its `OP` override (elementwise.wgsl's `UNARY_*`).
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub(super) enum UnaryOp {
    Silu = 0,
    /// alpha·x + beta.
    Affine = 1,
    /// x·Φ(x), the exact (erf) GELU.
    Gelu = 2,
    /// x·σ(1.702·x), CLIP's approximation.
    QuickGelu = 3,
}

/// The `binary` entry's operations (elementwise.wgsl's `BINARY_*`).
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub(super) enum BinaryOp {
    /// alpha·a + beta·b.
    Lincomb = 0,
    Mul = 1,
}

/// The `channel_op` entry's operations (elementwise.wgsl's `CHANNEL_*`).
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub(super) enum ChannelOp {
    Add = 0,
    Mul = 1,
}

/// An entry point of elementwise.wgsl, with its operation where it takes one.
#[derive(Clone, Copy, Debug)]
enum Entry {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Channel(ChannelOp),
    /// `channel_op` four elements per invocation: planes of a multiple of 4 elements.
    Channel4(ChannelOp),
    BroadcastLincomb,
    ScaleShift,
    CopyChannels,
    /// `copy_channels` four elements per invocation: source and destination planes of a
    /// multiple of 4 elements.
    CopyChannels4,
    SliceChannels,
    Transpose,
}

impl Entry {
    /// The entry point's name and its `OP` override, where it takes one.
    fn name_and_op(self) -> (&'static str, Option<u32>) {
        match self {
            Entry::Unary(op) => ("unary", Some(op as u32)),
            Entry::Binary(op) => ("binary", Some(op as u32)),
            Entry::Channel(op) => ("channel_op", Some(op as u32)),
            Entry::Channel4(op) => ("channel_op4", Some(op as u32)),
            Entry::BroadcastLincomb => ("broadcast_lincomb", None),
            Entry::ScaleShift => ("scale_shift", None),
            Entry::CopyChannels => ("copy_channels", None),
            Entry::CopyChannels4 => ("copy_channels4", None),
            Entry::SliceChannels => ("slice_channels", None),
            Entry::Transpose => ("transpose", None),
        }
    }

    fn kernel(self) -> Kernel {
        let (entry, op) = self.name_and_op();
        let kernel = Kernel::new(&shaders::ELEMENTWISE, entry);
        match op {
            Some(op) => kernel.with("OP", op),
            None => kernel,
        }
    }
}

impl ElementwiseParams {
    /// One thread per element of `t`; the other fields zero.
    fn over(op: &str, t: &Tensor) -> Result<ElementwiseParams> {
        Ok(ElementwiseParams {
            total: checked_u32(op, "total", t.numel())?,
            ..Default::default()
        })
    }
}

/// One 1-D launch of `entry` over `p.total` elements (a quarter as many invocations for the
/// vec4 entries), in the half variant where the tensors are f16 activations.
fn launch(
    gpu: &Gpu,
    entry: Entry,
    p: &ElementwiseParams,
    inputs: &[&Tensor],
    out: &Tensor,
) -> Result<()> {
    let invocations = match entry {
        Entry::Channel4(_) | Entry::CopyChannels4 => p.total as usize / 4,
        _ => p.total as usize,
    };
    let kernel = entry
        .kernel()
        .half(one_dtype(entry.name_and_op().0, inputs, out)? == DType::F16);
    gpu.dispatch(&kernel, p, inputs, &[out], gpu.grid_1d(invocations))
}

/// The one storage type of an element-wise op's tensors (all f32, or all f16 activations).
pub(super) fn one_dtype(op: &'static str, inputs: &[&Tensor], out: &Tensor) -> Result<DType> {
    let mixed = inputs.iter().find(|t| t.dtype() != out.dtype());
    ensure(mixed.is_none(), op, || {
        format!(
            "{:?} and {:?}: f32 and f16 activations mix (convert with to_half or to_f32)",
            mixed.unwrap(),
            out
        )
    })?;
    Ok(out.dtype())
}

/// x (f32) stored as f16 activations, rounded to nearest: what a model with f16 activations
/// starts from. Needs the device's `SHADER_F16`.
pub fn to_half(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    x.ensure_f32("to_half")?;
    let out = gpu.empty_typed(x.shape(), DType::F16)?;
    cast(gpu, "to_act", x, &out)?;
    Ok(out)
}

/// f16 activations widened to f32 (x itself, shared, when already f32).
pub fn to_f32(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return Ok(x.clone());
    }
    let out = gpu.empty(x.shape())?;
    cast(gpu, "from_act", x, &out)?;
    Ok(out)
}

fn cast(gpu: &Gpu, entry: &'static str, x: &Tensor, out: &Tensor) -> Result<()> {
    let p = ElementwiseParams::over(entry, x)?;
    let kernel = Kernel::new(&shaders::ELEMENTWISE, entry).half(true);
    gpu.dispatch(&kernel, &p, &[x], &[out], gpu.grid_1d(x.numel()))
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    ensure(a.shape() == b.shape(), op, || {
        format!("shapes differ: {:?} vs {:?}", a.shape(), b.shape())
    })
}

/// SiLU(x) = x·sigmoid(x).
pub fn silu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    unary(gpu, "silu", UnaryOp::Silu, x)
}

/// GELU(x) = x·Φ(x) in its exact (erf) form, as PyTorch's `F.gelu` and diffusers' GEGLU.
pub fn gelu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    unary(gpu, "gelu", UnaryOp::Gelu, x)
}

/// CLIP's quick_gelu(x) = x·σ(1.702·x).
pub fn quick_gelu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    unary(gpu, "quick_gelu", UnaryOp::QuickGelu, x)
}

fn unary(gpu: &Gpu, name: &str, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let p = ElementwiseParams::over(name, x)?;
    let out = gpu.empty_typed(x.shape(), x.dtype())?;
    launch(gpu, Entry::Unary(op), &p, &[x], &out)?;
    Ok(out)
}

/// diffusers' GEGLU on its projection's output: x (…, 2F) split into (h, gate) along the last
/// axis → h·GELU(gate), (…, F).
pub fn geglu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let shape = x.shape();
    let width = *shape.last().unwrap_or(&0);
    ensure(width > 0 && width.is_multiple_of(2), "geglu", || {
        format!("{shape:?}: the last axis must hold two halves")
    })?;
    let rows = x.numel() / width.max(1);
    let planes = x.reshape(&[rows, width, 1, 1])?;
    let h = super::slice_channels(gpu, &planes, 0, width / 2)?;
    let gate = super::slice_channels(gpu, &planes, width / 2, width / 2)?;
    let mut out_shape = shape.to_vec();
    *out_shape.last_mut().unwrap() = width / 2;
    mul(gpu, &h, &gelu(gpu, &gate)?)?.reshape(&out_shape)
}

/// alpha·x + beta.
pub fn affine(gpu: &Gpu, x: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    let p = ElementwiseParams {
        alpha,
        beta,
        ..ElementwiseParams::over("affine", x)?
    };
    let out = gpu.empty_typed(x.shape(), x.dtype())?;
    launch(gpu, Entry::Unary(UnaryOp::Affine), &p, &[x], &out)?;
    Ok(out)
}

/// alpha·a + beta·b.
pub fn lincomb(gpu: &Gpu, alpha: f32, a: &Tensor, beta: f32, b: &Tensor) -> Result<Tensor> {
    same_shape("lincomb", a, b)?;
    let p = ElementwiseParams {
        alpha,
        beta,
        ..ElementwiseParams::over("lincomb", a)?
    };
    let out = gpu.empty_typed(a.shape(), a.dtype())?;
    launch(gpu, Entry::Binary(BinaryOp::Lincomb), &p, &[a, b], &out)?;
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
    const OP: &str = "broadcast_lincomb";
    ensure(
        a.shape()[1..] == b.shape()[1..] && a.dim(0) > 0 && b.dim(0).is_multiple_of(a.dim(0)),
        OP,
        || {
            format!(
                "{:?} does not tile {:?} along the first axis",
                a.shape(),
                b.shape()
            )
        },
    )?;
    let p = ElementwiseParams {
        inner: checked_u32(OP, "inner", a.numel())?,
        alpha,
        beta,
        ..ElementwiseParams::over(OP, b)?
    };
    let out = gpu.empty_typed(b.shape(), b.dtype())?;
    launch(gpu, Entry::BroadcastLincomb, &p, &[a, b], &out)?;
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
    let p = ElementwiseParams::over("mul", a)?;
    let out = gpu.empty_typed(a.shape(), a.dtype())?;
    launch(gpu, Entry::Binary(BinaryOp::Mul), &p, &[a, b], &out)?;
    Ok(out)
}

/// x (B, C, H, W) combined with a vector v of shape (B, C) or (C) broadcast over pixels.
fn channel_op(
    gpu: &Gpu,
    name: &'static str,
    op: ChannelOp,
    x: &Tensor,
    v: &Tensor,
) -> Result<Tensor> {
    let [b, c, h, w] = dims::<4>(x, name, "x")?;
    ensure(v.shape() == [b, c] || v.shape() == [c], name, || {
        format!(
            "vector {:?} must be [{b}, {c}] or [{c}] for x {:?}",
            v.shape(),
            x.shape()
        )
    })?;
    let p = ElementwiseParams {
        inner: checked_u32(name, "inner", h * w)?,
        outer: checked_u32(name, "outer", v.numel())?,
        ..ElementwiseParams::over(name, x)?
    };
    let out = gpu.empty_typed(x.shape(), x.dtype())?;
    let entry = match (h * w) % 4 {
        0 => Entry::Channel4(op),
        _ => Entry::Channel(op),
    };
    launch(gpu, entry, &p, &[x, v], &out)?;
    Ok(out)
}

/// x + `v[b, c]` (or `v[c]`) at every pixel: a time-embedding projection added to a feature map.
pub fn add_channel_vec(gpu: &Gpu, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    channel_op(gpu, "add_channel_vec", ChannelOp::Add, x, v)
}

/// x · `v[b, c]` (or `v[c]`) at every pixel.
pub fn mul_channel_vec(gpu: &Gpu, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    channel_op(gpu, "mul_channel_vec", ChannelOp::Mul, x, v)
}

/// x·(1 + scale) + shift with `emb` = [scale | shift] of shape (B, 2C): ADM's scale-shift norm.
pub fn scale_shift(gpu: &Gpu, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
    const OP: &str = "scale_shift";
    let [b, c, h, w] = dims::<4>(x, OP, "x")?;
    ensure(emb.shape() == [b, 2 * c], OP, || {
        format!("emb {:?} must be [{b}, {}]", emb.shape(), 2 * c)
    })?;
    let p = ElementwiseParams {
        inner: checked_u32(OP, "inner", h * w)?,
        outer: checked_u32(OP, "outer", c)?,
        ..ElementwiseParams::over(OP, x)?
    };
    let out = gpu.empty_typed(x.shape(), x.dtype())?;
    launch(gpu, Entry::ScaleShift, &p, &[x, emb], &out)?;
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
    let out = gpu.empty_typed(&[b, c_total, h, w], parts[0].dtype())?;
    let u = |what, v| checked_u32(OP, what, v);
    let mut offset = 0;
    for t in parts {
        let c = t.dim(1);
        let p = ElementwiseParams {
            inner: u("inner", c * h * w)?,
            outer: u("outer", c_total * h * w)?,
            offset: u("offset", offset * h * w)?,
            ..ElementwiseParams::over(OP, t)?
        };
        // inner, outer and offset are then all multiples of 4.
        let entry = match (h * w) % 4 {
            0 => Entry::CopyChannels4,
            _ => Entry::CopyChannels,
        };
        launch(gpu, entry, &p, &[t], &out)?;
        offset += c;
    }
    Ok(out)
}

/// Channels [start, start + count) of x (B, C, H, W): copy_channels' adjoint, so also the
/// gradient of one part of a [`concat_channels`].
pub fn slice_channels(gpu: &Gpu, x: &Tensor, start: usize, count: usize) -> Result<Tensor> {
    const OP: &str = "slice_channels";
    let [b, c, h, w] = dims::<4>(x, OP, "x")?;
    ensure(start + count <= c, OP, || {
        format!("channels {start}..{} of {c}", start + count)
    })?;
    let hw = h * w;
    let u = |what, v| checked_u32(OP, what, v);
    let p = ElementwiseParams {
        total: u("total", b * count * hw)?,
        inner: u("inner", count * hw)?,
        outer: u("outer", c * hw)?,
        offset: u("offset", start * hw)?,
        ..Default::default()
    };
    let out = gpu.empty_typed(&[b, count, h, w], x.dtype())?;
    launch(gpu, Entry::SliceChannels, &p, &[x], &out)?;
    Ok(out)
}

/// (B, R, C) → (B, C, R).
pub fn transpose_last2(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "transpose_last2";
    let [b, r, c] = dims::<3>(x, OP, "x")?;
    let p = ElementwiseParams {
        inner: checked_u32(OP, "inner", c)?,
        outer: checked_u32(OP, "outer", r)?,
        ..ElementwiseParams::over(OP, x)?
    };
    let out = gpu.empty_typed(&[b, c, r], x.dtype())?;
    launch(gpu, Entry::Transpose, &p, &[x], &out)?;
    Ok(out)
}

fn resample(gpu: &Gpu, entry: &'static str, x: &Tensor, out_hw: (usize, usize)) -> Result<Tensor> {
    let [b, c, h, w] = dims::<4>(x, entry, "x")?;
    let total = b * c * out_hw.0 * out_hw.1;
    let u = |what, v| checked_u32(entry, what, v);
    let p = ResampleParams {
        total: u("total", total)?,
        h_in: u("h_in", h)?,
        w_in: u("w_in", w)?,
    };
    let out = gpu.empty_typed(&[b, c, out_hw.0, out_hw.1], x.dtype())?;
    // Upsampling an even width writes whole vec4s: four outputs per invocation.
    let (entry, invocations) = match (entry, w % 2) {
        ("upsample_nearest2x", 0) => ("upsample_nearest2x_4", total / 4),
        _ => (entry, total),
    };
    let kernel = Kernel::new(&shaders::RESAMPLE, entry).half(x.dtype() == DType::F16);
    gpu.dispatch(&kernel, &p, &[x], &[&out], gpu.grid_1d(invocations))?;
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
