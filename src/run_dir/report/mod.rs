//! `report.html`: a run as one self-contained page, rendered from its folder. Every image is
//! embedded as a PNG `data:` URI, so the page copied alone opens anywhere. It shows what was
//! run (every recorded parameter, and the version that wrote it), a caveat where a study found
//! the chosen score ranks the wrong way on this model, the score histogram with the folder's
//! filtering marked, a few samples' maps step by step, a guided run's settings and masks, the
//! extremes, and every sample in score order beside its map.

mod histogram;
pub(in crate::run_dir) mod html;
pub(in crate::run_dir) mod parameters;
mod strips;

use super::filter::{read_filtered, FilteredSets};
use super::manifest::SampleRecord;
use super::maps::{guidance_masks, step_maps, summed_map, Plane};
use super::render::{extremes, ranked, robust_range, SATURATED};
use super::REPORT_SAMPLES;
use crate::error::Result;
use crate::images::{self, Image8};
use crate::ops::UncertaintyMode;
use crate::ticks;
use crate::uncertainty::{known_misranking, UncertaintyMethod};
use html::{colour_bar, escape, img_of};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The report's file name in the run folder.
pub const REPORT_FILE: &str = "report.html";

/// Longest side of an image on the page: larger images (Stable Diffusion's 512²) are shrunk
/// so that a page of hundreds of samples stays a few megabytes.
const THUMBNAIL: usize = 128;

/// Most samples listed one by one; beyond it the lowest and highest halves.
const MAX_CARDS: usize = 200;

/// Writes `dir/report.html` from the folder's samples (`samples`, from its PNGs), maps and
/// filtered sets, and the run's `parameters`; returns its path.
pub fn write_html_report(
    dir: &Path,
    samples: &[SampleRecord],
    parameters: &Value,
) -> Result<PathBuf> {
    let ranked = ranked(samples);
    let finite: Vec<(usize, f64)> = ranked
        .iter()
        .filter(|s| s.non_finite_step.is_none())
        .filter_map(|s| s.score.filter(|v| v.is_finite()).map(|v| (s.index, v)))
        .collect();
    let filtered = read_filtered(dir)?;
    let mut body = summary(&ranked, &finite);
    body += &caveat(parameters);
    body += &section(
        "parameters",
        "Parameters",
        &format!(
            "<p>Everything the run recorded (<code>run.json</code>; every PNG carries the same \
             in its <code>parameters</code> text chunk).</p>{}",
            parameters::table(parameters)
        ),
    );
    if let Some(words) = parameters::guidance_words(parameters) {
        body += &section(
            "guidance",
            "Guidance",
            &guidance(dir, samples, parameters, &words)?,
        );
    }
    body += &section(
        "histogram",
        "Score histogram",
        &scores(&finite, filtered.as_ref()),
    );
    body += &section(
        "steps",
        "Uncertainty maps step by step",
        &steps(dir, samples, parameters)?,
    );
    let scale = run_scale(dir, samples)?;
    body += &section("extremes", "Extremes", &extreme_rows(dir, &ranked, scale)?);
    body += &section(
        "samples",
        "Samples in score order",
        &cards(dir, &ranked, scale)?,
    );
    body += &section("files", "Files in the run folder", &files(dir));
    let page = format!(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>wgsl-diff \
         uncertainty report</title><style>{STYLE}</style></head><body><h1>Uncertainty \
         report</h1>{body}</body></html>"
    );
    let path = dir.join(REPORT_FILE);
    crate::io::write_atomic(&path, page.as_bytes())?;
    Ok(path)
}

pub(in crate::run_dir) const STYLE: &str =
    "body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}\
    section{margin:1.5em 0}\
    figure{display:inline-block;margin:4px;text-align:center;background:#fff;padding:4px;\
    border:1px solid #ddd}\
    img.tile{width:96px;height:auto;image-rendering:pixelated;margin:1px}\
    figcaption{font-size:11px}\
    table{border-collapse:collapse;background:#fff}\
    th,td{border:1px solid #ddd;padding:3px 6px;font-size:12px;text-align:left;\
    vertical-align:middle}\
    table.parameters td{max-width:60em;overflow-wrap:anywhere}\
    .caveat{border:2px solid #c0392b;background:#fdecea;padding:0.5em 1em}\
    .row-label{font-weight:bold;margin:0.5em 0 0}";

pub(in crate::run_dir) fn section(id: &str, title: &str, content: &str) -> String {
    format!("<section id='{id}'><h2>{title}</h2>{content}</section>")
}

