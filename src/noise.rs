//! The run's noise plan: the only place that turns (seed, purpose, step, copy, sample index) into
//! a Philox stream. The sampler's starting and ancestral noise, the estimator's perturbations,
//! `eval`'s noise images and `--dump-noise` all draw through it, so one draw can always be
//! regenerated on its own — by wgsl-diff or by `tools/common/wgsl_noise.py`.

use crate::error::Error;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::{self, NoiseKey};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

/// What a noise tensor is for; with the seed, step and copy index it selects the Philox stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum NoisePurpose {
    /// x_T, the starting noise.
    Initial = 1,
    /// z of a stochastic sampler step.
    Ancestral = 2,
    /// n_m, the re-noising of x̂0 for uncertainty estimation (Algorithm 1).
    Uncertainty = 3,
    /// n_m, the re-noising of x̂0 for uncertainty guidance (Algorithm 2), drawn apart from the
    /// estimator's so that scoring a guided run does not change its guidance.
    Guidance = 4,
    /// z deciding MC-Dropout's masks: one draw per dropout layer, M copies.
    Dropout = 5,
    /// z noising a real image to step `step`'s timestep, for the real-image reference of the
    /// z-scored uncertainty modes (`wgsl-diff reference`); rows are image indices.
    Reference = 6,
}

/// Dropout draws put their layer above the sampling step in the key's step field:
/// `layer << DROPOUT_LAYER_SHIFT | step`.
pub const DROPOUT_LAYER_SHIFT: u32 = 16;

impl NoisePurpose {
    /// The word used in dumped file names.
    pub fn name(self) -> &'static str {
        match self {
            NoisePurpose::Initial => "init",
            NoisePurpose::Ancestral => "ancestral",
            NoisePurpose::Uncertainty => "uncertainty",
            NoisePurpose::Guidance => "guidance",
            NoisePurpose::Dropout => "dropout",
            NoisePurpose::Reference => "reference",
        }
    }

    /// Whether each draw is M stacked copies (dumped one file per copy).
    pub fn per_copy(self) -> bool {
        matches!(
            self,
            NoisePurpose::Uncertainty | NoisePurpose::Guidance | NoisePurpose::Dropout
        )
    }
}

/// One draw of a run: `copies` stacked tensors of `shape` (first axis: samples
/// `first_index ..`), copy m from the stream of (purpose, step, m).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoiseDraw {
    pub purpose: NoisePurpose,
    pub step: usize,
    /// The network layer a dropout draw is for (0 for every other purpose).
    pub layer: usize,
    pub copies: usize,
    pub shape: Vec<usize>,
    pub first_index: usize,
}

/// The noise streams of a run with one seed, optionally recording every draw, or replaying
/// given tensors for some purposes (another implementation's noise, for comparisons).
#[derive(Debug)]
pub struct NoisePlan {
    seed: u64,
    record: Option<RefCell<Vec<NoiseDraw>>>,
    replay: RefCell<HashMap<u16, VecDeque<Tensor>>>,
}

impl NoisePlan {
    pub fn new(seed: u64) -> NoisePlan {
        NoisePlan {
            seed,
            record: None,
            replay: RefCell::default(),
        }
    }

    /// A plan that remembers each draw, for [`take_draws`](Self::take_draws).
    pub fn recording(seed: u64) -> NoisePlan {
        NoisePlan {
            record: Some(RefCell::default()),
            ..NoisePlan::new(seed)
        }
    }

