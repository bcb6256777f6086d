//! Class labels of class-conditional models: which class each sample gets, and the one check
//! that a label suits the model.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::{Cond, EpsModel};

/// How a user chose the classes of a class-conditional run (`--class N` or `--class cycle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassChoice {
    /// Every sample gets this class.
    Fixed(usize),
    /// Sample i gets class i mod the number of classes, so a large run covers every class evenly.
    Cycle,
}

impl std::str::FromStr for ClassChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<ClassChoice> {
        if s == "cycle" {
            return Ok(ClassChoice::Cycle);
        }
        s.parse().map(ClassChoice::Fixed).map_err(|_| {
            Error::Invalid(format!(
                "{s:?} is not a class: expected a class index or \"cycle\""
            ))
        })
    }
}

impl std::fmt::Display for ClassChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassChoice::Fixed(class) => write!(f, "{class}"),
            ClassChoice::Cycle => f.write_str("cycle"),
        }
    }
}

/// The class of every sample of a run, or none for unconditional models; with classifier-free
/// guidance toward it where the model was trained with a null class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassLabels {
    classes: Option<usize>,
    choice: Option<ClassChoice>,
    guidance: Option<ClassGuidance>,
}

/// Classifier-free guidance between a sample's class and the model's null class (U-ViT's ImageNet
/// models: class 1000): ε = ε(null) + scale·(ε(class) − ε(null)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassGuidance {
    pub null_class: usize,
    pub scale: f32,
}

impl ClassLabels {
    /// Labels for a model with `classes` classes (None: unconditional). A class-conditional
    /// model needs a choice and an unconditional one refuses any: no class is made up.
    pub fn new(classes: Option<usize>, choice: Option<ClassChoice>) -> Result<ClassLabels> {
        match (classes, choice) {
            (Some(n), None) => {
                return Err(Error::Invalid(format!(
                    "this model is class-conditional ({n} classes): choose the class with \
                     --class N (0..{}) or --class cycle (sample i gets class i mod {n})",
                    n.saturating_sub(1)
                )))
            }
            (_, Some(ClassChoice::Fixed(class))) => check_class(classes, class)?,
            (None, Some(ClassChoice::Cycle)) => check_class(None, 0)?,
            (Some(_), Some(ClassChoice::Cycle)) | (None, None) => {}
        }
        Ok(ClassLabels {
            classes,
            choice,
            guidance: None,
        })
    }

    /// Labels for `model`'s classes ([`Self::new`]); a fixed class that is the model's null
    /// class (the unconditional row of classifier-free guidance) is refused by name.
    pub fn for_model(model: &dyn EpsModel, choice: Option<ClassChoice>) -> Result<ClassLabels> {
        if let (Some(ClassChoice::Fixed(class)), Some(null)) = (choice, model.null_class()) {
            if class == null {
                return Err(Error::Invalid(format!(
                    "class {class} is the model's null class, the unconditional row of \
                     classifier-free guidance (--cfg-scale), not a class to draw: choose \
                     0..{}",
                    null.saturating_sub(1)
                )));
            }
        }
        ClassLabels::new(model.num_classes(), choice)
    }

    /// These labels guided toward their class away from `guidance.null_class`.
    pub fn with_guidance(self, guidance: ClassGuidance) -> ClassLabels {
        ClassLabels {
            guidance: Some(guidance),
            ..self
        }
    }

    /// The condition of samples `first .. first + size`: their labels (with classifier-free
    /// guidance when asked), or none for an unconditional model.
    pub fn condition(&self, gpu: &Gpu, first: usize, size: usize) -> Result<Cond> {
        let labels = self.batch(first, size);
        let cond = upload_labels(gpu, self.classes, labels.as_deref(), size)?;
        match (self.guidance, cond) {
            (None, cond) => Ok(cond),
            (Some(g), cond @ Cond::Class(_)) => {
                let null = gpu.upload(&[size], &vec![g.null_class as f32; size])?;
                Cond::guided(cond, Cond::Class(null), g.scale)
            }
            (Some(_), _) => Err(Error::Invalid(
                "classifier-free guidance over classes needs a class-conditional model".into(),
            )),
        }
    }

    /// The class of sample `index`.
    pub fn of(&self, index: usize) -> Option<usize> {
        self.classes.map(|n| match self.choice {
            Some(ClassChoice::Fixed(class)) => class,
            _ => index % n,
        })
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

/// Checks `labels` against the model and the batch size and uploads them as floats (B): the
/// batch's [`Cond`].
pub(crate) fn upload_labels(
    gpu: &Gpu,
    classes: Option<usize>,
    labels: Option<&[usize]>,
    size: usize,
) -> Result<Cond> {
    let Some(labels) = labels else {
        return match classes {
            Some(_) => Err(Error::Invalid(
                "this model is class-conditional: every sample needs a class label".into(),
            )),
            None => Ok(Cond::None),
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
    Ok(Cond::Class(gpu.upload(&[size], &values)?))
}
