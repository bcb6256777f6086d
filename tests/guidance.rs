//! Uncertainty-guided sampling (Algorithm 2): the guidance kernels against f64 CPU references,
//! a guided step and a whole guided run against an independent float64 PyTorch implementation
//! (tools/fixtures/guidance.py, Rule G through torch.autograd), calibration, and bad input.

mod common;

use common::{
    assert_close, ddim, fixture, fixture_model, gpu, read, read_safetensors, to_f64, upload, Rng,
};
use std::collections::HashMap;
use wgsl_diff::gpu::{Gpu, Tensor};
use wgsl_diff::guidance::{
    CalibratedThreshold, GuidanceConfig, GuidanceHook, GuidanceRule, Threshold,
};
use wgsl_diff::models::{denoise, Cond, EpsModel, UNet2DModel};
use wgsl_diff::noise::{NoisePlan, NoisePurpose};
use wgsl_diff::ops::{self, MaskedRule};
use wgsl_diff::sampling::{
    sample_batch, BatchSpec, NonFiniteFlags, Scheduler, StepContext, StepHook,
};

type Fixture = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn fixture_file() -> Fixture {
    read_safetensors(&fixture("guidance.safetensors"))
}

fn settings() -> serde_json::Value {
    let bytes = std::fs::read(fixture("guidance.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    serde_json::from_str(&meta.metadata().as_ref().unwrap()["settings"]).unwrap()
}

fn tensor(st: &Fixture, key: &str) -> Tensor {
    let (shape, data) = &st[key];
    upload(data, shape)
}

fn config(rule: GuidanceRule, threshold: Threshold, s: &serde_json::Value) -> GuidanceConfig {
    GuidanceConfig {
        strength: s["strength"].as_f64().unwrap(),
        copies: s["M"].as_u64().unwrap() as usize,
        threshold,
        ..GuidanceConfig::paper(rule)
    }
}

/// The guided ε of one step at the fixture's timestep, as the sampling loop would compute it.
fn guided_step(
    g: &Gpu,
    unet: &UNet2DModel,
    st: &Fixture,
    name: &str,
    config: GuidanceConfig,
) -> Vec<f32> {
    let t = settings()["t"].as_u64().unwrap() as usize;
    let labels = st
        .contains_key(&format!("step/{name}/labels"))
        .then(|| tensor(st, &format!("step/{name}/labels")));
    let step = Step {
        x: &tensor(st, &format!("step/{name}/x")),
        t,
        cond: &Cond::from_labels(labels),
        noise: tensor(st, &format!("step/{name}/noise")),
        scheduler: &ddim(10),
    };
    guided_eps(g, unet, step, config)
}

/// One step's inputs: the sample, its timestep and condition, the guidance noise to replay and
/// the scheduler whose ᾱ the rule reads.
struct Step<'a> {
    x: &'a Tensor,
    t: usize,
    cond: &'a Cond,
    noise: Tensor,
    scheduler: &'a Scheduler,
}

/// The guidance hook's ε for one step, from the denoiser's ε (classifier-free guidance
/// included), as the sampling loop calls it.
fn guided_eps(g: &Gpu, model: &dyn EpsModel, step: Step, config: GuidanceConfig) -> Vec<f32> {
    let b = step.x.dim(0);
    let timesteps = g.upload(&[b], &vec![step.t as f32; b]).unwrap();
    let eps = denoise(model, g, step.x, &timesteps, step.cond).unwrap();
    let noise = NoisePlan::new(0).with_replay(NoisePurpose::Guidance, vec![step.noise]);
    let ctx = StepContext {
        gpu: g,
        model,
        scheduler: step.scheduler,
        noise: &noise,
        first_index: 0,
        step: 0,
        timestep: step.t,
        timesteps: &timesteps,
        cond: step.cond,
        x: step.x,
        non_finite: &NonFiniteFlags::new(g, b).unwrap(),
    };
    let mut hook = GuidanceHook::new(g, config).unwrap();
    read(&hook.on_eps(&ctx, eps).unwrap())
}

fn calibrated(st: &Fixture, key: &str) -> Threshold {
    let (shape, data) = st[key].clone();
    Threshold::Calibrated(CalibratedThreshold {
        source: key.into(),
        shape: [1, shape[0], shape[1], shape[2]],
        data,
        calibration: None,
    })
}

/// Rule P (and Rule G where the model has a backward pass) on one step, with a percentile and
/// with a calibrated threshold, for an unconditional and a class-conditional model.
#[test]
fn a_guided_step_matches_an_independent_pytorch_implementation() {
    let (g, st, s) = (gpu(), fixture_file(), settings());
    let p = s["percentile"].as_f64().unwrap();
    for (name, weights) in [
        ("gray", "unet_tiny_gray.safetensors"),
        ("class", "unet_tiny_class.safetensors"),
    ] {
        let unet = fixture_model(weights);
        for rule in [GuidanceRule::Posterior, GuidanceRule::Gradient] {
            let key = format!("step/{name}/{rule}");
            for (case, threshold) in [
                ("percentile", Threshold::Percentile(p)),
                ("calibrated", calibrated(&st, &format!("{key}/threshold"))),
            ] {
                let got = guided_step(g, &unet, &st, name, config(rule, threshold, &s));
                let want = &st[&format!("{key}/{case}")].1;
                assert_close(&format!("{key}/{case}"), &got, &to_f64(want), 1e-4, 1e-4);
            }
        }
    }
}

/// A whole DDIM run guided at its first steps ends where the PyTorch run ends.
/// Both rules on Stable Diffusion's UNet with classifier-free guidance (the same noise for both
/// halves of each copy, Rule G through both), against a float64 PyTorch implementation written
/// from the official SD pipeline (tools/fixtures/sd_guidance.py), per image as the official code
/// runs batch 1. The official Rule P is not the method's (it shrinks ε, docs/method.md): ours
/// matches the method's and differs from the official one where it guides.
#[test]
fn a_guided_stable_diffusion_step_matches_the_official_rule() {
    use wgsl_diff::models::diffusers::unet_2d_condition::UNet2DConditionModel;
    use wgsl_diff::models::{row_range, WeightFile};
    use wgsl_diff::sampling::{NoiseSchedule, SamplerConfig, ScheduleConfig};
    let g = gpu();
    let path = fixture("sd_guidance.safetensors");
    let st = read_safetensors(&path);
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let s: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["settings"]).unwrap();
    let file = WeightFile::open(&fixture("sd_unet_sd_tiny.safetensors")).unwrap();
    let unet = UNet2DConditionModel::load(g, &file).unwrap();
    let schedule = NoiseSchedule::from_config(&ScheduleConfig {
        beta_schedule: "scaled_linear".into(),
        beta_start: s["beta_start"].as_f64().unwrap(),
        beta_end: s["beta_end"].as_f64().unwrap(),
        ..ScheduleConfig::default()
    })
    .unwrap();
    let scheduler = Scheduler::new(SamplerConfig::ddim(20), schedule).unwrap();
    let x = tensor(&st, "x");
    let b = x.dim(0);
    let states = tensor(&st, "states");
    let row = |i| ops::repeat_batch(g, &row_range(g, &states, i, 1).unwrap(), b).unwrap();
    let cfg_scale = s["cfg_scale"].as_f64().unwrap() as f32;
    let cond = Cond::guided(Cond::Text(row(1)), Cond::Text(row(0)), cfg_scale).unwrap();
    let p = s["percentile"].as_f64().unwrap();
    let mut apart_from_official = 0;
    for t in s["timesteps"].as_array().unwrap() {
        let t = t.as_u64().unwrap() as usize;
        for rule in [GuidanceRule::Gradient, GuidanceRule::Posterior] {
            let step = Step {
                x: &x,
                t,
                cond: &cond,
                noise: tensor(&st, "noise"),
                scheduler: &scheduler,
            };
            let got = guided_eps(g, &unet, step, config(rule, Threshold::Percentile(p), &s));
            let want = to_f64(&st[&format!("t{t}/{rule}")].1);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert_close(&format!("SD t {t} {rule}"), &got, &want, 1e-4 * scale, 1e-4);
            if rule == GuidanceRule::Posterior {
                let official = to_f64(&st[&format!("t{t}/posterior_official")].1);
                let apart = got
                    .iter()
                    .zip(&official)
                    .filter(|(a, b)| (**a as f64 - **b).abs() > 1e-2 * scale)
                    .count();
                eprintln!(
                    "SD t {t}: Rule P {apart} of {} elements apart from the official's",
                    got.len()
                );
                apart_from_official += apart;
            }
        }
    }
    assert!(
        apart_from_official > 0,
        "the method's Rule P equals the official one"
    );
}

