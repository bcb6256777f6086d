//! The real-image reference of the z-scored uncertainty modes (`wgsl-diff reference`).
//!
//! Real images x0 are noised to each sampling timestep t of a schedule,
//! x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·z (z from [`NoisePlan::reference`]), and run through the same
//! estimator as sampling (x̂0 from ε_θ(x_t), M re-noised copies, one batched forward). Over the K
//! images it keeps, per step, the mean and sample standard deviation (divisor K − 1) of
//! - the posterior variance v̂_i = ρ·max(0, 1 − Ĵ_i), per element (C, H, W);
//! - the residual R_t = (1/M) Σ_m ‖ε_m − n_m‖²;
//! - the typicality statistic Δ_t (informative only: the typicality mode is not z-scored).
//!
//! The file is a NumPy `.npz` of float64 arrays (documented in README.md, "Uncertainty modes"):
//! `timesteps` (S), `sample_shape` (3), `copies`, `images`, `seed` (1 each),
//! `posterior_variance_mean` / `_sd` (S, C, H, W), `residual_mean` / `_sd` (S),
//! `typicality_mean` / `_sd` (S). tools/twin/sample_torch.py reads and writes the same file.

use super::renoised_copies;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::image_sets::load_images;
use crate::images::Image8;
use crate::models::Cond;
use crate::noise::NoisePlan;
use crate::npz;
use crate::ops::{self, UncertaintyMode};
use crate::sampling::{load_for_sampling, NonFiniteFlags, SamplerChoice, StepContext};
use std::path::{Path, PathBuf};

/// A pixel whose reference spread is below this fraction of its step's mean spread is scaled as
/// if it had that spread: pixels that never varied over the real images (v̂ clamped to 0 on flat
/// background) would otherwise divide by zero.
pub const SD_FLOOR: f64 = 0.01;

/// Per-step statistics of the raw Stein modes over real images.
#[derive(Clone, Debug, PartialEq)]
pub struct UncertaintyReference {
    /// Where it came from (the file it was read from; not stored in the file).
    pub source: String,
    /// The sampler's timesteps, in sampling order (S).
    pub timesteps: Vec<usize>,
    /// (C, H, W) of one sample.
    pub sample_shape: [usize; 3],
    /// M, the copies per step the reference was made with.
    pub copies: usize,
    /// K, the real images.
    pub images: usize,
    pub seed: u64,
    /// (S, C, H, W) each.
    pub posterior_variance_mean: Vec<f64>,
    pub posterior_variance_sd: Vec<f64>,
    /// (S) each.
    pub residual_mean: Vec<f64>,
    pub residual_sd: Vec<f64>,
    pub typicality_mean: Vec<f64>,
    pub typicality_sd: Vec<f64>,
}

