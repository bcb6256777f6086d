//! MC-Dropout as a network sees it: the dropout masks one forward pass over M stacked copies
//! of a batch applies, drawn from the run's noise plan so that they depend only on (seed, step,
//! layer, copy, sample index) like all of the run's noise.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::noise::NoisePlan;
use crate::ops;
use std::cell::Cell;

/// The masks of one MC-Dropout forward at sampling step `step` over `copies` stacked copies
/// (copy-major) of samples `first_index ..`. Dropout layers take their masks in forward order,
/// layer 0 first, so one value serves exactly one forward pass.
pub struct DropoutMasks<'a> {
    noise: &'a NoisePlan,
    step: usize,
    copies: usize,
    first_index: usize,
    next_layer: Cell<usize>,
}

impl<'a> DropoutMasks<'a> {
    pub fn new(
        noise: &'a NoisePlan,
        step: usize,
        copies: usize,
        first_index: usize,
    ) -> DropoutMasks<'a> {
        DropoutMasks {
            noise,
            step,
            copies,
            first_index,
            next_layer: Cell::new(0),
        }
    }

    /// Dropout layers used so far.
    pub fn layers(&self) -> usize {
        self.next_layer.get()
    }

    /// `h` through the next dropout layer, at `rate`.
    pub fn apply(&self, gpu: &Gpu, h: &Tensor, rate: f64) -> Result<Tensor> {
        let layer = self.next_layer.get();
        self.next_layer.set(layer + 1);
        let mut shape = h.shape().to_vec();
        if shape.is_empty() || !shape[0].is_multiple_of(self.copies) {
            return Err(Error::Invalid(format!(
                "MC-Dropout: activation {shape:?} is not {} stacked copies",
                self.copies
            )));
        }
        shape[0] /= self.copies;
        let z = self.noise.dropout(
            gpu,
            &shape,
            self.copies,
            (self.step, layer),
            self.first_index,
        )?;
        ops::dropout(gpu, h, &z, rate)
    }
}
