//! Property tests for the numbers a user gives `sample`: whatever a numeric flag holds — zero,
//! u32 and u64 edges, overflowing digits, signs, floats, NaN — `wgsl-diff` exits 0, 1 (refused,
//! said in one line) or 2 (not a number of that type), never panics, aborts or wraps; flags
//! that need `--uncertainty` are refused without it; and the library's request checks accept
//! exactly the ranges the kernels can address (against an oracle in u128 arithmetic).

mod common;

use common::{assert_clean_failure, tmp_dir};
use std::path::Path;
use std::process::{Command, Output};
use wgsl_diff::job::SampleRequest;
use wgsl_diff::limits::{MAX_BATCH, MAX_COPIES, SAMPLE_INDEX_END};
use wgsl_diff::ops::UncertaintyMode;
use wgsl_diff::run_dir::{HeatmapScale, HeatmapStyle, Shard};
use wgsl_diff::sampling::{SamplerChoice, SamplerKind};
use wgsl_diff::splitmix::SplitMix64;
use wgsl_diff::uncertainty::UncertaintyConfig;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unet_tiny_gray.safetensors"
);

/// Numbers as a hostile user types them: edges, overflows, signs, floats, garbage, and seeded
/// random digit strings of every length up to 22.
fn hostile_numbers(rng: &mut SplitMix64, random: usize) -> Vec<String> {
    let mut out: Vec<String> = [
        "0",
        "1",
        "2",
        "3",
        "-1",
        "-0",
        "4294967294",
        "4294967295",
        "4294967296",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "1e3",
        "0x10",
        "",
        "nan",
        "inf",
        "-inf",
        "1.5",
        "0.0001",
        "1e308",
        "1e309",
        " 3",
        "+2",
    ]
    .map(String::from)
    .to_vec();
    for _ in 0..random {
        let len = 1 + (rng.next_u64() % 22) as usize;
        let mut s: String = (0..len)
            .map(|_| char::from(b'0' + (rng.next_u64() % 10) as u8))
            .collect();
        match rng.next_u64() % 4 {
            0 => s.insert(0, '-'),
            1 => s.insert((rng.next_u64() as usize) % (s.len() + 1), '.'),
            _ => {}
        }
        out.push(s);
    }
    out
}

/// `sample` with a small default run, `flag value` replacing that flag's default.
fn sample(out: &Path, extra: &[&str], flag: &str, value: &str) -> Output {
    let defaults = [("--steps", "2"), ("--num", "2"), ("--batch", "2")];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"));
    cmd.args(["sample", "--model", MODEL, "--quiet", "--out"])
        .arg(out);
    for (f, v) in defaults {
        if f != flag {
            cmd.args([f, v]);
        }
    }
    cmd.args(extra)
        .arg(format!("{flag}={value}"))
        .output()
        .unwrap()
}

/// Integer flags whose large valid values would make a long run: those values are left to the
/// in-process property below (invalid ones, however large, are run).
fn too_long(flag: &str, value: &str) -> bool {
    let valid_up_to = match flag {
        "--num" => SAMPLE_INDEX_END as u128,
        "--steps" => 1000, // the fixture's training timesteps
        "-M" => MAX_COPIES as u128,
        _ => return false,
    };
    value
        .trim()
        .parse::<u128>()
        .is_ok_and(|v| (9..=valid_up_to).contains(&v))
}

