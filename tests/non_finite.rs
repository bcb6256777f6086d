//! Numbers that cannot lie: NaN and ±Inf are found on the GPU as they appear (the flag kernel
//! against a CPU reference), a run that produces them stops naming the samples and the step
//! (or, asked to, writes them marked), and settings that would produce them are refused before
//! sampling. Never a silent black PNG.

mod common;

use common::weights_file::WeightsFile;
use common::{gpu, read, tmp_dir, upload};
use std::path::{Path, PathBuf};
use wgsl_diff::job::{SampleJob, SampleRequest};
use wgsl_diff::ops::{self, UncertaintyMode};
use wgsl_diff::run_dir::{self, HeatmapScale, HeatmapStyle};
use wgsl_diff::sampling::{
    NoiseSchedule, SamplerChoice, SamplerConfig, SamplerKind, ScheduleConfig, Scheduler, Spacing,
};
use wgsl_diff::uncertainty::UncertaintyConfig;
use wgsl_diff::{Error, NonFiniteSample};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unet_tiny_gray.safetensors"
);

/// The first step at which each of `samples` samples held a non-finite value, computed on the
/// CPU from the tensors recorded at each step (rows of sample r % samples).
fn reference_first_steps(
    records: &[(Vec<f32>, usize, usize)],
    samples: usize,
) -> Vec<Option<usize>> {
    let mut first = vec![None::<usize>; samples];
    for (values, rows, step) in records {
        let row_len = values.len() / rows;
        for (i, v) in values.iter().enumerate() {
            if !v.is_finite() {
                let s = (i / row_len) % samples;
                first[s] = Some(first[s].map_or(*step, |f| f.min(*step)));
            }
        }
    }
    first
}

/// The flag kernel on awkward shapes and every kind of float: NaN of either sign and any
/// payload, ±Inf are flagged; f32::MAX, subnormals and −0 are not; the earliest step wins
/// whatever order steps are recorded in; stacked copies flag their sample.
#[test]
fn the_flag_kernel_matches_a_cpu_reference() {
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN payload
        f32::from_bits(0xffc0_1234),
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let harmless = [f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-45, -0.0, 3e38];
    let mut rng = common::Rng::new(14);
    for (samples, copies, row_len) in [(1, 1, 1), (3, 2, 37), (5, 1, 3 * 17 * 13), (2, 7, 257)] {
        let flags = ops::non_finite_flags(gpu(), samples).unwrap();
        let mut records = Vec::new();
        for step in [5usize, 2, 9, 0] {
            let rows = samples * copies;
            let mut values = rng.vec(rows * row_len);
            // Plant values at seeded positions; the harmless ones must never flag.
            for k in 0..3 {
                let at = (rng.uniform().abs() * values.len() as f32) as usize % values.len();
                values[at] = harmless[(step + k) % harmless.len()];
            }
            if step != 0 {
                let at = (rng.uniform().abs() * values.len() as f32) as usize % values.len();
                values[at] = specials[(step + row_len) % specials.len()];
            }
            let t = upload(&values, &[rows, row_len]);
            ops::record_non_finite(gpu(), &t, &flags, step).unwrap();
            records.push((values, rows, step));
        }
        let got = ops::decode_first_steps(&read(&flags));
        let want = reference_first_steps(&records, samples);
        assert_eq!(got, want, "{samples} samples × {copies} copies × {row_len}");
        assert!(want.iter().any(Option::is_some), "the case flags something");
    }
    // Rows that are not stacked copies of the flagged samples are refused.
    let flags = ops::non_finite_flags(gpu(), 3).unwrap();
    let t = upload(&[0.0; 8], &[4, 2]);
    assert!(ops::record_non_finite(gpu(), &t, &flags, 0).is_err());
}

/// A weight file whose edits are written to a temporary file.
fn edited(name: &str, edit: impl FnOnce(&mut WeightsFile)) -> PathBuf {
    let mut file = WeightsFile::read(Path::new(MODEL));
    edit(&mut file);
    let path = tmp_dir(&format!("model-{name}")).join("model.safetensors");
    file.write(&path);
    path
}

