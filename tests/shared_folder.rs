//! One run folder filled by many `sample` processes at once — the workers of a Slurm job array or
//! a Kubernetes Indexed Job on shared storage: disjoint shards leave exactly the folder one
//! process would, and a process bringing another run is refused, however they interleave.

mod common;

use common::{assert_clean_failure, tmp_dir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unet_tiny_gray.safetensors"
);

/// `sample` of the 16-sample run with `seed` into `out`, plus `extra` flags.
fn sample(out: &Path, seed: u64, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"));
    cmd.args([
        "sample", "--model", MODEL, "--quiet", "--steps", "3", "--num", "16",
    ])
    .args([
        "--batch",
        "2",
        "--uncertainty",
        "-M",
        "2",
        "--keep-fraction",
        "0.5",
    ])
    .args(["--seed", &seed.to_string(), "--out"])
    .arg(out)
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // Only what a test sets: the job array this test runs in (if any) is not the workers'.
    for var in JOB_ARRAY_VARS {
        cmd.env_remove(var);
    }
    cmd
}

const JOB_ARRAY_VARS: [&str; 5] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
    "JOB_COMPLETION_INDEX",
];

fn succeeded(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Filtered manifests name their source folder; every other file must be byte-identical.
fn assert_same_folder(shared: &Path, single: &Path) {
    let (a, b) = (common::files(shared), common::files(single));
    let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        if !(name.starts_with("filtered") && name.ends_with("samples.json")) {
            assert!(x == y, "{} differs", name.display());
        }
    }
}

/// 8 concurrent workers on disjoint shards of one run, and a ninth process with another seed
/// arriving while they work: the ninth is refused, and the folder — manifest, scores, grids,
/// filtered sets — is byte for byte what one process makes.
#[test]
fn eight_concurrent_shards_fill_one_folder_like_one_process() {
    let single = tmp_dir("single");
    succeeded(sample(&single, 9, &[]).output().unwrap(), "one process");

    let shared = tmp_dir("shared");
    let workers: Vec<Child> = (0..8)
        .map(|i| {
            sample(&shared, 9, &["--shard", &format!("{i}/8")])
                .spawn()
                .unwrap()
        })
        .collect();
    // Once the run has claimed the folder, another run is refused, whatever the workers do.
    wait_for(&shared.join(wgsl_diff::run_dir::shared::RUN_FILE));
    let other = sample(&shared, 10, &[]).output().unwrap();
    assert_clean_failure(
        &other,
        "a run with another seed",
        "other parameters (different seed",
    );
    for (i, worker) in workers.into_iter().enumerate() {
        succeeded(worker.wait_with_output().unwrap(), &format!("worker {i}"));
    }

    let manifest = wgsl_diff::run_dir::read_manifest(&shared).unwrap();
    let indices: Vec<usize> = manifest.samples.iter().map(|s| s.index).collect();
    assert_eq!(
        indices,
        (0..16).collect::<Vec<_>>(),
        "every sample exactly once"
    );
    assert_same_folder(&shared, &single);
}

/// Two different runs started together into one empty folder: exactly one goes ahead.
#[test]
fn two_runs_started_together_cannot_both_take_a_folder() {
    for round in 0..3 {
        let dir = tmp_dir(&format!("race-{round}"));
        let (a, b) = (
            sample(&dir, 1, &[]).spawn().unwrap(),
            sample(&dir, 2, &[]).spawn().unwrap(),
        );
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let (winner, loser) = match (a.status.success(), b.status.success()) {
            (true, false) => (1, b),
            (false, true) => (2, a),
            (x, y) => panic!("round {round}: a succeeded {x}, b succeeded {y}"),
        };
        assert_clean_failure(&loser, "the second run", "other parameters (different seed");
        let manifest = wgsl_diff::run_dir::read_manifest(&dir).unwrap();
        assert_eq!(manifest.parameters["seed"], winner);
        assert_eq!(manifest.samples.len(), 16);
    }
}

/// Job arrays: the shard comes from Slurm's or Kubernetes' environment.
#[test]
fn shards_from_job_array_environments_make_the_same_run() {
    let single = tmp_dir("env-single");
    succeeded(sample(&single, 4, &[]).output().unwrap(), "one process");
    let shared = tmp_dir("env-shared");
    let mut slurm = sample(&shared, 4, &["--shard-from-env"]);
    slurm.envs([
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ]);
    let mut k8s_first = sample(&shared, 4, &["--shard-from-env", "--shard-count", "3"]);
    k8s_first.env("JOB_COMPLETION_INDEX", "0");
    let mut k8s_last = sample(&shared, 4, &["--shard-from-env", "--shard-count", "3"]);
    k8s_last.env("JOB_COMPLETION_INDEX", "2");
    for (what, mut cmd) in [("slurm", slurm), ("k8s 0", k8s_first), ("k8s 2", k8s_last)] {
        succeeded(cmd.output().unwrap(), what);
    }
    assert_same_folder(&shared, &single);

    let out = sample(&tmp_dir("env-missing"), 4, &["--shard-from-env"])
        .output()
        .unwrap();
    assert_clean_failure(&out, "no job array", "JOB_COMPLETION_INDEX");
}
