//! The paper's filtering step: keep the ⌊f·N⌋ samples with the lowest uncertainty score, beside
//! a seeded random subset of the same size to compare against.

use super::manifest::{collect, read_manifest, write_manifest, Manifest, SampleRecord};
use super::report::{write_html_report, REPORT_FILE};
use crate::error::{Error, Result};
use crate::splitmix::SplitMix64;
use std::path::{Path, PathBuf};

/// Where a filtering put its two subsets.
#[derive(Clone, Debug)]
pub struct Filtered {
    /// How many samples each subset holds.
    pub count: usize,
    /// Of how many scored samples.
    pub of: usize,
    pub kept: PathBuf,
    pub random: PathBuf,
    /// The folder's report, rewritten to show this filtering (by [`filter_run`], when the
    /// folder has one; `sample` writes its report after filtering).
    pub report: Option<PathBuf>,
}

/// Filters the run in `dir` as listed by its manifest (`wgsl-diff filter`), and rewrites the
/// folder's report, if it has one, to mark the new filtering.
pub fn filter_run(dir: &Path, keep_fraction: f64, seed: u64) -> Result<Filtered> {
    let manifest = read_manifest(dir)?;
    // Workers still sampling into the folder rewrite the filtered sets under this lock too.
    let _lock = super::shared::FolderLock::acquire(dir)?;
    let mut indices: Vec<usize> = manifest.samples.iter().map(|s| s.index).collect();
    indices.sort_unstable();
    if let Some(w) = indices.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Invalid(format!(
            "{}: the manifest lists sample {} twice; rebuild it with `wgsl-diff sample` on the \
             same folder",
            dir.display(),
            w[0]
        )));
    }
    let records = collect(dir, &indices)?;
    if records.len() != indices.len() {
        let present: std::collections::BTreeSet<usize> = records.iter().map(|r| r.index).collect();
        let missing: Vec<String> = indices
            .iter()
            .filter(|i| !present.contains(i))
            .take(8)
            .map(|&i| super::png_name(i))
            .collect();
        return Err(Error::Invalid(format!(
            "{}: {} sample(s) the manifest lists are missing ({}{})",
            dir.display(),
            indices.len() - records.len(),
            missing.join(", "),
            if indices.len() - records.len() > 8 {
                ", …"
            } else {
                ""
            }
        )));
    }
    let mut filtered = filter(dir, &records, keep_fraction, seed)?;
    if dir.join(REPORT_FILE).exists() {
        filtered.report = Some(write_html_report(dir, &records, &manifest.parameters)?);
    }
    Ok(filtered)
}

/// Keeps the ⌊fraction·N⌋ lowest-scored samples in `filtered/kept/` and a seeded random subset
/// of the same size in `filtered/random/`, each with a manifest.
pub fn filter(
    dir: &Path,
    samples: &[SampleRecord],
    keep_fraction: f64,
    seed: u64,
) -> Result<Filtered> {
    let scored: Vec<&SampleRecord> = samples.iter().filter(|s| s.score.is_some()).collect();
    if scored.len() != samples.len() || scored.is_empty() {
        return Err(Error::Invalid(
            "filtering needs an uncertainty score for every sample: sample with uncertainty estimation".into(),
        ));
    }
    let count = kept_count(keep_fraction, scored.len())?;
    // A kept set of certain samples holds no broken one: refuse a fraction that would reach
    // the non-finite samples (ranked last).
    let finite = scored
        .iter()
        .filter(|s| s.non_finite_step.is_none() && s.score.is_some_and(f64::is_finite))
        .count();
    if count > finite {
        return Err(Error::Invalid(format!(
            "only {finite} of {} samples have a finite score: keeping {count} would keep \
             non-finite ones (keep a smaller fraction)",
            scored.len()
        )));
    }
    let mut by_score = scored.clone();
    by_score.sort_by(|a, b| by_score_then_index(a, b));
    let kept: Vec<SampleRecord> = by_score[..count].iter().map(|s| (*s).clone()).collect();
    let perm = SplitMix64::new(seed).permutation(scored.len());
    let random: Vec<SampleRecord> = perm[..count].iter().map(|&i| scored[i].clone()).collect();
    let params = |name: &str| {
        serde_json::json!({"subset": name, "keep_fraction": keep_fraction, "seed": seed,
            "from": dir.display().to_string(), "of": scored.len()})
    };
    let root = dir.join("filtered");
    Ok(Filtered {
        count,
        of: scored.len(),
        kept: write_subset(&root.join("kept"), dir, &kept, &params("kept"))?,
        random: write_subset(&root.join("random"), dir, &random, &params("random"))?,
        report: None,
    })
}

