//! One run folder shared by many processes — the workers of a Slurm job array or a Kubernetes
//! Indexed Job on shared storage, each making its own shard. Each worker writes its samples'
//! files without coordination (one set of files per sample, each renamed into place); an
//! advisory lock on `.wgsl-diff.lock` serialises the few writes they share: claiming the
//! folder for one run (`run.json`) and rebuilding the manifest and everything derived from the
//! folder's PNGs, so the last worker to finish leaves them complete. Each process also announces
//! itself with a locked presence file, so temporary files a killed worker left are told apart
//! from a live one's and removed.

use super::write::differences;
use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The lock file every process of a folder locks around its shared writes.
pub const LOCK_FILE: &str = ".wgsl-diff.lock";

/// The run's parameters, written by the first process: the folder's identity.
pub const RUN_FILE: &str = "run.json";

/// An exclusive advisory lock on a run folder, released when dropped. Across machines it needs
/// a file system with working locks (NFSv4, Lustre, GPFS, CephFS; see the README).
pub struct FolderLock {
    file: File,
}

impl FolderLock {
    /// Blocks until this process holds the folder's lock.
    pub fn acquire(dir: &Path) -> Result<FolderLock> {
        let path = dir.join(LOCK_FILE);
        let fail = |action: &'static str, e: std::io::Error| Error::file(action, &path)(e);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| fail("create", e))?;
        file.lock().map_err(|e| fail("lock", e))?;
        Ok(FolderLock { file })
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first says so explicitly.
        let _ = self.file.unlock();
    }
}

/// Claims `dir` for the run `parameters`; the caller holds the folder's lock. The first process
/// writes `run.json`; every later one must bring the same parameters, so two runs started at
/// once into one folder cannot both go ahead.
pub fn claim(dir: &Path, parameters: &serde_json::Value) -> Result<()> {
    let path = dir.join(RUN_FILE);
    if !path.exists() {
        let json = serde_json::to_string_pretty(parameters)
            .map_err(|e| Error::Invalid(format!("cannot serialise the parameters: {e}")))?;
        return crate::io::write_atomic(&path, json.as_bytes());
    }
    // Read as any input: a bounded regular file, strict JSON (a key twice is no run's record).
    let text = crate::io::read_text_input(&path, crate::limits::MAX_CONFIG_BYTES)?;
    let theirs: serde_json::Value = crate::json::from_str(&text).map_err(|e| {
        Error::Invalid(format!(
            "{} is not a run record ({e}): use another output folder or remove it",
            path.display()
        ))
    })?;
    if theirs == *parameters {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{} holds a run made with other parameters ({}), recorded in its {RUN_FILE}; use another \
         output folder or remove it",
        dir.display(),
        differences(Some(&theirs), parameters),
    )))
}

/// This process's presence in a run folder: `.wgsl-diff.TOKEN.alive`, locked for as long as the
/// process runs, so the others can tell its temporary files (`*.TOKEN.tmp`) from those a killed
/// process left. Removed when dropped; a killed process's lock is released by the system.
pub struct Presence {
    file: File,
    path: PathBuf,
}

const PRESENCE_PREFIX: &str = ".wgsl-diff.";
const PRESENCE_SUFFIX: &str = ".alive";

impl Presence {
    /// Announces this process in `dir`; call with the folder's lock held, so no process cleaning
    /// up abandoned files (also under the lock) can miss it.
    pub fn announce(dir: &Path) -> Result<Presence> {
        let name = format!(
            "{PRESENCE_PREFIX}{}{PRESENCE_SUFFIX}",
            crate::io::process_token()
        );
        let path = dir.join(name);
        let fail = Error::file("create", &path);
        let file = File::create(&path).map_err(fail)?;
        file.lock().map_err(fail)?;
        Ok(Presence { file, path })
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Removes the temporary files in `dirs` that no running process will rename: those of processes
/// whose presence file in `out` is no longer locked (killed), and those of no process at all.
/// Call with `out`'s lock held.
pub fn remove_abandoned(out: &Path, dirs: &[&Path]) -> Result<()> {
    let mut alive = std::collections::HashSet::new();
    alive.insert(crate::io::process_token().to_string());
    for (path, name) in entries(out)? {
        let Some(token) = name
            .strip_prefix(PRESENCE_PREFIX)
            .and_then(|n| n.strip_suffix(PRESENCE_SUFFIX))
        else {
            continue;
        };
        if token == crate::io::process_token() {
            continue;
        }
        let file = File::options().write(true).open(&path);
        match file.map(|f| f.try_lock()) {
            Ok(Err(std::fs::TryLockError::WouldBlock)) => {
                alive.insert(token.to_string());
            }
            // Unlocked (its process is gone), or vanished meanwhile.
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    for dir in dirs {
        for (path, name) in entries(dir)? {
            if crate::io::tmp_token(&name).is_some_and(|t| !alive.contains(t)) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// (path, file name) of every entry of `dir`.
fn entries(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let cannot = Error::file("list", dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        out.push((
            entry.path(),
            entry.file_name().to_string_lossy().into_owned(),
        ));
    }
    Ok(out)
}
