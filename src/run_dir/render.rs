//! What a run shows a person: heatmaps of the summed uncertainty maps, the sample grid, the
//! score-ordered grids and the HTML report, all rendered from the files in the folder.

use super::filter::by_score;
use super::manifest::SampleRecord;
use super::{heatmap_name, total_map_name};
use crate::error::{Error, Result};
use crate::images::{self, Image8};
use crate::npy;
use std::path::Path;

/// How heatmap colours are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeatmapScale {
    /// Each heatmap spans its own range (from 0, or its minimum when negative, to its maximum).
    Image,
    /// One scale (the run's range) for all heatmaps, so they compare across samples.
    Shared,
}

crate::names::named_enum!(HeatmapScale {
    Image = "image",
    Shared = "shared",
});

/// Renders heatmap_*.png from the channel-summed uncertainty maps.
pub fn render_heatmaps(
    dir: &Path,
    samples: &mut [SampleRecord],
    scale: HeatmapScale,
) -> Result<()> {
    let mut planes = Vec::new();
    for s in samples.iter() {
        let path = dir.join(total_map_name(s.index));
        if !path.exists() {
            continue;
        }
        let (shape, data) = npy::read(&path)?;
        let [c, h, w] = shape[..] else {
            return Err(Error::Invalid(format!(
                "{}: expected (C, H, W), got {shape:?}",
                path.display()
            )));
        };
        let plane: Vec<f32> = (0..h * w)
            .map(|p| (0..c).map(|k| data[k * h * w + p]).sum())
            .collect();
        // A latent model's map covers its image at a coarser grid: shown over the image, each
        // map element as the block of pixels it covers.
        let (plane, h, w) = match images::png_size(&dir.join(&s.file))? {
            (ih, iw) if (ih, iw) != (h, w) && ih % h == 0 && iw % w == 0 && ih / h == iw / w => {
                (upsample_nearest(&plane, h, w, ih / h), ih, iw)
            }
            _ => (plane, h, w),
        };
        planes.push((s.index, h, w, plane));
    }
    // Scales span finite values: one kept non-finite map must not blacken every other heatmap.
    // They run from 0 (or the lowest value of a signed map: typicality, the z-scored modes) to
    // the highest.
    let finite_range = |values: &mut dyn Iterator<Item = &f32>| {
        values
            .filter(|v| v.is_finite())
            .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    };
    let shared = finite_range(&mut planes.iter().flat_map(|p| p.3.iter()));
    for (index, h, w, plane) in &planes {
        let range = match scale {
            HeatmapScale::Image => finite_range(&mut plane.iter()),
            HeatmapScale::Shared => shared,
        };
        images::write_png(
            &dir.join(heatmap_name(*index)),
            &images::heatmap(plane, *h, *w, range),
            &[],
        )?;
    }
    for s in samples.iter_mut() {
        s.heatmap = dir
            .join(heatmap_name(s.index))
            .exists()
            .then(|| heatmap_name(s.index));
    }
    Ok(())
}

/// Each value of an (h, w) plane repeated over a `factor` × `factor` block.
fn upsample_nearest(plane: &[f32], h: usize, w: usize, factor: usize) -> Vec<f32> {
    let (oh, ow) = (h * factor, w * factor);
    (0..oh * ow)
        .map(|p| plane[(p / ow / factor) * w + (p % ow) / factor])
        .collect()
}

