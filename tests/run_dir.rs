//! The `sample` and `filter` commands as library calls (`job::SampleJob`, `run_dir::filter_run`),
//! against the CLI, and the pieces they are made of: the noise plan, class labels, score order.

mod common;

use common::gpu;
use std::path::{Path, PathBuf};
use std::process::Command;
use wgsl_diff::job::{SampleJob, SampleRequest};
use wgsl_diff::noise::{NoisePlan, NoisePurpose};
use wgsl_diff::ops::{self, UncertaintyMode};
use wgsl_diff::run_dir::{self, HeatmapScale, HeatmapStyle, SampleRecord};
use wgsl_diff::sampling::{
    contiguous_batches, ClassChoice, ClassLabels, SamplerChoice, SamplerKind,
};
use wgsl_diff::uncertainty::UncertaintyConfig;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unet_tiny_gray.safetensors"
);

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgsl-diff-lib-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn request(out: &Path) -> SampleRequest {
    SampleRequest {
        model: MODEL.into(),
        sampler: SamplerChoice {
            kind: SamplerKind::Ddim,
            steps: Some(3),
            eta: 0.0,
            spacing: None,
            steps_offset: None,
            clip: true,
        },
        seed: 7,
        start_index: 0,
        num: 3,
        batch: 2,
        class: None,
        out: out.to_path_buf(),
        init_noise: None,
        save_raw: true,
        uncertainty: Some(UncertaintyConfig {
            copies: 2,
            mode: UncertaintyMode::Centred,
            ..Default::default()
        }),
        guidance: None,
        threshold_file: None,
        heatmap_scale: HeatmapScale::Image,
        heatmap_style: HeatmapStyle::Overlay,
        save_maps: None,
        step_heatmaps: false,
        dump_noise: None,
        keep_fraction: Some(0.67),
        report: true,
        shard: None,
        keep_non_finite: false,
        f16_weights: false,
        f16_activations: false,
        prompt: None,
        class_cfg_scale: None,
        vae: None,
    }
}

/// The library call writes exactly the folder the command writes, and resumes like it.
#[test]
fn sample_job_writes_what_the_cli_writes() {
    let (lib, cli) = (tmp("job"), tmp("cli"));
    let job = SampleJob::prepare(gpu(), request(&lib)).unwrap();
    assert_eq!(job.todo(), [0, 1, 2]);
    assert_eq!(job.steps(), 3);
    let summary = job.run(&mut ()).unwrap();
    assert_eq!(summary.samples, 3);
    let filtered = summary.filtered.expect("keep fraction given");
    assert_eq!(filtered.count, 2);
    assert_eq!(filtered.kept, lib.join("filtered/kept"));

    let out = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args([
            "sample", "--model", MODEL, "--quiet", "--steps", "3", "--seed", "7",
        ])
        .args([
            "--num",
            "3",
            "--batch",
            "2",
            "--save-raw",
            "--uncertainty",
            "-M",
            "2",
        ])
        .args(["--keep-fraction", "0.67", "--report", "--out"])
        .arg(&cli)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (common::files(&lib), common::files(&cli));
    let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        // Filtered manifests name their source folder; everything else is byte-identical.
        if !name.starts_with("filtered") || !name.ends_with("samples.json") {
            assert!(x == y, "{} differs", name.display());
        }
    }

    // Everything is there: preparing again finds nothing to do.
    assert!(SampleJob::prepare(gpu(), request(&lib))
        .unwrap()
        .todo()
        .is_empty());
    // Filtering again as a library call gives the same subsets as `sample` did.
    let again = run_dir::filter_run(&lib, 0.67, 7).unwrap();
    assert_eq!(again.count, 2);
    let kept = run_dir::read_manifest(&again.kept).unwrap();
    let indices: Vec<usize> = kept.samples.iter().map(|s| s.index).collect();
    let cli_kept = run_dir::read_manifest(&cli.join("filtered/kept")).unwrap();
    assert_eq!(
        indices,
        cli_kept.samples.iter().map(|s| s.index).collect::<Vec<_>>()
    );
}

/// Another seed into the same folder is refused by the library too.
#[test]
fn a_folder_refuses_another_run() {
    let dir = tmp("refuse");
    let mut req = request(&dir);
    req.uncertainty = None;
    req.keep_fraction = None;
    req.report = false;
    req.num = 1;
    SampleJob::prepare(gpu(), req.clone())
        .unwrap()
        .run(&mut ())
        .unwrap();
    req.seed = 8;
    let err = SampleJob::prepare(gpu(), req).err().expect("refused");
    assert!(
        err.to_string()
            .contains("other parameters (different seed)"),
        "{err}"
    );
}

