//! `compare`: runs that started from the same x_T (the same seed and sample indices) side by
//! side — guided against unguided, two uncertainty modes, two M. It writes grids (one row per
//! sample, one column per run) and one self-contained page, `compare.html`, with each run's
//! parameters (the differing ones marked), every sample's pixel difference from the first run,
//! the runs' scores and the metric values `eval`/`fid` left in their folders
//! ([`metrics::METRICS`]). The runs' folders are only read.

mod checks;
mod metrics;
mod page;

pub use metrics::{MetricKind, MetricValue, METRICS};

use super::manifest::SampleRecord;
use super::png_name;
use crate::error::{Error, Result};
use crate::images::{self, Image8};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The page's file name in the output folder.
pub const COMPARE_FILE: &str = "compare.html";

/// Samples per grid PNG: one grid of thousands of rows (or of Stable Diffusion's 512² images)
/// would be too tall to open or to hold in memory.
pub const GRID_ROWS: usize = 32;

/// One compared run: its folder, recorded parameters, samples (from its PNGs) and metric
/// values.
pub struct ComparedRun {
    pub dir: PathBuf,
    pub parameters: Value,
    pub samples: Vec<SampleRecord>,
    /// One entry per [`METRICS`] kind, None where the folder holds no such file.
    pub metrics: Vec<Option<MetricValue>>,
}

/// How far one sample of a run is from the same sample of the first run, in 8-bit levels over
/// every pixel and channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelDifference {
    pub max: u8,
    pub mean: f64,
}

impl PixelDifference {
    /// The difference of two images of one size.
    pub fn between(a: &Image8, b: &Image8) -> PixelDifference {
        let (max, sum) = a
            .pixels
            .iter()
            .zip(&b.pixels)
            .map(|(&x, &y)| x.abs_diff(y))
            .fold((0u8, 0u64), |(m, s), d| (m.max(d), s + d as u64));
        PixelDifference {
            max,
            mean: sum as f64 / a.pixels.len().max(1) as f64,
        }
    }
}

/// What [`compare`] found and wrote.
pub struct Comparison {
    pub runs: Vec<ComparedRun>,
    /// The sample indices every run holds, in order.
    pub indices: Vec<usize>,
    /// `differences[i][r]`: sample `indices[i]` of run `r` against run 0 (zero for run 0).
    pub differences: Vec<Vec<PixelDifference>>,
    /// The grid PNGs, [`GRID_ROWS`] samples each.
    pub grids: Vec<PathBuf>,
    pub page: PathBuf,
}

impl Comparison {
    /// Run `run` against the first over all samples: the largest difference and the mean of
    /// the samples' means.
    pub fn overall(&self, run: usize) -> PixelDifference {
        let column = self.differences.iter().map(|d| d[run]);
        PixelDifference {
            max: column.clone().map(|d| d.max).max().unwrap_or(0),
            mean: column.map(|d| d.mean).sum::<f64>() / self.differences.len().max(1) as f64,
        }
    }
}

/// Compares the runs in `dirs` (the first is the baseline of the differences) into `out`,
/// after refusing runs that do not share x_T, missing folders and an `out` inside a run.
pub fn compare(dirs: &[PathBuf], out: &Path) -> Result<Comparison> {
    let runs = checks::read_runs(dirs, out)?;
    let indices: Vec<usize> = runs[0].samples.iter().map(|s| s.index).collect();
    std::fs::create_dir_all(out).map_err(Error::file("create", out))?;
    let mut differences = Vec::with_capacity(indices.len());
    let mut shown = Vec::new();
    let mut grids = Vec::new();
    for chunk in indices.chunks(GRID_ROWS) {
        let mut tiles = Vec::with_capacity(chunk.len() * runs.len());
        for &index in chunk {
            let row = sample_row(&runs, index)?;
            differences.push(
                row.iter()
                    .map(|i| PixelDifference::between(&row[0], i))
                    .collect(),
            );
            if shown.len() < page::MAX_ROWS {
                shown.push(row.iter().map(page::thumbnail).collect());
            }
            tiles.extend(row);
        }
        if let Some(grid) = images::grid(&tiles, runs.len(), 2) {
            let path = out.join(format!("grid_{:06}.png", chunk[0]));
            images::write_png(&path, &grid, &[])?;
            grids.push(path);
        }
    }
    let comparison = Comparison {
        runs,
        indices,
        differences,
        grids,
        page: out.join(COMPARE_FILE),
    };
    page::write(&comparison, &shown)?;
    Ok(comparison)
}

/// Sample `index` of every run, refused unless all have the first run's size.
fn sample_row(runs: &[ComparedRun], index: usize) -> Result<Vec<Image8>> {
    let row: Vec<Image8> = runs
        .iter()
        .map(|r| images::read_png(&r.dir.join(png_name(index))))
        .collect::<Result<_>>()?;
    let size = |i: &Image8| (i.width, i.height, i.channels);
    if let Some((r, other)) = runs
        .iter()
        .zip(&row)
        .find(|(_, i)| size(i) != size(&row[0]))
    {
        let ((w, h, c), (w0, h0, c0)) = (size(other), size(&row[0]));
        return Err(Error::Invalid(format!(
            "{} of {} is {w}×{h}×{c} but of {} {w0}×{h0}×{c0}: runs of different image sizes \
             cannot share x_T",
            png_name(index),
            r.dir.display(),
            runs[0].dir.display()
        )));
    }
    Ok(row)
}
