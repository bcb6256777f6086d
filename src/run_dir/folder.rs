//! A run folder's life around its samples: made and checked writable before any work, claimed
//! for one run under its lock, and rebuilt — manifest, scores, heatmaps, grids, filtered sets,
//! report — from whatever PNGs it holds once a job is done. What a folder needs to know of a
//! run is a [`FolderPlan`]; the `sample` job ([`crate::job`]) makes one from its request.

use super::filter::{filter, kept_count, Filtered};
use super::manifest::{collect, sample_indices, write_manifest, write_scores_csv};
use super::render::{
    render_heatmaps, write_grid, write_uncertainty_grids, HeatmapScale, HeatmapStyle,
};
use super::report::write_html_report;
use super::shared::{claim, remove_abandoned, FolderLock, Presence, RUN_FILE};
use super::step_heatmaps::render_step_heatmaps;
use super::write::check_same_run;
use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The folder-level settings of a run.
#[derive(Clone, Debug)]
pub struct FolderPlan {
    pub out: PathBuf,
    /// Folders for per-step maps and noise dumps, when asked for.
    pub save_maps: Option<PathBuf>,
    pub dump_noise: Option<PathBuf>,
    /// Every sample index of the run (all shards).
    pub run: Range<usize>,
    /// Whether samples carry uncertainty scores (scores, heatmaps and grids are written).
    pub uncertainty: bool,
    pub heatmap_scale: HeatmapScale,
    pub heatmap_style: HeatmapStyle,
    /// Draw every map in `save_maps` as a heatmap beside it ([`render_step_heatmaps`]).
    pub step_heatmaps: bool,
    /// Filter the complete run, keeping this fraction (and a random subset from `seed`).
    pub keep_fraction: Option<f64>,
    pub seed: u64,
    /// Write report.html once the run is complete.
    pub report: bool,
}

/// What the folder holds after a job.
#[derive(Clone, Debug)]
pub struct FolderSummary {
    /// Samples in the folder's manifest.
    pub samples: usize,
    /// Samples of the run not in the folder yet (other shards still at work); the filtered sets
    /// and the report are written only once none is missing.
    pub missing: usize,
    pub filtered: Option<Filtered>,
    /// The lowest and highest finite uncertainty score in the folder.
    pub score_range: Option<(f64, f64)>,
    /// The report, when one was written.
    pub report: Option<PathBuf>,
    /// How many per-step heatmaps were drawn into the `--save-maps` folder.
    pub step_heatmaps: usize,
}