impl UncertaintyReference {
    fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let [c, h, w] = self.sample_shape;
        let s = self.timesteps.len();
        let f = |v: &[usize]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let timesteps = f(&self.timesteps);
        let shape = f(&self.sample_shape);
        let scalars = [self.copies as f64, self.images as f64, self.seed as f64];
        npz::write(
            path,
            &[
                ("timesteps", &[s], &timesteps),
                ("sample_shape", &[3], &shape),
                ("copies", &[1], &scalars[0..1]),
                ("images", &[1], &scalars[1..2]),
                ("seed", &[1], &scalars[2..3]),
                (
                    "posterior_variance_mean",
                    &[s, c, h, w],
                    &self.posterior_variance_mean,
                ),
                (
                    "posterior_variance_sd",
                    &[s, c, h, w],
                    &self.posterior_variance_sd,
                ),
                ("residual_mean", &[s], &self.residual_mean),
                ("residual_sd", &[s], &self.residual_sd),
                ("typicality_mean", &[s], &self.typicality_mean),
                ("typicality_sd", &[s], &self.typicality_sd),
            ],
        )
    }

    /// Reads a reference file and checks it is whole and usable.
    pub fn load(path: &Path) -> Result<UncertaintyReference> {
        let what = format!("uncertainty reference {}", path.display());
        let mut arrays = npz::read(path)?;
        let mut take = |name: &str, shape: Option<&[usize]>| {
            let a = arrays.remove(name).ok_or_else(|| {
                Error::Invalid(format!(
                    "{what}: no array {name} (make the file with `wgsl-diff reference`)"
                ))
            })?;
            if shape.is_some_and(|s| s != a.shape.as_slice()) {
                return Err(Error::Invalid(format!(
                    "{what}: {name} has shape {:?}, expected {:?}",
                    a.shape,
                    shape.unwrap()
                )));
            }
            Ok(a.data)
        };
        let count = |v: f64, name: &str| {
            if v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
                Ok(v as usize)
            } else {
                Err(Error::Invalid(format!("{what}: {name} {v} is not a count")))
            }
        };
        let timesteps = take("timesteps", None)?
            .into_iter()
            .map(|t| count(t, "timestep"))
            .collect::<Result<Vec<_>>>()?;
        let s = timesteps.len();
        let shape = take("sample_shape", Some(&[3]))?;
        let sample_shape = [
            count(shape[0], "C")?,
            count(shape[1], "H")?,
            count(shape[2], "W")?,
        ];
        let [c, h, w] = sample_shape;
        let reference = UncertaintyReference {
            source: std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .display()
                .to_string(),
            copies: count(take("copies", Some(&[1]))?[0], "copies")?,
            images: count(take("images", Some(&[1]))?[0], "images")?,
            seed: count(take("seed", Some(&[1]))?[0], "seed")? as u64,
            posterior_variance_mean: take("posterior_variance_mean", Some(&[s, c, h, w]))?,
            posterior_variance_sd: take("posterior_variance_sd", Some(&[s, c, h, w]))?,
            residual_mean: take("residual_mean", Some(&[s]))?,
            residual_sd: take("residual_sd", Some(&[s]))?,
            typicality_mean: take("typicality_mean", Some(&[s]))?,
            typicality_sd: take("typicality_sd", Some(&[s]))?,
            timesteps,
            sample_shape,
        };
        reference.check_values(&what)?;
        Ok(reference)
    }

    fn check_values(&self, what: &str) -> Result<()> {
        let all = [
            &self.posterior_variance_mean,
            &self.posterior_variance_sd,
            &self.residual_mean,
            &self.residual_sd,
            &self.typicality_mean,
            &self.typicality_sd,
        ];
        if all.iter().any(|v| v.iter().any(|x| !x.is_finite())) {
            return Err(Error::Invalid(format!("{what}: holds NaN or ±Inf")));
        }
        if let Some(i) = self.residual_sd.iter().position(|&sd| sd <= 0.0) {
            return Err(Error::Invalid(format!(
                "{what}: the residual's spread at step {i} is 0: make the reference from more \
                 (and different) images"
            )));
        }
        Ok(())
    }

    /// Refuses a reference made for other timesteps, another sample shape or another M than the
    /// run's (the spread of Ĵ, and so of v̂, depends on M).
    pub fn check_fits(
        &self,
        timesteps: &[usize],
        sample_shape: [usize; 3],
        copies: usize,
    ) -> Result<()> {
        if self.timesteps != timesteps || self.sample_shape != sample_shape || self.copies != copies
        {
            return Err(Error::Invalid(format!(
                "the uncertainty reference was made for timesteps {:?}, samples {:?} and M = {}, \
                 this run has {timesteps:?}, {sample_shape:?} and M = {copies}: make one with the \
                 run's model, sampler, --steps and -M",
                self.timesteps, self.sample_shape, self.copies
            )));
        }
        Ok(())
    }
}

