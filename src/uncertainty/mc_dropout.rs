//! The MC-Dropout baseline's predictions (the paper's comparison, docs/method.md §6): M passes of
//! the network on the same x_t with dropout active, each copy with its own masks from the run's
//! noise plan, all M·B copies in one batched forward.

use crate::error::Result;
use crate::gpu::Tensor;
use crate::models::DropoutMasks;
use crate::ops;
use crate::sampling::StepContext;

/// ε of `copies` dropout passes at the step's x_t, stacked copy-major (M·B, C, H, W).
pub fn predict_copies(ctx: &StepContext, copies: usize) -> Result<Tensor> {
    let gpu = ctx.gpu;
    let x = ops::repeat_batch(gpu, ctx.x, copies)?;
    let (timesteps, cond) = ctx.repeated(copies)?;
    let masks = DropoutMasks::new(ctx.noise, ctx.step, copies, ctx.first_index);
    ctx.model
        .predict_eps_mc_dropout(gpu, &x, &timesteps, &cond, &masks)
}