impl FolderPlan {
    /// The output folder and the map and noise folders: each created and checked writable
    /// before any work.
    pub fn create(&self) -> Result<()> {
        for dir in self.folders() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Invalid(format!(
                    "cannot create output folder {}: {e}",
                    dir.display()
                ))
            })?;
            check_writable(dir)?;
        }
        Ok(())
    }

    fn folders(&self) -> Vec<&Path> {
        [
            Some(&self.out),
            self.save_maps.as_ref(),
            self.dump_noise.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect()
    }

    /// Under the folder's lock: refuses a folder holding another run (by its `run.json`, or by
    /// its samples' parameters in a folder without one), checks that a filtering would keep at
    /// least one of the samples the folder will hold, claims the folder for this run, announces
    /// this process and removes temporary files killed processes left.
    pub fn claim(&self, parameters: &serde_json::Value) -> Result<Presence> {
        let out = &self.out;
        let _lock = FolderLock::acquire(out)?;
        let existing = sample_indices(out)?;
        // With a run.json the claim decides; without, the folder may predate it: ask its PNGs.
        if !out.join(RUN_FILE).exists() {
            check_same_run(out, &existing, parameters)?;
        }
        if let Some(fraction) = self.keep_fraction {
            let others = existing.iter().filter(|i| !self.run.contains(i)).count();
            kept_count(fraction, self.run.len() + others)?;
        }
        claim(out, parameters)?;
        let presence = Presence::announce(out)?;
        remove_abandoned(out, &self.folders())?;
        Ok(presence)
    }

    /// Rebuilds the manifest, scores, heatmaps and grids from the folder — holding its lock,
    /// and from every sample in it, whichever worker made it — and, once no sample of the run
    /// is missing, the filtered sets and the report.
    pub fn rebuild(&self, parameters: &serde_json::Value) -> Result<FolderSummary> {
        let out = &self.out;
        let _lock = FolderLock::acquire(out)?;
        let mut records = collect(out, &sample_indices(out)?)?;
        if self.uncertainty {
            let tiles = render_heatmaps(out, &mut records, self.heatmap_scale, self.heatmap_style)?;
            write_scores_csv(out, &records)?;
            write_uncertainty_grids(out, &records, &tiles)?;
        }
        let step_heatmaps = match (&self.save_maps, self.step_heatmaps && self.uncertainty) {
            (Some(maps), true) => {
                render_step_heatmaps(maps, out, &records, self.heatmap_scale, self.heatmap_style)?
            }
            _ => 0,
        };
        write_manifest(out, parameters, &records)?;
        write_grid(out, &records)?;
        let present = |i: &usize| records.binary_search_by_key(i, |r| r.index).is_ok();
        let missing = self.run.clone().filter(|i| !present(i)).count();
        let complete = missing == 0;
        let filtered = match self.keep_fraction {
            Some(f) if complete => Some(filter(out, &records, f, self.seed)?),
            _ => None,
        };
        let report = match self.report && complete {
            true => Some(write_html_report(out, &records, parameters)?),
            false => None,
        };
        let scores = records
            .iter()
            .filter_map(|r| r.score)
            .filter(|s| s.is_finite());
        let score_range = scores.fold(None, |range: Option<(f64, f64)>, s| {
            Some(range.map_or((s, s), |(lo, hi)| (lo.min(s), hi.max(s))))
        });
        Ok(FolderSummary {
            samples: records.len(),
            missing,
            filtered,
            score_range,
            report,
            step_heatmaps,
        })
    }
}

fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(".wgsl-diff-write-test");
    std::fs::write(&probe, b"").map_err(|e| {
        Error::Invalid(format!(
            "output folder {} is not writable: {e}",
            dir.display()
        ))
    })?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// The samples of a range a folder still lacks, without listing them: the range minus the
/// finished ones, which are found from the folder's files (so a range of 2^32 samples costs what
/// the folder holds, not what the range spans).
#[derive(Clone, Debug)]
pub struct Pending {
    own: Range<usize>,
    done: BTreeSet<usize>,
}

impl Pending {
    /// `own` minus the samples `dir` holds that `finished` accepts (a PNG and what else the run
    /// writes per sample).
    pub fn find(
        dir: &Path,
        own: Range<usize>,
        finished: impl Fn(usize) -> bool,
    ) -> Result<Pending> {
        let done = sample_indices(dir)?
            .into_iter()
            .filter(|i| own.contains(i) && finished(*i))
            .collect();
        Ok(Pending { own, done })
    }

    pub fn len(&self) -> usize {
        self.own.len() - self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pending indices, in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.own.clone().filter(|i| !self.done.contains(i))
    }

    /// Runs of consecutive pending indices, each at most `batch` long: the batches a job samples.
    pub fn batches(&self, batch: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let mut next = self.own.start;
        std::iter::from_fn(move || {
            while next < self.own.end && self.done.contains(&next) {
                next += 1;
            }
            if next >= self.own.end {
                return None;
            }
            let start = next;
            while next < self.own.end && next - start < batch.max(1) && !self.done.contains(&next) {
                next += 1;
            }
            Some(start..next)
        })
    }
}

impl<const N: usize> PartialEq<[usize; N]> for &Pending {
    fn eq(&self, other: &[usize; N]) -> bool {
        self.iter().eq(other.iter().copied())
    }
}
