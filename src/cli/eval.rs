//! `wgsl-diff eval`: how close generated images are to real ones, measured with the Fashion-MNIST
//! classifier of `tools/train_classifier.py`: the Fréchet distance between Gaussians fitted to its
//! features of each set (FID with a domain classifier in place of Inception), and how confidently
//! it recognises each set.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use wgsl_diff::gpu::Gpu;
use wgsl_diff::images::{self, Image8};
use wgsl_diff::metrics::{self, ClassPredictions, FeatureGaussian};
use wgsl_diff::models::classifier::{ClassifierConfig, FashionClassifier};
use wgsl_diff::models::WeightFile;
use wgsl_diff::ops;
use wgsl_diff::sampling::{noise_key, NoisePurpose};

/// The classifier shipped in `weights/`, used when `--classifier` is not given.
pub const DEFAULT_CLASSIFIER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/fashion_classifier.safetensors"
);

/// Fashion-MNIST's own image side; such images are padded to the classifier's input as in training.
const DATASET_SIDE: usize = 28;

const SOURCES_HELP: &str = "\
Image sources (--real, --fake):
  DIR      a folder of grayscale sample_*.png files (e.g. a `wgsl-diff sample` output folder),
           taken in name order
  FILE     an idx3 ubyte images file, gzip-compressed or not
           (e.g. /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz)
  noise    N(0, 1) images clamped and quantised like samples: the starting noise of
           `wgsl-diff sample --seed S`, a ceiling for the distance; as many as the other set
           unless a range is given (write ./noise for a folder of that name)
Images must be 32x32 or 28x28 (padded with background like the training data); pixels map to
[-1, 1] by x/127.5 - 1. --real-range/--fake-range A..B take images A..B of a source, e.g.
t10k 0..5000 against 5000..10000 measures the distance between two real sets.";

#[derive(Args, Debug)]
#[command(after_help = SOURCES_HELP)]
pub struct EvalArgs {
    /// Real images: DIR, idx FILE or `noise` (see below)
    #[arg(long)]
    pub real: ImageSource,
    /// Generated images: DIR, idx FILE or `noise` (see below)
    #[arg(long)]
    pub fake: ImageSource,
    /// Use only images A..B of --real
    #[arg(long, value_name = "A..B", value_parser = parse_range)]
    pub real_range: Option<Range<usize>>,
    /// Use only images A..B of --fake
    #[arg(long, value_name = "A..B", value_parser = parse_range)]
    pub fake_range: Option<Range<usize>>,
    /// Classifier written by tools/train_classifier.py [default: weights/fashion_classifier.safetensors]
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Images per GPU batch
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Seed of `noise` images
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the results to this JSON file
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ImageSource {
    Noise,
    Path(PathBuf),
}

impl std::str::FromStr for ImageSource {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "noise" => ImageSource::Noise,
            path => ImageSource::Path(PathBuf::from(path)),
        })
    }
}

fn parse_range(s: &str) -> std::result::Result<Range<usize>, String> {
    let (start, end) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not a range A..B"))?;
    let number = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|e| format!("{v:?} in {s:?}: {e}"))
    };
    let range = number(start)?..number(end)?;
    if range.is_empty() {
        return Err(format!("{s:?} is empty: A must be less than B"));
    }
    Ok(range)
}

/// Grayscale 8-bit images and where they came from.
struct ImageSet {
    description: String,
    images: Vec<Image8>,
}

/// The classifier's verdict on one set, read back from the GPU.
struct SetResult {
    set: ImageSet,
    gaussian: FeatureGaussian,
    predictions: ClassPredictions,
}

pub fn run(gpu: &Gpu, args: &EvalArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let classifier_path = args
        .classifier
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CLASSIFIER));
    let model = FashionClassifier::load(gpu, &WeightFile::open(&classifier_path)?)?;
    let side = model.config.input_size;

    // `noise` without a range matches the other set's size, so load that one first.
    let real_is_unsized = args.real == ImageSource::Noise && args.real_range.is_none();
    let load = |which: &str, source, range, other: Option<&ImageSet>| {
        load_images(
            gpu,
            source,
            range,
            side,
            args.seed,
            other.map(|s| s.images.len()),
        )
        .with_context(|| format!("--{which}"))
    };
    let (real, fake) = if real_is_unsized {
        let fake = load("fake", &args.fake, args.fake_range.clone(), None)?;
        (load("real", &args.real, None, Some(&fake))?, fake)
    } else {
        let real = load("real", &args.real, args.real_range.clone(), None)?;
        let fake = load("fake", &args.fake, args.fake_range.clone(), Some(&real))?;
        (real, fake)
    };

    let evaluate = |which: &str, set: ImageSet| -> Result<SetResult> {
        let (features, logits) = classify(gpu, &model, &set.images, args.batch)?;
        Ok(SetResult {
            gaussian: FeatureGaussian::fit(&features, model.config.hidden)
                .with_context(|| format!("--{which} ({})", set.description))?,
            predictions: metrics::class_predictions(&logits, model.config.classes)?,
            set,
        })
    };
    let real = evaluate("real", real)?;
    let fake = evaluate("fake", fake)?;
    let distance = metrics::frechet_distance(&real.gaussian, &fake.gaussian)?;

    print_report(&model.config, distance, &real, &fake);
    let smallest = real.gaussian.count.min(fake.gaussian.count);
    if smallest <= model.config.hidden {
        // A rank-deficient covariance inflates the distance; it is only comparable between
        // runs of equal set sizes, and meaningful with thousands of images.
        eprintln!(
            "note: {smallest} images is not more than the {} feature dimensions: the distance \
             is biased upwards; use thousands of images per set",
            model.config.hidden
        );
    }
    if let Some(path) = &args.json {
        let class_names: Vec<String> = (0..model.config.classes)
            .map(|i| model.config.class_name(i))
            .collect();
        let report = serde_json::json!({
            "classifier": classifier_path.display().to_string(),
            "feature_dim": model.config.hidden,
            "class_names": class_names,
            "frechet_distance": distance,
            "real": set_json(&real),
            "fake": set_json(&fake),
        });
        wgsl_diff::io::write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}

