//! What a run shows a person as PNGs, rendered from the files in the folder: a heatmap of each
//! sample's summed uncertainty map (alone or over its image, with a labelled colour bar), the
//! sample grid, and the samples in score order beside their heatmaps. The HTML report is
//! [`super::report`].

use super::filter::by_score;
use super::heatmap_name;
use super::manifest::SampleRecord;
use super::maps::{summed_map, Plane};
use crate::error::{Error, Result};
use crate::images::{self, Image8};
use std::collections::BTreeMap;
use std::path::Path;

/// How heatmap colours are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeatmapScale {
    /// Each heatmap spans its own range ([`robust_range`] of its map).
    Image,
    /// One scale ([`robust_range`] of all the run's maps) for all heatmaps, so they compare
    /// across samples.
    Shared,
}

crate::names::named_enum!(HeatmapScale {
    Image = "image",
    Shared = "shared",
});

/// What a heatmap shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeatmapStyle {
    /// The map's colours over the sample in grey: where on the garment the uncertainty sits.
    Overlay,
    /// The map's colours alone.
    Map,
}

crate::names::named_enum!(HeatmapStyle {
    Overlay = "overlay",
    Map = "map",
});

impl HeatmapStyle {
    /// `plane` (the image's size) coloured over [lo, hi], alone or over `image`.
    pub fn render(self, image: &Image8, plane: &Plane, range: (f32, f32)) -> Image8 {
        match self {
            HeatmapStyle::Overlay => images::overlay(image, &plane.values, range),
            HeatmapStyle::Map => images::heatmap(&plane.values, plane.height, plane.width, range),
        }
    }
}

/// The share of a plane's pixels that [`robust_range`] lets saturate.
pub(super) const SATURATED: f64 = 0.01;

/// A colour scale a few extreme pixels cannot wash out (the centred map is heavy-tailed): from
/// 0, or the lowest finite value (typicality and the z-scored modes are signed), to the highest
/// of the planes' 99th percentiles, so that at most 1 % of any plane's pixels saturate. Only
/// finite values count: one kept non-finite map must not blacken every other heatmap.
pub(super) fn robust_range<'a>(planes: impl Iterator<Item = &'a [f32]>) -> (f32, f32) {
    let (mut lo, mut hi) = (0f32, f32::NEG_INFINITY);
    for plane in planes {
        let mut finite: Vec<f32> = plane.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            continue;
        }
        let top = ((finite.len() - 1) as f64 * (1.0 - SATURATED)).round() as usize;
        let (_, &mut p, _) = finite.select_nth_unstable_by(top, f32::total_cmp);
        lo = finite.iter().copied().fold(lo, f32::min);
        hi = hi.max(p);
    }
    (lo, hi.max(lo))
}

/// Renders heatmap_*.png from the summed maps ([`write_heatmap`]) and records them in
/// `samples`.
/// Returns each sample's heatmap without the bar, for the grids.
pub fn render_heatmaps(
    dir: &Path,
    samples: &mut [SampleRecord],
    scale: HeatmapScale,
    style: HeatmapStyle,
) -> Result<BTreeMap<usize, Image8>> {
    let mut planes = Vec::new();
    for s in samples.iter() {
        if let Some(plane) = summed_map(dir, s)? {
            planes.push((s, plane));
        }
    }
    let shared = robust_range(planes.iter().map(|(_, p)| &p.values[..]));
    let mut tiles = BTreeMap::new();
    for (s, plane) in &planes {
        let range = match scale {
            HeatmapScale::Image => robust_range(std::iter::once(&plane.values[..])),
            HeatmapScale::Shared => shared,
        };
        let tile = write_heatmap(
            &dir.join(heatmap_name(s.index)),
            &load(dir, &s.file)?,
            plane,
            range,
            style,
        )?;
        tiles.insert(s.index, tile);
    }
    for s in samples.iter_mut() {
        s.heatmap = dir
            .join(heatmap_name(s.index))
            .exists()
            .then(|| heatmap_name(s.index));
    }
    Ok(tiles)
}

/// `plane` drawn in `style` (over `image`) on the colour scale `range`, written to `path` beside
/// a colour bar labelled with the range, which is also in the PNG's `colour_scale` text chunk
/// ("lo,hi"; values beyond it saturate). Returns the heatmap without the bar.
pub(super) fn write_heatmap(
    path: &Path,
    image: &Image8,
    plane: &Plane,
    range: (f32, f32),
    style: HeatmapStyle,
) -> Result<Image8> {
    let tile = style.render(image, plane, range);
    let text = [
        ("colour_scale", format!("{},{}", range.0, range.1)),
        ("heatmap_style", style.name().to_string()),
    ];
    images::write_png(path, &images::with_colour_bar(&tile, range), &text)?;
    Ok(tile)
}

pub(super) fn load(dir: &Path, file: &str) -> Result<Image8> {
    images::read_png(&dir.join(file))
}

pub fn write_grid(dir: &Path, samples: &[SampleRecord]) -> Result<()> {
    let imgs: Vec<Image8> = samples
        .iter()
        .map(|s| load(dir, &s.file))
        .collect::<Result<_>>()?;
    if let Some(g) = images::grid(&imgs, (imgs.len() as f64).sqrt().ceil() as usize, 2) {
        images::write_png(&dir.join("grid.png"), &g, &[])?;
    }
    Ok(())
}