/// The (shift, scale) per element (C·H·W) that turns a Stein mode's raw values at `step` into
/// its map, (raw − shift)·scale (shaders/uncertainty.wgsl): the typicality's 1/√(2D), the
/// reference's z-scores for the others, or the raw values when `reference` is None.
pub fn standardisation(
    mode: UncertaintyMode,
    reference: Option<&UncertaintyReference>,
    step: usize,
    len: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let constant = |shift: f64, scale: f64| (vec![shift as f32; len], vec![scale as f32; len]);
    let reference = match (mode, reference) {
        (UncertaintyMode::Typicality, _) => {
            return Ok(constant(0.0, 1.0 / (2.0 * len as f64).sqrt()))
        }
        (_, None) => return Ok(constant(0.0, 1.0)),
        (_, Some(r)) => r,
    };
    if reference.sample_len() != len || step >= reference.timesteps.len() {
        return Err(Error::Invalid(format!(
            "the uncertainty reference has no step {step} of {len} elements"
        )));
    }
    Ok(match mode {
        UncertaintyMode::Residual => constant(
            reference.residual_mean[step] / len as f64,
            1.0 / reference.residual_sd[step],
        ),
        UncertaintyMode::PosteriorVariance => {
            let rows = step * len..(step + 1) * len;
            let mean = &reference.posterior_variance_mean[rows.clone()];
            let sd = &reference.posterior_variance_sd[rows];
            let floor = SD_FLOOR * sd.iter().sum::<f64>() / len as f64;
            if floor <= 0.0 {
                return Err(Error::Invalid(format!(
                    "the uncertainty reference's posterior variance never varies at step {step}: \
                     make it from more (and different) images"
                )));
            }
            (
                mean.iter().map(|&m| m as f32).collect(),
                sd.iter().map(|&s| (1.0 / s.max(floor)) as f32).collect(),
            )
        }
        _ => {
            return Err(Error::Invalid(format!(
                "mode {mode} is not standardised against a reference"
            )))
        }
    })
}

#[derive(Clone, Debug)]
pub struct ReferenceRequest {
    pub model: PathBuf,
    pub sampler: SamplerChoice,
    /// An idx file or a folder of PNGs of real images (28×28 Fashion-MNIST images are padded to
    /// the model's 32×32 with background −1, as in training).
    pub images: PathBuf,
    /// Use the first `count` images (None: all).
    pub count: Option<usize>,
    pub copies: usize,
    pub seed: u64,
    pub batch: usize,
    pub max_copies_per_forward: Option<usize>,
}

/// The raw Stein modes the reference measures, in the order [`Accumulator::add`] takes them.
const MODES: [UncertaintyMode; 3] = [
    UncertaintyMode::PosteriorVariance,
    UncertaintyMode::Residual,
    UncertaintyMode::Typicality,
];

/// Builds the reference; `progress(done, total)` after each batch of images.
pub fn build_reference(
    gpu: &Gpu,
    request: &ReferenceRequest,
    mut progress: impl FnMut(usize, usize),
) -> Result<UncertaintyReference> {
    request.validate()?;
    let (model, scheduler) = load_for_sampling(gpu, &request.model, &request.sampler)?;
    if model.num_classes().is_some() {
        return Err(Error::Invalid(
            "the reference is made for unconditional models (real images come without the \
             model's class labels)"
                .into(),
        ));
    }
    let sample_shape = model.sample_shape()?;
    let images = request.real_images()?;
    let x0 = to_model_input(&images, sample_shape)?;
    let len: usize = sample_shape.iter().product();
    let mut acc = Accumulator::new(scheduler.timesteps.len(), len);
    let raw = RawModes::new(gpu, sample_shape)?;
    let noise = NoisePlan::new(request.seed);
    for first in (0..images.len()).step_by(request.batch) {
        let b = request.batch.min(images.len() - first);
        let shape = [b, sample_shape[0], sample_shape[1], sample_shape[2]];
        let x0 = gpu.upload(&shape, &x0[first * len..(first + b) * len])?;
        let non_finite = NonFiniteFlags::new(gpu, b)?;
        for (i, &t) in scheduler.timesteps.iter().enumerate() {
            let z = noise.reference(gpu, &shape, i, first)?;
            let x = scheduler.add_noise(gpu, t, &x0, &z)?;
            let timesteps = gpu.upload(&[b], &vec![t as f32; b])?;
            let ctx = StepContext {
                gpu,
                model: &*model,
                scheduler: &scheduler,
                noise: &noise,
                first_index: first,
                step: i,
                timestep: t,
                timesteps: &timesteps,
                cond: &Cond::None,
                x: &x,
                non_finite: &non_finite,
            };
            let [pv, res, typ] = raw.measure(&ctx, request)?;
            acc.add(i, &pv, &res, &typ);
        }
        let flags = ops::decode_first_steps(&gpu.read(non_finite.tensor())?);
        if let Some(k) = flags.iter().position(Option::is_some) {
            return Err(Error::Invalid(format!(
                "the reference went non-finite on image {} (the model or the image is broken)",
                first + k
            )));
        }
        progress(first + b, images.len());
    }
    let (pv, res, typ) = acc.finish(images.len());
    Ok(UncertaintyReference {
        source: format!("{} images of {}", images.len(), request.images.display()),
        timesteps: scheduler.timesteps.clone(),
        sample_shape,
        copies: request.copies,
        images: images.len(),
        seed: request.seed,
        posterior_variance_mean: pv.0,
        posterior_variance_sd: pv.1,
        residual_mean: res.0,
        residual_sd: res.1,
        typicality_mean: typ.0,
        typicality_sd: typ.1,
    })
}

