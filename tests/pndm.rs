//! PNDM (PLMS, `skip_prk_steps`) against diffusers' PNDMScheduler (tests/fixtures/pndm.safetensors,
//! `python -m tools.fixtures.pndm`): the model calls' timesteps — the second-to-last grid point
//! visited twice — and every x along the trajectory, driven by the same synthetic ε(x, t) as the
//! other scheduler fixtures. A sampler added in its own file (src/sampling/scheduler/pndm.rs).

mod common;

use common::{assert_close, fixture, gpu, read, read_safetensors, to_f64};
use wgsl_diff::ops;
use wgsl_diff::sampling::{
    NoiseSchedule, SamplerChoice, SamplerConfig, SamplerKind, ScheduleConfig, Scheduler, Spacing,
};

#[test]
fn pndm_matches_diffusers_call_by_call() {
    let g = gpu();
    let fx = read_safetensors(&fixture("pndm.safetensors"));
    let (shape, x_t) = &fx["x_T"];
    let bias = g.upload(shape, &fx["eps_bias"].1).unwrap();
    let numel: usize = shape.iter().product();
    for (case, steps_offset, set_alpha_to_one) in
        [("sd", 1, false), ("linear", 0, true), ("one", 0, false)]
    {
        let ac = to_f64(&fx[&format!("{case}/alphas_cumprod")].1);
        let betas = (0..ac.len())
            .map(|i| 1.0 - ac[i] / if i == 0 { 1.0 } else { ac[i - 1] })
            .collect();
        let schedule = NoiseSchedule {
            betas,
            alphas_cumprod: ac,
        };
        let want_t = &fx[&format!("{case}/timesteps")].1;
        let want_x = &fx[&format!("{case}/x")].1;
        let steps = want_t.len().saturating_sub(1).max(1);
        let sched = Scheduler::new(
            SamplerConfig {
                kind: SamplerKind::Pndm,
                spacing: Spacing::Leading,
                steps_offset,
                set_alpha_to_one,
                clip_sample: None,
                ..SamplerConfig::ddim(steps)
            },
            schedule,
        )
        .unwrap();
        let ts: Vec<f32> = sched.timesteps.iter().map(|&t| t as f32).collect();
        assert_eq!(&ts, want_t, "{case}: timesteps");
        let mut state = sched.start();
        let mut x = g.upload(shape, x_t).unwrap();
        for (i, &t) in sched.timesteps.iter().enumerate() {
            assert!(!sched.needs_noise(i), "{case}: PNDM draws no noise");
            let eps = ops::lincomb(g, 0.5, &x, 0.1 * t as f32 / 1000.0, &bias).unwrap();
            x = state.step(g, i, &x, &eps, None).unwrap();
            let want = to_f64(&want_x[(i + 1) * numel..(i + 2) * numel]);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert_close(
                &format!("{case} call {i} (t={t})"),
                &read(&x),
                &want,
                1e-5 * scale,
                1e-5,
            );
        }
    }
}

/// `--sampler pndm` takes the model's `steps_offset` and `set_alpha_to_one`, as diffusers does;
/// N steps are N + 1 model calls.
#[test]
fn pndm_resolves_from_the_models_schedule() {
    let config: ScheduleConfig = serde_json::from_value(serde_json::json!({
        "_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
        "set_alpha_to_one": false, "skip_prk_steps": true, "clip_sample": false
    }))
    .unwrap();
    config.validate().unwrap();
    let choice = SamplerChoice {
        kind: SamplerKind::Pndm,
        steps: Some(20),
        eta: 0.0,
        spacing: None,
        steps_offset: None,
        clip: true,
    };
    let sched = Scheduler::new(
        choice.resolve(&config),
        NoiseSchedule::from_config(&config).unwrap(),
    )
    .unwrap();
    assert_eq!(sched.timesteps.len(), 21);
    assert_eq!(&sched.timesteps[..4], &[951, 901, 901, 851]);
    assert_eq!(*sched.timesteps.last().unwrap(), 1);
    assert!(!sched.config.set_alpha_to_one);
}

/// `sample` takes the offset from the model's scheduler config unless `--steps-offset` names
/// one (before, the flag's default 0 silently replaced the model's).
#[test]
fn sample_takes_the_models_steps_offset() {
    use common::weights_file::WeightsFile;
    let dir = common::tmp_dir("steps-offset");
    let model = dir.join("offset.safetensors");
    let mut file = WeightsFile::read(&fixture("unet_tiny_gray.safetensors"));
    file.edit_meta_json("scheduler", "steps_offset", Some(serde_json::json!(1)));
    file.write(&model);
    let timesteps = |out: &str, extra: &[&str]| -> serde_json::Value {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args(["sample", "--quiet", "--num", "1", "--steps", "4", "--model"])
            .arg(&model)
            .args(extra)
            .arg("--out")
            .arg(dir.join(out))
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(out).join("samples.json")).unwrap())
                .unwrap();
        manifest["parameters"]["timesteps"].clone()
    };
    assert_eq!(
        timesteps("model", &[]),
        serde_json::json!([751, 501, 251, 1])
    );
    assert_eq!(
        timesteps("flag", &["--steps-offset", "0"]),
        serde_json::json!([750, 500, 250, 0])
    );
    let _ = std::fs::remove_dir_all(&dir);
}
