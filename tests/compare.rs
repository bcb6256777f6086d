//! `wgsl-diff compare`: two tiny runs of the shipped model from one x_T — guided (Rule P) and
//! plain — side by side. The page holds its own images, its differences are those computed
//! here from the PNGs with the `image` crate, it shows the values `eval` and `fid` wrote into
//! the runs' folders (pytorch-fid's FID of its fixtures, and what `eval` printed), it renders in
//! headless Chromium with every image loaded, the grid is the samples in rows, and runs that do
//! not share x_T, missing folders, an output inside a run and a broken metric file are refused
//! with a non-zero exit.

mod common;

use common::page::{check_images, chromium_loads_every_image};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/fashion_mnist_ddpm.safetensors"
);

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgsl-diff-compare-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn wgsl_diff(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(args)
        .output()
        .unwrap()
}

/// Two samples, 4 steps, M = 2, scored; `extra` adds guidance.
fn sample(out: &Path, extra: &[&str]) {
    let mut args: Vec<&std::ffi::OsStr> = [
        "sample",
        "--model",
        MODEL,
        "--quiet",
        "--num",
        "2",
        "--batch",
        "2",
        "--steps",
        "4",
        "--uncertainty",
        "-M",
        "2",
        "--out",
    ]
    .iter()
    .map(|a| a.as_ref())
    .collect();
    args.push(out.as_os_str());
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let run = wgsl_diff(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn compare(runs: &[&Path], out: &Path) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["compare".as_ref()];
    args.extend(runs.iter().map(|r| r.as_os_str()));
    args.extend(["--out".as_ref(), out.as_os_str()]);
    wgsl_diff(&args)
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().into_luma8().into_raw()
}

/// (max, mean) absolute difference of two PNGs in 8-bit levels.
fn difference(a: &Path, b: &Path) -> (u8, f64) {
    let (a, b) = (pixels(a), pixels(b));
    let d: Vec<i32> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| (x as i32 - y as i32).abs())
        .collect();
    let max = *d.iter().max().unwrap() as u8;
    (max, d.iter().sum::<i32>() as f64 / d.len() as f64)
}

/// Refused: a failure exit whose message holds every one of `says`.
fn refused(out: Output, says: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    for s in says {
        assert!(stderr.contains(s), "{s:?} in {stderr}");
    }
}

fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The metric values each run's folder holds, as their commands computed them.
struct Metrics {
    /// What `eval` printed for each run, against real sets that differ (other noise images).
    classifier: [String; 2],
    /// pytorch-fid's FID of the two statistics fixtures, which `fid` wrote for the second run.
    fid: f64,
}

/// `eval` of each run against two noise images (other ones for each), into RUN/eval.json, and
/// `fid` of pytorch-fid's two statistics fixtures into the second run's fid.json.
fn write_metrics(first: &Path, second: &Path) -> Metrics {
    let printed = |run: &Path, real_range: &str| {
        let json = run.join("eval.json");
        let out = wgsl_diff(&[
            "eval".as_ref(),
            "--quiet".as_ref(),
            "--real".as_ref(),
            "noise".as_ref(),
            "--real-range".as_ref(),
            real_range.as_ref(),
            "--fake".as_ref(),
            run.as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with("Fréchet distance"))
            .unwrap_or_else(|| panic!("eval printed its distance: {stdout}"));
        line.rsplit(": ").next().unwrap().to_string()
    };
    let classifier = [printed(first, "0..2"), printed(second, "2..4")];
    let fixture = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    };
    let json = second.join("fid.json");
    let out = wgsl_diff(&[
        "fid".as_ref(),
        "--real".as_ref(),
        fixture("fid_stats_full_a.npz").as_os_str(),
        "--fake".as_ref(),
        fixture("fid_stats_full_b.npz").as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("fid_frechet.json")).unwrap())
            .unwrap();
    Metrics {
        classifier,
        fid: expected["full"].as_f64().unwrap(),
    }
}

/// The page and the output show each run's values; the classifier distance was measured
/// against different real sets, so its row is marked; the first run has no FID.
fn check_metrics(html: &str, stdout: &str, metrics: &Metrics) {
    let section = &html[html.find("<section id='metrics'").unwrap()..];
    let section = &section[..section.find("</section>").unwrap()];
    let [a, b] = &metrics.classifier;
    let value = |v: &str| format!("<td><span class='metric'>{v}</span>");
    let row = format!(
        "<tr class='differs'><th>classifier Fréchet distance</th>{}",
        value(a)
    );
    assert!(section.contains(&row), "{section}");
    assert!(section.contains(&value(b)), "{section}");
    let fid = format!("{:.6}", metrics.fid);
    assert!(
        section.contains(&format!("<tr><th>FID</th><td>—</td>{}", value(&fid))),
        "{section}"
    );
    assert!(section.contains("real: 2 images from N(0, 1) noise, seed 0 [2..4]"));
    for line in [
        format!("plain: classifier Fréchet distance {a} (real: "),
        format!("guided: classifier Fréchet distance {b} (real: "),
        format!("guided: FID {fid} (real: statistics "),
    ] {
        assert!(stdout.contains(&line), "{line:?} in {stdout}");
    }
}

