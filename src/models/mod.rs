//! Networks ported from PyTorch, mirroring their module trees and parameter names. Samplers,
//! the estimator and guidance see a diffusion network only through [`EpsModel`], conditioned by
//! a [`Cond`] (with classifier-free guidance applied by [`denoise`]), and its samples become
//! images through a [`Decoder`].
//!
//! Grouped by family: [`diffusers`] (UNet2DModel, in diffusers' file layout), [`adm`]
//! (openai/guided-diffusion's `UNetModel`, the paper's ImageNet models, mirroring that
//! repository's `unet.py`) and [`evaluation`] (the networks `eval` and `fid` use), on the
//! shared [`layers`] primitives (convolution, linear, group norm, embedding tables) and the
//! [`weights`] loader; checkpoints as users have them are opened by [`pipeline`] (converted
//! files, diffusers folders) and [`single_file`] (Stable Diffusion 1.x's original layout). A new family (Stable Diffusion's conditional UNet, its VAE decoder, CLIP)
//! is a folder here that implements [`EpsModel`] or [`Decoder`].

pub mod adm;
pub mod clip;
pub mod cond;
pub mod decode;
pub mod diffusers;
pub mod eps_model;
pub mod evaluation;
pub mod layers;
pub mod load;
pub mod mc_dropout;
pub mod pipeline;
pub mod single_file;
pub mod uvit;
pub mod weights;

pub use adm::{AdmConfig, AdmModel};
pub use cond::{denoise, denoise_vjp, row_range, Cond, Guided};
pub use decode::{Decoder, Identity, MapSpace};
pub use diffusers::unet_2d::{UNet2DConfig, UNet2DModel, UNetTape};
pub use eps_model::EpsModel;
pub use load::load_eps_model;
pub use mc_dropout::DropoutMasks;
pub use pipeline::open_model;
pub use uvit::{UViT, UViTConfig};
pub use weights::WeightFile;
