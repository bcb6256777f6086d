//! Flags that do nothing in the mode they are given in are refused, rather than accepted and
//! recorded in the run's identity (each case was accepted before: issue 26).

mod common;

use common::{assert_clean_failure, fixture, tmp_dir};
use std::path::Path;
use std::process::Command;

#[test]
fn flags_a_mode_ignores_are_refused() {
    let dir = tmp_dir("ignored-flags");
    let model = fixture("unet_tiny_gray.safetensors");
    let threshold = dir.join("thr.npy");
    std::fs::write(&threshold, b"not read: refused before").unwrap();
    let threshold = threshold.to_str().unwrap().to_string();
    for (name, extra, expected) in [
        (
            "posterior strength",
            vec!["--guidance", "posterior", "--guidance-strength", "1e30"],
            "Rule P (posterior) has no strength",
        ),
        (
            "no guided step",
            vec!["--guidance", "gradient", "--guidance-steps", "0"],
            "--guidance-steps 0 guides no step",
        ),
        (
            "percentile beside a threshold file",
            vec![
                "--guidance",
                "posterior",
                "--percentile",
                "0.9",
                "--threshold-file",
                &threshold,
            ],
            "--threshold-file replaces --percentile",
        ),
    ] {
        let out = dir.join(name.replace(' ', "-"));
        let run = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args(["sample", "--quiet", "--num", "1", "--steps", "2", "--model"])
            .arg(&model)
            .args(&extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_clean_failure(&run, name, expected);
        assert!(
            !out.join("sample_000000.png").exists(),
            "{name}: wrote a sample"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Array inputs are bounded regular files: a device is refused before it is read (it read until
/// memory ran out), and a header key given twice is refused (numpy keeps the last, we kept the
/// first).
#[test]
fn array_files_are_bounded_and_unambiguous() {
    for device in ["/dev/zero", "/dev/urandom"] {
        let err = wgsl_diff::npy::read(std::path::Path::new(device))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{device}: {err}");
    }
    let dir = tmp_dir("npy-twice");
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'shape': (2,), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 8]);
    let path = dir.join("twice.npy");
    std::fs::write(&path, bytes).unwrap();
    let err = wgsl_diff::npy::read(&path).unwrap_err().to_string();
    assert!(err.contains("'shape' appears twice"), "{err}");
    // Through the CLI: --init-noise /dev/zero fails at once, naming the file.
    let run = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["sample", "--quiet", "--num", "1", "--steps", "2", "--model"])
        .arg(fixture("unet_tiny_gray.safetensors"))
        .args(["--init-noise", "/dev/zero", "--out"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert_clean_failure(
        &run,
        "--init-noise /dev/zero",
        "/dev/zero is not a regular file",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// FID statistics must be what they claim (pytorch-fid fails on these): σ symmetric and
/// positive semi-definite, and a distance that does not overflow. On 8301ccf σ = −I gave 19.57,
/// an asymmetric σ 22.77, and μ = 1e300 printed `FID: inf` with exit 0.
#[test]
fn fid_statistics_are_checked() {
    use nalgebra::{DMatrix, DVector};
    use wgsl_diff::evaluation::fid::write_statistics;
    use wgsl_diff::metrics::FeatureGaussian;
    let dir = tmp_dir("fid-stats");
    let d = 3;
    let write = |name: &str, mu: f64, sigma: DMatrix<f64>| {
        let path = dir.join(name);
        write_statistics(
            &path,
            &FeatureGaussian::from_moments(DVector::from_element(d, mu), sigma),
        )
        .unwrap();
        path
    };
    let good = write("good.npz", 0.0, DMatrix::identity(d, d));
    let mut asymmetric = DMatrix::identity(d, d);
    asymmetric[(0, 1)] = 0.5;
    for (name, path, expected) in [
        (
            "negative",
            write("negative.npz", 0.0, -DMatrix::identity(d, d)),
            "not positive semi-definite",
        ),
        (
            "asymmetric",
            write("asymmetric.npz", 0.0, asymmetric),
            "not symmetric",
        ),
        (
            "huge mean",
            write("huge.npz", 1e300, DMatrix::identity(d, d)),
            "overflows",
        ),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args(["fid", "--real"])
            .arg(&good)
            .arg("--fake")
            .arg(&path)
            .output()
            .unwrap();
        assert_clean_failure(&run, name, expected);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `calibrate` states and checks its counts before it allocates (a huge --num panicked or tried
/// to allocate terabytes), and checks its output before the sampling (a folder as --out failed
/// only after all the work, leaving a .tmp file).
#[test]
fn calibrate_checks_counts_and_output_first() {
    let dir = tmp_dir("calibrate-checks");
    let model = fixture("unet_tiny_gray.safetensors");
    let calibrate = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args(["calibrate", "--steps", "2", "--model"])
            .arg(&model)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = dir.join("thr.npy");
    let out = out.to_str().unwrap();
    for (num, expected) in [
        ("18446744073709551615", "go past the last sample index"),
        ("4294967296", "bytes of maps"),
        ("0", "count 0"),
    ] {
        let run = calibrate(&["--num", num, "--out", out]);
        assert_clean_failure(&run, &format!("--num {num}"), expected);
    }
    let folder = dir.to_str().unwrap();
    let run = calibrate(&["--num", "2", "--out", folder]);
    assert_clean_failure(&run, "--out a folder", "is a folder");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let help = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["calibrate", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("4294967296") && help.contains("1..=65536"),
        "{help}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sample --num 4294967296` (the documented maximum) starts writing at once: what remains is
/// found from the folder's files, not by checking each of the 2^32 indices (which never
/// finished on 8301ccf).
#[test]
fn the_largest_run_starts_at_once() {
    let dir = tmp_dir("largest-run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args([
            "sample",
            "--quiet",
            "--num",
            "4294967296",
            "--batch",
            "1",
            "--steps",
            "1",
        ])
        .arg("--model")
        .arg(fixture("unet_tiny_gray.safetensors"))
        .arg("--out")
        .arg(&dir)
        .spawn()
        .unwrap();
    let first = dir.join("sample_000000.png");
    let started = std::time::Instant::now();
    while !first.exists() && started.elapsed() < std::time::Duration::from_secs(120) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended early: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.exists(), "no sample after {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `filter` verifies what it keeps: a manifest listing a sample twice, a deleted PNG and a
/// truncated one are errors naming them, and a fraction that would keep non-finite samples is
/// refused (each was kept or skipped silently, exit 0, on 8301ccf).
#[test]
fn filter_verifies_what_it_keeps() {
    let dir = tmp_dir("filter-verifies");
    let make = |name: &str| {
        let out = dir.join(name);
        let run = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args([
                "sample",
                "--quiet",
                "--num",
                "4",
                "--steps",
                "2",
                "--uncertainty",
                "-M",
                "2",
            ])
            .arg("--model")
            .arg(fixture("unet_tiny_gray.safetensors"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    };
    let filter = |out: &Path, fraction: &str| {
        Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .arg("filter")
            .arg(out)
            .args(["--keep-fraction", fraction])
            .output()
            .unwrap()
    };
    let twice = make("twice");
    let manifest = twice.join("samples.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let first = m["samples"][0].clone();
    m["samples"].as_array_mut().unwrap().push(first);
    std::fs::write(&manifest, m.to_string()).unwrap();
    assert_clean_failure(&filter(&twice, "0.5"), "twice", "lists sample 0 twice");
    let deleted = make("deleted");
    std::fs::remove_file(deleted.join("sample_000002.png")).unwrap();
    assert_clean_failure(&filter(&deleted, "0.5"), "deleted", "sample_000002.png");
    let truncated = make("truncated");
    let png = truncated.join("sample_000001.png");
    let bytes = std::fs::read(&png).unwrap();
    std::fs::write(&png, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&filter(&truncated, "1"), "truncated", "sample_000001.png");
    let broken = make("non-finite");
    let manifest = broken.join("samples.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let _ = &mut m;
    // Mark every sample non-finite in its PNG's text chunk, where the manifest is read from.
    for i in 0..4 {
        let path = broken.join(format!("sample_{i:06}.png"));
        let img = wgsl_diff::images::read_png(&path).unwrap();
        let mut text: Vec<(&str, String)> = wgsl_diff::images::read_png_text(&path)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (Box::leak(k.into_boxed_str()) as &str, v))
            .collect();
        text.push(("non_finite_step", "0".into()));
        wgsl_diff::images::write_png(&path, &img, &text).unwrap();
    }
    assert_clean_failure(&filter(&broken, "0.5"), "non-finite", "finite score");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run ends saying what it made, in how long, the score range and where the report is;
/// `filter` says how many it kept of how many, with the fraction and seed (issue 27).
#[test]
fn summaries_say_what_was_made() {
    let dir = tmp_dir("summaries");
    let run = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args([
            "sample",
            "--quiet",
            "--num",
            "4",
            "--steps",
            "2",
            "--uncertainty",
            "-M",
            "2",
        ])
        .args(["--keep-fraction", "0.5", "--report", "--model"])
        .arg(fixture("unet_tiny_gray.safetensors"))
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for expected in [
        "4 samples in",
        "(4 made in",
        "uncertainty scores",
        "report: ",
        "report.html",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from: {stdout}"
        );
    }
    let filter = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .arg("filter")
        .arg(&dir)
        .args(["--keep-fraction", "0.75", "--seed", "9"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&filter.stdout);
    assert!(
        stdout
            .contains("kept the 3 lowest-score of 4 samples (fraction 0.75, random subset seed 9)"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A threshold file records how it was calibrated (beside it as FILE.json) and a guided run with
/// another rule, M or sampler is refused (on 8301ccf a Rule G, M = 5 file was taken for Rule P,
/// M = 3); a file without a record is used with a warning.
#[test]
fn threshold_files_are_checked_against_the_run() {
    let dir = tmp_dir("threshold-record");
    let model = fixture("unet_tiny_gray.safetensors");
    let thr = dir.join("thr.npy");
    let calibrate = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args([
            "calibrate",
            "--rule",
            "posterior",
            "-M",
            "2",
            "--num",
            "2",
            "--batch",
            "2",
        ])
        .args(["--steps", "2", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&thr)
        .output()
        .unwrap();
    assert!(
        calibrate.status.success(),
        "{}",
        String::from_utf8_lossy(&calibrate.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("thr.npy.json")).unwrap()).unwrap();
    assert_eq!(record["rule"], "posterior");
    assert_eq!(record["copies"], 2);
    assert_eq!(record["timesteps"], serde_json::json!([500, 0]));
    let guided = |name: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args(["sample", "--quiet", "--num", "1", "--steps", "2", "--model"])
            .arg(&model)
            .args(extra)
            .arg("--threshold-file")
            .arg(&thr)
            .arg("--out")
            .arg(dir.join(name))
            .output()
            .unwrap()
    };
    let other_rule = guided("g", &["--guidance", "gradient", "-M", "2"]);
    assert_clean_failure(&other_rule, "other rule", "calibrated with rule posterior");
    let other_m = guided("m", &["--guidance", "posterior", "-M", "3"]);
    assert_clean_failure(&other_m, "other M", "M = 2");
    let same = guided("same", &["--guidance", "posterior", "-M", "2"]);
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    std::fs::remove_file(dir.join("thr.npy.json")).unwrap();
    let unrecorded = guided("unrecorded", &["--guidance", "posterior", "-M", "3"]);
    let stderr = String::from_utf8_lossy(&unrecorded.stderr);
    assert!(unrecorded.status.success(), "{stderr}");
    assert!(stderr.contains("no calibration record"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `fid` and `reference` state the limits of their counts in `--help`, as `sample` does, and
/// refuse counts past them.
#[test]
fn every_command_states_its_limits() {
    let help = |command: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args([command, "--help"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for (command, limits) in [
        ("fid", &["1..=65536"][..]),
        ("reference", &["1..=65536", "1..=1000000", "2..=1024"][..]),
        ("calibrate", &["1..=65536", "4294967296"][..]),
    ] {
        let text = help(command);
        for limit in limits {
            assert!(
                text.contains(limit),
                "{command} --help lacks {limit}: {text}"
            );
        }
    }
    let run = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args([
            "reference",
            "--images",
            "nowhere",
            "--batch",
            "70000",
            "--out",
            "x.npz",
        ])
        .output()
        .unwrap();
    assert_clean_failure(&run, "reference --batch 70000", "--batch is 70000");
}
