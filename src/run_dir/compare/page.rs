//! `compare.html`: the comparison as one page that holds its own images (the report's
//! `data:` URIs), so it opens anywhere: the runs, the metric values their folders hold, their
//! parameters side by side with the differing ones marked, and every sample of every run with
//! its difference from the first run and its score.

use super::{ComparedRun, Comparison, MetricValue, PixelDifference, METRICS};
use crate::error::Result;
use crate::images::{self, Image8};
use crate::run_dir::report::html::{escape, img_of};
use crate::run_dir::report::parameters::rows;
use crate::run_dir::report::{section, shrink_factor, STYLE};
use std::collections::{BTreeMap, BTreeSet};

/// Most samples shown as images; the grids and the table of differences hold every one.
pub(super) const MAX_ROWS: usize = 200;

/// An image as the page shows it (shrunk like the report's).
pub(super) fn thumbnail(image: &Image8) -> Image8 {
    images::shrink(image, shrink_factor(image))
}

/// Column label of run `i`: A, B, … (R27, R28, … past Z).
pub(super) fn label(i: usize) -> String {
    match u8::try_from(i).ok().filter(|&i| i < 26) {
        Some(i) => char::from(b'A' + i).to_string(),
        None => format!("R{}", i + 1),
    }
}

/// A table head cell per run: A, B, …
fn run_heads(count: usize) -> String {
    (0..count)
        .map(|r| format!("<th>{}</th>", label(r)))
        .collect()
}

/// Writes `comparison.page`; `shown` holds the thumbnails of the first samples, one per run.
pub(super) fn write(comparison: &Comparison, shown: &[Vec<Image8>]) -> Result<()> {
    let runs = &comparison.runs;
    let mut body = format!(
        "<p id='summary'>{} runs from the same x_T (seed {}), {} samples each. Differences are \
         against run A in 8-bit levels (0–255) over every pixel and channel: the largest and \
         the mean absolute difference.</p>",
        runs.len(),
        runs[0].parameters["seed"],
        comparison.indices.len()
    );
    body += &section("runs", "Runs", &legend(comparison));
    body += &section("metrics", "Metrics", &metrics(runs));
    body += &section("parameters", "Parameters", &parameters(runs));
    body += &section("samples", "Samples", &samples(comparison, shown)?);
    let files: String = comparison
        .grids
        .iter()
        .filter_map(|g| g.file_name())
        .map(|g| {
            let name = escape(&g.to_string_lossy());
            format!("<li><a href='{name}'>{name}</a></li>")
        })
        .collect();
    body += &section(
        "files",
        "Grids beside this page",
        &format!(
            "<p>One row per sample, one column per run (A first), up to {} samples each.</p>\
             <ul>{files}</ul>",
            super::GRID_ROWS
        ),
    );
    let page = format!(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>wgsl-diff \
         comparison</title><style>{STYLE}{EXTRA}</style></head><body><h1>Comparison of {} \
         runs</h1>{body}</body></html>",
        runs.len()
    );
    crate::io::write_atomic(&comparison.page, page.as_bytes())
}

const EXTRA: &str = "tr.differs th,tr.differs td{background:#fff3c4;font-weight:bold}";

/// Each run's label, folder, sample count and score range.
fn legend(comparison: &Comparison) -> String {
    let mut html = String::from(
        "<table><tr><th>run</th><th>folder</th><th>largest difference from A</th>\
         <th>mean difference from A</th><th>scores</th></tr>",
    );
    for (r, run) in comparison.runs.iter().enumerate() {
        let overall = comparison.overall(r);
        html += &format!(
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            label(r),
            escape(&run.dir.display().to_string()),
            overall.max,
            overall.mean,
            score_range(run)
        );
    }
    html + "</table>"
}

fn score_range(run: &ComparedRun) -> String {
    let scores: Vec<f64> = run
        .samples
        .iter()
        .filter_map(|s| s.score.filter(|v| v.is_finite()))
        .collect();
    let lo = scores.iter().copied().reduce(f64::min);
    let hi = scores.iter().copied().reduce(f64::max);
    match lo.zip(hi) {
        Some((lo, hi)) => format!("{lo:.5e} .. {hi:.5e}"),
        None => "none".into(),
    }
}