/// The page's opening line: how many samples and the score range.
fn summary(ranked: &[&SampleRecord], finite: &[(usize, f64)]) -> String {
    let broken = match ranked.len() - finite.len() {
        0 => String::new(),
        b => format!(
            "; {b} non-finite (NaN or ±Inf, or marked by --keep-non-finite), ranked last and \
             left out of the histogram"
        ),
    };
    let range = match bounds(finite) {
        Some((lo, hi)) => {
            let step = score_step(lo, hi);
            format!(
                ", scores from {} to {}",
                ticks::label(lo, step),
                ticks::label(hi, step)
            )
        }
        None => String::new(),
    };
    format!(
        "<p id='summary'>{} samples{range} (lower: more certain){broken}.</p>",
        ranked.len()
    )
}

fn bounds(scores: &[(usize, f64)]) -> Option<(f64, f64)> {
    scores.iter().fold(None, |r, &(_, v)| {
        Some(r.map_or((v, v), |(lo, hi): (f64, f64)| (lo.min(v), hi.max(v))))
    })
}

/// The resolution scores are written at: a thousandth of their spread (of the value itself
/// when they do not spread).
fn score_step(lo: f64, hi: f64) -> f64 {
    match hi > lo {
        true => ticks::nice_step(hi - lo, 1000),
        false => ticks::nice_step(lo.abs(), 1000),
    }
}