fn load(dir: &Path, file: &str) -> Result<Image8> {
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

/// Samples with their heatmaps, in score order: `uncertainty_grid.png` (all, lowest first)
/// and, with at least 20 samples, `extremes.png` (10 lowest over 10 highest).
pub fn write_uncertainty_grids(dir: &Path, samples: &[SampleRecord]) -> Result<()> {
    let mut scored: Vec<&SampleRecord> = samples
        .iter()
        .filter(|s| s.score.is_some() && s.heatmap.is_some())
        .collect();
    if scored.is_empty() {
        return Ok(());
    }
    scored.sort_by(|a, b| by_score(a, b));
    // Each sample beside its heatmap, `cols` images per row.
    let write_pairs = |name: &str, set: &[&SampleRecord], cols: usize| -> Result<()> {
        let mut tiles = Vec::with_capacity(2 * set.len());
        for s in set {
            tiles.push(images::to_rgb(&load(dir, &s.file)?));
            tiles.push(load(dir, s.heatmap.as_ref().unwrap())?);
        }
        images::write_png(
            &dir.join(name),
            &images::grid(&tiles, cols, 2).unwrap(),
            &[],
        )?;
        Ok(())
    };
    write_pairs(
        "uncertainty_grid.png",
        &scored,
        2 * ((scored.len() as f64).sqrt().ceil() as usize),
    )?;
    if scored.len() >= 20 {
        let ends: Vec<&SampleRecord> = scored[..10]
            .iter()
            .chain(&scored[scored.len() - 10..])
            .copied()
            .collect();
        write_pairs("extremes.png", &ends, 20)?;
    }
    Ok(())
}

/// A static page: samples in score order beside their heatmaps, and a score histogram.
pub fn write_html_report(dir: &Path, samples: &[SampleRecord]) -> Result<()> {
    let mut scored: Vec<&SampleRecord> = samples.iter().filter(|s| s.score.is_some()).collect();
    scored.sort_by(|a, b| by_score(a, b));
    // The histogram spans the finite scores; NaN and ±Inf are counted apart.
    let scores: Vec<f64> = scored
        .iter()
        .filter_map(|s| s.score.filter(|v| v.is_finite()))
        .collect();
    let broken = scored.len() - scores.len();
    let (lo, hi) = scores
        .iter()
        .fold(None, |r: Option<(f64, f64)>, &v| {
            Some(r.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
        })
        .unwrap_or((0.0, 1.0));
    let bins = 20;
    let mut counts = vec![0usize; bins];
    for &s in &scores {
        let b = if hi > lo {
            (((s - lo) / (hi - lo)) * bins as f64) as usize
        } else {
            0
        };
        counts[b.min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let bars: String = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let h = 150.0 * c as f64 / top as f64;
            format!("<rect x='{}' y='{:.1}' width='18' height='{:.1}' fill='#b5367a'><title>{c}</title></rect>", 10 + i * 20, 160.0 - h, h)
        })
        .collect();
    let cards: String = scored
        .iter()
        .enumerate()
        .map(|(rank, s)| {
            let heat = s.heatmap.as_ref().map(|h| format!("<img src='{h}' alt='heatmap'>")).unwrap_or_default();
            let score = s.score.unwrap_or(f64::NAN);
            let mark = if s.non_finite_step.is_some() { " · non-finite" } else { "" };
            format!("<figure><img src='{}' alt='sample'>{heat}<figcaption>#{} · rank {} · {score:.4}{mark}</figcaption></figure>", s.file, s.index, rank + 1)
        })
        .collect();
    let html = format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>wgsl-diff uncertainty report</title><style>\
         body{{font-family:sans-serif;margin:1.5em;background:#fafafa}}\
         figure{{display:inline-block;margin:4px;text-align:center;background:#fff;padding:4px;border:1px solid #ddd}}\
         figure img{{width:64px;height:64px;image-rendering:pixelated;margin:1px}}\
         figcaption{{font-size:11px;color:#333}}</style></head><body>\
         <h1>Uncertainty report</h1><p>{n} samples, scores from {lo:.4} to {hi:.4}; lowest (most certain) first{broken}.</p>\
         <h2>Score histogram</h2><svg width='{w}' height='180' role='img' aria-label='score histogram'>{bars}\
         <text x='10' y='176' font-size='11'>{lo:.3}</text><text x='{tx}' y='176' font-size='11' text-anchor='end'>{hi:.3}</text></svg>\
         <h2>Samples and heatmaps</h2><div>{cards}</div></body></html>",
        n = scored.len(),
        broken = match broken {
            0 => String::new(),
            b => format!("; {b} non-finite (NaN or ±Inf) last, outside the histogram"),
        },
        w = 20 + bins * 20,
        tx = 10 + bins * 20,
    );
    crate::io::write_atomic(&dir.join("report.html"), html.as_bytes())
}