/// What a folder's `filtered/` holds: the last filtering of the run, read back from the two
/// subsets' manifests.
#[derive(Clone, Debug, PartialEq)]
pub struct FilteredSets {
    pub keep_fraction: f64,
    /// The seed of the random subset.
    pub seed: u64,
    /// Of how many scored samples.
    pub of: usize,
    /// The sample indices of each subset.
    pub kept: Vec<usize>,
    pub random: Vec<usize>,
}

/// The filtering recorded in `dir/filtered/`, None when the folder has not been filtered.
pub fn read_filtered(dir: &Path) -> Result<Option<FilteredSets>> {
    let root = dir.join("filtered");
    if !root.join("kept").join("samples.json").exists() {
        return Ok(None);
    }
    let (kept, random) = (
        read_manifest(&root.join("kept"))?,
        read_manifest(&root.join("random"))?,
    );
    let p = &kept.parameters;
    let bad = || {
        Error::Invalid(format!(
            "{}: its parameters lack keep_fraction, seed or of",
            root.join("kept").join("samples.json").display()
        ))
    };
    let indices = |m: &Manifest| m.samples.iter().map(|s| s.index).collect();
    Ok(Some(FilteredSets {
        keep_fraction: p["keep_fraction"].as_f64().ok_or_else(bad)?,
        seed: p["seed"].as_u64().ok_or_else(bad)?,
        of: p["of"].as_u64().ok_or_else(bad)? as usize,
        kept: indices(&kept),
        random: indices(&random),
    }))
}

/// ⌊fraction·n⌋, how many of `n` samples a filtering keeps; an error when the fraction is not
/// in (0, 1] or keeps none of them.
pub fn kept_count(fraction: f64, n: usize) -> Result<usize> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::Invalid(format!(
            "the fraction to keep must be in (0, 1], got {fraction}"
        )));
    }
    // The nudge counts a product a rounding error below an integer (0.57·100 = 56.99…) as it.
    let count = ((fraction * n as f64) + 1e-9).floor() as usize;
    if count == 0 {
        return Err(Error::Invalid(format!(
            "keeping a fraction {fraction} of {n} samples keeps none (⌊{fraction}·{n}⌋ = 0): keep a \
             larger fraction or make at least {} samples",
            (1.0 / fraction).ceil()
        )));
    }
    Ok(count)
}

fn by_score_then_index(a: &SampleRecord, b: &SampleRecord) -> std::cmp::Ordering {
    by_score(a, b).then(a.index.cmp(&b.index))
}

/// Ascending score, NaN (and unscored, and samples marked non-finite) last: a non-finite score
/// never panics a sort, and a broken sample never ranks as certain.
pub fn by_score(a: &SampleRecord, b: &SampleRecord) -> std::cmp::Ordering {
    let key = |s: &SampleRecord| {
        let v = s.score.unwrap_or(f64::NAN);
        (v.is_nan() || s.non_finite_step.is_some(), v)
    };
    let ((a_nan, a), (b_nan, b)) = (key(a), key(b));
    a_nan.cmp(&b_nan).then(a.total_cmp(&b))
}

/// Replaces `sub` with copies of `set`'s PNGs from `dir` and a manifest.
fn write_subset(
    sub: &Path,
    dir: &Path,
    set: &[SampleRecord],
    params: &serde_json::Value,
) -> Result<PathBuf> {
    let fail = |what: &str, path: &Path, e: std::io::Error| {
        Error::Invalid(format!("cannot {what} {}: {e}", path.display()))
    };
    // A truncated or damaged PNG is named before anything is replaced, not copied into a subset.
    for s in set {
        crate::images::read_png(&dir.join(&s.file))?;
    }
    if sub.exists() {
        std::fs::remove_dir_all(sub).map_err(|e| fail("clear", sub, e))?;
    }
    std::fs::create_dir_all(sub).map_err(|e| fail("create", sub, e))?;
    for s in set {
        let from = dir.join(&s.file);
        std::fs::copy(&from, sub.join(&s.file)).map_err(|e| fail("copy", &from, e))?;
    }
    write_manifest(sub, params, set)?;
    Ok(sub.to_path_buf())
}
