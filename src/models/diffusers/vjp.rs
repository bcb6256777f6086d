//! The UNets' vector-Jacobian product with respect to their input, ∂⟨ε_θ(x, t, y), v⟩/∂x, in
//! batches sized so that the forward's tape fits beside the backward (what gradient guidance
//! needs, docs/method.md §3, Rule G): UNet2DModel's here, and the slicing and tape budget
//! UNet2DConditionModel's shares.

use super::unet_2d::UNet2DModel;
use super::unet_2d_blocks::{DownBlockType, UpBlockType};
use crate::error::{ensure, Result};
use crate::gpu::{Gpu, Tensor};
use crate::models::row_range;
use crate::ops::dims;

/// The most memory one backward's tape may take, in maximal storage bindings. wgpu does not
/// report how much memory a device has, so the tape is held to a few of its largest buffers.
const TAPE_BUDGET_BINDINGS: u64 = 4;

/// Per resnet, the maps a tape keeps at most (the norms' inputs; the scale-shift SiLU input).
const RESNET_MAPS: usize = 3;
/// Per attention: the norm's input, q, k, v and the attention output.
const ATTENTION_MAPS: usize = 5;
/// The backward's own transient maps at the top resolution: the running gradient, the
/// gradients of a concatenation and of its halves, and a few temporaries.
const TRANSIENT_MAPS: usize = 8;

impl UNet2DModel {
    /// ∂⟨ε_θ(x, t, y), v⟩/∂x for `x` (B, C_in, H, W), `timesteps` (B), `labels` (B) and `v`
    /// shaped like ε (B, C_out, H, W). Batches larger than [`Self::vjp_max_batch`] run in
    /// slices, each a saving forward and its backward.
    pub fn vjp(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        labels: Option<&Tensor>,
        v: &Tensor,
    ) -> Result<Tensor> {
        self.vjp_sliced(gpu, x, timesteps, labels, v, self.vjp_max_batch(gpu))
    }

    /// [`Self::vjp`] running at most `per_call` (≥ 1) samples at once.
    pub fn vjp_sliced(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &Tensor,
        labels: Option<&Tensor>,
        v: &Tensor,
        per_call: usize,
    ) -> Result<Tensor> {
        const OP: &str = "UNet2DModel vjp";
        let [b, _, h, w] = dims::<4>(x, OP, "x")?;
        let out_shape = [b, self.config.out_channels, h, w];
        ensure(v.shape() == out_shape, OP, || {
            format!(
                "cotangent {:?} must be shaped like ε for x {:?}: {out_shape:?}",
                v.shape(),
                x.shape()
            )
        })?;
        let per_sample = |t: Option<&Tensor>| t.is_none_or(|t| t.shape() == [b]);
        ensure(
            per_sample(Some(timesteps)) && per_sample(labels),
            OP,
            || format!("timesteps and labels need one entry per sample ({b})"),
        )?;
        in_slices(gpu, x, v, per_call, |rows| {
            let labels = labels.map(|l| rows.of(gpu, l)).transpose()?;
            let (x, t) = (rows.of(gpu, x)?, rows.of(gpu, timesteps)?);
            let (_, tape) = self.forward_saving(gpu, &x, &t, labels.as_ref())?;
            self.backward(gpu, &tape, &rows.of(gpu, v)?)
        })
    }

    /// The largest batch one backward runs at once: no tensor over a storage binding (as for
    /// the forward, [`Self::max_batch`]) and the tape within a few maximal bindings of memory
    /// (`TAPE_BUDGET_BINDINGS`).
    pub fn vjp_max_batch(&self, gpu: &Gpu) -> usize {
        self.max_batch(gpu)
            .min(tape_fit(gpu, self.tape_values_per_sample()))
    }

    /// An upper bound on the values a backward holds per sample: per level, each resnet's and
    /// attention's saved maps and the skips, all counted at the widest concatenation's width.
    fn tape_values_per_sample(&self) -> usize {
        let cfg = &self.config;
        let side = cfg.sample_size.unwrap_or(1);
        let widest = 2 * cfg.block_out_channels.iter().max().copied().unwrap_or(1);
        let levels = cfg.block_out_channels.len();
        let layers = cfg.layers_per_block;
        let mut maps_times_pixels = TRANSIENT_MAPS * side * side;
        for level in 0..levels {
            let down_attention = cfg.down_block_types[level] == DownBlockType::AttnDownBlock2D;
            let up_attention = cfg.up_block_types[levels - 1 - level] == UpBlockType::AttnUpBlock2D;
            let mut resnets = layers + (layers + 1);
            let mut attentions =
                usize::from(down_attention) * layers + usize::from(up_attention) * (layers + 1);
            if level + 1 == levels {
                resnets += 2;
                attentions += usize::from(cfg.add_attention);
            }
            let maps = RESNET_MAPS * resnets + ATTENTION_MAPS * attentions + (layers + 1);
            let level_side = side.div_ceil(1 << level);
            maps_times_pixels += maps * level_side * level_side;
        }
        maps_times_pixels * widest
    }
}

/// How many samples' tapes of `values_per_sample` f32 values fit the budget (at least one).
pub(in crate::models) fn tape_fit(gpu: &Gpu, values_per_sample: usize) -> usize {
    let tape_bytes = (values_per_sample * 4) as u64;
    let budget = TAPE_BUDGET_BINDINGS * gpu.max_tensor_bytes();
    (budget / tape_bytes.max(1)).max(1) as usize
}

/// The samples one slice of a sliced VJP covers.
pub(in crate::models) struct Rows {
    first: usize,
    n: usize,
    whole: bool,
}

impl Rows {
    /// This slice's rows of a per-sample tensor (the tensor itself when the slice is whole).
    pub(in crate::models) fn of(&self, gpu: &Gpu, t: &Tensor) -> Result<Tensor> {
        match self.whole {
            true => Ok(t.clone()),
            false => row_range(gpu, t, self.first, self.n),
        }
    }
}

/// A VJP with respect to `x` over slices of at most `per_call` (≥ 1) samples: `one` runs a
/// saving forward and its backward on a slice, and the slices' gradients fill one tensor.
pub(in crate::models) fn in_slices(
    gpu: &Gpu,
    x: &Tensor,
    v: &Tensor,
    per_call: usize,
    mut one: impl FnMut(&Rows) -> Result<Tensor>,
) -> Result<Tensor> {
    const OP: &str = "vjp";
    let b = x.dim(0);
    ensure(v.dim(0) == b, OP, || {
        format!(
            "cotangent {:?} and x {:?} differ in batch",
            v.shape(),
            x.shape()
        )
    })?;
    let per_call = per_call.max(1);
    if b <= per_call {
        return one(&Rows {
            first: 0,
            n: b,
            whole: true,
        });
    }
    let grad = gpu.empty(x.shape())?;
    for first in (0..b).step_by(per_call) {
        let n = per_call.min(b - first);
        let part = one(&Rows {
            first,
            n,
            whole: false,
        })?;
        gpu.copy_into(&part, &grad, (first * x.numel() / b * 4) as u64)?;
    }
    Ok(grad)
}
