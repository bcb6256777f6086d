//! What a denoiser is conditioned on, as one value that the samplers, the uncertainty estimator
//! and guidance carry without looking inside: nothing, class labels, or classifier-free
//! guidance (CFG) over either. A new kind of conditioning (Stable Diffusion's text states) is
//! one more variant here and one more arm in the networks that read it; the loop, the hooks and
//! the M-copy stacking do not change.
//!
//! CFG lives here, not in the sampler, so that every consumer of ε — the scheduler's update, the
//! estimator's M re-noised copies, the guidance rules and their backward pass — sees the
//! combined ε, as the paper's Stable Diffusion pipeline computes its uncertainty on it.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops;

/// The conditioning of a batch, one row per sample (B), or per stacked copy (M·B).
#[derive(Clone)]
pub enum Cond {
    /// Unconditional.
    None,
    /// Integer-valued class labels (B), stored as f32.
    Class(Tensor),
    /// A text encoder's states (B, tokens, width) that cross-attention reads (Stable
    /// Diffusion's CLIP `last_hidden_state`).
    Text(Tensor),
    /// Classifier-free guidance: ε = ε(uncond) + scale·(ε(cond) − ε(uncond)), both halves from
    /// one network call on the stacked batch [uncond; cond].
    Guided(Box<Guided>),
}

/// The two conditions and the scale of classifier-free guidance.
#[derive(Clone)]
pub struct Guided {
    pub cond: Cond,
    pub uncond: Cond,
    pub scale: f32,
}

impl Cond {
    /// Class labels (B) when given, unconditional otherwise.
    pub fn from_labels(labels: Option<Tensor>) -> Cond {
        labels.map_or(Cond::None, Cond::Class)
    }

    /// Classifier-free guidance between `uncond` and `cond` (both of one batch, neither guided).
    pub fn guided(cond: Cond, uncond: Cond, scale: f32) -> Result<Cond> {
        if !scale.is_finite() {
            return Err(Error::Invalid(format!(
                "the classifier-free guidance scale must be finite, got {scale}"
            )));
        }
        if matches!(cond, Cond::Guided(_)) || matches!(uncond, Cond::Guided(_)) {
            return Err(Error::Invalid(
                "classifier-free guidance cannot nest another guided condition".into(),
            ));
        }
        if std::mem::discriminant(&cond) != std::mem::discriminant(&uncond) {
            return Err(Error::Invalid(
                "classifier-free guidance needs both conditions of one kind".into(),
            ));
        }
        if cond.rows() != uncond.rows() {
            return Err(Error::Invalid(format!(
                "classifier-free guidance needs one unconditional row per conditional row ({:?} \
                 vs {:?})",
                uncond.rows(),
                cond.rows()
            )));
        }
        Ok(Cond::Guided(Box::new(Guided {
            cond,
            uncond,
            scale,
        })))
    }

    /// The rows this condition holds (None: it holds none and fits any batch).
    pub fn rows(&self) -> Option<usize> {
        match self {
            Cond::None => None,
            Cond::Class(labels) => Some(labels.dim(0)),
            Cond::Text(states) => Some(states.dim(0)),
            Cond::Guided(g) => g.cond.rows(),
        }
    }

    /// How many network rows one sample costs: 2 under classifier-free guidance.
    pub fn passes(&self) -> usize {
        match self {
            Cond::Guided(_) => 2,
            _ => 1,
        }
    }

    /// The class labels of a class-conditional network's input (None when unconditional). A
    /// network sees conditions one kind at a time: guidance is resolved by the denoiser
    /// ([`denoise`]) before the network is called.
    pub fn class_labels(&self) -> Result<Option<&Tensor>> {
        match self {
            Cond::None => Ok(None),
            Cond::Class(labels) => Ok(Some(labels)),
            Cond::Text(_) => Err(Error::Invalid(
                "this network takes class labels or nothing, not text states".into(),
            )),
            Cond::Guided(_) => Err(guidance_outside_the_denoiser()),
        }
    }

    /// The text states of a text-conditioned network's input.
    pub fn text_states(&self) -> Result<&Tensor> {
        match self {
            Cond::Text(states) => Ok(states),
            Cond::Guided(_) => Err(guidance_outside_the_denoiser()),
            _ => Err(Error::Invalid(
                "this network is text-conditioned: it needs text states (a prompt)".into(),
            )),
        }
    }

    /// The condition of `copies` stacked copies of the batch (M·B rows, copy-major).
    pub fn repeat(&self, gpu: &Gpu, copies: usize) -> Result<Cond> {
        Ok(match self {
            Cond::None => Cond::None,
            Cond::Class(labels) => Cond::Class(ops::repeat_batch(gpu, labels, copies)?),
            Cond::Text(states) => Cond::Text(ops::repeat_batch(gpu, states, copies)?),
            Cond::Guided(g) => Cond::Guided(Box::new(Guided {
                cond: g.cond.repeat(gpu, copies)?,
                uncond: g.uncond.repeat(gpu, copies)?,
                scale: g.scale,
            })),
        })
    }
}

