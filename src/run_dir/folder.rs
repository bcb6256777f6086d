//! A run folder's life around its samples: made and checked writable before any work, claimed
//! for one run under its lock, and rebuilt — manifest, scores, heatmaps, grids, filtered sets,
//! report — from whatever PNGs it holds once a job is done. What a folder needs to know of a
//! run is a [`FolderPlan`]; the `sample` job ([`crate::job`]) makes one from its request.

use super::filter::{filter, kept_count, Filtered};
use super::manifest::{collect, sample_indices, write_manifest, write_scores_csv};
use super::render::{
    render_heatmaps, write_grid, write_html_report, write_uncertainty_grids, HeatmapScale,
};
use super::shared::{claim, remove_abandoned, FolderLock, Presence, RUN_FILE};
use super::write::check_same_run;
use crate::error::{Error, Result};
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
            render_heatmaps(out, &mut records, self.heatmap_scale)?;
            write_scores_csv(out, &records)?;
            write_uncertainty_grids(out, &records)?;
        }
        write_manifest(out, parameters, &records)?;
        write_grid(out, &records)?;
        let present = |i: &usize| records.binary_search_by_key(i, |r| r.index).is_ok();
        let missing = self.run.clone().filter(|i| !present(i)).count();
        let complete = missing == 0;
        let filtered = match self.keep_fraction {
            Some(f) if complete => Some(filter(out, &records, f, self.seed)?),
            _ => None,
        };
        if self.report && complete {
            write_html_report(out, &records)?;
        }
        Ok(FolderSummary {
            samples: records.len(),
            missing,
            filtered,
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
