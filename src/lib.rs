//! wgsl-diff: diffusion sampling with pixel-wise aleatoric uncertainty (De Vita & Belagiannis,
//! WACV 2025) on hand-written WGSL kernels.
//!
//! Layers, each depending only on those below: `gpu` (device, buffer pool, pipeline cache, one
//! open command encoder) → `ops` (typed kernel wrappers) → `models` (networks mirroring their
//! PyTorch module trees) → `sampling` (schedules, samplers, the loop) and `uncertainty`
//! (Algorithm 1 as a step hook); `evaluation` scores image sets with a classifier (`metrics`).
//! `images`, `npy`, `io` and `splitmix` are small utilities.

pub mod error;
pub mod evaluation;
pub mod gpu;
pub mod images;
pub mod io;
pub mod metrics;
pub mod models;
pub(crate) mod names;
pub mod npy;
pub mod ops;
pub mod run_dir;
pub mod sampling;
pub mod splitmix;
pub mod uncertainty;

pub use error::{Error, Result};
