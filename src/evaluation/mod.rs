//! How close generated images are to real ones, measured with the Fashion-MNIST classifier of
//! `tools/train/train_classifier.py`: the Fréchet distance between Gaussians fitted to its features of
//! each set (FID with a domain classifier in place of Inception), and how confidently it
//! recognises each set. `wgsl-diff eval` is this module behind a command line.

pub mod fid;
mod input;
mod sources;

pub use sources::{ImageRange, ImageSource, SetSpec};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::limits::{self, MAX_BATCH};
use crate::metrics::{self, ClassPredictions, FeatureGaussian};
use crate::models::evaluation::classifier::FashionClassifier;
use crate::models::WeightFile;
use sources::ImageSet;
use std::path::PathBuf;

/// The classifier shipped in `weights/`.
pub const DEFAULT_CLASSIFIER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/fashion_classifier.safetensors"
);

/// What to compare, and how.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub real: SetSpec,
    pub fake: SetSpec,
    /// A classifier written by tools/train/train_classifier.py, e.g. [`DEFAULT_CLASSIFIER`].
    pub classifier: PathBuf,
    /// Images per GPU batch.
    pub batch: usize,
    /// Seed of `noise` sets.
    pub seed: u64,
}

/// The classifier's verdict on one set.
#[derive(Clone, Debug)]
pub struct SetReport {
    /// How many images from where, e.g. "32 images from folder out [0..32]".
    pub description: String,
    /// Fitted to the set's features; its `count` is the number of images.
    pub gaussian: FeatureGaussian,
    pub predictions: ClassPredictions,
}

/// The outcome of [`evaluate`].
#[derive(Clone, Debug)]
pub struct EvalReport {
    pub classifier: PathBuf,
    /// The classifier's feature dimension, the Gaussians' dimension.
    pub feature_dim: usize,
    /// A name per class, in the order of the histograms.
    pub class_names: Vec<String>,
    pub frechet_distance: f64,
    pub real: SetReport,
    pub fake: SetReport,
}

/// Loads the classifier and both sets, and compares them. A `noise` set without a range takes the
/// other set's size.
pub fn evaluate(gpu: &Gpu, options: &EvalOptions) -> Result<EvalReport> {
    evaluate_with_progress(gpu, options, |_, _| {})
}

/// [`evaluate`], calling `progress(images classified, images in both sets)` after each batch.
pub fn evaluate_with_progress(
    gpu: &Gpu,
    options: &EvalOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalReport> {
    limits::count_in("--batch", options.batch, MAX_BATCH)?;
    let model = FashionClassifier::load(gpu, &WeightFile::open(&options.classifier)?)?;
    let (real, fake) = load_sets(gpu, options, model.config.input_size)?;
    let (first, total) = (real.images.len(), real.images.len() + fake.images.len());
    let real = score(gpu, &model, options.batch, "real", real, &mut |done| {
        progress(done, total)
    })?;
    let fake = score(gpu, &model, options.batch, "fake", fake, &mut |done| {
        progress(first + done, total)
    })?;
    let config = &model.config;
    Ok(EvalReport {
        classifier: options.classifier.clone(),
        feature_dim: config.hidden,
        class_names: (0..config.classes).map(|i| config.class_name(i)).collect(),
        frechet_distance: metrics::frechet_distance(&real.gaussian, &fake.gaussian)?,
        real,
        fake,
    })
}

/// Errors of set `which` name its command-line flag, as `wgsl-diff eval` has always reported them.
fn for_set(which: &str) -> impl Fn(Error) -> Error + '_ {
    move |e| Error::Invalid(format!("--{which}: {e}"))
}

/// Both sets as (real, fake) of side `side`.
fn load_sets(gpu: &Gpu, options: &EvalOptions, side: usize) -> Result<(ImageSet, ImageSet)> {
    let load = |which: &str, spec: &SetSpec, other: Option<&ImageSet>| {
        ImageSet::load(gpu, spec, side, options.seed, other.map(|s| s.images.len()))
            .map_err(for_set(which))
    };
    // `noise` without a range matches the other set's size, so load that one first.
    if options.real.sized_by_other() {
        let fake = load("fake", &options.fake, None)?;
        Ok((load("real", &options.real, Some(&fake))?, fake))
    } else {
        let real = load("real", &options.real, None)?;
        let fake = load("fake", &options.fake, Some(&real))?;
        Ok((real, fake))
    }
}

/// Classifies `set` and summarises the features and predictions; `progress(images done)`.
fn score(
    gpu: &Gpu,
    model: &FashionClassifier,
    batch: usize,
    which: &str,
    set: ImageSet,
    progress: &mut dyn FnMut(usize),
) -> Result<SetReport> {
    let (features, logits) = input::classify(gpu, model, &set.images, batch, progress)?;
    let gaussian = FeatureGaussian::fit(&features, model.config.hidden)
        .map_err(for_set(&format!("{which} ({})", set.description)))?;
    Ok(SetReport {
        predictions: metrics::class_predictions(&logits, model.config.classes)?,
        gaussian,
        description: set.description,
    })
}

impl EvalReport {
    /// The smaller set's size when it is not more than the feature dimension: the covariance is
    /// then rank-deficient, which inflates the distance, so it is only comparable between runs of
    /// equal set sizes, and meaningful with thousands of images.
    pub fn undersized(&self) -> Option<usize> {
        let smallest = self.real.gaussian.count.min(self.fake.gaussian.count);
        (smallest <= self.feature_dim).then_some(smallest)
    }

    /// The report as `wgsl-diff eval --json` writes it.
    pub fn to_json(&self) -> serde_json::Value {
        let set = |s: &SetReport| {
            serde_json::json!({
                "source": s.description,
                "count": s.gaussian.count,
                "mean_confidence": s.predictions.mean_confidence,
                "predicted_classes": s.predictions.histogram,
            })
        };
        serde_json::json!({
            "classifier": self.classifier.display().to_string(),
            "feature_dim": self.feature_dim,
            "class_names": self.class_names,
            "frechet_distance": self.frechet_distance,
            "real": set(&self.real),
            "fake": set(&self.fake),
        })
    }
}
