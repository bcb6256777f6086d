//! What a run leaves in its folder besides the samples: the manifest, scores, heatmaps, grids,
//! the filtered subsets and the HTML report. Everything is rebuilt from the files on disk (each
//! PNG carries its index, class and score in tEXt chunks), so resumed runs and `wgsl-diff
//! filter` see the same state.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use wgsl_diff::images::{self, Image8};
use wgsl_diff::npy;
use wgsl_diff::splitmix::SplitMix64;

pub fn png_name(index: usize) -> String {
    format!("sample_{index:06}.png")
}

pub fn total_map_name(index: usize) -> String {
    format!("uncertainty_{index:06}.npy")
}

fn heatmap_name(index: usize) -> String {
    format!("heatmap_{index:06}.png")
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleRecord {
    pub index: usize,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub class: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub heatmap: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct Manifest {
    pub parameters: serde_json::Value,
    pub samples: Vec<SampleRecord>,
}

/// The indices of the sample PNGs in `dir`, in order.
pub fn sample_indices(dir: &Path) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let index = name
            .strip_prefix("sample_")
            .and_then(|n| n.strip_suffix(".png"))
            .and_then(|n| n.parse().ok())
            .filter(|&i| png_name(i) == name);
        out.extend(index);
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads the records of the samples `indices` that exist in `dir`.
pub fn collect(dir: &Path, indices: &[usize]) -> Result<Vec<SampleRecord>> {
    let mut out = Vec::new();
    for &index in indices {
        let path = dir.join(png_name(index));
        if !path.exists() {
            continue;
        }
        let text = images::read_png_text(&path)?;
        let parse = |key: &str| {
            text.get(key)
                .map(|v| v.parse::<f64>())
                .transpose()
                .with_context(|| format!("{}: bad {key}", path.display()))
        };
        out.push(SampleRecord {
            index,
            file: png_name(index),
            class: parse("class")?.map(|c| c as usize),
            score: parse("uncertainty_score")?,
            heatmap: dir
                .join(heatmap_name(index))
                .exists()
                .then(|| heatmap_name(index)),
        });
    }
    Ok(out)
}

pub fn write_manifest(
    dir: &Path,
    parameters: &serde_json::Value,
    samples: &[SampleRecord],
) -> Result<()> {
    let m = Manifest {
        parameters: parameters.clone(),
        samples: samples.to_vec(),
    };
    wgsl_diff::io::write_atomic(
        &dir.join("samples.json"),
        serde_json::to_string_pretty(&m)?.as_bytes(),
    )?;
    Ok(())
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("samples.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (is {} a sample folder?)",
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a wgsl-diff manifest", path.display()))
}

pub fn write_scores_csv(dir: &Path, samples: &[SampleRecord]) -> Result<()> {
    let mut csv = String::from("index,file,score\n");
    for s in samples.iter().filter(|s| s.score.is_some()) {
        csv.push_str(&format!("{},{},{}\n", s.index, s.file, s.score.unwrap()));
    }
    wgsl_diff::io::write_atomic(&dir.join("scores.csv"), csv.as_bytes())?;
    Ok(())
}

/// How heatmap colours are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeatmapScale {
    /// Each heatmap spans its own maximum.
    Image,
    /// One scale (the run's maximum) for all heatmaps, so they compare across samples.
    Shared,
}

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
            bail!("{}: expected (C, H, W), got {shape:?}", path.display())
        };
        let plane: Vec<f32> = (0..h * w)
            .map(|p| (0..c).map(|k| data[k * h * w + p]).sum())
            .collect();
        planes.push((s.index, h, w, plane));
    }
    let shared = planes
        .iter()
        .flat_map(|p| p.3.iter())
        .fold(0f32, |m, &v| m.max(v));
    for (index, h, w, plane) in &planes {
        let top = match scale {
            HeatmapScale::Image => plane.iter().fold(0f32, |m, &v| m.max(v)),
            HeatmapScale::Shared => shared,
        };
        images::write_png(
            &dir.join(heatmap_name(*index)),
            &images::heatmap(plane, *h, *w, top),
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

fn load(dir: &Path, file: &str) -> Result<Image8> {
    Ok(images::read_png(&dir.join(file))?)
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
    scored.sort_by(|a, b| a.score.partial_cmp(&b.score).unwrap());
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

/// Keeps the ⌊fraction·N⌋ lowest-scored samples in `filtered/kept/` and a seeded random subset
/// of the same size in `filtered/random/`, each with a manifest.
pub fn filter(
    dir: &Path,
    samples: &[SampleRecord],
    keep_fraction: f64,
    seed: u64,
) -> Result<(PathBuf, PathBuf)> {
    if !(keep_fraction > 0.0 && keep_fraction <= 1.0) {
        bail!("--keep-fraction must be in (0, 1], got {keep_fraction}");
    }
    let scored: Vec<&SampleRecord> = samples.iter().filter(|s| s.score.is_some()).collect();
    if scored.len() != samples.len() || scored.is_empty() {
        bail!("filtering needs an uncertainty score for every sample: run `sample` with --uncertainty");
    }
    let keep = ((keep_fraction * scored.len() as f64) + 1e-9).floor() as usize;
    let mut by_score = scored.clone();
    by_score.sort_by(|a, b| {
        a.score
            .partial_cmp(&b.score)
            .unwrap()
            .then(a.index.cmp(&b.index))
    });
    let kept: Vec<SampleRecord> = by_score[..keep].iter().map(|s| (*s).clone()).collect();
    let perm = SplitMix64::new(seed).permutation(scored.len());
    let random: Vec<SampleRecord> = perm[..keep].iter().map(|&i| scored[i].clone()).collect();
    let root = dir.join("filtered");
    let mut out = Vec::new();
    for (name, set) in [("kept", kept), ("random", random)] {
        let sub = root.join(name);
        if sub.exists() {
            std::fs::remove_dir_all(&sub)
                .with_context(|| format!("cannot clear {}", sub.display()))?;
        }
        std::fs::create_dir_all(&sub)
            .with_context(|| format!("cannot create {}", sub.display()))?;
        for s in &set {
            std::fs::copy(dir.join(&s.file), sub.join(&s.file))
                .with_context(|| format!("cannot copy {}", s.file))?;
        }
        let params = serde_json::json!({"subset": name, "keep_fraction": keep_fraction, "seed": seed, "from": dir.display().to_string(), "of": scored.len()});
        write_manifest(&sub, &params, &set)?;
        out.push(sub);
    }
    Ok((out.remove(0), out.remove(0)))
}

/// A static page: samples in score order beside their heatmaps, and a score histogram.
pub fn write_html_report(dir: &Path, samples: &[SampleRecord]) -> Result<()> {
    let mut scored: Vec<&SampleRecord> = samples.iter().filter(|s| s.score.is_some()).collect();
    scored.sort_by(|a, b| a.score.partial_cmp(&b.score).unwrap());
    let scores: Vec<f64> = scored.iter().map(|s| s.score.unwrap()).collect();
    let (lo, hi) = (
        scores.first().copied().unwrap_or(0.0),
        scores.last().copied().unwrap_or(1.0),
    );
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
            format!("<figure><img src='{}' alt='sample'>{heat}<figcaption>#{} · rank {} · {:.4}</figcaption></figure>", s.file, s.index, rank + 1, s.score.unwrap())
        })
        .collect();
    let html = format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>wgsl-diff uncertainty report</title><style>\
         body{{font-family:sans-serif;margin:1.5em;background:#fafafa}}\
         figure{{display:inline-block;margin:4px;text-align:center;background:#fff;padding:4px;border:1px solid #ddd}}\
         figure img{{width:64px;height:64px;image-rendering:pixelated;margin:1px}}\
         figcaption{{font-size:11px;color:#333}}</style></head><body>\
         <h1>Uncertainty report</h1><p>{n} samples, scores from {lo:.4} to {hi:.4}; lowest (most certain) first.</p>\
         <h2>Score histogram</h2><svg width='{w}' height='180' role='img' aria-label='score histogram'>{bars}\
         <text x='10' y='176' font-size='11'>{lo:.3}</text><text x='{tx}' y='176' font-size='11' text-anchor='end'>{hi:.3}</text></svg>\
         <h2>Samples and heatmaps</h2><div>{cards}</div></body></html>",
        n = scored.len(),
        w = 20 + bins * 20,
        tx = 10 + bins * 20,
    );
    wgsl_diff::io::write_atomic(&dir.join("report.html"), html.as_bytes())?;
    Ok(())
}
