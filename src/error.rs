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
    /// A file or folder that could not be read, written, created or listed.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A config (a weight file's `config` or `scheduler` metadata) with a bad key or value.
    #[error(
        "weights: {}: invalid {section} metadata: {}{message}",
        file.display(),
        key_prefix(key.as_deref())
    )]
    Config {
        file: std::path::PathBuf,
        section: &'static str,
        key: Option<String>,
        message: String,
    },
    /// A broken internal invariant: a bug here, not bad input.
    #[error("internal error (please report it): {0}")]
    Internal(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn key_prefix(key: Option<&str>) -> String {
    key.map(|k| format!("`{k}`: ")).unwrap_or_default()
}

impl Error {
    /// A closure turning an I/O error on `path` into [`Error::File`], for `map_err`.
    pub fn file<'a>(
        action: &'static str,
        path: &'a std::path::Path,
    ) -> impl Fn(std::io::Error) -> Error + Copy + 'a {
        move |source| Error::File {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
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
