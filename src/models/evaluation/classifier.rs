//! The small Fashion-MNIST classifier of `tools/train/train_classifier.py`, used by `wgsl-diff eval` as
//! the feature extractor of a Fréchet distance (the role Inception plays in FID).
//!
//! `[conv 3×3 → SiLU → avg-pool 2×2]` per entry of `channels`, flatten (NCHW order, as PyTorch's
//! `flatten(1)`), `hidden` linear → SiLU (the features), `head` linear (the logits).

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::limits::{MAX_BLOCKS, MAX_CHANNELS, MAX_CLASSES, MAX_SAMPLE_SIZE};
use crate::models::layers::{Conv2d, Linear};
use crate::models::weights::{VarBuilder, WeightFile};
use crate::ops;
use serde::Deserialize;

/// The `config` metadata written by `tools/train/train_classifier.py`; any other key is refused.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    pub in_channels: usize,
    /// Output channels of each conv stage; every stage halves the resolution.
    pub channels: Vec<usize>,
    /// Width of the penultimate layer: the feature dimension.
    pub hidden: usize,
    pub classes: usize,
    /// Side of the square input images.
    pub input_size: usize,
    /// The value images smaller than `input_size` were padded with during training.
    pub padding_value: f32,
    #[serde(default)]
    pub class_names: Vec<String>,
}

impl ClassifierConfig {
    /// Every width in 1..=its [limit](crate::limits), an input side that halves once per stage,
    /// a finite padding value inside the images' range [−1, 1], one name per class.
    fn validate(&self) -> Result<()> {
        let invalid =
            |what: String| Err(Error::Weights(format!("invalid classifier config: {what}")));
        if self.channels.is_empty() || self.channels.len() > MAX_BLOCKS {
            return invalid(format!(
                "`channels` has {} conv stages; it must have 1..={MAX_BLOCKS}",
                self.channels.len()
            ));
        }
        let mut counts = vec![
            ("in_channels", self.in_channels, MAX_CHANNELS),
            ("hidden", self.hidden, MAX_CHANNELS),
            ("classes", self.classes, MAX_CLASSES),
            ("input_size", self.input_size, MAX_SAMPLE_SIZE),
        ];
        counts.extend(self.channels.iter().map(|&c| ("channels", c, MAX_CHANNELS)));
        if let Some((key, v, max)) = counts.iter().find(|(_, v, max)| !(1..=*max).contains(v)) {
            return invalid(format!("`{key}` holds {v}; it must be in 1..={max}"));
        }
        let stages = self.channels.len() as u32;
        if !self.input_size.is_multiple_of(1 << stages) {
            return invalid(format!(
                "`input_size` {} does not halve {stages} times",
                self.input_size
            ));
        }
        if !(-1.0..=1.0).contains(&self.padding_value) {
            return invalid(format!(
                "`padding_value` is {}; it must be in [-1, 1]",
                self.padding_value
            ));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.classes {
            return invalid(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.classes
            ));
        }
        Ok(())
    }

    /// Side of the last conv stage's output.
    fn final_side(&self) -> usize {
        self.input_size >> self.channels.len()
    }

    /// A readable name for class `i` (its index when the file names none).
    pub fn class_name(&self, i: usize) -> String {
        self.class_names
            .get(i)
            .cloned()
            .unwrap_or_else(|| i.to_string())
    }
}

/// What one forward pass returns; both stay on the GPU.
pub struct ClassifierOutput {
    /// (B, hidden): the post-SiLU penultimate activation.
    pub features: Tensor,
    /// (B, classes).
    pub logits: Tensor,
}

pub struct FashionClassifier {
    pub config: ClassifierConfig,
    convs: Vec<Conv2d>,
    hidden: Linear,
    head: Linear,
}

impl FashionClassifier {
    pub const ARCH: &'static str = "FashionClassifier";

    /// Loads a file written by `tools/train/train_classifier.py`, checking every tensor.
    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<FashionClassifier> {
        file.expect_arch(Self::ARCH)?;
        let config: ClassifierConfig = file.config()?;
        config.validate()?;
        let vb = file.var_builder(gpu);
        let model = Self::build(&vb, config)?;
        vb.finish()?;
        Ok(model)
    }

    fn build(vb: &VarBuilder, config: ClassifierConfig) -> Result<FashionClassifier> {
        let widths: Vec<usize> = std::iter::once(config.in_channels)
            .chain(config.channels.iter().copied())
            .collect();
        let convs = widths
            .windows(2)
            .enumerate()
            .map(|(i, pair)| Conv2d::load(&vb.pp("convs").pp(i), pair[0], pair[1], 3, 1, 1))
            .collect::<Result<Vec<_>>>()?;
        let flat = widths[widths.len() - 1] * config.final_side().pow(2);
        Ok(FashionClassifier {
            hidden: Linear::load(&vb.pp("hidden"), flat, config.hidden)?,
            head: Linear::load(&vb.pp("head"), config.hidden, config.classes)?,
            convs,
            config,
        })
    }

    /// Features and logits of x (B, in_channels, input_size, input_size).
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<ClassifierOutput> {
        let c = &self.config;
        let &[batch, channels, h, w] = x.shape() else {
            return Err(Error::Shape {
                op: "classifier",
                msg: format!("input {:?} is not NCHW", x.shape()),
            });
        };
        if channels != c.in_channels || h != c.input_size || w != c.input_size {
            return Err(Error::Shape {
                op: "classifier",
                msg: format!(
                    "input {:?} must be (B, {}, {2}, {2})",
                    x.shape(),
                    c.in_channels,
                    c.input_size
                ),
            });
        }
        let mut h = x.clone();
        for conv in &self.convs {
            h = ops::avg_pool2x(gpu, &ops::silu(gpu, &conv.forward(gpu, &h)?)?)?;
        }
        // An NCHW buffer read row by row is already in PyTorch's flatten(1) order.
        let flat = h.reshape(&[batch, h.shape()[1..].iter().product()])?;
        let features = ops::silu(gpu, &self.hidden.forward(gpu, &flat)?)?;
        let logits = self.head.forward(gpu, &features)?;
        Ok(ClassifierOutput { features, logits })
    }
}
