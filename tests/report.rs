//! `report.html` as a research artefact: one page that holds its own images (every `<img>` a PNG
//! `data:` URI), every recorded parameter, the score histogram with axes and the filtering
//! marked, per-step maps kept without `--save-maps`, a guided run's settings and masks, and the
//! extremes at any sample count — checked by parsing the page, and by rendering it copied alone
//! in headless Chromium. Also the heatmap PNGs' styles and colour bars, per-step heatmaps on
//! request, and the known caveat of the default score on the shipped model.

mod common;

use common::page::{check_images, chromium_loads_every_image};
use regex::Regex;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use wgsl_diff::npy;
use wgsl_diff::run_dir::{self, HeatmapScale, HeatmapStyle};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unet_tiny_gray.safetensors"
);

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgsl-diff-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `wgsl-diff sample` on the tiny model (4 steps, M = 2, uncertainty and report) into `out`.
fn sample(out: &Path, extra: &[&str]) -> Output {
    sample_model(MODEL, out, &[extra, &["--steps", "4"]].concat())
}

/// `wgsl-diff sample --uncertainty -M 2 --report` of `model` into `out`.
fn sample_model(model: &str, out: &Path, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["sample", "--model", model, "--quiet", "--out"])
        .arg(out)
        .args(["--uncertainty", "-M", "2", "--report"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sample failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_report(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("report.html")).expect("report.html written")
}

fn has_section(html: &str, id: &str) -> bool {
    html.contains(&format!("<section id='{id}'"))
}

/// The table's rows as the page writes them: (dotted key, text) of every leaf of run.json.
fn leaves(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    let text = |v: &Value| match v {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = match prefix {
                    "" => k.clone(),
                    p => format!("{p}.{k}"),
                };
                leaves(&key, v, out);
            }
        }
        Value::Array(items) => out.push((
            prefix.into(),
            items.iter().map(text).collect::<Vec<_>>().join(", "),
        )),
        leaf => out.push((prefix.into(), text(leaf))),
    }
}

/// Every parameter of the run's run.json is a row of the page's table, and so is the version.
fn check_parameters(dir: &Path, html: &str) {
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    let mut rows = Vec::new();
    leaves("", &run, &mut rows);
    assert!(rows.len() >= 10, "{rows:?}");
    for (key, value) in rows {
        let row = format!("<tr><th>{key}</th><td>{value}</td></tr>");
        assert!(html.contains(&row), "the table lacks {row}");
    }
    let version = format!("<td>{}</td>", env!("CARGO_PKG_VERSION"));
    assert!(html.contains("wgsl-diff version") && html.contains(&version));
}

/// The per-step maps the report shows are each window step's U_t, the maps `--save-maps`
/// writes (one file per sample and step), kept for the first 4 samples without it.
fn check_step_maps(dir: &Path, saved: &Path) {
    for k in 0..4 {
        let (shape, maps) = npy::read(&dir.join(format!("uncertainty_steps_{k:06}.npy"))).unwrap();
        assert_eq!(shape, [4, 1, 8, 8], "4 window steps of a 1×8×8 map");
        for step in 0..4 {
            let file = std::fs::read_dir(saved)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .find(|n| {
                    n.starts_with(&format!("map_step{step:03}_"))
                        && n.ends_with(&format!("_sample{k:06}.npy"))
                })
                .expect("--save-maps wrote each sample's step");
            let (shape, map) = npy::read(&saved.join(file)).unwrap();
            assert_eq!(
                shape,
                [1, 1, 8, 8],
                "sample {k}, step {step}: one sample's row"
            );
            assert_eq!(
                &maps[step * 64..(step + 1) * 64],
                &map[..],
                "sample {k}, step {step}"
            );
        }
    }
    assert!(!dir.join("uncertainty_steps_000004.npy").exists());
}