fn request(model: &Path, out: &Path) -> SampleRequest {
    SampleRequest {
        model: model.to_path_buf(),
        sampler: SamplerChoice {
            kind: SamplerKind::Ddim,
            steps: Some(3),
            eta: 0.0,
            spacing: None,
            steps_offset: None,
            clip: true,
        },
        seed: 3,
        start_index: 0,
        num: 3,
        batch: 3,
        class: None,
        out: out.to_path_buf(),
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
        shard: None,
        keep_non_finite: false,
        f16_weights: false,
        f16_activations: false,
        prompt: None,
        class_cfg_scale: None,
        vae: None,
    }
}

fn pngs(dir: &Path) -> usize {
    run_dir::sample_indices(dir).map_or(0, |i| i.len())
}

/// One finite weight of 3e38 overflows the first convolution: the run stops at step 0 naming
/// every sample, and writes no image; with `keep_non_finite` it writes them, marked.
#[test]
fn a_huge_weight_stops_the_run_at_the_first_step() {
    let model = edited("huge-weight", |f| f.set_f32("conv_in.weight", 0, 3e38));
    let out = tmp_dir("huge-weight-run");
    let job = SampleJob::prepare(gpu(), request(&model, &out)).expect("a finite weight loads");
    match job.run(&mut ()) {
        Err(Error::NonFinite(samples)) => {
            let want: Vec<NonFiniteSample> = (0..3)
                .map(|index| NonFiniteSample {
                    index,
                    step: 0,
                    timestep: 666,
                })
                .collect();
            assert_eq!(samples, want);
            let message = Error::NonFinite(samples).to_string();
            assert!(message.contains("0 (step 0, t = 666)"), "{message}");
        }
        other => panic!("expected a non-finite error, got {other:?}"),
    }
    assert_eq!(pngs(&out), 0, "no image of the batch is written");

    // Another folder: the failed run claimed this one for its parameters, and these differ.
    let kept_dir = tmp_dir("huge-weight-kept");
    let mut keep = request(&model, &kept_dir);
    keep.keep_non_finite = true;
    keep.uncertainty = Some(UncertaintyConfig {
        copies: 2,
        ..Default::default()
    });
    keep.report = true;
    let summary = SampleJob::prepare(gpu(), keep)
        .unwrap()
        .run(&mut ())
        .unwrap();
    assert_eq!(summary.samples, 3);
    let manifest = run_dir::read_manifest(&kept_dir).unwrap();
    assert!(manifest
        .samples
        .iter()
        .all(|s| s.non_finite_step == Some(0)));
    let report = std::fs::read_to_string(kept_dir.join("report.html")).unwrap();
    assert!(report.contains("3 non-finite"), "the report counts them");
}

/// Starting noise with a NaN or ±Inf is refused when read; a finite 1e30 overflows the network
/// and flags exactly its sample, which `keep_non_finite` then writes marked — and a NaN score
/// among finite ones ranks last in the filter and the report instead of panicking a sort.
#[test]
fn broken_starting_noise_is_refused_or_flagged_for_its_sample_only() {
    let dir = tmp_dir("init-noise");
    let mut rng = common::Rng::new(5);
    for (name, value) in [("nan", f32::NAN), ("inf", f32::NEG_INFINITY), ("big", 1e30)] {
        let mut noise = rng.vec(3 * 64);
        noise[64 + 17] = value; // sample 1
        let path = dir.join(format!("{name}.npy"));
        wgsl_diff::npy::write(&path, &[3, 1, 8, 8], &noise).unwrap();
        let out = dir.join(format!("out-{name}"));
        let mut req = request(Path::new(MODEL), &out);
        req.init_noise = Some(path);
        req.uncertainty = Some(UncertaintyConfig {
            copies: 2,
            mode: UncertaintyMode::Centred,
            ..Default::default()
        });
        let result = SampleJob::prepare(gpu(), req.clone()).and_then(|job| job.run(&mut ()));
        match (name, result) {
            ("big", Err(Error::NonFinite(samples))) => {
                assert_eq!(samples.iter().map(|s| s.index).collect::<Vec<_>>(), [1]);
            }
            (_, Err(Error::Invalid(msg))) if name != "big" => {
                assert!(msg.contains("sample 1 of the starting noise"), "{msg}");
            }
            (_, other) => panic!("{name}: {other:?}"),
        }
    }
    // Kept: sample 1 is marked, ranks last, and filtering and the report do not panic.
    let mut req = request(Path::new(MODEL), &dir.join("out-big"));
    req.init_noise = Some(dir.join("big.npy"));
    req.uncertainty = Some(UncertaintyConfig {
        copies: 2,
        ..Default::default()
    });
    req.keep_non_finite = true;
    req.keep_fraction = Some(0.67);
    req.report = true;
    let summary = SampleJob::prepare(gpu(), req)
        .unwrap()
        .run(&mut ())
        .unwrap();
    let manifest = run_dir::read_manifest(&dir.join("out-big")).unwrap();
    let marks: Vec<Option<usize>> = manifest.samples.iter().map(|s| s.non_finite_step).collect();
    assert_eq!(marks, [None, Some(0), None]);
    let kept = run_dir::read_manifest(&summary.filtered.unwrap().kept).unwrap();
    let mut kept: Vec<usize> = kept.samples.iter().map(|s| s.index).collect();
    kept.sort_unstable();
    assert_eq!(
        kept,
        [0, 2],
        "the non-finite sample is never kept as certain"
    );
}