#[test]
fn guided_and_plain_runs_side_by_side_and_bad_inputs_refused() {
    let root = tmp("runs");
    let (plain, guided, out) = (root.join("plain"), root.join("guided"), root.join("cmp"));
    sample(&plain, &[]);
    sample(&guided, &["--guidance", "posterior"]);
    let metrics = write_metrics(&plain, &guided);

    let run = compare(&[&plain, &guided], &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let html = std::fs::read_to_string(out.join("compare.html")).unwrap();
    let images = check_images(&html);
    assert_eq!(images, 4, "two samples of two runs");
    let sections = ["runs", "metrics", "parameters", "samples", "files"];
    for section in sections {
        assert!(
            html.contains(&format!("<section id='{section}'")),
            "{section}"
        );
    }
    check_metrics(&html, &String::from_utf8_lossy(&run.stdout), &metrics);
    chromium_loads_every_image(&out.join("compare.html"), images, &sections);
    // The guidance rows differ (only the guided run has them); the seed does not.
    assert!(html.contains("<tr class='differs'><th>guidance.rule</th><td>—</td><td>posterior</td>"));
    assert!(html.contains("<tr><th>seed</th><td>0</td><td>0</td></tr>"));

    let library = wgsl_diff::run_dir::compare(&[plain.clone(), guided.clone()], &out).unwrap();
    assert_eq!(library.indices, [0, 1]);
    let mut moved = false;
    for (i, index) in [0usize, 1].into_iter().enumerate() {
        let name = format!("sample_{index:06}.png");
        let (max, mean) = difference(&plain.join(&name), &guided.join(&name));
        let d = library.differences[i][1];
        assert_eq!(d.max, max, "sample {index}");
        assert!(
            (d.mean - mean).abs() < 1e-12,
            "sample {index}: {} vs {mean}",
            d.mean
        );
        assert_eq!(library.differences[i][0].max, 0, "A against itself");
        assert!(
            html.contains(&format!("Δ max {max} mean {mean:.3}")),
            "sample {index} on the page"
        );
        moved |= max > 0;
    }
    assert!(
        moved,
        "Rule P moved some pixel of the shipped model's samples"
    );
    // The scores each run recorded are on the page.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(guided.join("samples.json")).unwrap())
            .unwrap();
    let score = manifest["samples"][0]["score"].as_f64().unwrap();
    assert!(html.contains(&format!("score {score:.5e}")));

    // The grid: row i is sample i, column r run r, each tile behind a 2-pixel border.
    let side = image::open(guided.join("sample_000001.png"))
        .unwrap()
        .width();
    let grid = image::open(out.join("grid_000000.png"))
        .unwrap()
        .into_luma8();
    assert_eq!(
        (grid.width(), grid.height()),
        (3 * 2 + 2 * side, 3 * 2 + 2 * side)
    );
    let tile = pixels(&guided.join("sample_000001.png"));
    for y in 0..side {
        for x in 0..side {
            let at = grid.get_pixel(4 + side + x, 4 + side + y)[0];
            assert_eq!(at, tile[(y * side + x) as usize]);
        }
    }

    // Another seed: the first run's copy with its recorded seed changed.
    let reseeded = root.join("reseeded");
    copy_run(&plain, &reseeded);
    let manifest = std::fs::read_to_string(reseeded.join("samples.json")).unwrap();
    let manifest = manifest.replacen("\"seed\": 0", "\"seed\": 1", 1);
    std::fs::write(reseeded.join("samples.json"), manifest).unwrap();
    refused(
        compare(&[&plain, &reseeded], &root.join("o1")),
        &["do not share x_T", "reseeded has seed 1", "seed 0"],
    );
    // Other sample indices: a copy without sample 1.
    let fewer = root.join("fewer");
    copy_run(&plain, &fewer);
    std::fs::remove_file(fewer.join("sample_000001.png")).unwrap();
    refused(
        compare(&[&plain, &fewer], &root.join("o2")),
        &["do not share sample indices", "plain has sample(s) 1"],
    );
    refused(
        compare(&[&plain, &root.join("missing")], &root.join("o3")),
        &["run folder", "missing does not exist"],
    );
    // An output inside a run folder, also when reached through `..`.
    refused(
        compare(&[&plain, &guided], &guided.join("cmp")),
        &["is inside the run folder"],
    );
    refused(
        compare(&[&plain, &guided], &plain.join("../guided/x")),
        &["is inside the run folder"],
    );
    refused(compare(&[&plain], &root.join("o4")), &["2"]);
    // A metric file that is not what `fid --json` writes.
    std::fs::write(guided.join("fid.json"), r#"{"fid": "low"}"#).unwrap();
    refused(
        compare(&[&plain, &guided], &root.join("o5")),
        &["guided/fid.json", "wgsl-diff fid --json", "no number `fid`"],
    );
    assert!(
        ["o1", "o2", "o5"].iter().all(|o| !root.join(o).exists()),
        "nothing written when refused"
    );
    let _ = std::fs::remove_dir_all(&root);
}
