//! wgsl-diff: diffusion sampling with pixel-wise aleatoric uncertainty (De Vita & Belagiannis,
//! WACV 2025) on hand-written WGSL kernels.
//!
//! Layers, each depending only on those below: `gpu` (device, buffers, pipelines) → `ops`
//! (typed kernel wrappers).

pub mod error;
pub mod gpu;
pub mod images;
pub mod io;
pub mod models;
pub mod npy;
pub mod ops;
pub mod sampling;
pub mod splitmix;
pub mod uncertainty;

pub use error::{Error, Result};