/// The scored samples, lowest score first (non-finite and unscored last).
pub(super) fn ranked(samples: &[SampleRecord]) -> Vec<&SampleRecord> {
    let mut scored: Vec<&SampleRecord> = samples.iter().filter(|s| s.score.is_some()).collect();
    scored.sort_by(|a, b| by_score(a, b));
    scored
}

/// How many samples each end of the extremes shows at most.
const EXTREMES: usize = 10;

/// The lowest- and highest-scored samples of `ranked` with a finite score: up to
/// [`EXTREMES`] of each, half the samples when there are fewer, and at least one, so a run of
/// one sample shows it in both rows.
pub(super) fn extremes<'a>(
    ranked: &[&'a SampleRecord],
) -> (Vec<&'a SampleRecord>, Vec<&'a SampleRecord>) {
    let finite: Vec<&SampleRecord> = ranked
        .iter()
        .filter(|s| s.non_finite_step.is_none() && s.score.is_some_and(f64::is_finite))
        .copied()
        .collect();
    let k = (finite.len() / 2).clamp(finite.len().min(1), EXTREMES);
    let highest = finite[finite.len() - k..].iter().rev().copied().collect();
    (finite[..k].to_vec(), highest)
}

/// Samples beside their heatmaps (`tiles`, from [`render_heatmaps`]), in score order:
/// `uncertainty_grid.png` (all, lowest first) and `extremes.png` (the lowest on top, the
/// highest below, highest first; [`extremes`]).
pub fn write_uncertainty_grids(
    dir: &Path,
    samples: &[SampleRecord],
    tiles: &BTreeMap<usize, Image8>,
) -> Result<()> {
    let scored: Vec<&SampleRecord> = ranked(samples)
        .into_iter()
        .filter(|s| tiles.contains_key(&s.index))
        .collect();
    if scored.is_empty() {
        return Ok(());
    }
    // Each sample beside its heatmap, `cols` images per row.
    let write_pairs = |name: &str, set: &[&SampleRecord], cols: usize| -> Result<()> {
        let mut pairs = Vec::with_capacity(2 * set.len());
        for s in set {
            pairs.push(images::to_rgb(&load(dir, &s.file)?));
            pairs.push(tiles[&s.index].clone());
        }
        let grid = images::grid(&pairs, cols, 2)
            .ok_or_else(|| Error::Internal(format!("{name}: a grid of no images")))?;
        images::write_png(&dir.join(name), &grid, &[])
    };
    write_pairs(
        "uncertainty_grid.png",
        &scored,
        2 * ((scored.len() as f64).sqrt().ceil() as usize),
    )?;
    let (lowest, highest) = extremes(&scored);
    if !lowest.is_empty() {
        let rows: Vec<&SampleRecord> = lowest.iter().chain(&highest).copied().collect();
        write_pairs("extremes.png", &rows, 2 * lowest.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: usize, score: f64) -> SampleRecord {
        SampleRecord {
            index,
            file: super::super::png_name(index),
            class: None,
            score: Some(score),
            step_scores: None,
            heatmap: None,
            non_finite_step: None,
        }
    }

    #[test]
    fn extremes_exist_at_every_sample_count() {
        let ends = |n: usize| {
            let records: Vec<SampleRecord> = (0..n).map(|i| record(i, (n - i) as f64)).collect();
            let ranked = ranked(&records);
            let (lo, hi) = extremes(&ranked);
            let ids = |v: Vec<&SampleRecord>| v.iter().map(|s| s.index).collect::<Vec<_>>();
            (ids(lo), ids(hi))
        };
        assert_eq!(ends(0), (vec![], vec![]));
        assert_eq!(ends(1), (vec![0], vec![0]), "one sample is both ends");
        assert_eq!(ends(3), (vec![2], vec![0]));
        assert_eq!(ends(6), (vec![5, 4, 3], vec![0, 1, 2]));
        let (lo, hi) = ends(50);
        assert_eq!((lo.len(), hi.len()), (EXTREMES, EXTREMES));
        assert_eq!((lo[0], hi[0]), (49, 0), "lowest first, highest first");
    }

    #[test]
    fn a_robust_range_lets_one_outlier_saturate() {
        let mut plane = vec![1.0f32; 200];
        plane[7] = 1000.0;
        plane[8] = f32::NAN;
        let other = [-2.0f32, 3.0];
        let (lo, hi) = robust_range([&plane[..], &other[..]].into_iter());
        assert_eq!((lo, hi), (-2.0, 3.0));
        assert_eq!(robust_range(std::iter::empty()), (0.0, 0.0));
    }

    #[test]
    fn a_non_finite_sample_is_no_extreme() {
        let mut records = vec![record(0, 1.0), record(1, f64::NAN), record(2, 3.0)];
        records[2].non_finite_step = Some(1);
        let ranked = ranked(&records);
        let (lo, hi) = extremes(&ranked);
        assert_eq!((lo[0].index, hi[0].index, lo.len()), (0, 0, 1));
    }
}
