//! Opening any diffusion network for sampling: the weight file's `arch` metadata picks the
//! model family, so samplers, the estimator and guidance take whichever it is.

use super::diffusers::unet_2d_condition::UNet2DConditionModel;
use super::{AdmModel, EpsModel, UNet2DModel, UViT, WeightFile};
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// The ε-model a converted weight file holds: a diffusers `UNet2DModel` or a guided-diffusion
/// ADM `UNetModel`, by the file's `arch` metadata.
pub fn load_eps_model(gpu: &Gpu, file: &WeightFile) -> Result<Box<dyn EpsModel>> {
    let half = file.f16_activations();
    if half && !gpu.caps.shader_f16 {
        return Err(Error::MissingFeature("SHADER_F16 (f16 activations)"));
    }
    let arch = file.meta("arch")?;
    if let (Some((h, w)), false) = (file.sample_size(), arch == UNet2DConditionModel::ARCH) {
        return Err(Error::Invalid(format!(
            "a {h} × {w} sample size applies to Stable Diffusion's UNet; {} holds a {arch:?}, \
             which samples at its trained size",
            file.path().display()
        )));
    }
    match arch {
        UNet2DModel::ARCH => Ok(Box::new(
            UNet2DModel::load(gpu, file)?.with_f16_activations(half),
        )),
        AdmModel::ARCH if half => Err(Error::Invalid(
            "f16 activations are implemented for diffusers UNets only, not ADM".into(),
        )),
        AdmModel::ARCH => Ok(Box::new(AdmModel::load(gpu, file)?)),
        UViT::ARCH if half => Err(Error::Invalid(
            "f16 activations are implemented for diffusers UNets only, not U-ViT".into(),
        )),
        UViT::ARCH => Ok(Box::new(UViT::load(gpu, file)?)),
        UNet2DConditionModel::ARCH => Ok(Box::new(
            UNet2DConditionModel::load(gpu, file)?
                .with_f16_activations(half)
                .with_sample_size(file.sample_size())?,
        )),
        other => Err(Error::Weights(format!(
            "{} holds a {other:?} model; sampling takes a {:?}, a {:?}, an {:?} or a {:?}",
            file.path().display(),
            UNet2DModel::ARCH,
            UNet2DConditionModel::ARCH,
            AdmModel::ARCH,
            UViT::ARCH
        ))),
    }
}
