//! The library's error type: every fallible public function returns [`Result`].

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),
    #[error("could not open the GPU device: {0}")]
    Device(String),
    #[error("shape error in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error(
        "{what} needs {bytes} bytes in one GPU buffer, but this device allows at most {limit} \
         bytes per storage binding; use a smaller batch or resolution"
    )]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
    #[error(
        "{kernel} needs {workgroups:?} workgroups, over this device's {max} per dimension; use a \
         smaller batch or resolution"
    )]
    TooManyWorkgroups {
        kernel: String,
        workgroups: [usize; 3],
        max: u32,
    },
    /// [`Error::TooLarge`] or [`Error::TooManyWorkgroups`] met by a run's batch: `why` says which
    /// limit, `fits` how many samples per batch stay within it.
    #[error("a batch of {batch} samples {why}: batches of {fits} samples fit")]
    BatchTooLarge {
        batch: usize,
        why: String,
        fits: usize,
    },
    #[error("the device lacks {0}")]
    MissingFeature(&'static str),
    #[error("GPU read-back failed: {0}")]
    ReadBack(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("{}", non_finite_message(.0))]
    NonFinite(Vec<NonFiniteSample>),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A sample whose values went NaN or ±Inf during sampling, and the first step where they did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonFiniteSample {
    pub index: usize,
    /// 0-based sampling step.
    pub step: usize,
    /// The training timestep of that step.
    pub timestep: usize,
}

/// "samples 3 (step 0, t = 999) and 5 (step 2, t = 899) …": the first few, and how many.
fn non_finite_message(samples: &[NonFiniteSample]) -> String {
    const SHOWN: usize = 8;
    let listed: Vec<String> = samples
        .iter()
        .take(SHOWN)
        .map(|s| format!("{} (step {}, t = {})", s.index, s.step, s.timestep))
        .collect();
    let more = match samples.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!(
        "{} sample(s) went non-finite (NaN or ±Inf) — sample index (first step): {}{more}. The \
         model's weights, its schedule, the sampler settings or the starting noise overflow; \
         nothing of that batch was written (--keep-non-finite writes such samples, marked in \
         the manifest)",
        samples.len(),
        listed.join(", ")
    )
}

/// Returns a shape error for `op` unless `ok`.
pub(crate) fn ensure(ok: bool, op: &'static str, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Shape { op, msg: msg() })
    }
}
