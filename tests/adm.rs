//! ADM (guided-diffusion's UNetModel) against guided-diffusion's own code in float64
//! (tools/reference_adm.py): forward passes on small random configs covering every option, its
//! DDPM learned-range and DDIM steps, MC-Dropout maps from the same masks, and bad input.

mod common;

use common::{assert_close, fixture, gpu, read_safetensors, to_f64};
use std::collections::HashMap;
use wgsl_diff::gpu::Tensor;
use wgsl_diff::models::{AdmModel, DropoutMasks, EpsModel, WeightFile};
use wgsl_diff::ops::{self, UncertaintyMode};
use wgsl_diff::sampling::{open_scheduler, NoisePlan, SamplerChoice, SamplerKind};

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
            .predict_eps_and_variance(g, &tensor(&fx, "x"), &tensor(&fx, "timesteps"), y.as_ref())
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
            steps_offset: 0,
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
                .predict_eps_and_variance(g, &x, &timesteps, Some(&y))
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
        .predict_eps_mc_dropout(g, &rep("x"), &rep("timesteps"), Some(&rep("y")), &masks)
        .unwrap();
    // One ResBlock per input/output block and two in the middle, each with one dropout.
    assert_eq!(masks.layers(), 10, "dropout layers visited");
    let eps = model
        .predict_eps(
            g,
            &tensor(&fx, "x"),
            &tensor(&fx, "timesteps"),
            Some(&tensor(&fx, "y")),
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
        .predict_eps_mc_dropout(g, &x, &t, None, &masks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dropout"), "{err}");
}

#[test]
fn labels_are_checked_against_the_model() {
    let g = gpu();
    let (cond, fx) = load("cond");
    let (x, t) = (tensor(&fx, "x"), tensor(&fx, "timesteps"));
    let err = cond.predict_eps(g, &x, &t, None).unwrap_err().to_string();
    assert!(err.contains("class labels are required"), "{err}");
    let (uncond, ufx) = load("uncond");
    let y = g.upload(&[2], &[0.0, 1.0]).unwrap();
    let (x, t) = (tensor(&ufx, "x"), tensor(&ufx, "timesteps"));
    let err = uncond
        .predict_eps(g, &x, &t, Some(&y))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unconditional"), "{err}");
}