/// Every numeric flag, every hostile number: exit 0, 1 or 2, never a panic; a success wrote the
/// samples asked for.
#[test]
fn numeric_flags_never_panic_or_wrap() {
    let mut rng = SplitMix64::new(14);
    let flags: [(&str, &[&str]); 12] = [
        ("--num", &[]),
        ("--start-index", &[]),
        ("--batch", &[]),
        ("--steps", &[]),
        ("--seed", &[]),
        ("--steps-offset", &[]),
        ("--eta", &[]),
        ("--class", &[]),
        ("-M", &["--uncertainty"]),
        ("--uc-start", &["--uncertainty"]),
        ("--uc-steps", &["--uncertainty"]),
        ("--keep-fraction", &["--uncertainty"]),
    ];
    let dir = tmp_dir("numbers");
    let mut runs = 0;
    for (f, (flag, extra)) in flags.iter().enumerate() {
        for (v, value) in hostile_numbers(&mut rng, 8).iter().enumerate() {
            if too_long(flag, value) {
                continue;
            }
            let out_dir = dir.join(format!("{f}-{v}"));
            let out = sample(&out_dir, extra, flag, value);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("{flag}={value:?}");
            assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
            let code = out.status.code();
            assert!(
                matches!(code, Some(0..=2)),
                "{what}: exit {code:?}: {stderr}"
            );
            if code == Some(0) {
                check_success(&out_dir, flag, value);
            }
            runs += 1;
        }
    }
    assert!(runs > 200, "{runs} runs");
}

/// A successful run holds the samples its flags asked for, every one at an index the kernels
/// address (not wrapped past u32::MAX).
fn check_success(dir: &Path, flag: &str, value: &str) {
    let manifest = wgsl_diff::run_dir::read_manifest(dir).unwrap();
    let indices: Vec<u64> = manifest.samples.iter().map(|s| s.index as u64).collect();
    let number = || value.trim().parse::<u64>().unwrap();
    let want: Vec<u64> = match flag {
        "--num" => (0..number()).collect(),
        "--start-index" => {
            let start = number();
            let end = start.checked_add(2).expect("a run past u64::MAX succeeded");
            (start..end).collect()
        }
        _ => vec![0, 1],
    };
    assert_eq!(indices, want, "{flag}={value}");
    assert!(
        want.iter().all(|&i| i < SAMPLE_INDEX_END),
        "{flag}={value}: samples past the kernels' u32 index were made"
    );
}

/// Flags that only mean something with `--uncertainty` are refused without it.
#[test]
fn uncertainty_flags_need_uncertainty() {
    let dir = tmp_dir("need-uncertainty");
    let maps = dir.join("maps");
    let maps = maps.to_str().unwrap();
    for (flag, value) in [
        ("-M", "3"),
        ("--uc-mode", "variance"),
        ("--uc-start", "1"),
        ("--uc-steps", "1"),
        ("--heatmap-scale", "shared"),
        ("--heatmap-style", "map"),
        ("--save-maps", maps),
        ("--keep-fraction", "0.5"),
        ("--report", "true"),
    ] {
        let out = if flag == "--report" {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"));
            cmd.args(["sample", "--model", MODEL, "--out"])
                .arg(dir.join("r"));
            cmd.arg(flag).output().unwrap()
        } else {
            sample(&dir.join("x"), &[], flag, value)
        };
        assert_clean_failure(&out, flag, "--uncertainty");
    }
}

/// The oracle: a request's range is valid iff it is non-empty, ends by 2^32, and its shard (if
/// any) splits it into non-empty parts; batch in 1..=MAX_BATCH.
fn oracle(start: u64, num: u64, batch: usize, shard: Option<(u64, u64)>) -> bool {
    let end = start as u128 + num as u128;
    let range_ok = num > 0 && end <= SAMPLE_INDEX_END as u128;
    let shard_ok = shard.is_none_or(|(i, n)| i < n && n <= num);
    range_ok && shard_ok && (1..=MAX_BATCH).contains(&batch)
}

fn request(start: usize, num: usize, batch: usize, shard: Option<Shard>) -> SampleRequest {
    SampleRequest {
        model: MODEL.into(),
        sampler: SamplerChoice {
            kind: SamplerKind::Ddim,
            steps: Some(2),
            eta: 0.0,
            spacing: None,
            steps_offset: None,
            clip: true,
        },
        seed: 0,
        start_index: start,
        num,
        batch,
        class: None,
        out: "unused".into(),
        init_noise: None,
        save_raw: false,
        uncertainty: None,
        guidance: None,
        threshold_file: None,
        heatmap_scale: HeatmapScale::Image,
        heatmap_style: HeatmapStyle::Overlay,
        save_maps: None,
        step_heatmaps: false,
        dump_noise: None,
        keep_fraction: None,
        report: false,
        shard,
        keep_non_finite: false,
        f16_weights: false,
        f16_activations: false,
        prompt: None,
        class_cfg_scale: None,
        vae: None,
    }
}

