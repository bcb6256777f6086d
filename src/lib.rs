//! wgsl-diff: diffusion sampling with pixel-wise aleatoric uncertainty (De Vita & Belagiannis,
//! WACV 2025) on hand-written WGSL kernels.
//!
//! # Layers
//! Each depends only on those below it:
//! - [`gpu`]: device, buffer pool, pipeline cache, one open command encoder per step.
//! - [`ops`]: typed wrappers over `shaders/*.wgsl`, one `#[repr(C)]` parameter struct per kernel.
//! - [`noise`]: the run's noise plan, the one place that turns (seed, purpose, step, copy,
//!   index) into a Philox stream; models (MC-Dropout's masks) and samplers both draw from it.
//! - [`models`]: networks by family, mirroring their PyTorch module trees (diffusers'
//!   `UNet2DModel` block by block, with a saving forward and an input-gradient backward per
//!   module; guided-diffusion's ADM; the evaluation networks); samplers see them only as an
//!   [`models::EpsModel`] (ε, and the VJP ∂⟨ε, v⟩/∂x that guidance needs) under a
//!   [`models::Cond`] (nothing, class labels, or classifier-free guidance over either, applied by
//!   [`models::denoise`]), and a [`models::Decoder`] turns samples into images.
//! - [`sampling`]: schedules, samplers (one file per update rule, each batch's history in its
//!   [`sampling::SamplerState`]), the loop and [`sampling::Run`]; [`uncertainty`]: Algorithm 1
//!   as a step hook that observes ε;
//!   [`guidance`]: Algorithm 2 as a step hook that changes it (Rule G, Rule P, calibration).
//! - [`run_dir`]: a run's folder (resume, shards, PNG metadata, manifest, scores, filtering,
//!   report); [`evaluation`]: the `eval` and `fid` commands.
//! - [`job`]: the `sample` command as a library call, where sampling, the hooks and the folder
//!   meet.
//! - The `wgsl-diff` binary parses flags into these requests and prints what they did.
//!
//! [`images`], [`image_sets`], [`idx`], [`json`], [`npy`], [`npz`], [`io`], [`metrics`],
//! [`splitmix`] and [`ticks`] are small utilities; [`limits`] holds every bound on a
//! user-supplied number.
//!
//! # The path of a sample
//! 1. [`job::SampleJob::prepare`] loads the model and its schedule, resolves the sampler
//!    ([`sampling::SamplerChoice`]) and finds which sample indices the folder still lacks.
//! 2. [`sampling::Run::sample`] takes a batch of consecutive indices: the noise plan draws x_T
//!    for each index (Philox keyed by seed, purpose, step, copy; rows are sample indices, so
//!    batching never changes a sample).
//! 3. Each step, [`sampling::sample_batch`] calls the model for ε, passes ε through the hooks
//!    ([`guidance::GuidanceHook`] may steer it by the uncertainty of M re-noised copies;
//!    [`uncertainty::UncertaintyEstimator`] re-noises x̂0 M times and accumulates the map),
//!    and the batch's [`sampling::SamplerState`] applies the scheduler's coefficients in one
//!    fused kernel (with what the rule keeps of earlier steps); a flag kernel records which
//!    samples hold a NaN or ±Inf in ε or x ([`sampling::NonFiniteFlags`]); one submit per step.
//! 4. The run's decoder turns the batch into images (the identity for pixel models), read back
//!    once with the flags ([`sampling::FinishedBatch`]); a
//!    flagged sample stops the run ([`Error::NonFinite`]) unless kept and marked. Otherwise
//!    [`run_dir::BatchWriter`] quantises each image and writes its PNG last, with the run's
//!    parameters, index, class and score in tEXt chunks, so a killed run loses no finished
//!    sample; many processes may fill one folder ([`run_dir::shared`]).
//! 5. After the last batch the folder's manifest, scores, heatmaps, grids, filtered subsets
//!    and report are rebuilt from the PNGs.

pub mod error;
pub mod evaluation;
pub mod gpu;
pub mod guidance;
pub mod idx;
pub mod image_sets;
pub mod images;
pub mod io;
pub mod job;
pub mod json;
pub mod limits;
pub mod metrics;
pub mod models;
pub(crate) mod names;
pub mod noise;
pub mod npy;
pub mod npz;
pub mod ops;
pub mod run_dir;
pub mod sampling;
pub mod splitmix;
pub mod ticks;
pub mod uncertainty;

pub use error::{Error, NonFiniteSample, Result};
