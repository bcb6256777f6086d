//! File output that a killed run cannot leave half-written, and input read only once it is known
//! to be a bounded regular file.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it into place. The
/// temporary name is this process's own (`NAME.EXT.TOKEN.tmp`), so processes writing the same
/// file at once (workers sharing a run folder) never write into one temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        process_token()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    // No temporary file outlives a failure (a full disk, a folder where the file should go).
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(Error::file("write", path))
}

/// A name for this process, unique across the machines sharing a folder: the process id alone
/// repeats between containers (often 1) and hosts, so the start time in nanoseconds joins it.
pub(crate) fn process_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos:x}", std::process::id())
    })
}

/// The process token in a temporary file name written by [`write_atomic`] (None for other
/// files; a temporary file of an older version yields its extension, which no process has).
pub(crate) fn tmp_token(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".tmp")?;
    stem.rsplit_once('.').map(|(_, token)| token)
}

/// The bytes of the input file `path`: a regular file (not a folder, device or pipe, which could
/// be read forever) of at most `max_bytes`, checked before anything is read.
pub fn read_input(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    check_input(path, max_bytes)?;
    std::fs::read(path).map_err(Error::file("read", path))
}

/// Checks that `path` is a regular file of at most `max_bytes`, for readers that stream it.
pub fn check_input(path: &Path, max_bytes: u64) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(Error::file("read", path))?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "{} is not a regular file (a folder, device or pipe): refused",
            path.display()
        )));
    }
    if meta.len() > max_bytes {
        return Err(Error::Invalid(format!(
            "{} holds {} bytes, over the {max_bytes} this input may hold",
            path.display(),
            meta.len()
        )));
    }
    Ok(())
}

/// Checks that a file can be written at `path` before the work that makes it: not a folder, in a
/// folder that exists and takes a file (probed with an empty file, removed again).
pub fn check_output_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is a folder: give a file to write",
            path.display()
        )));
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let probe = folder.join(format!(".wgsl-diff-write-test.{}", process_token()));
    std::fs::write(&probe, b"").map_err(|e| {
        Error::Invalid(format!(
            "cannot write {} (its folder {} does not take a file: {e})",
            path.display(),
            folder.display()
        ))
    })?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// [`read_input`] as UTF-8 text.
pub fn read_text_input(path: &Path, max_bytes: u64) -> Result<String> {
    String::from_utf8(read_input(path, max_bytes)?)
        .map_err(|_| Error::Invalid(format!("{} is not UTF-8 text", path.display())))
}
