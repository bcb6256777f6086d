//! Flags that do nothing in the mode they are given in are refused, rather than accepted and
//! recorded in the run's identity (each case was accepted before: issue 26).

mod common;

use common::{assert_clean_failure, fixture, tmp_dir};
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
