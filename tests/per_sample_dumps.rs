//! `--save-maps` and `--dump-noise` write one file per sample, so a run resumed after a kill in
//! the middle of a batch, a run made one sample per batch and a run made in shards leave the
//! folder an uninterrupted run leaves, byte for byte (issue 26: on 8301ccf the files were per
//! batch, and a resumed run dumped its re-run samples again under a new batch range).

mod common;

use common::{fixture, tmp_dir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A guided DDPM run with uncertainty: initial, ancestral, uncertainty and guidance noise, and
/// per-step maps, into `out` (maps and noise in its subfolders), plus `extra` flags.
fn sample(out: &Path, extra: &[&str]) {
    let run = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["sample", "--quiet", "--model"])
        .arg(fixture("unet_tiny_gray.safetensors"))
        .args([
            "--num",
            "4",
            "--steps",
            "3",
            "--sampler",
            "ddpm",
            "--seed",
            "2",
        ])
        .args(["--uncertainty", "-M", "2", "--guidance", "posterior"])
        .args(["--guidance-steps", "2", "--save-maps"])
        .arg(out.join("maps"))
        .arg("--dump-noise")
        .arg(out.join("noise"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{extra:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Every file of the two folders, byte for byte; the lock file holds no result.
fn assert_same_folder(a: &Path, b: &Path, what: &str) {
    let files = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        common::files(dir)
            .into_iter()
            .filter(|(name, _)| !name.ends_with(".wgsl-diff.lock"))
            .collect()
    };
    let (x, y) = (files(a), files(b));
    let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&x), names(&y), "{what}: other files");
    for ((name, p), (_, q)) in x.iter().zip(&y) {
        assert!(p == q, "{what}: {} differs", name.display());
    }
}

#[test]
fn resumed_rebatched_and_sharded_runs_leave_the_same_maps_and_noise() {
    let dir = tmp_dir("per-sample-dumps");
    let whole = dir.join("whole");
    sample(&whole, &["--batch", "3"]);
    let dumped = |sub: &str| std::fs::read_dir(whole.join(sub)).unwrap().count();
    // 4 samples × 3 steps of maps; noise: x_T, 2 ancestral steps (the last step adds none),
    // 3 × 2 uncertainty copies and 2 × 2 guidance copies per sample.
    assert_eq!(dumped("maps"), 4 * 3);
    assert_eq!(dumped("noise"), 4 * (1 + 2 + 3 * 2 + 2 * 2));

    let single = dir.join("batch1");
    sample(&single, &["--batch", "1"]);
    assert_same_folder(&whole, &single, "--batch 1 against --batch 3");

    let shards = dir.join("shards");
    for shard in ["1/2", "0/2"] {
        sample(&shards, &["--batch", "2", "--shard", shard]);
    }
    assert_same_folder(&whole, &shards, "two shards");

    // What a kill in the middle of the first batch leaves: the folder's claim, sample 0 complete
    // (its PNG last), sample 1's maps but not its noise (written next), nothing of samples 2
    // and 3.
    let resumed = dir.join("resumed");
    for (name, bytes) in common::files(&whole) {
        let text = name.to_str().unwrap();
        let of = |index: usize| text.contains(&format!("{index:06}"));
        let partial = of(1) && text.starts_with("maps/");
        if text == "run.json" || of(0) && !text.starts_with("heatmap") || partial {
            let path = resumed.join(&name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
    sample(&resumed, &["--batch", "3"]);
    assert_same_folder(&whole, &resumed, "resumed after a kill");
    let _ = std::fs::remove_dir_all(&dir);
}
