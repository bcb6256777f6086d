//! A run's folder: one PNG per sample (its parameters, index, class and score in tEXt chunks),
//! written last so that a killed run loses no finished sample, and everything derived from the
//! PNGs — manifest, scores, heatmaps, grids, filtered subsets, report (one self-contained page),
//! and the comparison of runs that share x_T. The folder holds one run:
//! resuming skips finished samples, shards of the run add to it — from one process after another
//! or from many at once — and other parameters are refused. This module is the folder format;
//! the `sample` job that fills it is [`crate::job`].

mod compare;
mod filter;
mod folder;
mod manifest;
pub mod maps;
mod render;
mod report;
mod shard;
pub mod shared;
mod step_heatmaps;
mod write;

pub use compare::{
    compare, ComparedRun, Comparison, MetricKind, MetricValue, PixelDifference, COMPARE_FILE,
    GRID_ROWS, METRICS,
};
pub use filter::{by_score, filter, filter_run, kept_count, read_filtered, Filtered, FilteredSets};
pub use folder::{FolderPlan, FolderSummary, Pending};
pub use manifest::{
    collect, collect_folder, read_manifest, sample_indices, write_manifest, write_scores_csv,
    Manifest, SampleRecord, NON_FINITE_KEY,
};
pub use render::{
    render_heatmaps, write_grid, write_uncertainty_grids, HeatmapScale, HeatmapStyle,
};
pub use report::{write_html_report, REPORT_FILE};
pub use shard::Shard;
pub use step_heatmaps::render_step_heatmaps;
pub use write::{check_same_run, BatchWriter};

pub fn png_name(index: usize) -> String {
    format!("sample_{index:06}.png")
}

/// The raw float32 image of `--save-raw`.
pub fn raw_name(index: usize) -> String {
    format!("sample_{index:06}.npy")
}

/// Σ_t U_t of one sample.
pub fn total_map_name(index: usize) -> String {
    format!("uncertainty_{index:06}.npy")
}

pub fn heatmap_name(index: usize) -> String {
    format!("heatmap_{index:06}.png")
}

/// U_t of one sample at window step `step` (timestep `t`), (1, C, H, W): what `--save-maps`
/// writes for every sample.
pub fn saved_map_name(step: usize, t: usize, index: usize) -> String {
    format!("map_step{step:03}_t{t:04}_sample{index:06}.npy")
}

/// The heatmap of [`saved_map_name`]'s map, beside it (`--step-heatmaps`).
pub fn step_heatmap_name(step: usize, t: usize, index: usize) -> String {
    format!("heatmap_step{step:03}_t{t:04}_sample{index:06}.png")
}

/// U_t of each window step of one of the [`report_samples`], (steps, C, H, W).
pub fn step_maps_name(index: usize) -> String {
    format!("uncertainty_steps_{index:06}.npy")
}

/// The guidance mask of each guided step of one of the [`report_samples`], (steps, C, H, W):
/// 1 where the element was guided.
pub fn guidance_masks_name(index: usize) -> String {
    format!("guidance_masks_{index:06}.npy")
}

/// How many samples the report shows step by step.
pub const REPORT_SAMPLES: usize = 4;

/// The samples of a run whose per-step maps and guidance masks are kept for the report (the
/// first [`REPORT_SAMPLES`]): known before any score, so whichever process makes them keeps
/// them, and cheap, since only the batches holding them read their maps back.
pub fn report_samples(run: &std::ops::Range<usize>) -> std::ops::Range<usize> {
    run.start..run.end.min(run.start.saturating_add(REPORT_SAMPLES))
}
