//! A healthy run prints no driver noise: on a headless machine Mesa's Vulkan drivers print
//! "XDG_RUNTIME_DIR is invalid or not set" when the variable is unset or names no folder (this
//! test binary's own device does, see its stderr); every subcommand must keep that from the user.

mod common;

use common::{fixture, tmp_dir};
use std::process::Command;

/// Runs `wgsl-diff args` with XDG_RUNTIME_DIR unset, or set to `runtime_dir`; returns stderr.
fn quiet_run(args: &[&str], runtime_dir: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"));
    cmd.args(args);
    match runtime_dir {
        Some(dir) => cmd.env("XDG_RUNTIME_DIR", dir),
        None => cmd.env_remove("XDG_RUNTIME_DIR"),
    };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    stderr
}

#[test]
fn no_subcommand_prints_the_runtime_dir_noise() {
    let dir = tmp_dir("cli_quiet");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (run, thresholds) = (path("run"), path("thresholds.npy"));
    let (a, b) = (
        fixture("fid_stats_full_a.npz"),
        fixture("fid_stats_full_b.npz"),
    );
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let commands: Vec<Vec<&str>> = vec![
        vec!["info"],
        vec![
            "sample",
            "--num",
            "2",
            "--batch",
            "2",
            "--steps",
            "2",
            "--uncertainty",
            "-M",
            "2",
            "--quiet",
            "--out",
            &run,
        ],
        vec!["filter", &run, "--keep-fraction", "0.5"],
        vec![
            "calibrate",
            "--num",
            "2",
            "--batch",
            "2",
            "--steps",
            "2",
            "-M",
            "2",
            "--out",
            &thresholds,
        ],
        vec!["eval", "--real", &run, "--fake", &run],
        vec!["fid", "--real", a, "--fake", b],
    ];
    for args in &commands {
        for runtime_dir in [None, Some("/nonexistent/runtime")] {
            let stderr = quiet_run(args, runtime_dir);
            assert!(
                !stderr.contains("XDG_RUNTIME_DIR"),
                "{args:?} with XDG_RUNTIME_DIR={runtime_dir:?}: {stderr}"
            );
        }
    }
}
