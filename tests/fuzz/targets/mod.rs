//! The parsers under test, one file per format family. A target makes one input from a valid
//! file (its structure-aware mutation, sometimes a byte-level one on top), writes it to a scratch
//! folder, reads it back through the crate's public reader and judges the result: a refusal must
//! be an error with a message; an input the generator knows to be invalid must be refused; one it
//! knows to be valid must be accepted; and whatever is accepted must be what the file says
//! (round-tripped or compared with what was generated, where the format allows).

mod idx;
mod npy;
mod npz;
mod png;
mod run_folder;
mod weights;

use std::path::Path;

pub trait Target: Send + Sync {
    fn name(&self) -> &'static str;
    /// Generates one input from `rng` into the empty folder `dir`, reads it and judges.
    fn case(&self, rng: &mut crate::mutate::Rng, dir: &Path) -> Verdict;
}

#[derive(Debug)]
pub enum Verdict {
    Accepted,
    Refused,
    /// The parser did something it must not (what, and to which input).
    Wrong(String),
}

/// What the generator knows of its input.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Valid: refusing it is wrong.
    Accept,
    /// Invalid for the reason given: accepting it is wrong.
    Refuse(String),
    /// Either may be right; what is accepted must still be consistent.
    Either,
}

/// The verdict on `result` for an input generated as `expect` by `mutation`: errors need a
/// message, and `consistent` checks what was accepted (Err: what is inconsistent).
pub fn judge<T, E: std::fmt::Display>(
    result: Result<T, E>,
    expect: &Expect,
    mutation: &str,
    consistent: impl FnOnce(T) -> Result<(), String>,
) -> Verdict {
    match (result, expect) {
        (Err(e), _) if e.to_string().trim().is_empty() => {
            Verdict::Wrong(format!("refused without a message ({mutation})"))
        }
        (Err(e), Expect::Accept) => {
            Verdict::Wrong(format!("refused a valid input ({mutation}): {e}"))
        }
        (Err(_), _) => Verdict::Refused,
        (Ok(_), Expect::Refuse(why)) => {
            Verdict::Wrong(format!("accepted an invalid input ({mutation}): {why}"))
        }
        (Ok(v), _) => match consistent(v) {
            Ok(()) => Verdict::Accepted,
            Err(why) => Verdict::Wrong(format!("accepted inconsistently ({mutation}): {why}")),
        },
    }
}

/// Writes `bytes` to `dir/name`.
pub fn put(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("the scratch folder takes files");
    path
}

/// Every target, in the order inputs are dealt to them.
pub fn all() -> Vec<Box<dyn Target>> {
    vec![
        Box::new(npy::Npy),
        Box::new(npz::Npz),
        Box::new(npz::FidStatistics),
        Box::new(npy::Thresholds),
        Box::new(idx::Idx),
        Box::new(png::PngText),
        Box::new(run_folder::Manifest),
        Box::new(run_folder::RunJson),
        Box::new(weights::WeightFile),
        Box::new(weights::Scheduler),
    ]
}
