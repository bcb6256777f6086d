//! Feeding images to the classifier exactly as `tools/train/train_classifier.py` did: which sizes it
//! takes, the padding and scaling to its input, and the batched forward passes.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::images::Image8;
use crate::models::evaluation::classifier::FashionClassifier;

/// Fashion-MNIST's own image side; such images are padded to the classifier's input as in training.
pub(super) const DATASET_SIDE: usize = 28;

/// Rejects images the classifier cannot take: only its input size or the dataset's own size.
pub(super) fn check_size(
    width: usize,
    height: usize,
    side: usize,
    what: &dyn std::fmt::Display,
) -> Result<()> {
    if width != height || (width != side && width != DATASET_SIDE) {
        return Err(Error::Invalid(format!(
            "{what} is {width}x{height}; expected {side}x{side} or {DATASET_SIDE}x{DATASET_SIDE}"
        )));
    }
    Ok(())
}

/// Runs the classifier over `images` in batches, calling `progress(images done)` after each;
/// returns (features, logits), row per image.
pub(super) fn classify(
    gpu: &Gpu,
    model: &FashionClassifier,
    images: &[Image8],
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<f32>, Vec<f32>)> {
    let config = &model.config;
    let side = config.input_size;
    let (mut features, mut logits, mut done) = (Vec::new(), Vec::new(), 0);
    for chunk in images.chunks(batch) {
        let x = gpu.upload(
            &[chunk.len(), 1, side, side],
            &to_input(chunk, side, config.padding_value),
        )?;
        let out = model.forward(gpu, &x)?;
        features.extend(gpu.read(&out.features)?);
        logits.extend(gpu.read(&out.logits)?);
        done += chunk.len();
        progress(done);
    }
    Ok((features, logits))
}

/// Pixels scaled to [−1, 1] by x/127.5 − 1, each image centred on a `side`² canvas of `padding`
/// (as tools/train/train_classifier.py pads 28×28 images).
fn to_input(images: &[Image8], side: usize, padding: f32) -> Vec<f32> {
    let mut out = vec![padding; images.len() * side * side];
    for (img, canvas) in images.iter().zip(out.chunks_mut(side * side)) {
        let offset = (side - img.width) / 2;
        for (y, row) in img.pixels.chunks(img.width).enumerate() {
            let start = (y + offset) * side + offset;
            for (dst, &v) in canvas[start..start + img.width].iter_mut().zip(row) {
                *dst = v as f32 / 127.5 - 1.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust input pipeline must feed the classifier exactly what PyTorch saw: the fixture's
    /// images are t10k images padded by tools/train/train_classifier.py; rebuild them from 28×28 bytes.
    #[test]
    fn padding_and_scaling_match_the_training_script() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/classifier_io.safetensors"
        );
        let file = std::fs::read(path).unwrap();
        let fixture = safetensors::SafeTensors::deserialize(&file).unwrap();
        let view = fixture.tensor("images").unwrap();
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
        let (count, side) = (view.shape()[0], view.shape()[3]);
        let margin = (side - DATASET_SIDE) / 2;
        let images: Vec<Image8> = want
            .chunks(side * side)
            .map(|plane| Image8 {
                width: DATASET_SIDE,
                height: DATASET_SIDE,
                channels: 1,
                pixels: (0..DATASET_SIDE * DATASET_SIDE)
                    .map(|i| {
                        let (y, x) = (i / DATASET_SIDE + margin, i % DATASET_SIDE + margin);
                        ((plane[y * side + x] + 1.0) * 127.5).round() as u8
                    })
                    .collect(),
            })
            .collect();
        assert_eq!(images.len(), count);
        assert_eq!(to_input(&images, side, -1.0), want, "bit-exact");
    }
}
