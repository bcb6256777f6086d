//! What `compare` refuses before it reads an image: fewer than two runs, a missing folder or
//! one that is no run, an output inside a run folder (it would write into the run), and runs
//! that do not share x_T — another seed, or other sample indices — and metric files that are
//! not what `eval`/`fid` write.

use super::metrics::read_metrics;
use super::ComparedRun;
use crate::error::{Error, Result};
use crate::run_dir::manifest::{collect, read_manifest, sample_indices};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// How many sample indices an error lists before "and N more".
const LISTED: usize = 8;

/// The runs of `dirs`, checked against each other and against the output folder `out`.
pub(super) fn read_runs(dirs: &[PathBuf], out: &Path) -> Result<Vec<ComparedRun>> {
    if dirs.len() < 2 {
        return Err(Error::Invalid(
            "compare needs at least two run folders".into(),
        ));
    }
    let out_resolved = resolved(out)?;
    let mut runs = Vec::with_capacity(dirs.len());
    for dir in dirs {
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "run folder {} does not exist",
                dir.display()
            )));
        }
        let canonical = dir.canonicalize().map_err(Error::file("resolve", dir))?;
        if out_resolved.starts_with(&canonical) {
            return Err(Error::Invalid(format!(
                "the output {} is inside the run folder {}: write the comparison elsewhere",
                out.display(),
                dir.display()
            )));
        }
        let parameters = read_manifest(dir)?.parameters;
        let samples = collect(dir, &sample_indices(dir)?)?;
        if samples.is_empty() {
            return Err(Error::Invalid(format!(
                "{} holds no sample PNGs",
                dir.display()
            )));
        }
        runs.push(ComparedRun {
            dir: dir.clone(),
            parameters,
            samples,
            metrics: read_metrics(dir)?,
        });
    }
    same_seed(&runs)?;
    same_indices(&runs)?;
    Ok(runs)
}

/// `path` made absolute, each existing prefix's links resolved and `..` taken as the kernel
/// takes it, so an output given through `..` or a link is seen inside a run folder before it
/// exists.
fn resolved(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(Error::file("resolve", path))?;
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => {
                out.push(other);
                if let Ok(real) = out.canonicalize() {
                    out = real;
                }
            }
        }
    }
    Ok(out)
}

fn same_seed(runs: &[ComparedRun]) -> Result<()> {
    let first = &runs[0];
    match runs[1..]
        .iter()
        .find(|r| r.parameters["seed"] != first.parameters["seed"])
    {
        Some(other) => Err(Error::Invalid(format!(
            "the runs do not share x_T: {} has seed {} but {} seed {}",
            other.dir.display(),
            other.parameters["seed"],
            first.dir.display(),
            first.parameters["seed"]
        ))),
        None => Ok(()),
    }
}

fn same_indices(runs: &[ComparedRun]) -> Result<()> {
    let set = |r: &ComparedRun| r.samples.iter().map(|s| s.index).collect::<BTreeSet<_>>();
    let first = set(&runs[0]);
    for other in &runs[1..] {
        let theirs = set(other);
        if theirs == first {
            continue;
        }
        let only = |a: &BTreeSet<usize>, b: &BTreeSet<usize>, dir: &Path| {
            let extra: Vec<usize> = a.difference(b).copied().collect();
            match extra.len() {
                0 => None,
                n => Some(format!("only {} has {}", dir.display(), listed(&extra, n))),
            }
        };
        let said: Vec<String> = [
            only(&theirs, &first, &other.dir),
            only(&first, &theirs, &runs[0].dir),
        ]
        .into_iter()
        .flatten()
        .collect();
        return Err(Error::Invalid(format!(
            "the runs do not share sample indices ({}): sample with the same --num and \
             --start-index",
            said.join("; ")
        )));
    }
    Ok(())
}

/// "samples 2, 3 and 7 more".
fn listed(indices: &[usize], n: usize) -> String {
    let shown: Vec<String> = indices.iter().take(LISTED).map(|i| i.to_string()).collect();
    let more = match n.saturating_sub(LISTED) {
        0 => String::new(),
        m => format!(" and {m} more"),
    };
    format!("sample(s) {}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_not_yet_made_is_placed_through_dots() {
        let here = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(resolved(Path::new("a/../b/c")).unwrap(), here.join("b/c"));
        assert_eq!(listed(&[1, 2], 2), "sample(s) 1, 2");
        let many: Vec<usize> = (0..10).collect();
        assert_eq!(
            listed(&many, 10),
            "sample(s) 0, 1, 2, 3, 4, 5, 6, 7 and 2 more"
        );
    }
}
