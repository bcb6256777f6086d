//! ADM (guided-diffusion's UNetModel) against guided-diffusion's own code in float64
//! (tools/fixtures/adm.py): forward passes on small random configs covering every option, its
//! DDPM learned-range and DDIM steps, MC-Dropout maps from the same masks, and bad input.

mod common;

use common::{assert_close, fixture, gpu, read_safetensors, to_f64};
use std::collections::HashMap;
use wgsl_diff::gpu::Tensor;
use wgsl_diff::models::{AdmModel, Cond, DropoutMasks, EpsModel, WeightFile};
use wgsl_diff::noise::NoisePlan;
use wgsl_diff::ops::{self, UncertaintyMode};
use wgsl_diff::sampling::{open_scheduler, SamplerChoice, SamplerKind};

type Fixture = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The bar for forward parity in float64.
const FORWARD_ATOL: f64 = 1e-4;

fn load(name: &str) -> (AdmModel, Fixture) {
    let file = WeightFile::open(&fixture(&format!("adm_{name}.safetensors"))).unwrap();
    let model = AdmModel::load(gpu(), &file).unwrap();
    (
        model,
        read_safetensors(&fixture(&format!("adm_{name}_io.safetensors"))),
    )
}

fn tensor(fx: &Fixture, name: &str) -> Tensor {
    let (shape, data) = &fx[name];
    gpu().upload(shape, data).unwrap()
}

/// Channels `range` of every sample of a (B, C, H, W) tensor's data.
fn channels(shape: &[usize], data: &[f32], range: std::ops::Range<usize>) -> Vec<f64> {
    let plane = shape[2] * shape[3];
    (0..shape[0])
        .flat_map(|b| range.clone().map(move |c| (b, c)))
        .flat_map(|(b, c)| {
            let start = (b * shape[1] + c) * plane;
            data[start..start + plane].iter().map(|&v| v as f64)
        })
        .collect()
}

#[test]
fn forward_matches_guided_diffusion() {
    let g = gpu();
    for name in ["cond", "uncond", "legacy"] {
        let (model, fx) = load(name);
        let y = fx.contains_key("y").then(|| tensor(&fx, "y"));
        let (eps, var) = model
            .predict_eps_and_variance(
                g,
                &tensor(&fx, "x"),
                &tensor(&fx, "timesteps"),
                &Cond::from_labels(y),
            )
            .unwrap();
        let (shape, want) = &fx["output"];
        let c = model.config.in_channels;
        let got = common::read(&eps);
        assert_close(
            &format!("adm_{name} ε"),
            &got,
            &channels(shape, want, 0..c),
            FORWARD_ATOL,
            0.0,
        );
        match var {
            Some(var) => assert_close(
                &format!("adm_{name} variance output"),
                &common::read(&var),
                &channels(shape, want, c..2 * c),
                FORWARD_ATOL,
                0.0,
            ),
            None => assert_eq!(shape[1], c, "adm_{name}: a variance output was expected"),
        }
        assert_eq!(model.learned_variance(), shape[1] == 2 * c);
    }
}

/// Each step from guided-diffusion's own x_t, with its noise, against its x_{t'}.
#[test]
fn sampler_steps_match_guided_diffusion() {
    let g = gpu();
    let (model, fx) = load("cond");
    let y = tensor(&fx, "y");
    let (_, noise) = &fx["sampler/noise"];
    let (_, want_t) = &fx["sampler/timesteps"];
    for kind in [SamplerKind::Ddpm, SamplerKind::Ddim] {
        let choice = SamplerChoice {
            kind,
            steps: Some(want_t.len()),
            eta: 0.0,
            spacing: None,
            steps_offset: None,
            clip: true,
        };
        let (_, sched) = open_scheduler(&fixture("adm_cond.safetensors"), &choice).unwrap();
        let ts: Vec<f32> = sched.timesteps.iter().map(|&t| t as f32).collect();
        assert_eq!(&ts, want_t, "{kind:?} timesteps");
        let (shape, xs) = &fx[&format!("sampler/{}", kind.name())];
        let numel: usize = shape[1..].iter().product();
        let sample = &shape[1..];
        for (i, &t) in sched.timesteps.iter().enumerate() {
            let x = g.upload(sample, &xs[i * numel..(i + 1) * numel]).unwrap();
            let timesteps = g.upload(&[sample[0]], &vec![t as f32; sample[0]]).unwrap();
            let (eps, var) = model
                .predict_eps_and_variance(g, &x, &timesteps, &Cond::Class(y.clone()))
                .unwrap();
            let k = sched.coeffs(i);
            let z = match sched.needs_noise(i) {
                true => {
                    let z = g
                        .upload(sample, &noise[i * numel..(i + 1) * numel])
                        .unwrap();
                    Some(match sched.learned_range(i) {
                        Some((lo, hi)) => {
                            ops::learned_range_noise(g, var.as_ref().unwrap(), &z, lo, hi).unwrap()
                        }
                        None => z,
                    })
                }
                false => None,
            };
            assert_eq!(
                z.is_some(),
                kind == SamplerKind::Ddpm && t > 0,
                "{kind:?} noise"
            );
            let (next, _) = ops::sampler_step(g, &k, &x, &eps, None, z.as_ref()).unwrap();
            let want = to_f64(&xs[(i + 1) * numel..(i + 2) * numel]);
            assert_close(
                &format!("{kind:?} step {i} (t = {t})"),
                &common::read(&next),
                &want,
                FORWARD_ATOL,
                0.0,
            );
        }
    }
}