/// Each metric some run's folder holds, one column per run with the sets it compared; a
/// metric measured against different real sets is marked, since its values do not compare.
fn metrics(runs: &[ComparedRun]) -> String {
    let mut rows = String::new();
    for (k, kind) in METRICS.iter().enumerate() {
        let values: Vec<Option<&MetricValue>> =
            runs.iter().map(|r| r.metrics[k].as_ref()).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let reals: BTreeSet<&str> = values.iter().flatten().map(|v| v.real.as_str()).collect();
        let class = match reals.len() {
            1 => "",
            _ => " class='differs'",
        };
        rows += &format!("<tr{class}><th>{}</th>", escape(kind.name));
        for value in values {
            rows += &match value {
                Some(v) => format!(
                    "<td><span class='metric'>{}</span><br><small>real: {}<br>fake: {}</small>\
                     </td>",
                    kind.format(v.value),
                    escape(&v.real),
                    escape(&v.fake)
                ),
                None => "<td>—</td>".into(),
            };
        }
        rows += "</tr>";
    }
    let commands: String = METRICS
        .iter()
        .map(|kind| format!("<li><code>{}</code></li>", escape(&kind.how_to_write())))
        .collect();
    let how = format!(
        "<p>Values are read from each run folder, where these commands write them (lower: \
         closer to the real set):</p><ul>{commands}</ul>"
    );
    if rows.is_empty() {
        return format!("<p>No run folder holds a metric.</p>{how}");
    }
    format!(
        "{how}<p>A highlighted metric was measured against different real sets in different \
         runs: its values do not compare.</p><table><tr><th>metric</th>{}</tr>{rows}</table>",
        run_heads(runs.len())
    )
}

/// Every parameter any run recorded, one column per run; rows whose values differ are marked.
fn parameters(runs: &[ComparedRun]) -> String {
    let tables: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|r| rows(&r.parameters).into_iter().collect())
        .collect();
    let mut keys: Vec<&String> = Vec::new();
    for table in &tables {
        keys.extend(
            table
                .keys()
                .filter(|k| !keys.contains(k))
                .collect::<Vec<_>>(),
        );
    }
    let mut html = String::from(
        "<p>Rows that differ between the runs are highlighted.</p><table><tr><th>parameter</th>",
    );
    html += &run_heads(runs.len());
    html += "</tr>";
    for key in keys {
        let values: Vec<&str> = tables
            .iter()
            .map(|t| t.get(key).map_or("—", String::as_str))
            .collect();
        let class = match values.iter().all(|v| *v == values[0]) {
            true => "",
            false => " class='differs'",
        };
        html += &format!("<tr{class}><th>{}</th>", escape(key));
        html += &values
            .iter()
            .map(|v| format!("<td>{}</td>", escape(v)))
            .collect::<String>();
        html += "</tr>";
    }
    html + "</table>"
}

/// One row per sample: each run's image (for the first [`MAX_ROWS`]), its difference from A and
/// its score.
fn samples(comparison: &Comparison, shown: &[Vec<Image8>]) -> Result<String> {
    let runs = &comparison.runs;
    let note = match comparison.indices.len() > shown.len() {
        true => format!(
            "<p>Images of the first {} samples; the grids hold every one.</p>",
            shown.len()
        ),
        false => String::new(),
    };
    let mut html = note + "<table><tr><th>sample</th>";
    html += &run_heads(runs.len());
    html += "</tr>";
    for (i, &index) in comparison.indices.iter().enumerate() {
        html += &format!("<tr><th>{index}</th>");
        for (r, run) in runs.iter().enumerate() {
            let image = match shown.get(i) {
                Some(row) => img_of(
                    &row[r],
                    &format!("sample {index} of run {}", label(r)),
                    "tile",
                )?,
                None => String::new(),
            };
            let score = run
                .samples
                .iter()
                .find(|s| s.index == index)
                .and_then(|s| s.score)
                .map_or(String::new(), |v| format!("<br>score {v:.5e}"));
            html += &format!(
                "<td>{image}<br><span class='difference'>{}</span>{score}</td>",
                difference(comparison.differences[i][r], r)
            );
        }
        html += "</tr>";
    }
    Ok(html + "</table>")
}

fn difference(d: PixelDifference, run: usize) -> String {
    match run {
        0 => "baseline".into(),
        _ => format!("Δ max {} mean {:.3}", d.max, d.mean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_run_past_z() {
        assert_eq!(label(0), "A");
        assert_eq!(label(25), "Z");
        assert_eq!(label(26), "R27");
    }
}