/// A value drawn across every magnitude: near 0, near 2^32, near 2^64.
fn any_count(rng: &mut SplitMix64) -> u64 {
    let x = rng.next_u64();
    match x % 4 {
        0 => x % 16,
        1 => (SAMPLE_INDEX_END - 8).wrapping_add(rng.next_u64() % 16),
        2 => u64::MAX - rng.next_u64() % 16,
        _ => x >> (rng.next_u64() % 64),
    }
}

/// 20,000 random requests: `validate` agrees with the oracle, and a valid request's own range
/// lies inside the run and below 2^32.
#[test]
fn request_ranges_match_the_oracle() {
    let mut rng = SplitMix64::new(7);
    for _ in 0..20_000 {
        let (start, num) = (any_count(&mut rng), any_count(&mut rng));
        let batch = any_count(&mut rng) as usize;
        let shard = rng
            .next_u64()
            .is_multiple_of(2)
            .then(|| (any_count(&mut rng), any_count(&mut rng)));
        let want = oracle(start, num, batch, shard);
        let parsed = match shard
            .map(|(i, n)| Shard::new(i as usize, n as usize))
            .transpose()
        {
            Ok(parsed) => parsed,
            Err(_) => {
                assert!(!want, "Shard::new refused a valid shard {shard:?}");
                continue;
            }
        };
        let req = request(start as usize, num as usize, batch, parsed);
        let got = req.validate();
        assert_eq!(
            got.is_ok(),
            want,
            "{start} + {num}, batch {batch}, shard {parsed:?}: {got:?}"
        );
        if let Ok(()) = got {
            let (run, own) = (req.run_range().unwrap(), req.own_range().unwrap());
            assert!(run.start <= own.start && own.end <= run.end && !own.is_empty());
            assert!(own.end as u64 <= SAMPLE_INDEX_END);
        }
    }
}

/// Random uncertainty windows: accepted iff M is in range (≥ 2 for the variance modes) and the
/// window is non-empty and inside the sampler's steps; the accepted window covers exactly the
/// steps it names, with no overflow at u64 edges.
#[test]
fn uncertainty_windows_match_the_oracle() {
    let mut rng = SplitMix64::new(8);
    let modes = [
        UncertaintyMode::Centred,
        UncertaintyMode::Variance,
        UncertaintyMode::VarianceBiased,
    ];
    for _ in 0..20_000 {
        let total = 1 + (rng.next_u64() % 60) as usize;
        let copies = any_count(&mut rng) as usize;
        let start = any_count(&mut rng) as usize;
        let steps = rng
            .next_u64()
            .is_multiple_of(2)
            .then(|| any_count(&mut rng) as usize);
        let mode = modes[(rng.next_u64() % 3) as usize];
        let config = UncertaintyConfig {
            copies,
            mode,
            start,
            steps,
            ..Default::default()
        };
        let m_ok =
            (1..=MAX_COPIES).contains(&copies) && (copies >= 2 || mode == UncertaintyMode::Centred);
        let end = start as u128 + steps.unwrap_or(0) as u128;
        let window_ok = steps != Some(0) && start < total && end <= total as u128;
        let got = config.validate().and_then(|()| config.check_window(total));
        assert_eq!(
            got.is_ok(),
            m_ok && window_ok,
            "{config:?} of {total}: {got:?}"
        );
        if got.is_ok() {
            let covered = (0..total).filter(|&s| config.in_window(s)).count();
            assert_eq!(covered, steps.unwrap_or(total - start));
        }
    }
}
