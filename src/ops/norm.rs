//! Group normalisation with an optional fused SiLU (group_norm.wgsl).

use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, DType, Gpu, Kernel, KernelClass, Tensor};

kernel_params! {
    pub(super) struct GroupNormParams for GROUP_NORM::Params {
        channels: u32,
        hw: u32,
        groups: u32,
        splits: u32,
        chunk: u32,
        eps: f32,
        total: u32,
    }
}

/// Elements one statistics workgroup reduces before the work is split further.
const CHUNK: usize = 4096;
/// group_norm.wgsl's (and group_norm_grad.wgsl's) `STATS_WG` on CPU adapters: threads per statistics workgroup (a power of
/// two, for the reduction tree); each loops over CHUNK / 8 = 512 elements.
pub(super) const BLOCKED_STATS_WG: u32 = 8;
/// group_norm.wgsl's `FINALIZE_WG`: threads per `finalize` workgroup, one per group.
pub(super) const FINALIZE_WG: usize = 64;

/// How the reduction over one group is split: (groups in the batch, splits per group, elements
/// per split) for x (B, C, H, W). Shared with the gradient's reductions (norm_grad.rs).
pub(super) fn split_groups(
    op: &'static str,
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<(usize, usize, usize)> {
    let [b, c, h, w] = dims::<4>(x, op, "x")?;
    // The affine parameters are f32 whatever the activations' storage.
    gamma.ensure_f32(op)?;
    beta.ensure_f32(op)?;
    ensure(groups > 0 && c % groups == 0, op, || {
        format!("{c} channels are not divisible into {groups} groups")
    })?;
    ensure(gamma.shape() == [c] && beta.shape() == [c], op, || {
        format!(
            "gamma {:?} and beta {:?} must be [{c}]",
            gamma.shape(),
            beta.shape()
        )
    })?;
    let group_len = (c / groups) * h * w;
    let splits = group_len.div_ceil(CHUNK).max(1);
    Ok((b * groups, splits, group_len.div_ceil(splits)))
}

/// GroupNorm over (B, C, H, W) with affine gamma/beta (C), optionally followed by SiLU.
pub fn group_norm(
    gpu: &Gpu,
    x: &Tensor,
    groups: usize,
    eps: f32,
    gamma: &Tensor,
    beta: &Tensor,
    silu: bool,
) -> Result<Tensor> {
    Ok(group_norm_saving(gpu, x, groups, eps, gamma, beta, silu)?.0)
}

/// [`group_norm`] and the per-group (mean, 1/sqrt(var + eps)) it normalised with, (B·G, 2): what
/// its input gradient needs besides x.
pub fn group_norm_saving(
    gpu: &Gpu,
    x: &Tensor,
    groups: usize,
    eps: f32,
    gamma: &Tensor,
    beta: &Tensor,
    silu: bool,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "group_norm";
    let (n_groups, splits, chunk) = split_groups(OP, x, groups, gamma, beta)?;
    let [_, c, h, w] = dims::<4>(x, OP, "x")?;
    let u = |what, v| checked_u32(OP, what, v);
    // `total` differs per pass: unused by stats, the group count, then the element count.
    let p = GroupNormParams {
        channels: u("channels", c)?,
        hw: u("hw", h * w)?,
        groups: u("groups", groups)?,
        splits: u("splits", splits)?,
        chunk: u("chunk", chunk)?,
        eps,
        total: 0,
    };

    let partials = gpu.empty(&[n_groups * splits, 4])?;
    // f16 activations in, f32 statistics, f16 out (the half variant's `act` bindings).
    let half = x.dtype() == DType::F16;
    let stats = Kernel::new(&shaders::GROUP_NORM, "stats").half(half);
    let stats = match gpu.kernel_class() {
        KernelClass::Tiled => stats,
        KernelClass::Blocked => stats.with("STATS_WG", BLOCKED_STATS_WG),
    };
    gpu.dispatch(&stats, &p, &[x], &[&partials], [splits, n_groups, 1])?;

    let moments = gpu.empty(&[n_groups, 2])?;
    let finalize = Kernel::new(&shaders::GROUP_NORM, "finalize");
    let p = GroupNormParams {
        total: u("groups in the batch", n_groups)?,
        ..p
    };
    gpu.dispatch(
        &finalize,
        &p,
        &[&partials],
        &[&moments],
        [n_groups.div_ceil(FINALIZE_WG), 1, 1],
    )?;

    let out = gpu.empty_typed(x.shape(), x.dtype())?;
    // Elements per invocation: four where a plane holds whole vec4s (apply4), sixteen on the
    // blocked class where it holds whole groups of four (group_norm.wgsl's QUADS), else one.
    let blocked = gpu.kernel_class() == KernelClass::Blocked;
    let each = match h * w {
        hw if blocked && hw % 16 == 0 => 16,
        hw if hw % 4 == 0 => 4,
        _ => 1,
    };
    let entry = if each == 1 { "apply" } else { "apply4" };
    let apply = Kernel::new(&shaders::GROUP_NORM, entry)
        .flag("FUSE_SILU", silu)
        .with("QUADS", (each / 4).max(1) as u32)
        .half(half);
    let p = GroupNormParams {
        total: u("total", x.numel())?,
        ..p
    };
    gpu.dispatch(
        &apply,
        &p,
        &[x, &moments, gamma, beta],
        &[&out],
        gpu.grid_1d(x.numel() / each),
    )?;
    Ok((out, moments))
}

/// The rows of `x` (…, C) as group norm's (rows, C, 1, 1): layer norm over the last axis is
/// group norm with one group over a one-pixel plane.
fn as_planes(op: &'static str, x: &Tensor) -> Result<Tensor> {
    let c = *x.shape().last().unwrap_or(&0);
    ensure(c > 0 && !x.shape().is_empty(), op, || {
        format!("{:?}: needs a last axis to normalise", x.shape())
    })?;
    x.reshape(&[x.numel() / c, c, 1, 1])
}

/// LayerNorm over the last axis (PyTorch's `nn.LayerNorm(C)`): each row of x (…, C) becomes
/// (x − mean)/√(var + eps)·γ + β with the biased variance.
pub fn layer_norm(
    gpu: &Gpu,
    x: &Tensor,
    eps: f32,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<Tensor> {
    Ok(layer_norm_saving(gpu, x, eps, gamma, beta)?.0)
}

/// [`layer_norm`] and each row's (mean, 1/√(var + eps)), (rows, 2): what its input gradient
/// needs besides x.
pub fn layer_norm_saving(
    gpu: &Gpu,
    x: &Tensor,
    eps: f32,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let planes = as_planes("layer_norm", x)?;
    let (y, moments) = group_norm_saving(gpu, &planes, 1, eps, gamma, beta, false)?;
    Ok((y.reshape(x.shape())?, moments))
}