    /// Draws of `purpose` return these tensors, in order, instead of generated noise (each
    /// must have the shape of the draw it replaces).
    pub fn with_replay(self, purpose: NoisePurpose, tensors: Vec<Tensor>) -> NoisePlan {
        self.replay
            .borrow_mut()
            .insert(purpose as u16, tensors.into());
        self
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The Philox key of (purpose, step, copy): rows of the stream are sample indices.
    pub fn key(&self, purpose: NoisePurpose, step: usize, copy: usize) -> NoiseKey {
        NoiseKey {
            seed: self.seed,
            tag: (purpose as u64) << 48 | (copy as u64 & 0xffff) << 32 | step as u64,
        }
    }

    /// x_T for samples `first_index ..` (shape (B, C, H, W)).
    pub fn initial(&self, gpu: &Gpu, shape: &[usize], first_index: usize) -> Result<Tensor> {
        self.draw_new(gpu, NoisePurpose::Initial, (0, 0), 1, shape, first_index)
    }

    /// z of sampler step `step`.
    pub fn ancestral(
        &self,
        gpu: &Gpu,
        shape: &[usize],
        step: usize,
        first_index: usize,
    ) -> Result<Tensor> {
        self.draw_new(
            gpu,
            NoisePurpose::Ancestral,
            (step, 0),
            1,
            shape,
            first_index,
        )
    }

    /// z noising real images `first_index ..` to step `step`'s timestep (the reference).
    pub fn reference(
        &self,
        gpu: &Gpu,
        shape: &[usize],
        step: usize,
        first_index: usize,
    ) -> Result<Tensor> {
        self.draw_new(
            gpu,
            NoisePurpose::Reference,
            (step, 0),
            1,
            shape,
            first_index,
        )
    }

    /// The M perturbations of step `step` for `purpose` (uncertainty or guidance), stacked
    /// copy-major: (M·B, C, H, W).
    pub fn perturbation(
        &self,
        gpu: &Gpu,
        purpose: NoisePurpose,
        shape: &[usize],
        copies: usize,
        step: usize,
        first_index: usize,
    ) -> Result<Tensor> {
        self.draw_new(gpu, purpose, (step, 0), copies, shape, first_index)
    }

    /// The z of dropout layer `layer` (in forward order) at step `step`, M copies stacked
    /// copy-major like [`perturbation`](Self::perturbation); a mask keeps the elements whose z
    /// reaches Φ⁻¹(rate).
    pub fn dropout(
        &self,
        gpu: &Gpu,
        shape: &[usize],
        copies: usize,
        (step, layer): (usize, usize),
        first_index: usize,
    ) -> Result<Tensor> {
        let limit = 1 << DROPOUT_LAYER_SHIFT;
        if step >= limit || layer >= limit {
            return Err(Error::Invalid(format!(
                "dropout noise: step {step} or layer {layer} exceeds {limit}"
            )));
        }
        self.draw_new(
            gpu,
            NoisePurpose::Dropout,
            (step, layer),
            copies,
            shape,
            first_index,
        )
    }

    /// Draws `draw` again: the same values it gave the first time.
    pub fn redraw(&self, gpu: &Gpu, draw: &NoiseDraw) -> Result<Tensor> {
        let key = self.key(
            draw.purpose,
            draw.layer << DROPOUT_LAYER_SHIFT | draw.step,
            0,
        );
        ops::normal_copies(gpu, &draw.shape, draw.copies, key, draw.first_index)
    }

    /// The draws recorded since the last call (empty when not recording).
    pub fn take_draws(&self) -> Vec<NoiseDraw> {
        self.record.as_ref().map(|r| r.take()).unwrap_or_default()
    }

    fn draw_new(
        &self,
        gpu: &Gpu,
        purpose: NoisePurpose,
        (step, layer): (usize, usize),
        copies: usize,
        shape: &[usize],
        first_index: usize,
    ) -> Result<Tensor> {
        let draw = NoiseDraw {
            purpose,
            step,
            layer,
            copies,
            shape: shape.to_vec(),
            first_index,
        };
        let replayed = match self.replay.borrow_mut().get_mut(&(purpose as u16)) {
            Some(queue) => Some(queue.pop_front().ok_or_else(|| {
                Error::Invalid(format!("the replayed {} noise ran out", purpose.name()))
            })?),
            None => None,
        };
        let tensor = match replayed {
            Some(t) => check_replayed(t, &draw)?,
            None => self.redraw(gpu, &draw)?,
        };
        if let Some(record) = &self.record {
            record.borrow_mut().push(draw);
        }
        Ok(tensor)
    }
}

fn check_replayed(t: Tensor, draw: &NoiseDraw) -> Result<Tensor> {
    let mut want = draw.shape.clone();
    want[0] *= draw.copies;
    if t.shape() != want {
        return Err(Error::Invalid(format!(
            "replayed {} noise {:?} must be {want:?}",
            draw.purpose.name(),
            t.shape()
        )));
    }
    Ok(t)
}