fn set_json(result: &SetResult) -> serde_json::Value {
    serde_json::json!({
        "source": result.set.description,
        "count": result.gaussian.count,
        "mean_confidence": result.predictions.mean_confidence,
        "predicted_classes": result.predictions.histogram,
    })
}

fn print_report(config: &ClassifierConfig, distance: f64, real: &SetResult, fake: &SetResult) {
    println!("real: {}", real.set.description);
    println!("fake: {}", fake.set.description);
    println!(
        "Fréchet distance ({}-d classifier features): {distance:.4}",
        config.hidden
    );
    println!(
        "mean confidence: real {:.4}, fake {:.4}",
        real.predictions.mean_confidence, fake.predictions.mean_confidence
    );
    println!("{:<16}{:>8}{:>8}", "predicted class", "real", "fake");
    for class in 0..config.classes {
        println!(
            "  {:<14}{:>8}{:>8}",
            config.class_name(class),
            real.predictions.histogram[class],
            fake.predictions.histogram[class]
        );
    }
}

/// Runs the classifier over `images` in batches; returns (features, logits), row per image.
fn classify(
    gpu: &Gpu,
    model: &FashionClassifier,
    images: &[Image8],
    batch: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let config = &model.config;
    let side = config.input_size;
    let (mut features, mut logits) = (Vec::new(), Vec::new());
    for chunk in images.chunks(batch) {
        let x = gpu.upload(
            &[chunk.len(), 1, side, side],
            &to_input(chunk, side, config.padding_value),
        )?;
        let out = model.forward(gpu, &x)?;
        features.extend(gpu.read(&out.features)?);
        logits.extend(gpu.read(&out.logits)?);
    }
    Ok((features, logits))
}

/// Pixels scaled to [−1, 1] by x/127.5 − 1, each image centred on a `side`² canvas of `padding`
/// (as tools/train_classifier.py pads 28×28 images).
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

/// Rejects images the classifier cannot take: only its input size or the dataset's own size.
fn check_size(
    width: usize,
    height: usize,
    side: usize,
    what: &dyn std::fmt::Display,
) -> Result<()> {
    if width != height || (width != side && width != DATASET_SIDE) {
        bail!(
            "{what} is {width}x{height}; expected {side}x{side} or {DATASET_SIDE}x{DATASET_SIDE}"
        );
    }
    Ok(())
}

fn load_images(
    gpu: &Gpu,
    source: &ImageSource,
    range: Option<Range<usize>>,
    side: usize,
    seed: u64,
    other_count: Option<usize>,
) -> Result<ImageSet> {
    match source {
        ImageSource::Noise => {
            let range = range
                .or(other_count.map(|n| 0..n))
                .context("`noise` needs a size: give a range, or a real set for it to match")?;
            noise_images(gpu, range, side, seed)
        }
        ImageSource::Path(path) if path.is_dir() => load_png_folder(path, range, side),
        ImageSource::Path(path) if path.is_file() => load_idx_file(path, range, side),
        ImageSource::Path(path) => bail!(
            "{} is neither a folder of PNGs nor an idx file (it does not exist)",
            path.display()
        ),
    }
}

/// `range` of `available` items, or all of them.
fn select(range: Option<Range<usize>>, available: usize, what: &str) -> Result<Range<usize>> {
    let range = range.unwrap_or(0..available);
    if range.end > available {
        bail!(
            "range {}..{} goes past the end of {what}, which holds {available} images",
            range.start,
            range.end
        );
    }
    Ok(range)
}

fn describe(count: usize, what: String, range: &Range<usize>) -> String {
    format!(
        "{count} images from {what} [{}..{}]",
        range.start, range.end
    )
}