/// A network asked to resolve classifier-free guidance itself.
fn guidance_outside_the_denoiser() -> Error {
    Error::Invalid(
        "a network takes one condition: classifier-free guidance is applied by the denoiser \
         (models::denoise), not inside the network"
            .into(),
    )
}

/// Rows `first .. first + n` of `t` along its first axis, as a new tensor.
pub fn row_range(gpu: &Gpu, t: &Tensor, first: usize, n: usize) -> Result<Tensor> {
    let mut shape = t.shape().to_vec();
    let row_bytes = t.byte_len() / shape[0].max(1) as u64;
    shape[0] = n;
    let out = gpu.empty(&shape)?;
    gpu.copy_range(t, first as u64 * row_bytes, &out)?;
    Ok(out)
}

/// `a` and `b` stacked along the first axis: [a; b].
fn stack(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mut shape = a.shape().to_vec();
    shape[0] += b.dim(0);
    let out = gpu.empty(&shape)?;
    gpu.copy_into(a, &out, 0)?;
    gpu.copy_into(b, &out, a.byte_len())?;
    Ok(out)
}

/// The two halves of a tensor stacked as [first; second] along its first axis.
fn halves(gpu: &Gpu, t: &Tensor) -> Result<(Tensor, Tensor)> {
    let half = t.dim(0) / 2;
    Ok((row_range(gpu, t, 0, half)?, row_range(gpu, t, half, half)?))
}

impl Guided {
    /// The one network call's inputs: [x; x], [t; t] and [uncond; cond].
    fn stacked(&self, gpu: &Gpu, x: &Tensor, timesteps: &Tensor) -> Result<(Tensor, Tensor, Cond)> {
        let cond = match (&self.uncond, &self.cond) {
            (Cond::None, Cond::None) => Cond::None,
            (Cond::Class(u), Cond::Class(c)) => Cond::Class(stack(gpu, u, c)?),
            (Cond::Text(u), Cond::Text(c)) => Cond::Text(stack(gpu, u, c)?),
            _ => {
                return Err(Error::Invalid(
                    "classifier-free guidance needs both conditions of one kind".into(),
                ))
            }
        };
        Ok((stack(gpu, x, x)?, stack(gpu, timesteps, timesteps)?, cond))
    }

    /// ε = ε_u + w·(ε_c − ε_u) from the stacked output [ε_u; ε_c] (diffusers' order of
    /// operations).
    fn combine(&self, gpu: &Gpu, stacked: &Tensor) -> Result<Tensor> {
        let (uncond, cond) = halves(gpu, stacked)?;
        let difference = ops::lincomb(gpu, 1.0, &cond, -1.0, &uncond)?;
        ops::lincomb(gpu, 1.0, &uncond, self.scale, &difference)
    }
}

/// The denoiser's ε for `x` at `timesteps` under `cond`: the network's own, or the
/// classifier-free combination of its two conditions from one call.
pub fn denoise(
    model: &dyn super::EpsModel,
    gpu: &Gpu,
    x: &Tensor,
    timesteps: &Tensor,
    cond: &Cond,
) -> Result<Tensor> {
    match cond {
        Cond::Guided(g) => {
            let (x2, t2, c2) = g.stacked(gpu, x, timesteps)?;
            g.combine(gpu, &model.predict_eps(gpu, &x2, &t2, &c2)?)
        }
        _ => model.predict_eps(gpu, x, timesteps, cond),
    }
}

/// ∂⟨ε(x), v⟩/∂x of [`denoise`]'s ε: under guidance the network's VJP of the stacked call with
/// the cotangents [(1 − w)·v; w·v], its two halves summed.
pub fn denoise_vjp(
    model: &dyn super::EpsModel,
    gpu: &Gpu,
    x: &Tensor,
    timesteps: &Tensor,
    cond: &Cond,
    v: &Tensor,
) -> Result<Tensor> {
    match cond {
        Cond::Guided(g) => {
            let (x2, t2, c2) = g.stacked(gpu, x, timesteps)?;
            let w = g.scale;
            let v2 = stack(
                gpu,
                &ops::affine(gpu, v, 1.0 - w, 0.0)?,
                &ops::affine(gpu, v, w, 0.0)?,
            )?;
            let (du, dc) = halves(gpu, &model.vjp(gpu, &x2, &t2, &c2, &v2)?)?;
            ops::add(gpu, &du, &dc)
        }
        _ => model.vjp(gpu, x, timesteps, cond, v),
    }
}
