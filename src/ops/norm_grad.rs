//! The input gradient of [`group_norm`](super::group_norm) (group_norm_grad.wgsl).

use super::norm::{split_groups, BLOCKED_STATS_WG, FINALIZE_WG};
use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, KernelClass, Tensor};

kernel_params! {
    pub(super) struct GroupNormGradParams for GROUP_NORM_GRAD::Params {
        channels: u32,
        hw: u32,
        groups: u32,
        splits: u32,
        chunk: u32,
        total: u32,
    }
}

/// ∂⟨group_norm(x, …, silu), dy⟩/∂x from the saved input `x` and the `moments` that
/// [`group_norm_saving`](super::group_norm_saving) returned with the output; the other arguments
/// are the forward's.
#[allow(clippy::too_many_arguments)] // the forward's arguments, plus what it saved and dy
pub fn group_norm_input_grad(
    gpu: &Gpu,
    x: &Tensor,
    moments: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    silu: bool,
    dy: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "group_norm_input_grad";
    let (n_groups, splits, chunk) = split_groups(OP, x, groups, gamma, beta)?;
    let [_, c, h, w] = dims::<4>(x, OP, "x")?;
    ensure(dy.shape() == x.shape(), OP, || {
        format!("dy {:?} must match x {:?}", dy.shape(), x.shape())
    })?;
    ensure(moments.shape() == [n_groups, 2], OP, || {
        format!("moments {:?} must be [{n_groups}, 2]", moments.shape())
    })?;
    let u = |what, v| checked_u32(OP, what, v);
    // `total` differs per pass as in the forward: unused, the group count, the element count.
    let p = GroupNormGradParams {
        channels: u("channels", c)?,
        hw: u("hw", h * w)?,
        groups: u("groups", groups)?,
        splits: u("splits", splits)?,
        chunk: u("chunk", chunk)?,
        total: 0,
    };
    let inputs = [x, moments, gamma, beta, dy];

    let partials = gpu.empty(&[n_groups * splits, 2])?;
    let stats = Kernel::new(&shaders::GROUP_NORM_GRAD, "stats").flag("FUSE_SILU", silu);
    let stats = match gpu.kernel_class() {
        KernelClass::Tiled => stats,
        KernelClass::Blocked => stats.with("STATS_WG", BLOCKED_STATS_WG),
    };
    gpu.dispatch(&stats, &p, &inputs, &[&partials], [splits, n_groups, 1])?;

    let means = gpu.empty(&[n_groups, 2])?;
    let finalize = Kernel::new(&shaders::GROUP_NORM_GRAD, "finalize");
    let p = GroupNormGradParams {
        total: u("groups in the batch", n_groups)?,
        ..p
    };
    let grid = [n_groups.div_ceil(FINALIZE_WG), 1, 1];
    gpu.dispatch(&finalize, &p, &[&partials], &[&means], grid)?;

    let dx = gpu.empty(x.shape())?;
    // Four elements per invocation where a plane holds whole vec4s.
    let (entry, invocations) = match (h * w) % 4 {
        0 => ("apply4", x.numel() / 4),
        _ => ("apply", x.numel()),
    };
    let apply = Kernel::new(&shaders::GROUP_NORM_GRAD, entry).flag("FUSE_SILU", silu);
    let p = GroupNormGradParams {
        total: u("total", x.numel())?,
        ..p
    };
    let mut with_means = inputs.to_vec();
    with_means.push(&means);
    gpu.dispatch(&apply, &p, &with_means, &[&dx], gpu.grid_1d(invocations))?;
    Ok(dx)
}

/// ∂⟨layer_norm(x), dy⟩/∂x from x, the rows' moments ([`super::layer_norm_saving`]) and dy.
pub fn layer_norm_input_grad(
    gpu: &Gpu,
    x: &Tensor,
    moments: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    dy: &Tensor,
) -> Result<Tensor> {
    let c = *x.shape().last().unwrap_or(&0);
    let rows = x.numel() / c.max(1);
    let planes = |t: &Tensor| t.reshape(&[rows, c, 1, 1]);
    let dx = group_norm_input_grad(
        gpu,
        &planes(x)?,
        moments,
        1,
        gamma,
        beta,
        false,
        &planes(dy)?,
    )?;
    dx.reshape(x.shape())
}
