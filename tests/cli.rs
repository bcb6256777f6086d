//! `wgsl-diff sample` end to end: determinism, batch invariance, resume after a kill, errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unet_tiny_gray.safetensors"
);

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgsl-diff-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn sample(out: &Path, extra: &[&str]) -> Output {
    let out = bin()
        .args(["sample", "--model", MODEL, "--quiet", "--out"])
        .arg(out)
        .args(extra)
        .args(if extra.contains(&"--steps") {
            &[][..]
        } else {
            &["--steps", "4"][..]
        })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sample failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `samples` records of a run folder's samples.json.
fn manifest_samples(dir: &Path) -> Vec<serde_json::Value> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("samples.json")).unwrap()).unwrap();
    manifest["samples"].as_array().unwrap().clone()
}

fn pngs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("sample_")
                && p.extension().unwrap() == "png"
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn same_command_twice_gives_identical_files_and_batching_does_not_matter() {
    let (a, b, c) = (tmp("a"), tmp("b"), tmp("c"));
    sample(&a, &["--num", "4", "--batch", "4", "--seed", "7"]);
    sample(&b, &["--num", "4", "--batch", "4", "--seed", "7"]);
    sample(&c, &["--num", "4", "--batch", "1", "--seed", "7"]);
    let (pa, pb, pc) = (pngs(&a), pngs(&b), pngs(&c));
    assert_eq!(pa.len(), 4);
    assert_eq!(pa, pb, "same command, same bytes");
    assert_eq!(pa, pc, "batch 1 and batch 4 give the same samples");
    assert_ne!(pa[0].1, pa[1].1, "different samples differ");
    assert!(a.join("grid.png").exists());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("samples.json")).unwrap()).unwrap();
    assert_eq!(manifest["samples"].as_array().unwrap().len(), 4);
    assert_eq!(manifest["parameters"]["seed"], 7);

    // --start-index selects a window of the same larger set.
    let d = tmp("d");
    sample(&d, &["--num", "2", "--start-index", "2", "--seed", "7"]);
    assert_eq!(pngs(&d), pa[2..].to_vec());
}

#[test]
fn raw_output_round_trips_through_init_noise() {
    let (a, b) = (tmp("raw-a"), tmp("raw-b"));
    sample(&a, &["--num", "2", "--save-raw", "--sampler", "ddpm"]);
    let raw = wgsl_diff::npy::read(&a.join("sample_000001.npy")).unwrap();
    assert_eq!(raw.0, vec![1, 8, 8]);
    // Feeding a file of noise replaces the generated noise: two different files differ.
    let noise: Vec<f32> = (0..2 * 64)
        .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let path = a.join("noise.npy");
    wgsl_diff::npy::write(&path, &[2, 1, 8, 8], &noise).unwrap();
    sample(&b, &["--num", "2", "--init-noise", path.to_str().unwrap()]);
    let c = tmp("raw-c");
    sample(&c, &["--num", "2"]);
    assert_ne!(pngs(&b), pngs(&c));
}

