//! Noise schedules, samplers and the sampling loop.

pub mod schedule;
pub mod scheduler;

pub use schedule::{NoiseSchedule, ScheduleConfig};
pub use scheduler::{SamplerConfig, SamplerKind, Scheduler, Spacing};
pub mod pipeline;

pub use pipeline::{noise_key, sample_batch, BatchSpec, NoisePurpose, StepContext, StepHook};