fn load_png_folder(dir: &Path, range: Option<Range<usize>>, side: usize) -> Result<ImageSet> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    files.retain(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.starts_with("sample_") && name.ends_with(".png")
    });
    if files.is_empty() {
        bail!("{} holds no sample_*.png files", dir.display());
    }
    files.sort();
    let range = select(range, files.len(), &dir.display().to_string())?;
    let images = files[range.clone()]
        .iter()
        .map(|path| {
            let img = images::read_png(path)?;
            if img.channels != 1 {
                bail!("{} is not grayscale", path.display());
            }
            check_size(img.width, img.height, side, &path.display())?;
            Ok(img)
        })
        .collect::<Result<Vec<_>>>()?;
    let description = describe(images.len(), format!("folder {}", dir.display()), &range);
    Ok(ImageSet {
        description,
        images,
    })
}

fn load_idx_file(path: &Path, range: Option<Range<usize>>, side: usize) -> Result<ImageSet> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (count, height, width, pixels) =
        parse_idx_images(&raw).with_context(|| format!("{}", path.display()))?;
    check_size(width, height, side, &path.display())?;
    let range = select(range, count, &path.display().to_string())?;
    let plane = height * width;
    let images = pixels[range.start * plane..range.end * plane]
        .chunks(plane)
        .map(|p| Image8 {
            width,
            height,
            channels: 1,
            pixels: p.to_vec(),
        })
        .collect::<Vec<_>>();
    Ok(ImageSet {
        description: describe(images.len(), format!("idx file {}", path.display()), &range),
        images,
    })
}

/// Parses an idx3 unsigned-byte file (gunzipping it first if it is gzip-compressed):
/// (count, rows, cols, pixels).
fn parse_idx_images(raw: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    const IDX3_UBYTE_MAGIC: [u8; 4] = [0, 0, 0x08, 0x03];
    let data = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw)
            .read_to_end(&mut out)
            .context("corrupt gzip data")?;
        out
    } else {
        raw.to_vec()
    };
    if data.len() < 16 || data[..4] != IDX3_UBYTE_MAGIC {
        bail!("not an idx3 unsigned-byte images file (the header must start 00 00 08 03)");
    }
    let header = |i: usize| u32::from_be_bytes(data[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    let (count, rows, cols) = (header(1), header(2), header(3));
    let pixels = &data[16..];
    if pixels.len() != count * rows * cols {
        bail!(
            "the header promises {count} images of {rows}x{cols} ({} bytes), the file holds {}",
            count * rows * cols,
            pixels.len()
        );
    }
    Ok((count, rows, cols, pixels.to_vec()))
}

/// `wgsl-diff sample --seed S`'s starting noise of samples `range`, quantised like its PNGs.
fn noise_images(gpu: &Gpu, range: Range<usize>, side: usize, seed: u64) -> Result<ImageSet> {
    const CHUNK: usize = 1024;
    let key = noise_key(seed, NoisePurpose::Initial, 0, 0);
    let mut images = Vec::with_capacity(range.len());
    for first in range.clone().step_by(CHUNK) {
        let n = CHUNK.min(range.end - first);
        let noise = gpu.read(&ops::normal(gpu, &[n, 1, side, side], key, first)?)?;
        images.extend(
            noise
                .chunks(side * side)
                .map(|plane| images::quantize(plane, 1, side, side)),
        );
    }
    Ok(ImageSet {
        description: describe(images.len(), format!("N(0, 1) noise, seed {seed}"), &range),
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_bytes(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, 3];
        for v in [count, rows, cols] {
            out.extend(v.to_be_bytes());
        }
        out.extend(pixels);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn idx_files_parse_with_or_without_gzip() {
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let raw = idx_bytes(2, 3, 4, &pixels);
        for bytes in [raw.clone(), gzip(&raw)] {
            let (count, rows, cols, got) = parse_idx_images(&bytes).unwrap();
            assert_eq!((count, rows, cols, got), (2, 3, 4, pixels.clone()));
        }
        let truncated = parse_idx_images(&raw[..raw.len() - 1]).unwrap_err();
        assert!(format!("{truncated:#}").contains("promises 2 images"));
        let labels = parse_idx_images(&[0, 0, 8, 1, 0, 0, 0, 0]).unwrap_err();
        assert!(format!("{labels:#}").contains("not an idx3"));
    }

    #[test]
    fn ranges_parse_and_are_checked() {
        assert_eq!(parse_range("0..5000"), Ok(0..5000));
        assert!(parse_range("5..5").is_err());
        assert!(parse_range("5").is_err());
        assert!(parse_range("a..3").is_err());
        assert!(select(Some(0..11), 10, "x").is_err());
        assert_eq!(select(None, 10, "x").unwrap(), 0..10);
    }

    /// The Rust input pipeline must feed the classifier exactly what PyTorch saw: the fixture's
    /// images are t10k images padded by tools/train_classifier.py; rebuild them from 28×28 bytes.
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