#[test]
fn mc_dropout_maps_match_pytorch_from_the_same_masks() {
    let g = gpu();
    let (model, fx) = load("cond");
    let (_, settings) = &fx["mc_dropout/settings"];
    let [copies, seed, step, first] = [0, 1, 2, 3].map(|i| settings[i] as usize);
    let plan = NoisePlan::new(seed as u64);
    let masks = DropoutMasks::new(&plan, step, copies, first);
    let rep = |name| ops::repeat_batch(g, &tensor(&fx, name), copies).unwrap();
    let eps_copies = model
        .predict_eps_mc_dropout(
            g,
            &rep("x"),
            &rep("timesteps"),
            &Cond::Class(rep("y")),
            &masks,
        )
        .unwrap();
    // One ResBlock per input/output block and two in the middle, each with one dropout.
    assert_eq!(masks.layers(), 10, "dropout layers visited");
    let eps = model
        .predict_eps(
            g,
            &tensor(&fx, "x"),
            &tensor(&fx, "timesteps"),
            &Cond::Class(tensor(&fx, "y")),
        )
        .unwrap();
    let map = ops::uncertainty_map(g, &eps, &eps_copies, UncertaintyMode::Variance).unwrap();
    let (_, want) = &fx["mc_dropout/map"];
    assert_close(
        "MC-Dropout map",
        &common::read(&map),
        &to_f64(want),
        1e-5,
        1e-3,
    );
    // Dropout changes the prediction; without it the copies would agree exactly.
    assert!(want.iter().any(|&v| v > 1e-4));
}

#[test]
fn mc_dropout_is_refused_without_dropout_layers() {
    let g = gpu();
    let (model, fx) = load("uncond");
    let plan = NoisePlan::new(0);
    let masks = DropoutMasks::new(&plan, 0, 2, 0);
    let x = ops::repeat_batch(g, &tensor(&fx, "x"), 2).unwrap();
    let t = ops::repeat_batch(g, &tensor(&fx, "timesteps"), 2).unwrap();
    let err = model
        .predict_eps_mc_dropout(g, &x, &t, &Cond::None, &masks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dropout"), "{err}");
}

#[test]
fn labels_are_checked_against_the_model() {
    let g = gpu();
    let (cond, fx) = load("cond");
    let (x, t) = (tensor(&fx, "x"), tensor(&fx, "timesteps"));
    let err = cond
        .predict_eps(g, &x, &t, &Cond::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("class labels are required"), "{err}");
    let (uncond, ufx) = load("uncond");
    let y = g.upload(&[2], &[0.0, 1.0]).unwrap();
    let (x, t) = (tensor(&ufx, "x"), tensor(&ufx, "timesteps"));
    let err = uncond
        .predict_eps(g, &x, &t, &Cond::Class(y))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unconditional"), "{err}");
}

fn wgsl_diff(model: &str, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let _ = std::fs::remove_dir_all(out);
    std::process::Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["sample", "--quiet", "--num", "2", "--batch", "2", "--model"])
        .arg(fixture(model))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wgsl-diff-adm-{}-{name}", std::process::id()))
}

