//! The small Fashion-MNIST classifier of `tools/train_classifier.py`, used by `wgsl-diff eval` as
//! the feature extractor of a Fréchet distance (the role Inception plays in FID).
//!
//! `[conv 3×3 → SiLU → avg-pool 2×2]` per entry of `channels`, flatten (NCHW order, as PyTorch's
//! `flatten(1)`), `hidden` linear → SiLU (the features), `head` linear (the logits).

use super::layers::{Conv2d, Linear};
use super::weights::{VarBuilder, WeightFile};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops;
use serde::Deserialize;

/// The `config` metadata written by `tools/train_classifier.py`.
#[derive(Clone, Debug, Deserialize)]
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
    fn validate(&self) -> Result<()> {
        let invalid =
            |what: String| Err(Error::Weights(format!("invalid classifier config: {what}")));
        let widths = [self.in_channels, self.hidden, self.classes];
        if self.channels.is_empty() || widths.iter().chain(&self.channels).any(|&w| w == 0) {
            return invalid(format!(
                "needs at least one conv stage and non-zero widths, got {self:?}"
            ));
        }
        let stages = self.channels.len() as u32;
        let halves_evenly = |d: usize| self.input_size > 0 && self.input_size.is_multiple_of(d);
        if !2usize.checked_pow(stages).is_some_and(halves_evenly) {
            return invalid(format!(
                "input_size {} does not halve {stages} times",
                self.input_size
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

    /// Loads a file written by `tools/train_classifier.py`, checking every tensor.
    pub fn load(gpu: &Gpu, file: &WeightFile) -> Result<FashionClassifier> {
        file.expect_arch(Self::ARCH)?;
        let config: ClassifierConfig = serde_json::from_str(file.meta("config")?)
            .map_err(|e| Error::Weights(format!("invalid classifier config metadata: {e}")))?;
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
