//! Networks ported from PyTorch, mirroring their module trees and parameter names.

pub mod classifier;
pub mod eps_model;
pub mod layers;
pub mod unet2d;
pub mod weights;

pub use eps_model::EpsModel;
pub use unet2d::{UNet2DConfig, UNet2DModel};
pub use weights::WeightFile;