/// `wgsl-diff sample` takes an ADM weight file like any other: a class, uncertainty (renoised
/// or MC-Dropout), DDPM with the learned-range variance.
#[test]
fn cli_samples_adm_models() {
    for (name, extra) in [
        (
            "renoise",
            &["--class", "7", "--uncertainty", "--steps", "3"][..],
        ),
        (
            "mc-dropout",
            &[
                "--class",
                "cycle",
                "--uncertainty",
                "--uc-method",
                "mc-dropout",
                "-M",
                "3",
                "--steps",
                "2",
            ],
        ),
        (
            "ddpm",
            &[
                "--class",
                "2",
                "--sampler",
                "ddpm",
                "--steps",
                "4",
                "--seed",
                "3",
            ],
        ),
    ] {
        let out = tmp(name);
        let run = wgsl_diff("adm_cond.safetensors", &out, extra);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{name}: {stderr}");
        assert!(out.join("samples.json").is_file(), "{name}: no manifest");
        if extra.contains(&"--uncertainty") {
            let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();
            assert_eq!(scores.lines().count(), 3, "{name}: {scores}");
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn cli_refuses_bad_classes_and_methods() {
    for (model, extra, expected) in [
        (
            "adm_cond.safetensors",
            &["--class", "10"][..],
            "class 10 out of range",
        ),
        ("adm_uncond.safetensors", &["--class", "0"], "unconditional"),
        (
            "adm_uncond.safetensors",
            &["--class", "cycle"],
            "unconditional",
        ),
        (
            "adm_cond.safetensors",
            &["--steps", "2"],
            "class-conditional (10 classes): choose the class with --class N (0..9) or --class cycle",
        ),
        ("adm_cond.safetensors", &["--class", "ten"], "expected a class index"),
        (
            "adm_uncond.safetensors",
            &["--uncertainty", "--uc-method", "mc-dropout"],
            "has none (dropout 0",
        ),
        (
            "adm_cond.safetensors",
            &[
                "--uncertainty",
                "--uc-method",
                "mc-dropout",
                "--uc-mode",
                "centred",
            ],
            "unbiased variance",
        ),
        (
            "adm_cond.safetensors",
            &["--uc-method", "mc-dropout"],
            "--uncertainty",
        ),
    ] {
        let out = tmp("refused");
        let run = wgsl_diff(model, &out, extra);
        common::assert_clean_failure(&run, &format!("{model} {extra:?}"), expected);
    }
}

/// The loader's error for a file whose tensors do not match its config, written to `name`.
fn load_error(name: &str, config_edit: (&str, &str)) -> String {
    let path = fixture("adm_uncond.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let config = meta["config"].replace(config_edit.0, config_edit.1);
    meta.insert("config".into(), config);
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "out.2.bias")
        .chain([(
            "extra.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4])
                .unwrap(),
        )])
        .collect();
    let out = tmp(name);
    std::fs::write(&out, safetensors::serialize(views, &Some(meta)).unwrap()).unwrap();
    let err = match AdmModel::load(gpu(), &WeightFile::open(&out).unwrap()) {
        Ok(_) => panic!("a mismatched file loaded"),
        Err(e) => e.to_string(),
    };
    let _ = std::fs::remove_file(&out);
    err
}

/// A weight file whose tensors do not match its config names every problem; flags far from
/// the tensors (more channels per level than the file holds) name the first mismatches and stop.
#[test]
fn mismatched_adm_weights_are_listed() {
    let err = load_error("missing.safetensors", ("", ""));
    for needle in [
        "missing tensor `out.2.bias`",
        "unexpected tensor `extra.weight`",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    let err = load_error(
        "wider.safetensors",
        ("\"model_channels\":32", "\"model_channels\":64"),
    );
    for needle in [
        "`input_blocks.0.0.weight` has shape [32, 3, 3, 3], the config implies [64, 3, 3, 3]",
        "stopped here",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// The released 64×64 architecture (296 M parameters, random weights): it loads, one forward
/// matches guided-diffusion in float64, and it samples an image. Needs the git-ignored fixture
/// from `python -m tools.fixtures.adm --large` (1.2 GB).
#[test]
#[ignore]
fn adm64_architecture_matches_guided_diffusion() {
    let g = gpu();
    let path = fixture("large/adm64_random.safetensors");
    let model = AdmModel::load(g, &WeightFile::open(&path).unwrap()).unwrap();
    let fx = read_safetensors(&fixture("large/adm64_random_io.safetensors"));
    let (eps, var) = model
        .predict_eps_and_variance(
            g,
            &tensor(&fx, "x"),
            &tensor(&fx, "timesteps"),
            &Cond::Class(tensor(&fx, "y")),
        )
        .unwrap();
    let (shape, want) = &fx["output"];
    assert_close(
        "ADM-64 ε",
        &common::read(&eps),
        &channels(shape, want, 0..3),
        FORWARD_ATOL,
        0.0,
    );
    let var = common::read(&var.unwrap());
    assert_close(
        "ADM-64 variance output",
        &var,
        &channels(shape, want, 3..6),
        FORWARD_ATOL,
        0.0,
    );

    let choice = SamplerChoice {
        kind: SamplerKind::Ddpm,
        steps: Some(2),
        eta: 0.0,
        spacing: None,
        steps_offset: None,
        clip: true,
    };
    let (_, sched) = open_scheduler(&path, &choice).unwrap();
    let spec = wgsl_diff::sampling::BatchSpec {
        first_index: 0,
        size: 1,
        labels: Some(&[207]),
        init_noise: None,
    };
    let plan = NoisePlan::new(0);
    let image =
        wgsl_diff::sampling::sample_batch(g, &model, &sched, &plan, spec, &mut [], |_| {}).unwrap();
    let image = common::read(&image.x);
    assert_eq!(image.len(), 3 * 64 * 64);
    assert!(image.iter().all(|v| v.is_finite()));
}