#[test]
fn a_plain_run_reports_everything_in_one_page() {
    let (dir, other) = (tmp("plain"), tmp("plain-saved"));
    sample(&dir, &["--num", "5"]);
    let html = read_report(&dir);
    let images = check_images(&html);
    let sections = [
        "summary",
        "parameters",
        "histogram",
        "steps",
        "extremes",
        "samples",
        "files",
    ];
    for id in &sections[1..] {
        assert!(has_section(&html, id), "no #{id}");
    }
    assert!(html.contains("<p id='summary'>5 samples, scores from"));
    assert!(!has_section(&html, "guidance") && !html.contains("id='caveat'"));
    check_parameters(&dir, &html);
    assert!(html.contains("uncertainty score (lower: more certain)"));
    assert!(html.contains("has not been filtered") && !html.contains("id='cut-off'"));
    // Four strips over the four window steps, each step with its colour bar.
    for step in 0..4 {
        assert!(html.contains(&format!("step {step} · t = ")), "step {step}");
        assert!(html.contains(&format!("id='map-bar-{step}'")));
    }
    assert_eq!(html.matches("<tr><th>#").count(), 4, "the first 4 samples");
    assert!(
        dir.join("extremes.png").exists(),
        "extremes below 20 samples"
    );
    chromium_loads_every_image(&dir.join("report.html"), images, &sections);

    // The same run with --save-maps: the kept maps are those it saves.
    let maps = other.join("maps");
    sample(
        &other,
        &["--num", "5", "--save-maps", maps.to_str().unwrap()],
    );
    check_step_maps(&dir, &maps);

    // `filter` afterwards rewrites the report with the cut-off.
    let out = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["filter", "--keep-fraction", "0.6"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("report updated"));
    let html = read_report(&dir);
    assert!(html.contains("id='cut-off'") && html.contains("the 3 lowest scores of 5"));
    check_images(&html);

    // A report sample missing its per-step maps is made again when the run resumes.
    std::fs::remove_file(dir.join("uncertainty_steps_000001.npy")).unwrap();
    let out = sample(&dir, &["--num", "5"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(1 made in"));
    assert!(dir.join("uncertainty_steps_000001.npy").exists());
}

#[test]
fn a_guided_filtered_run_shows_guidance_masks_and_the_cut_off() {
    let dir = tmp("guided");
    let args = [
        "--num",
        "6",
        "--guidance",
        "posterior",
        "--guidance-steps",
        "2",
        "--keep-fraction",
        "0.5",
    ];
    sample(&dir, &args);
    let html = read_report(&dir);
    let images = check_images(&html);
    check_parameters(&dir, &html);
    assert!(has_section(&html, "guidance"));
    assert!(html.contains("Rule P (posterior)") && html.contains("0.95-quantile"));
    assert!(html.contains("Guided steps: 0 (t = ") && html.contains("Where guidance acted"));
    for id in ["cut-off", "histogram-plot"] {
        assert!(html.contains(&format!("id='{id}'")), "#{id}");
    }
    assert!(html.contains("the 3 lowest scores of 6") && html.contains(">random subset<"));
    assert!(html.contains("<tr><th>kept</th><td>3</td>"));
    // Each guided step's mask: the elements above the image's 0.95-quantile of U, 4 of 64
    // (torch.quantile's interpolation lands between the 60th and 61st values).
    for k in 0..4 {
        let (shape, masks) = npy::read(&dir.join(format!("guidance_masks_{k:06}.npy"))).unwrap();
        assert_eq!(shape, [2, 1, 8, 8]);
        assert!(masks.iter().all(|&m| m == 0.0 || m == 1.0));
        for step in masks.chunks(64) {
            assert_eq!(step.iter().filter(|&&m| m == 1.0).count(), 4, "sample {k}");
        }
    }
    assert!(!dir.join("guidance_masks_000004.npy").exists());
    let sections = ["guidance", "histogram", "steps", "extremes", "samples"];
    chromium_loads_every_image(&dir.join("report.html"), images, &sections);
}

#[test]
fn one_sample_still_has_its_extremes() {
    let dir = tmp("one");
    sample(&dir, &["--num", "1"]);
    let html = read_report(&dir);
    check_images(&html);
    assert!(dir.join("extremes.png").exists());
    let extremes = &html[html.find("<section id='extremes'").unwrap()..];
    let extremes = &extremes[..extremes.find("</section>").unwrap()];
    assert_eq!(
        extremes.matches("<figure>").count(),
        2,
        "lowest and highest: the one sample"
    );
}

/// `--heatmap-style`: the map over the sample or alone, each with a labelled colour bar and
/// its scale in the PNG's text.
#[test]
fn heatmaps_come_as_overlays_or_maps_with_a_colour_bar() {
    let dir = tmp("styles");
    sample(&dir, &["--num", "2", "--heatmap-style", "map"]);
    let heatmap = dir.join("heatmap_000000.png");
    let text = wgsl_diff::images::read_png_text(&heatmap).unwrap();
    assert_eq!(text["heatmap_style"], "map");
    let (lo, hi) = text["colour_scale"].split_once(',').unwrap();
    assert!(lo.parse::<f32>().unwrap() <= hi.parse::<f32>().unwrap());
    let map = wgsl_diff::images::read_png(&heatmap).unwrap();
    assert!(
        map.width > 8 && map.height >= 8,
        "the bar and its labels beside the 8×8 map"
    );

    let mut records = run_dir::read_manifest(&dir).unwrap().samples;
    run_dir::render_heatmaps(
        &dir,
        &mut records,
        HeatmapScale::Image,
        HeatmapStyle::Overlay,
    )
    .unwrap();
    let overlay = wgsl_diff::images::read_png(&heatmap).unwrap();
    assert_eq!((overlay.width, overlay.height), (map.width, map.height));
    let tile = |img: &wgsl_diff::images::Image8| -> Vec<u8> {
        (0..8)
            .flat_map(|y| img.pixels[y * img.width * 3..(y * img.width + 8) * 3].to_vec())
            .collect()
    };
    assert_ne!(
        tile(&overlay),
        tile(&map),
        "the overlay shows the sample through the map"
    );
    let text = wgsl_diff::images::read_png_text(&heatmap).unwrap();
    assert_eq!(text["heatmap_style"], "overlay");
}

/// A colour scale as the heatmaps' is documented: from 0 or the lowest finite value to the
/// highest of the maps' 99th percentiles (the value at rank round(0.99 (n − 1)) of each).
fn documented_range(maps: &[&[f32]]) -> (f32, f32) {
    let mut lo = 0f32;
    let mut hi = f32::NEG_INFINITY;
    for map in maps {
        let mut sorted: Vec<f32> = map.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f32::total_cmp);
        lo = lo.min(sorted[0]);
        hi = hi.max(sorted[((sorted.len() - 1) as f64 * 0.99).round() as usize]);
    }
    (lo, hi.max(lo))
}

/// `--step-heatmaps`: every map `--save-maps` wrote, drawn beside it on its own scale or, with
/// `--heatmap-scale shared`, on one scale per step over all samples; refused without
/// `--save-maps`.
#[test]
fn per_step_heatmaps_draw_each_saved_map() {
    let name = Regex::new(r"^map_step(\d{3})_t(\d{4})_sample(\d{6})\.npy$").unwrap();
    for scale in ["image", "shared"] {
        let dir = tmp(&format!("steps-{scale}"));
        let maps = dir.join("maps");
        let out = sample(
            &dir,
            &[
                "--num",
                "3",
                "--save-maps",
                maps.to_str().unwrap(),
                "--step-heatmaps",
                "--heatmap-style",
                "map",
                "--heatmap-scale",
                scale,
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("12 per-step heatmaps in"), "{stdout}");
        // (step, t, sample) → the saved map, read back as the test reads .npy.
        let mut saved = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&maps).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            if let Some(c) = name.captures(&file) {
                let key = (c[1].to_string(), c[2].to_string(), c[3].to_string());
                let (shape, map) = npy::read(&maps.join(&file)).unwrap();
                assert_eq!(shape, [1, 1, 8, 8]);
                saved.insert(key, map);
            }
        }
        assert_eq!(saved.len(), 12, "4 steps of 3 samples");
        for ((step, t, index), map) in &saved {
            let png = maps.join(format!("heatmap_step{step}_t{t}_sample{index}.png"));
            let range = match scale {
                "image" => documented_range(&[&map[..]]),
                _ => {
                    let step_maps: Vec<&[f32]> = saved
                        .iter()
                        .filter(|((s, ..), _)| s == step)
                        .map(|(_, m)| &m[..])
                        .collect();
                    documented_range(&step_maps)
                }
            };
            let text = wgsl_diff::images::read_png_text(&png).unwrap();
            assert_eq!(text["heatmap_style"], "map");
            assert_eq!(text["colour_scale"], format!("{},{}", range.0, range.1));
            // The map's colours on that scale, left of the colour bar.
            let drawn = wgsl_diff::images::read_png(&png).unwrap();
            let want = wgsl_diff::images::heatmap(map, 8, 8, range);
            assert!(drawn.width > 8, "a colour bar beside the map");
            for y in 0..8 {
                assert_eq!(
                    drawn.pixels[y * drawn.width * 3..(y * drawn.width + 8) * 3],
                    want.pixels[y * 24..(y + 1) * 24],
                    "{png:?} row {y}"
                );
            }
        }
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args([
            "sample",
            "--model",
            MODEL,
            "--uncertainty",
            "--step-heatmaps",
        ])
        .args(["--out"])
        .arg(tmp("steps-refused"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--save-maps"));
}

/// On the shipped model the default score is known to rank the wrong way: `sample` warns and
/// the report says so at the top, from the one statement in the library.
#[test]
fn the_shipped_models_caveat_reaches_the_command_and_the_report() {
    let dir = tmp("shipped");
    let shipped = wgsl_diff::job::DEFAULT_MODEL;
    let out = sample_model(shipped, &dir, &["--num", "1", "--steps", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: on the shipped Fashion-MNIST model the `centred` score ranks samples the wrong way"), "{stderr}");
    let html = read_report(&dir);
    assert!(html.contains("<section id='caveat'") && html.contains("Known caveat"));
    assert!(html.contains("z = -4.69"));
}