fn scheduler(
    kind: SamplerKind,
    steps: usize,
    eta: f64,
    schedule: &ScheduleConfig,
) -> wgsl_diff::Result<Scheduler> {
    let config = SamplerConfig {
        kind,
        eta,
        spacing: match kind {
            SamplerKind::Dpmpp2m => Spacing::Linspace,
            _ => Spacing::Leading,
        },
        ..SamplerConfig::ddim(steps)
    };
    Scheduler::new(config, NoiseSchedule::from_config(schedule)?)
}

/// Settings whose first step would already be NaN or ±Inf are refused before sampling, each
/// with a message naming the culprit.
#[test]
fn settings_that_cannot_give_finite_samples_are_refused() {
    let default = ScheduleConfig::default();
    let cases: Vec<(wgsl_diff::Result<Scheduler>, &str)> = vec![
        (
            scheduler(SamplerKind::Ddim, 10, f64::INFINITY, &default),
            "eta must be finite",
        ),
        (
            scheduler(SamplerKind::Ddim, 10, f64::NAN, &default),
            "eta must be finite",
        ),
        (
            scheduler(SamplerKind::Ddim, 10, 1e300, &default),
            "coefficient c",
        ),
        (
            scheduler(SamplerKind::Dpmpp2m, 1000, 0.0, &default),
            "twice",
        ),
        (
            scheduler(
                SamplerKind::Ddim,
                10,
                0.0,
                &ScheduleConfig {
                    beta_end: 1.0,
                    ..default.clone()
                },
            ),
            "`beta_end`",
        ),
        (
            scheduler(
                SamplerKind::Ddim,
                10,
                0.0,
                &ScheduleConfig {
                    beta_start: -1e-4,
                    ..default.clone()
                },
            ),
            "`beta_start`",
        ),
        (
            scheduler(
                SamplerKind::Ddim,
                10,
                0.0,
                &ScheduleConfig {
                    num_train_timesteps: 10_000_000_000,
                    ..default.clone()
                },
            ),
            "`num_train_timesteps`",
        ),
        (
            // Every β valid, but ᾱ underflows to 0 long before the end.
            scheduler(
                SamplerKind::Ddim,
                10,
                0.0,
                &ScheduleConfig {
                    beta_start: 0.9,
                    beta_end: 0.99,
                    num_train_timesteps: 100_000,
                    ..default.clone()
                },
            ),
            "ᾱ above 0",
        ),
    ];
    for (result, needle) in cases {
        match result {
            Err(e) => assert!(e.to_string().contains(needle), "{needle}: {e}"),
            Ok(_) => panic!("{needle}: accepted"),
        }
    }
    // The largest DPM-Solver++(2M) run of a 1000-step schedule still works.
    assert!(scheduler(SamplerKind::Dpmpp2m, 500, 0.0, &default).is_ok());
}
