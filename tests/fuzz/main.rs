//! A fuzz harness for every file parser, with no GPU: safetensors headers and the model and
//! scheduler configs in them, `.npy` and `.npz` arrays, FID statistics, calibrated thresholds
//! and their records, idx image files, PNG text chunks, `samples.json` and `run.json`. Each
//! input is a valid file changed structure-aware (fields, keys, numbers, lengths) and sometimes
//! byte-wise, from a seeded generator; the oracle is no panic, no hang, every refusal an error
//! with a message, known-invalid inputs refused, known-valid ones accepted, and what is accepted
//! consistent with the file (`targets`).
//!
//! `cargo test --release --test fuzz` runs a fixed slice (seconds). Many more:
//! `WGSL_DIFF_FUZZ_COUNT=1000000 cargo test --release --test fuzz -- --ignored --nocapture`
//! (`WGSL_DIFF_FUZZ_SEED` picks another stream, `WGSL_DIFF_FUZZ_FIRST` the first input, so a
//! finding `#i` is rerun alone with `WGSL_DIFF_FUZZ_FIRST=i WGSL_DIFF_FUZZ_COUNT=1`). With
//! `CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true` (and a `CARGO_TARGET_DIR` of its own) an
//! arithmetic overflow, which a release build wraps silently, panics and is found too.

mod driver;
mod json;
mod mutate;
mod npy_file;
mod targets;
mod zip_file;

use driver::Plan;

/// The stream the fixed slice and, by default, the long run draw from.
const SEED: u64 = 0x5eed_f022;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
        Err(_) => default,
    }
}

#[test]
fn a_fixed_slice_of_every_parser_holds() {
    let report = driver::run(
        targets::all(),
        Plan {
            seed: SEED,
            first: 0,
            count: 4000,
        },
        0,
    );
    eprintln!("{}", report.summary());
    assert!(report.findings.is_empty(), "{}", report.summary());
}

#[test]
#[ignore = "long: WGSL_DIFF_FUZZ_COUNT inputs (default 1,000,000)"]
fn many_inputs_hold() {
    let plan = Plan {
        seed: env_u64("WGSL_DIFF_FUZZ_SEED", SEED),
        first: env_u64("WGSL_DIFF_FUZZ_FIRST", 0),
        count: env_u64("WGSL_DIFF_FUZZ_COUNT", 1_000_000),
    };
    eprintln!("fuzz: {plan:?}");
    let report = driver::run(targets::all(), plan, 50_000);
    println!("{}", report.summary());
    assert!(report.findings.is_empty(), "{}", report.summary());
}
