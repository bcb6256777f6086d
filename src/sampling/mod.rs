//! Schedules, samplers, the noise plan and the sampling loop.
//!
//! A sample's path: [`NoisePlan::initial`] draws x_T for its index; each step the model's ε
//! passes through the run's [`StepHook`]s and [`Scheduler::coeffs`] drive one fused update
//! (`ops::sampler_step`), with [`NoisePlan::ancestral`] noise where the sampler is stochastic;
//! [`Run::sample`] reads the finished batch back.

pub mod labels;
pub mod pipeline;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod setup;

pub use labels::{ClassChoice, ClassGuidance, ClassLabels};
pub use pipeline::{
    sample_batch, sample_batch_conditioned, BatchSpec, NonFiniteFlags, SampledBatch, StepContext,
    StepHook,
};
pub use run::{contiguous_batches, BatchHook, FinishedBatch, InitNoise, Run};
pub use schedule::{NoiseSchedule, ScheduleConfig, Spacing, VarianceType};
pub use scheduler::{SamplerChoice, SamplerConfig, SamplerKind, SamplerState, Scheduler};
pub use setup::{default_sampler, load_for_sampling, open_scheduler};
