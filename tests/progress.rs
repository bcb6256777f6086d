//! The long commands' progress bars: drawn on a terminal (a pseudo-terminal from util-linux's
//! `script`), hidden with `--quiet`, and never written when standard error is not a terminal,
//! as `sample` does. `fid` and `reference` draw theirs with the same helper.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_wgsl-diff");

/// What a terminal shows while `wgsl-diff args` runs (stdout and stderr together).
fn on_a_terminal(args: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", &format!("{BIN} {args}"), "/dev/null"])
        .output()
        .expect("util-linux's script runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args}: {text}");
    text
}

/// The standard error of `wgsl-diff args` written to a pipe.
fn piped(args: &str) -> String {
    let out = Command::new(BIN).args(args.split(' ')).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args}: {text}");
    text
}

#[test]
fn eval_and_calibrate_draw_a_bar_only_on_a_terminal_and_never_when_quiet() {
    let eval = "eval --real noise --fake noise --real-range 0..4 --fake-range 4..8 --batch 2";
    assert!(
        on_a_terminal(eval).contains("4/8 images"),
        "the bar counts both sets"
    );
    assert!(!on_a_terminal(&format!("{eval} --quiet")).contains("/8 images"));
    assert!(!piped(eval).contains("/8 images"), "no bar into a pipe");

    let out = std::env::temp_dir().join(format!("wgsl-diff-progress-{}.npy", std::process::id()));
    let calibrate = format!(
        "calibrate --num 2 --batch 1 --steps 2 -M 2 --out {}",
        out.display()
    );
    assert!(on_a_terminal(&calibrate).contains("1/2 samples"));
    assert!(!on_a_terminal(&format!("{calibrate} --quiet")).contains("/2 samples"));
    let _ = std::fs::remove_file(&out);
}