impl ReferenceRequest {
    /// The counts the reference needs before anything is loaded.
    fn validate(&self) -> Result<()> {
        use crate::limits::{count_in, MAX_BATCH, MAX_EVAL_IMAGES};
        count_in("--batch", self.batch, MAX_BATCH)?;
        if let Some(count) = self.count {
            count_in("--count", count, MAX_EVAL_IMAGES)?;
        }
        if self.batch == 0 || self.copies < 2 || self.copies > crate::limits::MAX_COPIES {
            return Err(Error::Invalid(format!(
                "the reference needs a batch ≥ 1 and 2 ≤ M ≤ {} (got batch {}, M {})",
                crate::limits::MAX_COPIES,
                self.batch,
                self.copies
            )));
        }
        Ok(())
    }

    /// The real images: the first `count` of the source, at least two.
    fn real_images(&self) -> Result<Vec<Image8>> {
        let (mut images, _) = load_images(&self.images)?;
        images.truncate(self.count.unwrap_or(images.len()));
        if images.len() < 2 {
            return Err(Error::Invalid(format!(
                "a reference needs at least 2 images for a spread, got {}",
                images.len()
            )));
        }
        Ok(images)
    }
}

/// The raw (unstandardised) maps of [`MODES`]: each mode's identity (shift, scale) on the GPU.
struct RawModes(Vec<(Tensor, Tensor)>);

