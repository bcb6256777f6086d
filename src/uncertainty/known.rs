//! What the score studies measured, stated once: whether an uncertainty mode is known to rank a
//! model's samples the wrong way (its lowest scores worse than a random pick). The `sample`
//! command warns with it and the report shows it; weights/README.md ("Results on the shipped
//! step-20,000 model") holds the study these numbers come from.

use super::UncertaintyMethod;
use crate::error::{Error, Result};
use crate::ops::UncertaintyMode;
use std::io::Read;
use std::path::Path;

/// A model file known by its bytes: a copy or a renamed file is still the model the study
/// measured, while a retrained or re-exported one is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelDigest {
    bytes: u64,
    /// 64-bit FNV-1a of the whole file (an identity, not a security check).
    fnv1a: u64,
}

/// `weights/fashion_mnist_ddpm.safetensors` as shipped (EMA weights at step 20,000).
const SHIPPED_FASHION_MNIST: ModelDigest = ModelDigest {
    bytes: 4_198_572,
    fnv1a: 0xd2c5_279a_c882_5ed6,
};

/// A measured wrong-way ranking: keeping the lowest-scored 85 % of 1000 samples gave a worse
/// classifier Fréchet distance than random subsets of the same size.
#[derive(Clone, Debug, PartialEq)]
pub struct Misranking {
    pub mode: UncertaintyMode,
    /// FD of the kept set, and the mean and standard deviation of 200 random subsets.
    pub kept_fd: f64,
    pub random_fd: (f64, f64),
    /// (random mean − kept)/sd: below 0 means worse than chance.
    pub z: f64,
}

impl std::fmt::Display for Misranking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "on the shipped Fashion-MNIST model the `{}` score ranks samples the wrong way: \
             keeping the lowest-scored 85 % of 1000 samples (10 DDIM steps, M = 5, every step \
             scored) gave a classifier FD of {:.1}, worse than random subsets of the same size \
             ({:.1} ± {:.1}; z = {:+.2}). Its lowest scores are malformed bags and pullovers, its \
             highest clean trousers; the late steps (t ≤ 400) carry the effect, which follows \
             garment area more than quality. See weights/README.md, \"Results on the shipped \
             step-20,000 model\"",
            self.mode, self.kept_fd, self.random_fd.0, self.random_fd.1, self.z
        )
    }
}

/// The study's result for `mode` on `model`, if it is known to rank the wrong way there. A
/// folder (a Stable Diffusion model) or any file the studies did not measure gives None; a
/// model file that cannot be read is an error.
pub fn known_misranking(
    model: &Path,
    method: UncertaintyMethod,
    mode: UncertaintyMode,
) -> Result<Option<Misranking>> {
    // The study measured the paper's re-noising; the shipped model has no dropout anyway.
    if method != UncertaintyMethod::Renoise || model.is_dir() {
        return Ok(None);
    }
    let (kept_fd, z) = match mode {
        UncertaintyMode::Centred => (101.7, -4.69),
        // variance-biased is variance times M/(M − 1): the same ranking.
        UncertaintyMode::Variance | UncertaintyMode::VarianceBiased => (117.9, -10.30),
        _ => return Ok(None),
    };
    if digest(model)? != Some(SHIPPED_FASHION_MNIST) {
        return Ok(None);
    }
    Ok(Some(Misranking {
        mode,
        kept_fd,
        random_fd: (88.2, 2.9),
        z,
    }))
}

/// The file's digest, None without reading it when its size is not a known model's.
fn digest(path: &Path) -> Result<Option<ModelDigest>> {
    let fail = Error::file("read", path);
    let bytes = std::fs::metadata(path).map_err(fail)?.len();
    if bytes != SHIPPED_FASHION_MNIST.bytes {
        return Ok(None);
    }
    let mut file = std::fs::File::open(path).map_err(Error::file("read", path))?;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(Error::file("read", path))?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(Some(ModelDigest { bytes, fnv1a: hash }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::DEFAULT_MODEL;

    #[test]
    fn the_shipped_model_is_recognised_for_the_modes_the_study_found_wrong() {
        let shipped = Path::new(DEFAULT_MODEL);
        let renoise = UncertaintyMethod::Renoise;
        for mode in [
            UncertaintyMode::Centred,
            UncertaintyMode::Variance,
            UncertaintyMode::VarianceBiased,
        ] {
            let found = known_misranking(shipped, renoise, mode).unwrap();
            let found = found.expect("the shipped file's digest is the study's model");
            assert!(found.z < 0.0 && found.kept_fd > found.random_fd.0);
            assert!(found.to_string().contains(&format!("`{mode}`")));
        }
        for mode in [
            UncertaintyMode::Typicality,
            UncertaintyMode::PosteriorVariance,
            UncertaintyMode::Residual,
        ] {
            assert_eq!(known_misranking(shipped, renoise, mode).unwrap(), None);
        }
        let mc = UncertaintyMethod::McDropout;
        assert_eq!(
            known_misranking(shipped, mc, UncertaintyMode::Variance).unwrap(),
            None
        );
    }

    #[test]
    fn other_models_are_not_and_a_missing_one_is_an_error() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let other = fixtures.join("unet_tiny_gray.safetensors");
        let centred = (UncertaintyMethod::Renoise, UncertaintyMode::Centred);
        assert_eq!(
            known_misranking(&other, centred.0, centred.1).unwrap(),
            None
        );
        assert_eq!(
            known_misranking(&fixtures, centred.0, centred.1).unwrap(),
            None
        );
        let err = known_misranking(&fixtures.join("absent"), centred.0, centred.1).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