#[test]
fn a_guided_run_matches_an_independent_pytorch_implementation() {
    let (g, st, s) = (gpu(), fixture_file(), settings());
    let unet = fixture_model("unet_tiny_gray.safetensors");
    let steps = s["run_steps"].as_u64().unwrap() as usize;
    let guided = s["run_guided_steps"].as_u64().unwrap() as usize;
    for rule in [GuidanceRule::Posterior, GuidanceRule::Gradient] {
        let mut cfg = config(
            rule,
            Threshold::Percentile(s["percentile"].as_f64().unwrap()),
            &s,
        );
        cfg.strength = s["run_strength"].as_f64().unwrap();
        cfg.steps = Some(guided);
        let noise = (0..guided)
            .map(|i| tensor(&st, &format!("run/noise/{i}")))
            .collect();
        let plan = NoisePlan::new(0).with_replay(NoisePurpose::Guidance, noise);
        let init = tensor(&st, "run/init_noise");
        let spec = BatchSpec {
            first_index: 0,
            size: init.dim(0),
            labels: None,
            init_noise: Some(init),
        };
        let mut hook = GuidanceHook::new(g, cfg).unwrap();
        let x = sample_batch(
            g,
            &unet,
            &ddim(steps),
            &plan,
            spec,
            &mut [&mut hook],
            |_| {},
        );
        let want = &st[&format!("run/{rule}/final")].1;
        assert_close(
            &format!("run/{rule}"),
            &read(&x.unwrap().x),
            &to_f64(want),
            1e-4,
            1e-4,
        );
    }
}

