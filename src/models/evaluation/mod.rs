//! The networks that measure samples rather than make them: the Fashion-MNIST classifier of
//! `wgsl-diff eval` ([`classifier`]) and FID's Inception-V3 ([`inception`]).

pub mod classifier;
pub mod inception;