/// The study's warning when the run's mode is known to rank the wrong way on its model.
fn caveat(parameters: &Value) -> String {
    let uc = &parameters["uncertainty"];
    let (Some(model), Some(mode)) = (parameters["model"].as_str(), uc["mode"].as_str()) else {
        return String::new();
    };
    let method = uc["method"]
        .as_str()
        .unwrap_or(UncertaintyMethod::Renoise.name());
    let known = match (
        mode.parse::<UncertaintyMode>(),
        method.parse::<UncertaintyMethod>(),
    ) {
        (Ok(mode), Ok(method)) => known_misranking(Path::new(model), method, mode),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let text = match known {
        Ok(Some(found)) => format!("Known caveat: {found}."),
        Ok(None) => return String::new(),
        Err(e) => format!(
            "Whether this score is known to rank samples the wrong way on this model could not \
             be checked: {e}."
        ),
    };
    format!(
        "<section id='caveat' class='caveat'><p>{}</p></section>",
        escape(&text)
    )
}

/// The histogram, and what the folder's filtering kept beside its random subset.
fn scores(finite: &[(usize, f64)], filtered: Option<&FilteredSets>) -> String {
    let Some(f) = filtered else {
        return histogram::svg(finite, None)
            + "<p>The folder has not been filtered (<code>--keep-fraction</code> or \
               <code>wgsl-diff filter</code> marks the kept samples here).</p>";
    };
    let present: BTreeSet<usize> = finite.iter().map(|s| s.0).collect();
    let (kept, random): (BTreeSet<usize>, BTreeSet<usize>) = (
        f.kept.iter().copied().collect(),
        f.random.iter().copied().collect(),
    );
    let score_of = |set: &BTreeSet<usize>| -> Vec<f64> {
        finite
            .iter()
            .filter(|s| set.contains(&s.0))
            .map(|s| s.1)
            .collect()
    };
    let kept_scores = score_of(&kept);
    if !kept.iter().all(|i| present.contains(i)) || kept_scores.is_empty() {
        return histogram::svg(finite, None)
            + "<p>The folder's <code>filtered/</code> sets do not match its samples (filtered \
               before more samples were added?): run <code>wgsl-diff filter</code> again.</p>";
    }
    let cut_off = kept_scores
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let marks = histogram::Marks {
        kept: &|i| kept.contains(&i),
        random: &|i| random.contains(&i),
        cut_off,
    };
    let (lo, hi) = bounds(finite).unwrap_or((0.0, 1.0));
    let step = score_step(lo, hi);
    let row = |name: &str, values: &[f64]| {
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let (min, max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        format!(
            "<tr><th>{name}</th><td>{}</td><td>{}</td><td>{} – {}</td></tr>",
            values.len(),
            ticks::label(mean, step),
            ticks::label(min, step),
            ticks::label(max, step)
        )
    };
    format!(
        "{}<p>Filtered: the {} lowest scores of {} (keep fraction {}) are kept in \
         <code>filtered/kept</code>, below the cut-off at {}; <code>filtered/random</code> holds \
         a random subset of the same size (seed {}) to compare against.</p>\
         <table><tr><th>set</th><th>samples</th><th>mean score</th><th>score range</th></tr>\
         {}{}</table>",
        histogram::svg(finite, Some(&marks)),
        f.kept.len(),
        f.of,
        f.keep_fraction,
        ticks::label(cut_off, step),
        f.seed,
        row("kept", &kept_scores),
        row("random", &score_of(&random)),
    )
}

/// The samples the report follows step by step: those whose planes `read` finds (the run's
/// first [`REPORT_SAMPLES`]), each as a strip row.
fn strip_rows(
    dir: &Path,
    samples: &[SampleRecord],
    read: fn(&Path, &SampleRecord) -> Result<Option<Vec<Plane>>>,
) -> Result<Vec<strips::Row>> {
    let mut rows = Vec::new();
    for s in samples {
        if rows.len() == REPORT_SAMPLES {
            break;
        }
        if let Some(planes) = read(dir, s)? {
            rows.push(strips::Row {
                caption: caption(s, None),
                image: images::read_png(&dir.join(&s.file))?,
                planes,
            });
        }
    }
    Ok(rows)
}

fn steps(dir: &Path, samples: &[SampleRecord], parameters: &Value) -> Result<String> {
    let rows = strip_rows(dir, samples, step_maps)?;
    if rows.is_empty() {
        return Ok(
            "<p>This folder holds no per-step maps (its samples were made by a \
                   wgsl-diff that did not keep them): sampling into a new folder adds them.</p>"
                .into(),
        );
    }
    Ok(format!(
        "<p>The first {} samples of the run: the final image, then U_t (summed over channels) \
         over it in grey at up to six steps of the uncertainty window. Each step has its own \
         colour scale, shared by the samples, with its colour bar: early steps mostly measure \
         the re-injected noise, so compare where the map is high within a step. {}</p>{}",
        rows.len(),
        saturation_note(),
        strips::strips(
            &rows,
            &parameters::window(parameters, "uncertainty"),
            strips::Kind::Maps
        )?
    ))
}

fn guidance(
    dir: &Path,
    samples: &[SampleRecord],
    parameters: &Value,
    words: &str,
) -> Result<String> {
    let rows = strip_rows(dir, samples, guidance_masks)?;
    let masks =
        match rows.is_empty() {
            true => "<p>This folder holds no guidance masks (its samples were made by a wgsl-diff \
                 that did not keep them).</p>"
                .to_string(),
            false => {
                format!(
            "<p>Where guidance acted on the first {} samples: each guided step's mask tinted \
             blue over the final image in grey (a latent model's mask as the share of its \
             channels guided). The masks are those of this run's own trajectory.</p>{}",
            rows.len(),
            strips::strips(&rows, &parameters::window(parameters, "guidance"), strips::Kind::Masks)?
        )
            }
        };
    Ok(format!("<p>{}</p>{masks}", escape(words)))
}

/// "#12 · rank 3 · 18123.4" (rank and score when known).
fn caption(s: &SampleRecord, rank: Option<usize>) -> String {
    let mut text = format!("#{}", s.index);
    if let Some(r) = rank {
        text += &format!(" · rank {}", r + 1);
    }
    if let Some(score) = s.score {
        text += &format!(" · {}", ticks::label(score, score_step(score, score)));
    }
    if s.non_finite_step.is_some() {
        text += " · non-finite";
    }
    text
}

/// The run's shared scale for the summed maps ([`robust_range`] over every sample, one map
/// in memory at a time), so the report's heatmaps compare across samples.
fn run_scale(dir: &Path, samples: &[SampleRecord]) -> Result<(f32, f32)> {
    let (mut lo, mut hi) = (0f32, 0f32);
    for s in samples {
        if let Some(plane) = summed_map(dir, s)? {
            let (a, b) = robust_range(std::iter::once(&plane.values[..]));
            (lo, hi) = (lo.min(a), hi.max(b));
        }
    }
    Ok((lo, hi))
}

/// How the report's colour scales are chosen, said once under each.
fn saturation_note() -> String {
    format!(
        "A scale runs from 0 (or the lowest value) to the highest of the maps' {:.0}th \
         percentiles: at most {:.0} % of any map's pixels saturate at its top colour.",
        100.0 * (1.0 - SATURATED),
        100.0 * SATURATED
    )
}

/// A sample and its summed map over it, shrunk to a thumbnail, in one figure.
fn figure(dir: &Path, s: &SampleRecord, rank: usize, scale: (f32, f32)) -> Result<String> {
    let image = images::read_png(&dir.join(&s.file))?;
    let factor = shrink_factor(&image);
    let small = images::shrink(&image, factor);
    let heat = match summed_map(dir, s)? {
        Some(plane) => {
            let values = images::shrink_plane(&plane.values, plane.height, plane.width, factor);
            img_of(
                &images::overlay(&small, &values, scale),
                "map over the sample",
                "tile",
            )?
        }
        None => String::new(),
    };
    Ok(format!(
        "<figure>{}{heat}<figcaption>{}</figcaption></figure>",
        img_of(&small, "sample", "tile")?,
        escape(&caption(s, Some(rank)))
    ))
}

/// The factor that brings an image's longer side to at most [`THUMBNAIL`] pixels.
pub(in crate::run_dir) fn shrink_factor(image: &Image8) -> usize {
    image.height.max(image.width).div_ceil(THUMBNAIL).max(1)
}

fn scale_note(scale: (f32, f32), id: &str) -> String {
    format!(
        "<p>Each sample beside Σ_t U_t (summed over channels) over it, on one colour scale for \
         the whole run. {}</p><div>{}</div>",
        saturation_note(),
        colour_bar(id, scale, 240)
    )
}

fn extreme_rows(dir: &Path, ranked: &[&SampleRecord], scale: (f32, f32)) -> Result<String> {
    let (lowest, highest) = extremes(ranked);
    if lowest.is_empty() {
        return Ok("<p>No sample has a finite score.</p>".into());
    }
    let rank_of = |s: &SampleRecord| ranked.iter().position(|r| r.index == s.index).unwrap_or(0);
    let mut html = scale_note(scale, "extremes-bar");
    for (label, set) in [
        ("lowest scores (most certain), lowest first", &lowest),
        ("highest scores (least certain), highest first", &highest),
    ] {
        html += &format!("<p class='row-label'>The {} {label}</p><div>", set.len());
        for s in set.iter() {
            html += &figure(dir, s, rank_of(s), scale)?;
        }
        html += "</div>";
    }
    Ok(html)
}

fn cards(dir: &Path, ranked: &[&SampleRecord], scale: (f32, f32)) -> Result<String> {
    let n = ranked.len();
    let mut html = scale_note(scale, "samples-bar");
    html += "<div>";
    for (rank, s) in ranked.iter().enumerate() {
        if n > MAX_CARDS && rank == MAX_CARDS / 2 {
            html += &format!(
                "</div><p>… {} samples ranked {} to {} are not shown here (scores.csv and \
                 samples.json list them all).</p><div>",
                n - MAX_CARDS,
                MAX_CARDS / 2 + 1,
                n - MAX_CARDS / 2
            );
        }
        if n > MAX_CARDS && rank >= MAX_CARDS / 2 && rank < n - MAX_CARDS / 2 {
            continue;
        }
        html += &figure(dir, s, rank, scale)?;
    }
    Ok(html + "</div>")
}

/// The folder's other files, by relative link: they open beside the run's files, while
/// everything above is in the page itself.
fn files(dir: &Path) -> String {
    let names = [
        ("run.json", "the run's parameters"),
        (
            "samples.json",
            "the manifest: every sample, its score and per-step scores",
        ),
        ("scores.csv", "scores and per-step scores as a table"),
        ("grid.png", "all samples"),
        (
            "uncertainty_grid.png",
            "samples beside their heatmaps, in score order",
        ),
        (
            "extremes.png",
            "the lowest and highest scores beside their heatmaps",
        ),
        ("filtered/kept/samples.json", "the kept set"),
        ("filtered/random/samples.json", "the random subset"),
    ];
    let items: String = names
        .iter()
        .filter(|(name, _)| dir.join(name).exists())
        .map(|(name, what)| format!("<li><a href='{name}'>{name}</a>: {what}</li>"))
        .collect();
    format!(
        "<p>Beside this page, per sample: <code>sample_NNNNNN.png</code>, \
         <code>uncertainty_NNNNNN.npy</code> (Σ_t U_t, C × H × W) and \
         <code>heatmap_NNNNNN.png</code>; for the first {REPORT_SAMPLES}, \
         <code>uncertainty_steps_NNNNNN.npy</code> (each window step's U_t) and, when guided, \
         <code>guidance_masks_NNNNNN.npy</code>.</p><ul>{items}</ul>"
    )
}