/// f64 references of the guidance kernels on odd sizes.
#[test]
fn guidance_kernels_match_f64_references() {
    let g = gpu();
    let mut rng = Rng::new(3);
    for (b, m, len) in [(1, 2, 1), (3, 5, 37), (2, 3, 300)] {
        let copies = rng.vec(m * b * len);
        let eps = rng.vec(b * len);
        let at = |v: &[f32], m_: usize, i: usize| v[m_ * b * len + i] as f64;
        let (mut cot, mut var, mut post, mut post_var) = (vec![], vec![], vec![], vec![]);
        let mut sum = vec![];
        let alpha_bar = 0.3;
        for (i, &e) in eps.iter().enumerate() {
            let mean = (0..m).map(|k| at(&copies, k, i)).sum::<f64>() / m as f64;
            var.push(
                (0..m)
                    .map(|k| (at(&copies, k, i) - mean).powi(2))
                    .sum::<f64>()
                    / (m - 1) as f64,
            );
            let all: Vec<f64> = (0..m)
                .map(|k| at(&copies, k, i))
                .chain([e as f64])
                .collect();
            let mean_all = all.iter().sum::<f64>() / all.len() as f64;
            let u = all.iter().map(|v| (v - mean_all).powi(2)).sum::<f64>() / m as f64;
            let total: f64 = (0..m).map(|k| at(&copies, k, i)).sum();
            post_var.push(u);
            post.push((total / u) / (m as f64 / u + 1.0 / alpha_bar));
            sum.push(-0.5 * total);
        }
        for k in 0..m {
            for i in 0..b * len {
                let mean = (0..m).map(|j| at(&copies, j, i)).sum::<f64>() / m as f64;
                cot.push(2.0 * (at(&copies, k, i) - mean) / (m - 1) as f64);
            }
        }
        let copies_t = upload(&copies, &[m * b, len]);
        let eps_t = upload(&eps, &[b, len]);
        let (c, v) = ops::gradient_cotangent(g, &copies_t, b).unwrap();
        assert_close("cotangent", &read(&c), &cot, 1e-6, 1e-5);
        assert_close("variance", &read(&v), &var, 1e-6, 1e-5);
        let (u, e) = ops::posterior(g, &eps_t, &copies_t, alpha_bar).unwrap();
        assert_close("posterior variance", &read(&u), &post_var, 1e-6, 1e-5);
        assert_close("posterior eps", &read(&e), &post, 1e-5, 1e-4);
        let s = ops::sum_copies(g, &copies_t, b, -0.5).unwrap();
        assert_close("sum of copies", &read(&s), &sum, 1e-6, 1e-5);
    }
}

#[test]
fn the_masked_update_guides_exactly_the_elements_above_their_threshold() {
    let g = gpu();
    let mut rng = Rng::new(4);
    let (b, len) = (3, 10);
    let (eps, unc, update) = (rng.vec(b * len), rng.vec(b * len), rng.vec(b * len));
    let per_sample = rng.vec(b);
    let per_element = rng.vec(len);
    let t = |v: &[f32], s: &[usize]| upload(v, s);
    for (thr, thr_shape) in [(&per_sample, vec![b]), (&per_element, vec![len])] {
        for (rule, strength) in [(MaskedRule::Add, 0.7f32), (MaskedRule::Replace, 0.0)] {
            let got = ops::masked_update(
                g,
                rule,
                &t(&eps, &[b, len]),
                &t(&unc, &[b, len]),
                &t(thr, &thr_shape),
                &t(&update, &[b, len]),
                strength,
            )
            .unwrap();
            let want: Vec<f64> = (0..b * len)
                .map(|i| {
                    let th = if thr_shape == [b] {
                        thr[i / len]
                    } else {
                        thr[i % len]
                    };
                    let (e, u) = (eps[i] as f64, update[i] as f64);
                    match (unc[i] > th, rule) {
                        (false, _) => e,
                        (true, MaskedRule::Add) => e + strength as f64 * u,
                        (true, MaskedRule::Replace) => u,
                    }
                })
                .collect();
            assert_close(
                &format!("{rule:?} {thr_shape:?}"),
                &read(&got),
                &want,
                1e-6,
                1e-6,
            );
        }
    }
}

