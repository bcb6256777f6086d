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
        "a batch of {batch} samples needs a {bytes}-byte buffer, but this device allows {limit} \
         bytes per storage binding: batches of {fits} samples fit"
    )]
    BatchTooLarge {
        batch: usize,
        bytes: u64,
        limit: u64,
        fits: usize,
    },
    #[error("the device lacks {0}")]
    MissingFeature(&'static str),
    #[error("GPU read-back failed: {0}")]
    ReadBack(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Returns a shape error for `op` unless `ok`.
pub(crate) fn ensure(ok: bool, op: &'static str, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Shape { op, msg: msg() })
    }
}