#[test]
fn a_killed_run_resumes_without_losing_or_duplicating_samples() {
    let (full, resumed) = (tmp("full"), tmp("resumed"));
    let args = ["--num", "6", "--batch", "1", "--seed", "3", "--steps", "20"];
    sample(&full, &args);

    let mut child = bin()
        .args(["sample", "--model", MODEL, "--quiet", "--out"])
        .arg(&resumed)
        .args(args)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while pngs_if_any(&resumed) < 2 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = pngs_if_any(&resumed);
    assert!((2..6).contains(&partial), "killed after {partial} samples");

    let out = sample(&resumed, &args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 samples"));
    assert_eq!(
        pngs(&resumed),
        pngs(&full),
        "resumed run equals an uninterrupted one"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&resumed)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_str()
                .unwrap()
                .ends_with(".tmp")
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[test]
fn a_folder_holds_one_run_and_its_manifest_lists_every_shard() {
    let dir = tmp("shards");
    sample(&dir, &["--num", "2", "--seed", "5"]);
    sample(&dir, &["--num", "2", "--start-index", "2", "--seed", "5"]);
    let indices: Vec<u64> = manifest_samples(&dir)
        .iter()
        .map(|s| s["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1, 2, 3]);

    // Another seed into the same folder would keep the old images under new parameters.
    let other = bin()
        .args([
            "sample", "--model", MODEL, "--quiet", "--steps", "4", "--num", "2",
        ])
        .args(["--seed", "6", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    common::assert_clean_failure(
        &other,
        "a run with another seed",
        "other parameters (different seed)",
    );
}

fn pngs_if_any(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count()
    })
}

/// Bad input: a clear message and a non-zero exit, never a panic.
#[test]
fn bad_input_is_an_error_not_a_panic() {
    let out_dir = tmp("bad");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--steps", "0"], "steps must be"),
        (vec!["--eta=-1"], "eta must be"),
        (vec!["--sampler", "euler"], "invalid value"),
        (
            vec!["--model", "/nonexistent/model.safetensors"],
            "cannot open",
        ),
        (vec!["--model", "Cargo.toml"], "not a valid safetensors"),
        (vec!["--class", "3"], "unconditional"),
        (
            vec!["--num", "200000", "--batch", "200000"],
            "--batch is 200000",
        ),
        // Within the stated limit but over one of this device's limits (binding size on lavapipe,
        // workgroups per dimension on NVIDIA's driver).
        (vec!["--num", "65536", "--batch", "65536"], "use --batch"),
        (vec!["--init-noise", "Cargo.toml"], "npy"),
    ];
    for (extra, needle) in cases {
        let mut cmd = bin();
        cmd.args(["sample", "--quiet", "--out"]).arg(&out_dir);
        for (flag, default) in [("--steps", "2"), ("--model", MODEL)] {
            if !extra.contains(&flag) {
                cmd.args([flag, default]);
            }
        }
        let out = cmd
            .args(&extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        common::assert_clean_failure(&out, &format!("{extra:?}"), needle);
    }
    let out = bin()
        .args([
            "sample",
            "--quiet",
            "--model",
            MODEL,
            "--out",
            "/proc/forbidden",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create output folder"));
}

#[test]
fn uncertainty_run_scores_filters_and_reports_without_changing_samples() {
    let (plain, uc) = (tmp("uc-plain"), tmp("uc"));
    sample(&plain, &["--num", "6", "--batch", "4", "--steps", "5"]);
    let maps = uc.join("maps");
    let noise = uc.join("noise");
    let args = [
        "--num",
        "6",
        "--batch",
        "4",
        "--steps",
        "5",
        "--uncertainty",
        "-M",
        "3",
        "--keep-fraction",
        "0.5",
        "--report",
        "--save-maps",
    ];
    let mut all: Vec<&str> = args.to_vec();
    all.push(maps.to_str().unwrap());
    all.extend([
        "--dump-noise",
        noise.to_str().unwrap(),
        "--uc-start",
        "1",
        "--uc-steps",
        "3",
    ]);
    sample(&uc, &all);

    for ((name, a), (_, b)) in pngs(&plain).iter().zip(pngs(&uc)) {
        let (pa, pb) = (
            wgsl_diff::images::read_png(&plain.join(name)).unwrap(),
            wgsl_diff::images::read_png(&uc.join(name)).unwrap(),
        );
        assert_eq!(pa, pb, "{name}: pixels change with --uncertainty");
        assert_ne!(a, &b, "{name}: the scored PNG carries its score");
    }
    let scores: Vec<f64> = manifest_samples(&uc)
        .iter()
        .map(|s| s["score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 6);
    assert!(scores.iter().all(|s| *s > 0.0));
    let csv = std::fs::read_to_string(uc.join("scores.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7);

    // Kept = the 3 lowest scores; the random subset has the same size.
    let mut order: Vec<usize> = (0..6).collect();
    order.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap());
    let kept: Vec<String> = pngs(&uc.join("filtered/kept"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut want: Vec<String> = order[..3]
        .iter()
        .map(|i| format!("sample_{i:06}.png"))
        .collect();
    want.sort();
    assert_eq!(kept, want);
    assert_eq!(pngs(&uc.join("filtered/random")).len(), 3);

    // The filter subcommand reproduces the split from the folder alone.
    std::fs::remove_dir_all(uc.join("filtered")).unwrap();
    let out = bin()
        .args(["filter", "--keep-fraction", "0.5"])
        .arg(&uc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pngs(&uc.join("filtered/kept"))
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        want
    );

    for f in [
        "report.html",
        "heatmap_000000.png",
        "uncertainty_grid.png",
        "uncertainty_000005.npy",
    ] {
        assert!(uc.join(f).exists(), "{f} missing");
    }
    // Window steps 1..4 of 5: three maps per sample; M = 3 perturbation tensors per window step.
    let count = |dir: &Path, prefix: &str| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .starts_with(prefix)
            })
            .count()
    };
    assert_eq!(count(&maps, "map_step"), 3 * 6);
    assert_eq!(count(&noise, "noise_uncertainty_step"), 3 * 3 * 6);
    assert_eq!(count(&noise, "noise_init"), 6);
}

/// What the command does with numbers that went wrong: a model whose one finite weight (3e38)
/// overflows stops with the sample indices and the step, or is written marked when asked; a
/// misspelt config key or a β of 1 is refused by name; never a silent black PNG.
#[test]
fn broken_numbers_stop_the_command_or_are_marked() {
    use common::weights_file::WeightsFile;
    let dir = tmp("broken");
    std::fs::create_dir_all(&dir).unwrap();
    let edit = |name: &str, f: &dyn Fn(&mut WeightsFile)| {
        let mut file = WeightsFile::read(Path::new(MODEL));
        f(&mut file);
        let path = dir.join(name);
        file.write(&path);
        path
    };
    let huge = edit("huge.safetensors", &|f| {
        f.set_f32("conv_in.weight", 0, 3e38)
    });
    let misspelt = edit("misspelt.safetensors", &|f| {
        let v = f.meta_json("config")["flip_sin_to_cos"].clone();
        f.edit_meta_json("config", "flip_sin_to_cos", None);
        f.edit_meta_json("config", "flip_sin_to_cs", Some(v));
    });
    let beta = edit("beta.safetensors", &|f| {
        f.edit_meta_json("scheduler", "beta_end", Some(serde_json::json!(1.0)))
    });
    let run = |model: &Path, out: &str, extra: &[&str]| {
        bin()
            .args(["sample", "--quiet", "--steps", "3", "--num", "2", "--model"])
            .arg(model)
            .arg("--out")
            .arg(dir.join(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let stopped = run(&huge, "huge", &[]);
    common::assert_clean_failure(&stopped, "a 3e38 weight", "0 (step 0, t = 666), 1 (step 0");
    assert!(pngs_if_any(&dir.join("huge")) == 0, "no black PNG written");
    let kept = run(&huge, "kept", &["--keep-non-finite"]);
    assert!(
        kept.status.success(),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    let marks: Vec<u64> = manifest_samples(&dir.join("kept"))
        .iter()
        .map(|s| s["non_finite_step"].as_u64().expect("marked"))
        .collect();
    assert_eq!(marks, [0, 0]);
    common::assert_clean_failure(
        &run(&misspelt, "m", &[]),
        "a misspelt key",
        "`flip_sin_to_cs`",
    );
    common::assert_clean_failure(&run(&beta, "b", &[]), "β = 1", "`beta_end` is 1");
}

/// `reference` writes the file the z-scored modes need; `sample` refuses them without it, refuses
/// a reference of other timesteps, and writes each step's score beside the image score.
#[test]
fn z_scored_modes_need_a_matching_reference_and_runs_keep_per_step_scores() {
    let dir = tmp("zscore");
    let images = dir.join("real");
    std::fs::create_dir_all(&images).unwrap();
    for k in 0..4u8 {
        let img = wgsl_diff::images::Image8 {
            width: 8,
            height: 8,
            channels: 1,
            pixels: (0..64u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(k * 61))
                .collect(),
        };
        wgsl_diff::images::write_png(&images.join(format!("real_{k}.png")), &img, &[]).unwrap();
    }
    let reference = dir.join("ref.npz");
    let made = bin()
        .args([
            "reference",
            "--model",
            MODEL,
            "--steps",
            "4",
            "-M",
            "2",
            "--images",
        ])
        .arg(&images)
        .arg("--out")
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let bad_images = bin()
        .args([
            "reference",
            "--model",
            MODEL,
            "--steps",
            "4",
            "--images",
            "Cargo.toml",
        ])
        .arg("--out")
        .arg(dir.join("bad.npz"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    common::assert_clean_failure(&bad_images, "reference of Cargo.toml", "idx");

    let r = reference.to_str().unwrap();
    let refused: [(&[&str], &str); 5] = [
        (&["--uc-mode", "residual"], "--uc-reference"),
        (
            &["--uc-mode", "residual", "-M", "3", "--uc-reference", r],
            "M = 2",
        ),
        (
            &[
                "--uc-mode",
                "posterior-variance",
                "--steps",
                "3",
                "--uc-reference",
                r,
            ],
            "timesteps",
        ),
        (
            &["--uc-mode", "centred", "--uc-reference", r],
            "only applies",
        ),
        (
            &["--uc-mode", "residual", "--uc-reference", "Cargo.toml"],
            "Cargo.toml",
        ),
    ];
    for (extra, needle) in refused {
        let out = bin()
            .args([
                "sample",
                "--quiet",
                "--model",
                MODEL,
                "--uncertainty",
                "--out",
            ])
            .arg(dir.join("refused"))
            .args(extra)
            .args(if extra.contains(&"-M") {
                &[][..]
            } else {
                &["-M", "2"][..]
            })
            .args(if extra.contains(&"--steps") {
                &[][..]
            } else {
                &["--steps", "4"][..]
            })
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        common::assert_clean_failure(&out, &format!("{extra:?}"), needle);
    }

    for mode in ["residual", "posterior-variance", "typicality", "centred"] {
        let out = dir.join(mode);
        let mut extra = vec!["--num", "3", "--uncertainty", "-M", "2", "--uc-mode", mode];
        if mode == "residual" || mode == "posterior-variance" {
            extra.extend(["--uc-reference", r]);
        }
        sample(&out, &extra);
        let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "index,file,score,score_step_0,score_step_1,score_step_2,score_step_3"
        );
        for (line, record) in lines.zip(manifest_samples(&out)) {
            let cells: Vec<f64> = line
                .split(',')
                .skip(2)
                .map(|c| c.parse().unwrap())
                .collect();
            let steps = &record["step_scores"];
            for (i, cell) in cells[1..].iter().enumerate() {
                assert_eq!(
                    steps[i.to_string()].as_f64().unwrap(),
                    *cell,
                    "{mode} step {i}"
                );
            }
            let want: f64 = match mode {
                "typicality" => cells[1..].iter().map(|v| v.abs()).sum(),
                _ => cells[1..].iter().sum(),
            };
            assert!(
                (cells[0] - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{mode}: score {} is not the sum of its step scores {want}",
                cells[0]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