/// The observer measures the same map a guided step thresholds, and calibration takes the order
/// statistic ⌊N·p⌋ of those maps element by element.
#[test]
fn calibration_takes_order_statistics_of_the_rules_maps() {
    use wgsl_diff::guidance::{calibrate, CalibrateRequest};
    use wgsl_diff::sampling::SamplerChoice;
    let g = gpu();
    let request = |percentile| CalibrateRequest {
        model: fixture("unet_tiny_gray.safetensors"),
        sampler: SamplerChoice {
            kind: wgsl_diff::sampling::SamplerKind::Ddim,
            steps: Some(3),
            eta: 0.0,
            spacing: None,
            steps_offset: None,
            clip: true,
        },
        rule: GuidanceRule::Posterior,
        copies: 2,
        percentile,
        seed: 5,
        start_index: 0,
        num: 3,
        batch: 2,
        class: None,
    };
    let max = calibrate(g, &request(0.99)).unwrap();
    let min = calibrate(g, &request(0.01)).unwrap();
    let mid = calibrate(g, &request(0.5)).unwrap();
    assert_eq!(max.shape, [3, 1, 8, 8]);
    for i in 0..max.data.len() {
        assert!(
            min.data[i] <= mid.data[i] && mid.data[i] <= max.data[i],
            "element {i}"
        );
    }
    assert!(
        max.data.iter().zip(&min.data).any(|(a, b)| a > b),
        "the samples differ"
    );
    // ⌊3·0.99⌋ = 2: the largest of three; the run with the same seed in batches of 1 agrees.
    let mut one_by_one = request(0.99);
    one_by_one.batch = 1;
    assert_eq!(calibrate(g, &one_by_one).unwrap().data, max.data);
}

struct NoBackward(UNet2DModel);

impl EpsModel for NoBackward {
    fn predict_eps(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        t: &Tensor,
        cond: &Cond,
    ) -> wgsl_diff::Result<Tensor> {
        self.0.predict_eps(gpu, x, t, cond)
    }
    fn sample_shape(&self) -> wgsl_diff::Result<[usize; 3]> {
        self.0.sample_shape()
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn max_batch(&self, gpu: &Gpu) -> usize {
        self.0.max_batch(gpu)
    }
}

#[test]
fn bad_guidance_settings_are_errors() {
    let g = gpu();
    let bad = |c: GuidanceConfig| GuidanceHook::new(g, c).err().unwrap().to_string();
    let paper = GuidanceConfig::paper(GuidanceRule::Gradient);
    for p in [0.0, 1.0, 1.5, -0.1, f64::NAN] {
        let msg = bad(GuidanceConfig {
            threshold: Threshold::Percentile(p),
            ..paper.clone()
        });
        assert!(msg.contains("percentile must be in (0, 1)"), "{msg}");
    }
    for strength in [f64::NAN, f64::INFINITY] {
        let msg = bad(GuidanceConfig {
            strength,
            ..paper.clone()
        });
        assert!(msg.contains("strength must be finite"), "{msg}");
    }
    let msg = bad(GuidanceConfig {
        copies: 1,
        ..paper.clone()
    });
    assert!(msg.contains("at least 2 copies"), "{msg}");

    // A threshold file of the wrong shape, or holding NaN.
    let dir = std::env::temp_dir().join(format!("wgsl-diff-guidance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("thr.npy");
    wgsl_diff::npy::write(&path, &[2, 1, 8, 8], &[0.5; 128]).unwrap();
    let err = CalibratedThreshold::load(&path, 3, [1, 8, 8])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected [3, 1, 8, 8]"), "{err}");
    let mut data = vec![0.5; 3 * 64];
    data[70] = f32::NAN;
    wgsl_diff::npy::write(&path, &[3, 1, 8, 8], &data).unwrap();
    let err = CalibratedThreshold::load(&path, 3, [1, 8, 8])
        .unwrap_err()
        .to_string();
    assert!(err.contains("element 70 is NaN"), "{err}");

    // Gradient guidance on a model without a backward pass fails cleanly.
    let unet = NoBackward(fixture_model("unet_tiny_gray.safetensors"));
    let init = NoisePlan::new(1).initial(g, &[1, 1, 8, 8], 0).unwrap();
    let spec = BatchSpec {
        first_index: 0,
        size: 1,
        labels: None,
        init_noise: Some(init),
    };
    let mut hook = GuidanceHook::new(g, paper).unwrap();
    let err = sample_batch(
        g,
        &unet,
        &ddim(3),
        &NoisePlan::new(1),
        spec,
        &mut [&mut hook],
        |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no backward pass"), "{err}");
}
