//! FID as pytorch-fid computes it: pool3 features of its Inception-V3
//! ([`FidInception`], weights from `tools/converters/fid_weights.py`), the mean and unbiased covariance of
//! each set, and the Fréchet distance between the two Gaussians ([`metrics::frechet_distance`]).
//!
//! A set is a folder of PNGs (a run's `sample_*.png` when there are any, so a run folder or
//! its `filtered/kept` and `filtered/random` work as they are; otherwise every `*.png`, in name
//! order as pytorch-fid sorts them), an idx3 images file, or statistics in pytorch-fid's
//! `--save-stats` format (`.npz` with `mu` and `sigma`). Images reach the network as in
//! pytorch-fid: converted to RGB (grayscale repeated, alpha dropped, as PIL's `convert('RGB')`),
//! scaled to [0, 1] by x/255, resized bilinearly to 299×299, mapped to [−1, 1] by 2x − 1.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::image_sets::load_images;
use crate::images::Image8;
use crate::metrics::{self, FeatureGaussian};
use crate::models::evaluation::inception::{
    FidInception, FEATURES, INPUT_SIDE, LARGEST_ACTIVATION_BYTES,
};
use crate::models::WeightFile;
use crate::{npz, ops};
use nalgebra::{DMatrix, DVector};
use std::path::{Path, PathBuf};

/// Where `tools/converters/fid_weights.py` puts the converted weights (git-ignored, ≈ 95 MB).
pub const DEFAULT_WEIGHTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/fid_inception.safetensors"
);

/// pytorch-fid's batch size.
pub const DEFAULT_BATCH: usize = 50;

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum FidSource {
    /// A folder of PNGs or an idx3 images file.
    Images(PathBuf),
    /// A `.npz` statistics file.
    Statistics(PathBuf),
}

impl FidSource {
    /// `*.npz` is a statistics file, anything else images.
    pub fn from_path(path: &Path) -> FidSource {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
        {
            FidSource::Statistics(path.to_path_buf())
        } else {
            FidSource::Images(path.to_path_buf())
        }
    }
}

/// How features are extracted.
#[derive(Clone, Debug)]
pub struct FidOptions {
    /// Converted Inception weights, e.g. [`DEFAULT_WEIGHTS`].
    pub weights: PathBuf,
    /// Images per GPU batch.
    pub batch: usize,
    /// Rescale each batch to [0, 1] by its own minimum and maximum before Inception, as the
    /// paper's official evaluation code does (only to reproduce its numbers; depends on `batch`).
    pub batch_minmax: bool,
}

impl Default for FidOptions {
    fn default() -> Self {
        FidOptions {
            weights: DEFAULT_WEIGHTS.into(),
            batch: DEFAULT_BATCH,
            batch_minmax: false,
        }
    }
}

/// A set's Gaussian and where it came from.
#[derive(Clone, Debug)]
pub struct FidStatistics {
    pub description: String,
    /// Its `count` is the number of images, 0 when read from a statistics file.
    pub gaussian: FeatureGaussian,
}

/// The outcome of [`fid`].
#[derive(Clone, Debug)]
pub struct FidReport {
    pub fid: f64,
    pub real: FidStatistics,
    pub fake: FidStatistics,
}

impl FidReport {
    /// The smaller image count when it is not more than the 2048 dimensions: the covariance is
    /// then singular and the FID biased upwards (pytorch-fid gives the same number).
    pub fn undersized(&self) -> Option<usize> {
        [&self.real, &self.fake]
            .iter()
            .map(|s| s.gaussian.count)
            .filter(|&n| n > 0)
            .min()
            .filter(|&n| n <= FEATURES)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let set = |s: &FidStatistics| serde_json::json!({ "source": s.description, "count": s.gaussian.count });
        serde_json::json!({ "fid": self.fid, "real": set(&self.real), "fake": set(&self.fake) })
    }
}

