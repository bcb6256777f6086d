//! Networks ported from PyTorch, mirroring their module trees and parameter names. Samplers,
//! the estimator and guidance see a diffusion network only through [`EpsModel`].
//!
//! The UNet follows diffusers' file layout: [`unet_2d`] (the model and its config) is built
//! from [`unet_2d_blocks`], which are built from [`resnet`], [`attention`] and
//! [`embeddings`] modules on the [`layers`] primitives. Each module also has a saving forward
//! (its output and a small tape of what its backward needs) and a backward giving the gradient
//! with respect to its input only; [`vjp`] runs them over a batch for gradient guidance.
//! [`embeddings`] modules on the [`layers`] primitives. [`adm`] is openai/guided-diffusion's
//! `UNetModel` (ADM), the paper's ImageNet models, mirroring that repository's `unet.py`.

pub mod adm;
pub mod attention;
pub mod classifier;
pub mod embeddings;
pub mod eps_model;
pub mod inception;
pub mod layers;
pub mod load;
pub mod mc_dropout;
pub mod resnet;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vjp;
pub mod weights;

pub use adm::{AdmConfig, AdmModel};
pub use eps_model::EpsModel;
pub use load::load_eps_model;
pub use mc_dropout::DropoutMasks;
pub use unet_2d::{UNet2DConfig, UNet2DModel, UNetTape};
pub use weights::WeightFile;