impl RawModes {
    fn new(gpu: &Gpu, sample_shape: [usize; 3]) -> Result<RawModes> {
        let len = sample_shape.iter().product();
        let raw = MODES
            .iter()
            .map(|&mode| {
                let (shift, scale) = standardisation(mode, None, 0, len)?;
                Ok((
                    gpu.upload(&sample_shape, &shift)?,
                    gpu.upload(&sample_shape, &scale)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(RawModes(raw))
    }

    /// One step of a batch of noised real images: the estimator's M re-noised copies, then the
    /// posterior-variance maps (B·C·H·W) and the residual and typicality sums (B), read back.
    fn measure(&self, ctx: &StepContext, request: &ReferenceRequest) -> Result<[Vec<f32>; 3]> {
        let gpu = ctx.gpu;
        let eps = ctx
            .model
            .predict_eps(gpu, ctx.x, ctx.timesteps, &Cond::None)?;
        let (draws, eps_copies) =
            renoised_copies(ctx, &eps, request.copies, request.max_copies_per_forward)?;
        let a = ctx.scheduler.alpha_bar(ctx.timestep);
        let rho = (1.0 - a) / a;
        let maps = MODES
            .iter()
            .zip(&self.0)
            .map(|(&mode, (shift, scale))| {
                let map = ops::stein_map(
                    gpu,
                    &eps_copies,
                    &draws,
                    (shift, scale),
                    request.copies,
                    mode,
                    rho,
                )?;
                ctx.non_finite.record(gpu, &map, ctx.step)?;
                Ok(map)
            })
            .collect::<Result<Vec<_>>>()?;
        let sums = [
            ops::sum_per_sample(gpu, &maps[1])?,
            ops::sum_per_sample(gpu, &maps[2])?,
        ];
        Ok([
            gpu.read(&maps[0])?,
            gpu.read(&sums[0])?,
            gpu.read(&sums[1])?,
        ])
    }
}

/// Float64 sums and sums of squares per step; each statistic's (mean, sd) at the end.
struct Accumulator {
    len: usize,
    pv: (Vec<f64>, Vec<f64>),
    res: (Vec<f64>, Vec<f64>),
    typ: (Vec<f64>, Vec<f64>),
}

type Stats = (Vec<f64>, Vec<f64>);

impl Accumulator {
    fn new(steps: usize, len: usize) -> Accumulator {
        let zeros = |n| (vec![0.0; n], vec![0.0; n]);
        Accumulator {
            len,
            pv: zeros(steps * len),
            res: zeros(steps),
            typ: zeros(steps),
        }
    }

    /// Step `step` of a batch: its posterior-variance maps (B·len), residuals and typicalities (B).
    fn add(&mut self, step: usize, pv: &[f32], res: &[f32], typ: &[f32]) {
        let add = |(s, q): &mut (Vec<f64>, Vec<f64>), at: usize, v: f32| {
            s[at] += v as f64;
            q[at] += v as f64 * v as f64;
        };
        for row in pv.chunks(self.len) {
            for (i, &v) in row.iter().enumerate() {
                add(&mut self.pv, step * self.len + i, v);
            }
        }
        res.iter().for_each(|&v| add(&mut self.res, step, v));
        typ.iter().for_each(|&v| add(&mut self.typ, step, v));
    }

    fn finish(self, n: usize) -> (Stats, Stats, Stats) {
        let n = n as f64;
        let stats = |(s, q): Stats| -> Stats {
            let mean: Vec<f64> = s.iter().map(|v| v / n).collect();
            let sd = q
                .iter()
                .zip(&mean)
                .map(|(q, m)| ((q - n * m * m) / (n - 1.0)).max(0.0).sqrt())
                .collect();
            (mean, sd)
        };
        (stats(self.pv), stats(self.res), stats(self.typ))
    }
}

/// Real images as model input (K, C, H, W) in [−1, 1]: x/127.5 − 1, each centred on the model's
/// canvas of background −1 (28×28 Fashion-MNIST on 32×32, as tools/train/train_demo.py pads).
fn to_model_input(images: &[Image8], [c, h, w]: [usize; 3]) -> Result<Vec<f32>> {
    let mut out = vec![-1.0f32; images.len() * c * h * w];
    for (k, img) in images.iter().enumerate() {
        let (dy, dx) = (h.wrapping_sub(img.height), w.wrapping_sub(img.width));
        if img.channels != c || dy > h || dx > w || dy % 2 != 0 || dx % 2 != 0 {
            return Err(Error::Invalid(format!(
                "real image {k} is {}x{} with {} channel(s); the model takes {w}x{h} with {c} \
                 (smaller images must be centred with an even margin)",
                img.width, img.height, img.channels
            )));
        }
        let canvas = &mut out[k * c * h * w..(k + 1) * c * h * w];
        for y in 0..img.height {
            for x in 0..img.width {
                for ch in 0..c {
                    let v = img.pixels[(y * img.width + x) * c + ch];
                    canvas[(ch * h + y + dy / 2) * w + x + dx / 2] = v as f32 / 127.5 - 1.0;
                }
            }
        }
    }
    Ok(out)
}