/// FID between two sources; the network is loaded only if one of them holds images. Calls
/// `progress(images done, images read so far)` after each batch: the second source's images
/// count once they are read, so the total grows when it starts.
pub fn fid(
    gpu: impl Fn() -> Result<Gpu>,
    real: &FidSource,
    fake: &FidSource,
    options: &FidOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<FidReport> {
    let mut extractor = Extractor::new(gpu, options, &mut progress);
    let real = extractor
        .statistics(real)
        .map_err(|e| Error::Invalid(format!("--real: {e}")))?;
    let fake = extractor
        .statistics(fake)
        .map_err(|e| Error::Invalid(format!("--fake: {e}")))?;
    Ok(FidReport {
        fid: metrics::frechet_distance(&real.gaussian, &fake.gaussian)?,
        real,
        fake,
    })
}

/// Computes the statistics of `source` and writes them where pytorch-fid's `--save-stats` would,
/// calling `progress(images done, images)` after each batch.
pub fn save_statistics(
    gpu: impl Fn() -> Result<Gpu>,
    source: &FidSource,
    out: &Path,
    options: &FidOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<FidStatistics> {
    let stats = Extractor::new(gpu, options, &mut progress).statistics(source)?;
    write_statistics(out, &stats.gaussian)?;
    Ok(stats)
}

/// Loads the GPU and network on first use; counts the images of every source it reads.
struct Extractor<'a, G: Fn() -> Result<Gpu>> {
    make_gpu: G,
    options: &'a FidOptions,
    loaded: Option<(Gpu, FidInception)>,
    progress: &'a mut dyn FnMut(usize, usize),
    /// Images of earlier sources, and of every source read so far.
    done: usize,
    total: usize,
}

impl<'a, G: Fn() -> Result<Gpu>> Extractor<'a, G> {
    fn new(
        make_gpu: G,
        options: &'a FidOptions,
        progress: &'a mut dyn FnMut(usize, usize),
    ) -> Self {
        Extractor {
            make_gpu,
            options,
            loaded: None,
            progress,
            done: 0,
            total: 0,
        }
    }

    fn statistics(&mut self, source: &FidSource) -> Result<FidStatistics> {
        let path = match source {
            FidSource::Statistics(path) => {
                return Ok(FidStatistics {
                    description: format!("statistics {}", path.display()),
                    gaussian: read_statistics(path)?,
                })
            }
            FidSource::Images(path) => path,
        };
        let (images, description) = load_images(path)?;
        if self.loaded.is_none() {
            let gpu = (self.make_gpu)()?;
            let net = FidInception::load(&gpu, &WeightFile::open(&self.options.weights)?)?;
            self.loaded = Some((gpu, net));
        }
        let (gpu, net) = self.loaded.as_ref().expect("loaded above");
        self.total += images.len();
        let (before, total, progress) = (self.done, self.total, &mut self.progress);
        let features = features(gpu, net, &images, self.options, &mut |done| {
            progress(before + done, total)
        })?;
        self.done = total;
        Ok(FidStatistics {
            description,
            gaussian: FeatureGaussian::fit(&features, FEATURES)?,
        })
    }
}

/// pool3 features of `images` (rows of 2048), in batches of `options.batch`, calling
/// `progress(images done)` after each.
pub fn features(
    gpu: &Gpu,
    net: &FidInception,
    images: &[Image8],
    options: &FidOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f32>> {
    if options.batch == 0 {
        return Err(Error::Invalid("--batch must be at least 1".into()));
    }
    crate::limits::count_in("--batch", options.batch, crate::limits::MAX_BATCH)?;
    // `batch` is the logical batch (the min-max rescaling's); the GPU runs as much of it at once
    // as its buffer limit allows, which changes nothing else.
    let fits = (gpu.max_tensor_bytes() as usize / LARGEST_ACTIVATION_BYTES).max(1);
    let mut out = Vec::with_capacity(images.len() * FEATURES);
    for (i, batch) in images.chunks(options.batch).enumerate() {
        let (width, height) = (batch[0].width, batch[0].height);
        let mut x = to_unit_rgb(batch);
        if options.batch_minmax {
            minmax_rescale(&mut x).map_err(|e| Error::Invalid(format!("batch {i}: {e}")))?;
        }
        for part in x.chunks(fits * 3 * height * width) {
            let n = part.len() / (3 * height * width);
            let x = gpu.upload(&[n, 3, height, width], part)?;
            out.extend(gpu.read(&net.forward(gpu, &inception_input(gpu, &x)?)?)?);
        }
        progress(out.len() / FEATURES);
    }
    Ok(out)
}

/// pytorch-fid's input path on (B, 3, H, W) in [0, 1]: resize to 299² then 2x − 1.
pub fn inception_input(gpu: &Gpu, x: &crate::gpu::Tensor) -> Result<crate::gpu::Tensor> {
    let resized;
    let x = if x.shape()[2..] == [INPUT_SIDE, INPUT_SIDE] {
        // F.interpolate to the same size samples every pixel at itself.
        x
    } else {
        resized = ops::resize_bilinear(gpu, x, INPUT_SIDE, INPUT_SIDE)?;
        &resized
    };
    ops::affine(gpu, x, 2.0, -1.0)
}

/// CHW planes in [0, 1] (ToTensor's x/255), grayscale repeated to three channels.
fn to_unit_rgb(images: &[Image8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(images.len() * 3 * images[0].width * images[0].height);
    for img in images {
        let plane = img.width * img.height;
        for c in 0..3 {
            let channel = if img.channels == 1 { 0 } else { c };
            out.extend((0..plane).map(|p| img.pixels[p * img.channels + channel] as f32 / 255.0));
        }
    }
    out
}

/// (x − min) / (max − min) over the whole batch.
fn minmax_rescale(x: &mut [f32]) -> Result<()> {
    let (min, max) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if max <= min {
        return Err(Error::Invalid(
            "every pixel is equal: min-max rescaling is undefined".into(),
        ));
    }
    x.iter_mut().for_each(|v| *v = (*v - min) / (max - min));
    Ok(())
}

/// Reads pytorch-fid statistics: `mu` (d) and `sigma` (d, d), finite.
pub fn read_statistics(path: &Path) -> Result<FeatureGaussian> {
    let arrays = npz::read(path)?;
    let bad = |why: String| {
        Error::Invalid(format!(
            "{} is not a FID statistics file: {why}",
            path.display()
        ))
    };
    let get = |key: &str| {
        arrays
            .get(key)
            .ok_or_else(|| bad(format!("no `{key}` array")))
    };
    let (mu, sigma) = (get("mu")?, get("sigma")?);
    let d = match mu.shape[..] {
        [d] if d > 0 => d,
        _ => {
            return Err(bad(format!(
                "mu has shape {:?}, expected one non-empty axis",
                mu.shape
            )))
        }
    };
    if sigma.shape != [d, d] {
        return Err(bad(format!(
            "sigma has shape {:?}, expected [{d}, {d}] for mu of {d} values",
            sigma.shape
        )));
    }
    if mu.data.iter().chain(&sigma.data).any(|v| !v.is_finite()) {
        return Err(bad("it holds non-finite values".into()));
    }
    let sigma = DMatrix::from_row_slice(d, d, &sigma.data);
    metrics::check_covariance(&sigma).map_err(|why| bad(format!("sigma {why}")))?;
    Ok(FeatureGaussian::from_moments(
        DVector::from_column_slice(&mu.data),
        sigma,
    ))
}

/// Writes `mu` and `sigma` as pytorch-fid's `--save-stats` does (float64, row-major).
pub fn write_statistics(path: &Path, gaussian: &FeatureGaussian) -> Result<()> {
    let d = gaussian.dim();
    let sigma_rows = gaussian.covariance.transpose();
    npz::write(
        path,
        &[
            ("mu", &[d], gaussian.mean.as_slice()),
            ("sigma", &[d, d], sigma_rows.as_slice()),
        ],
    )
}
