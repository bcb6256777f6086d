//! Class labels of class-conditional models: which class each sample gets, and the one check
//! that a label suits the model.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

/// The class of every sample of a run: one fixed class, or sample index mod the number of
/// classes (so a large run covers every class evenly), or none for unconditional models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassLabels {
    classes: Option<usize>,
    fixed: Option<usize>,
}

impl ClassLabels {
    /// Labels for a model with `classes` classes (None: unconditional), optionally all `fixed`.
    pub fn new(classes: Option<usize>, fixed: Option<usize>) -> Result<ClassLabels> {
        if let Some(class) = fixed {
            check_class(classes, class)?;
        }
        Ok(ClassLabels { classes, fixed })
    }

    /// The class of sample `index`.
    pub fn of(&self, index: usize) -> Option<usize> {
        self.classes.map(|n| self.fixed.unwrap_or(index % n))
    }

    /// The classes of samples `first .. first + size`.
    pub fn batch(&self, first: usize, size: usize) -> Option<Vec<usize>> {
        self.classes
            .map(|_| (first..first + size).filter_map(|i| self.of(i)).collect())
    }
}

/// Whether `class` is a label of a model with `classes` classes (None: unconditional).
fn check_class(classes: Option<usize>, class: usize) -> Result<()> {
    match classes {
        None => Err(Error::Invalid(
            "this model is unconditional: a class label does not apply".into(),
        )),
        Some(n) if class >= n => Err(Error::Invalid(format!(
            "class {class} out of range: the model has {n} classes"
        ))),
        Some(_) => Ok(()),
    }
}

/// Checks `labels` against the model and the batch size and uploads them as floats (B).
pub(crate) fn upload_labels(
    gpu: &Gpu,
    classes: Option<usize>,
    labels: Option<&[usize]>,
    size: usize,
) -> Result<Option<Tensor>> {
    let Some(labels) = labels else {
        return match classes {
            Some(_) => Err(Error::Invalid(
                "this model is class-conditional: every sample needs a class label".into(),
            )),
            None => Ok(None),
        };
    };
    for &class in labels {
        check_class(classes, class)?;
    }
    if labels.len() != size {
        return Err(Error::Invalid(format!(
            "{} labels for {size} samples",
            labels.len()
        )));
    }
    let values: Vec<f32> = labels.iter().map(|&c| c as f32).collect();
    Ok(Some(gpu.upload(&[size], &values)?))
}
