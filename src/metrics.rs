//! Sample-quality metrics on classifier outputs, in f64 on the CPU: the Fréchet distance between
//! Gaussians fitted to two feature sets (FID's formula, with any feature extractor) and how
//! confidently the classifier recognises a set.

use crate::error::{Error, Result};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Mean and covariance of a set of feature vectors.
#[derive(Clone, Debug)]
pub struct FeatureGaussian {
    pub mean: DVector<f64>,
    pub covariance: DMatrix<f64>,
    /// How many vectors it was fitted to; 0 when given as moments ([`Self::from_moments`]).
    pub count: usize,
}

impl FeatureGaussian {
    /// Fits `features`, rows of `dim` values, with the unbiased covariance (divisor N − 1), as
    /// numpy.cov and pytorch-fid do.
    pub fn fit(features: &[f32], dim: usize) -> Result<FeatureGaussian> {
        if dim == 0 || !features.len().is_multiple_of(dim) {
            return Err(Error::Invalid(format!(
                "{} feature values are not rows of {dim}",
                features.len()
            )));
        }
        let count = features.len() / dim;
        if count < 2 {
            return Err(Error::Invalid(format!(
                "a covariance needs at least 2 feature vectors, got {count}"
            )));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "feature vector {} holds a non-finite value",
                i / dim
            )));
        }
        let rows = DMatrix::from_row_iterator(count, dim, features.iter().map(|&v| v as f64));
        let mean = rows.row_mean().transpose();
        let centred = DMatrix::from_fn(count, dim, |r, c| rows[(r, c)] - mean[c]);
        let covariance = centred.tr_mul(&centred) / (count - 1) as f64;
        Ok(FeatureGaussian {
            mean,
            covariance,
            count,
        })
    }

    /// A Gaussian known only by its moments (a statistics file), with `count` 0.
    pub fn from_moments(mean: DVector<f64>, covariance: DMatrix<f64>) -> FeatureGaussian {
        FeatureGaussian {
            mean,
            covariance,
            count: 0,
        }
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// The Fréchet (2-Wasserstein) distance between two Gaussians:
/// ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2·Tr (Σ₁Σ₂)^½.
///
/// Σ₁Σ₂ is not symmetric, but it is similar to the positive semi-definite √Σ₁·Σ₂·√Σ₁, whose
/// eigenvalues are real and non-negative: summing their square roots gives the trace without a
/// general matrix square root.
pub fn frechet_distance(a: &FeatureGaussian, b: &FeatureGaussian) -> Result<f64> {
    if a.dim() != b.dim() {
        return Err(Error::Invalid(format!(
            "feature dimensions differ: {} and {}",
            a.dim(),
            b.dim()
        )));
    }
    let mean_term = (&a.mean - &b.mean).norm_squared();
    // Tr (Σ₁Σ₂)^½ is homogeneous of degree 1 in the pair's scale: computed on Σ/s and scaled
    // back, the product cannot overflow for any finite covariances (unscaled, entries of 1e300
    // overflowed to eigenvalues NaN, clamped to 0: a finite, wrong distance). s is an even power
    // of two, so dividing by it and taking square roots are exact: distances that did not
    // overflow are bit for bit what they were.
    let largest = a
        .covariance
        .iter()
        .chain(b.covariance.iter())
        .fold(0f64, |m, v| m.max(v.abs()));
    let scale = match largest > 0.0 {
        true => {
            let e = largest.log2().floor() as i32;
            2f64.powi(e - e.rem_euclid(2))
        }
        false => 1.0,
    };
    let sqrt_a = psd_sqrt(&(&a.covariance / scale));
    let product = &sqrt_a * (&b.covariance / scale) * &sqrt_a;
    let eigenvalues = psd_eigenvalues(&product);
    if eigenvalues.iter().any(|l| !l.is_finite()) {
        return Err(Error::Invalid(
            "the covariances' product has no finite eigenvalues: they are out of any feature's \
             range"
                .into(),
        ));
    }
    let trace_sqrt: f64 = scale * eigenvalues.iter().map(|l| l.sqrt()).sum::<f64>();
    let distance = mean_term + a.covariance.trace() + b.covariance.trace() - 2.0 * trace_sqrt;
    if !distance.is_finite() {
        return Err(Error::Invalid(format!(
            "the Fréchet distance overflows ({distance}): the means or covariances are out of \
             any feature's range"
        )));
    }
    // A distance is ≥ 0; identical sets land a rounding error either side of it.
    Ok(distance.max(0.0))
}

/// Whether `m` is a covariance as pytorch-fid would take it: symmetric and positive
/// semi-definite, each within rounding (relative 1e-6 of its largest entry or eigenvalue).
pub fn check_covariance(m: &DMatrix<f64>) -> std::result::Result<(), String> {
    let scale = m
        .iter()
        .fold(0f64, |a, v| a.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let asymmetry = (m - m.transpose()).iter().fold(0f64, |a, v| a.max(v.abs()));
    if asymmetry > 1e-6 * scale {
        return Err(format!(
            "is not symmetric (entries differ from their transposes by up to {asymmetry:e})"
        ));
    }
    let eigenvalues = symmetrised(m).symmetric_eigenvalues();
    let top = eigenvalues.iter().fold(0f64, |a, v| a.max(v.abs()));
    let lowest = eigenvalues.iter().fold(f64::INFINITY, |a, &v| a.min(v));
    if lowest < -1e-6 * top.max(scale) {
        return Err(format!(
            "is not positive semi-definite (an eigenvalue of {lowest:e})"
        ));
    }
    Ok(())
}

/// Eigenvalues of a symmetric positive semi-definite matrix, with the tiny negative values that
/// rounding produces for singular matrices (fewer samples than dimensions) clamped to 0.
fn psd_eigenvalues(m: &DMatrix<f64>) -> DVector<f64> {
    // `max` would turn a NaN into 0; it stays NaN for the caller to refuse.
    symmetrised(m)
        .symmetric_eigenvalues()
        .map(|l| if l.is_nan() { l } else { l.max(0.0) })
}

/// The symmetric square root V·diag(√λ)·Vᵀ of a positive semi-definite matrix.
fn psd_sqrt(m: &DMatrix<f64>) -> DMatrix<f64> {
    let SymmetricEigen {
        eigenvectors,
        eigenvalues,
    } = symmetrised(m).symmetric_eigen();
    let roots = DMatrix::from_diagonal(&eigenvalues.map(|l| l.max(0.0).sqrt()));
    &eigenvectors * roots * eigenvectors.transpose()
}

/// (M + Mᵀ)/2: removes the asymmetry rounding leaves in products meant to be symmetric.
fn symmetrised(m: &DMatrix<f64>) -> DMatrix<f64> {
    (m + m.transpose()) * 0.5
}

/// What the classifier makes of a set of images.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassPredictions {
    /// Mean over images of the largest softmax probability.
    pub mean_confidence: f64,
    /// Images per predicted (arg-max) class.
    pub histogram: Vec<usize>,
}

/// Summarises `logits`, rows of `classes` values.
pub fn class_predictions(logits: &[f32], classes: usize) -> Result<ClassPredictions> {
    if classes == 0 || logits.is_empty() || !logits.len().is_multiple_of(classes) {
        return Err(Error::Invalid(format!(
            "{} logits are not a non-empty set of rows of {classes}",
            logits.len()
        )));
    }
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "the classifier's logits for image {} hold a non-finite value",
            i / classes
        )));
    }
    let mut histogram = vec![0; classes];
    let mut confidence_sum = 0.0;
    for row in logits.chunks(classes) {
        // Ties go to the first class, as with torch.argmax.
        let best = (1..classes).fold(0, |best, i| if row[i] > row[best] { i } else { best });
        let max = row[best];
        // softmax(row)[best] = 1 / Σ exp(l − max), computed without overflow.
        let denominator: f64 = row.iter().map(|&l| (l as f64 - max as f64).exp()).sum();
        confidence_sum += 1.0 / denominator;
        histogram[best] += 1;
    }
    Ok(ClassPredictions {
        mean_confidence: confidence_sum / (logits.len() / classes) as f64,
        histogram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::splitmix::SplitMix64;

    /// `count` rows of `dim` values with correlated columns, so covariances are full.
    fn random_features(seed: u64, count: usize, dim: usize) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let mut out = Vec::with_capacity(count * dim);
        for _ in 0..count {
            let shared = rng.symmetric();
            out.extend((0..dim).map(|d| (rng.symmetric() + shared * d as f64 / dim as f64) as f32));
        }
        out
    }

    fn fd(a: &[f32], b: &[f32], dim: usize) -> f64 {
        frechet_distance(
            &FeatureGaussian::fit(a, dim).unwrap(),
            &FeatureGaussian::fit(b, dim).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn identical_sets_are_at_distance_zero() {
        for (count, dim) in [(200, 8), (20, 32)] {
            // (20, 32): fewer samples than dimensions, a singular covariance.
            let x = random_features(1, count, dim);
            let d = fd(&x, &x, dim);
            assert!(d.abs() < 1e-9, "FD(x, x) = {d} for {count}×{dim}");
        }
    }

    #[test]
    fn one_dimensional_sets_match_the_closed_form() {
        // A = 1, 2, 3, 4: mean 2.5, unbiased variance 5/3. B = 2A: mean 5, variance 20/3.
        // FD = (μA − μB)² + (σA − σB)² = 6.25 + 5/3.
        let d = fd(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 8.0], 1);
        assert!((d - (6.25 + 5.0 / 3.0)).abs() < 1e-12, "{d}");
    }

    #[test]
    fn diagonal_gaussians_match_the_closed_form() {
        let gaussian = |mean: &[f64], std: &[f64]| FeatureGaussian {
            mean: DVector::from_column_slice(mean),
            covariance: DMatrix::from_diagonal(&DVector::from_iterator(
                std.len(),
                std.iter().map(|s| s * s),
            )),
            count: 100,
        };
        let (mean_a, std_a): ([f64; 3], [f64; 3]) = ([0.0, 1.0, -2.0], [1.0, 0.5, 3.0]);
        let (mean_b, std_b): ([f64; 3], [f64; 3]) = ([0.5, 1.0, 1.0], [2.0, 0.5, 0.1]);
        let want: f64 = (0..3)
            .map(|i| (mean_a[i] - mean_b[i]).powi(2) + (std_a[i] - std_b[i]).powi(2))
            .sum();
        let got = frechet_distance(&gaussian(&mean_a, &std_a), &gaussian(&mean_b, &std_b)).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn fit_uses_the_unbiased_covariance() {
        // Rows ±(1, 2) around (10, −1): the columns are perfectly correlated.
        let g = FeatureGaussian::fit(&[11.0, 1.0, 9.0, -3.0, 11.0, 1.0, 9.0, -3.0], 2).unwrap();
        assert_eq!(g.mean.as_slice(), &[10.0, -1.0]);
        // Σ (deviation products) / (N − 1) = 4·[[1, 2], [2, 4]] / 3.
        let want = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 2.0, 4.0]) * (4.0 / 3.0);
        assert!((&g.covariance - want).amax() < 1e-12, "{}", g.covariance);
    }

    #[test]
    fn distance_is_symmetric_and_ignores_sample_order() {
        let dim = 6;
        let (a, b) = (random_features(2, 300, dim), random_features(3, 200, dim));
        let b_scaled: Vec<f32> = b.iter().map(|v| v * 1.5 + 0.2).collect();
        let d = fd(&a, &b_scaled, dim);
        assert!(d > 0.1, "different sets are apart: {d}");
        assert!((fd(&b_scaled, &a, dim) - d).abs() < 1e-9 * d);
        let order = SplitMix64::new(4).permutation(300);
        let shuffled: Vec<f32> = order
            .iter()
            .flat_map(|&r| a[r * dim..(r + 1) * dim].iter().copied())
            .collect();
        assert!((fd(&shuffled, &b_scaled, dim) - d).abs() < 1e-9 * d);
    }

    #[test]
    fn bad_feature_sets_are_errors() {
        assert!(FeatureGaussian::fit(&[1.0, 2.0], 2).is_err(), "one vector");
        assert!(FeatureGaussian::fit(&[1.0, 2.0, 3.0], 2).is_err(), "ragged");
        assert!(FeatureGaussian::fit(&[1.0, f32::NAN, 3.0, 4.0], 2).is_err());
        let (a, b) = (
            FeatureGaussian::fit(&[1.0, 2.0, 3.0, 4.0], 2).unwrap(),
            FeatureGaussian::fit(&[1.0, 2.0, 3.0, 4.0], 1).unwrap(),
        );
        assert!(frechet_distance(&a, &b).is_err(), "dimension mismatch");
    }

    #[test]
    fn class_predictions_average_the_top_probability() {
        // Row 1: equal logits → 1/3 each, arg-max the first. Row 2: class 2 at e²/(e² + 2).
        let logits = [0.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let got = class_predictions(&logits, 3).unwrap();
        let e2 = 2f64.exp();
        let want = (1.0 / 3.0 + e2 / (e2 + 2.0)) / 2.0;
        assert!((got.mean_confidence - want).abs() < 1e-12);
        assert_eq!(got.histogram, vec![1, 0, 1]);
        // A non-finite logit is an error naming its image; huge logits must not overflow.
        let nan = class_predictions(&[0.0, 1.0, f32::NAN, 0.0], 2).unwrap_err();
        assert!(nan.to_string().contains("image 1"), "{nan}");
        let big = class_predictions(&[1e30, 0.0], 2).unwrap();
        assert_eq!(big.mean_confidence, 1.0);
        assert!(class_predictions(&logits, 4).is_err());
        assert!(class_predictions(&[], 3).is_err());
    }
}