/// A recording plan lists each draw once, and drawing it again gives the same values.
#[test]
fn noise_plan_records_and_redraws() {
    let g = gpu();
    let plan = NoisePlan::recording(3);
    let x = plan.initial(g, &[2, 1, 4, 4], 5).unwrap();
    let n = plan
        .perturbation(g, NoisePurpose::Uncertainty, &[2, 1, 4, 4], 3, 7, 5)
        .unwrap();
    let draws = plan.take_draws();
    assert_eq!(draws.len(), 2);
    assert_eq!(
        (draws[0].purpose, draws[0].copies, draws[0].first_index),
        (NoisePurpose::Initial, 1, 5)
    );
    assert_eq!(
        (draws[1].purpose, draws[1].step, draws[1].copies),
        (NoisePurpose::Uncertainty, 7, 3)
    );
    assert!(plan.take_draws().is_empty(), "draws are handed over once");
    let read = |t: &wgsl_diff::gpu::Tensor| g.read(t).unwrap();
    assert_eq!(read(&plan.redraw(g, &draws[0]).unwrap()), read(&x));
    assert_eq!(read(&plan.redraw(g, &draws[1]).unwrap()), read(&n));
    // Copy m of a perturbation is the stream (Uncertainty, step, m) on its own.
    let copy2 = ops::normal(
        g,
        &[2, 1, 4, 4],
        plan.key(NoisePurpose::Uncertainty, 7, 2),
        5,
    )
    .unwrap();
    assert_eq!(read(&copy2), read(&n)[2 * 32..]);
    // Another seed, purpose or step is another stream.
    let other = NoisePlan::new(4).initial(g, &[2, 1, 4, 4], 5).unwrap();
    assert_ne!(read(&other), read(&x));
    assert_ne!(
        plan.key(NoisePurpose::Ancestral, 0, 0),
        plan.key(NoisePurpose::Initial, 0, 0)
    );
    assert_ne!(
        plan.key(NoisePurpose::Ancestral, 1, 0),
        plan.key(NoisePurpose::Ancestral, 2, 0)
    );
}

#[test]
fn class_labels_cycle_or_stay_fixed_and_are_checked_once() {
    let cycle = ClassLabels::new(Some(10), Some(ClassChoice::Cycle)).unwrap();
    assert_eq!(cycle.batch(8, 4), Some(vec![8, 9, 0, 1]));
    let fixed = ClassLabels::new(Some(10), Some(ClassChoice::Fixed(3))).unwrap();
    assert_eq!(fixed.of(12), Some(3));
    assert_eq!(ClassLabels::new(None, None).unwrap().batch(0, 2), None);
    for choice in [ClassChoice::Fixed(3), ClassChoice::Cycle] {
        let unconditional = ClassLabels::new(None, Some(choice))
            .unwrap_err()
            .to_string();
        assert!(unconditional.contains("unconditional"), "{unconditional}");
    }
    let outside = ClassLabels::new(Some(10), Some(ClassChoice::Fixed(10)))
        .unwrap_err()
        .to_string();
    assert!(outside.contains("out of range"), "{outside}");
    // A class-conditional model never gets a made-up class: the user chooses.
    let missing = ClassLabels::new(Some(10), None).unwrap_err().to_string();
    assert!(
        missing.contains("--class N (0..9) or --class cycle"),
        "{missing}"
    );
}

#[test]
fn class_choices_parse_from_an_index_or_cycle() {
    assert_eq!("7".parse::<ClassChoice>().unwrap(), ClassChoice::Fixed(7));
    assert_eq!("cycle".parse::<ClassChoice>().unwrap(), ClassChoice::Cycle);
    for bad in ["-1", "seven", "", "3.0"] {
        let err = bad.parse::<ClassChoice>().unwrap_err().to_string();
        assert!(
            err.contains("expected a class index or \"cycle\""),
            "{bad}: {err}"
        );
    }
    assert_eq!(ClassChoice::Fixed(7).to_string(), "7");
    assert_eq!(ClassChoice::Cycle.to_string(), "cycle");
}

#[test]
fn batches_are_runs_of_consecutive_indices() {
    assert_eq!(contiguous_batches(&[0, 1, 2, 3, 4], 2), [0..2, 2..4, 4..5]);
    assert_eq!(
        contiguous_batches(&[1, 2, 5, 6, 7, 9], 4),
        [1..3, 5..8, 9..10]
    );
    assert!(contiguous_batches(&[], 3).is_empty());
}

/// Scores sort ascending with NaN of either sign last, so a broken sample never panics a sort.
#[test]
fn scores_sort_with_nan_last() {
    let record = |index, score| SampleRecord {
        index,
        file: String::new(),
        class: None,
        score,
        step_scores: None,
        heatmap: None,
        non_finite_step: None,
    };
    let mut records = [
        record(0, Some(f64::NAN)),
        record(1, Some(2.0)),
        record(2, Some(-f64::NAN)),
        record(3, Some(f64::INFINITY)),
        record(4, Some(0.5)),
    ];
    records.sort_by(run_dir::by_score);
    let order: Vec<usize> = records.iter().map(|r| r.index).collect();
    assert_eq!(&order[..3], [4, 1, 3]);
    assert!(records[3..].iter().all(|r| r.score.unwrap().is_nan()));
}
