use super::{dims, ensure};
use crate::error::Result;
use crate::gpu::{shaders, Gpu, Kernel, Params, Tensor};

const WG: usize = 256;
/// Elements one statistics workgroup reduces before the work is split further.
const CHUNK: usize = 4096;

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
    const OP: &str = "group_norm";
    let [b, c, h, w] = dims::<4>(x, OP, "x")?;
    ensure(groups > 0 && c % groups == 0, OP, || {
        format!("{c} channels are not divisible into {groups} groups")
    })?;
    ensure(gamma.shape() == [c] && beta.shape() == [c], OP, || {
        format!(
            "gamma {:?} and beta {:?} must be [{c}]",
            gamma.shape(),
            beta.shape()
        )
    })?;
    let hw = h * w;
    let group_len = (c / groups) * hw;
    let splits = group_len.div_ceil(CHUNK).max(1);
    let chunk = group_len.div_ceil(splits);
    let n_groups = b * groups;
    let p = Params::new().u(c).u(hw).u(groups).u(splits).u(chunk).f(eps);

    let partials = gpu.empty(&[n_groups * splits, 4])?;
    let stats = Kernel::new(&shaders::GROUP_NORM, "stats");
    gpu.dispatch(
        &stats,
        &p.clone().u(0),
        &[x],
        &[&partials],
        [splits as u32, n_groups as u32, 1],
    )?;

    let moments = gpu.empty(&[n_groups, 2])?;
    let finalize = Kernel::new(&shaders::GROUP_NORM, "finalize");
    gpu.dispatch(
        &finalize,
        &p.clone().u(n_groups),
        &[&partials],
        &[&moments],
        [n_groups.div_ceil(64) as u32, 1, 1],
    )?;

    let out = gpu.empty(x.shape())?;
    let apply = Kernel::new(&shaders::GROUP_NORM, "apply").with("FUSE_SILU", silu as u32);
    gpu.dispatch(
        &apply,
        &p.u(x.numel()),
        &[x, &moments, gamma, beta],
        &[&out],
        gpu.grid_1d(x.numel(), WG as u32),
    )?;
    Ok(out)
}
