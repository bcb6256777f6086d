//! Sampler parity with diffusers: identical model outputs (a synthetic ε(x, t)) are fed through
//! our GPU update and through diffusers' schedulers (tests/fixtures/schedulers.safetensors),
//! and every intermediate x_t is compared.

mod common;

use common::{assert_close, fixture, gpu, read, read_safetensors, to_f64};
use wgsl_diff::ops;
use wgsl_diff::sampling::{
    NoiseSchedule, SamplerConfig, SamplerKind, ScheduleConfig, Scheduler, Spacing,
};

fn parse_case(name: &str) -> (SamplerKind, Spacing, f64, bool) {
    let parts: Vec<&str> = name.split('_').collect();
    let spacing = match parts[1] {
        "leading" => Spacing::Leading,
        "trailing" => Spacing::Trailing,
        "linspace" => Spacing::Linspace,
        other => panic!("unknown spacing {other}"),
    };
    let field = |prefix: &str| parts.iter().find_map(|p| p.strip_prefix(prefix));
    let eta = field("eta").map_or(0.0, |v| v.parse().unwrap());
    let clip = field("clip") == Some("1");
    let kind = match parts[0] {
        "ddim" => SamplerKind::Ddim,
        "ddpm" => SamplerKind::Ddpm,
        "dpmpp2m" => SamplerKind::Dpmpp2m,
        other => panic!("unknown sampler {other}"),
    };
    (kind, spacing, eta, clip)
}

/// Our f64 linear schedule agrees with diffusers' float32 cumulative product.
#[test]
fn linear_schedule_matches_diffusers() {
    let fx = read_safetensors(&fixture("schedulers.safetensors"));
    let (_, ac) = fx.get("alphas_cumprod").unwrap();
    let ours = NoiseSchedule::from_config(&ScheduleConfig::default()).unwrap();
    assert_close("alphas_cumprod", ac, &ours.alphas_cumprod, 0.0, 2e-5);
}

#[test]
fn every_sampler_matches_diffusers_step_by_step() {
    let g = gpu();
    let fx = read_safetensors(&fixture("schedulers.safetensors"));
    let (shape, x_t) = fx.get("x_T").unwrap();
    let (_, bias) = fx.get("eps_bias").unwrap();
    let (_, ac) = fx.get("alphas_cumprod").unwrap();
    // The same ᾱ table as diffusers (float32), so the comparison isolates the sampler logic.
    let alphas_cumprod: Vec<f64> = to_f64(ac);
    let betas = (0..ac.len())
        .map(|i| 1.0 - alphas_cumprod[i] / if i == 0 { 1.0 } else { alphas_cumprod[i - 1] })
        .collect();
    let schedule = NoiseSchedule {
        betas,
        alphas_cumprod,
    };
    let bias = g.upload(shape, bias).unwrap();
    let numel: usize = shape.iter().product();

    let mut cases: Vec<String> = fx
        .keys()
        .filter_map(|n| n.strip_suffix("/x").map(str::to_string))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 17,
        "expected DDIM, DDPM and DPM-Solver cases, got {cases:?}"
    );
    for case in cases {
        let (kind, spacing, eta, clip) = parse_case(&case);
        let (_, want_t) = fx.get(&format!("{case}/timesteps")).unwrap();
        let (_, want_x) = fx.get(&format!("{case}/x")).unwrap();
        let noise = fx.get(&format!("{case}/noise")).map(|(_, n)| n.clone());
        let steps = want_t.len();
        let sched = Scheduler::new(
            SamplerConfig {
                kind,
                steps,
                eta,
                spacing,
                steps_offset: 0,
                set_alpha_to_one: true,
                clip_sample: clip.then_some(1.0),
                variance: wgsl_diff::sampling::VarianceType::FixedSmall,
                use_clipped_model_output: false,
            },
            schedule.clone(),
        )
        .unwrap();
        let ts: Vec<f32> = sched.timesteps.iter().map(|&t| t as f32).collect();
        assert_eq!(&ts, want_t, "{case}: timesteps");

        let mut x = g.upload(shape, x_t).unwrap();
        let mut x0_prev = None;
        for (i, &t) in sched.timesteps.iter().enumerate() {
            // The fixture's stand-in network: ε = 0.5·x + 0.1·(t/1000)·bias.
            let eps = ops::lincomb(g, 0.5, &x, 0.1 * t as f32 / 1000.0, &bias).unwrap();
            let k = sched.coeffs(i);
            let z = match (&noise, k.c != 0.0) {
                (Some(n), true) => Some(g.upload(shape, &n[i * numel..(i + 1) * numel]).unwrap()),
                (None, true) => panic!("{case}: step {i} needs noise the fixture lacks"),
                _ => None,
            };
            let prev = if k.e != 0.0 { x0_prev.as_ref() } else { None };
            let (next, x0) = ops::sampler_step(g, &k, &x, &eps, prev, z.as_ref()).unwrap();
            x = next;
            x0_prev = Some(x0);
            let want = to_f64(&want_x[(i + 1) * numel..(i + 2) * numel]);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert_close(
                &format!("{case} step {i} (t={t})"),
                &read(&x),
                &want,
                1e-5 * scale,
                1e-5,
            );
        }
    }
}

/// β and ᾱ tables of all three schedules against diffusers (which keeps them in float32).
#[test]
fn schedules_match_diffusers() {
    let st = read_safetensors(&fixture("schedules.safetensors"));
    let table = |name: &str| -> Vec<f32> { st[name].1.clone() };
    for (schedule, start, end) in [
        ("linear", 1e-4, 0.02),
        ("scaled_linear", 0.00085, 0.012),
        ("squaredcos_cap_v2", 1e-4, 0.02),
    ] {
        let cfg: ScheduleConfig = serde_json::from_value(serde_json::json!({
            "beta_schedule": schedule, "beta_start": start, "beta_end": end
        }))
        .unwrap();
        let ours = NoiseSchedule::from_config(&cfg).unwrap();
        assert_close(
            &format!("{schedule} betas"),
            &table(&format!("{schedule}/betas")),
            &ours.betas,
            0.0,
            1e-6,
        );
        assert_close(
            &format!("{schedule} alphas_cumprod"),
            &table(&format!("{schedule}/alphas_cumprod")),
            &ours.alphas_cumprod,
            0.0,
            3e-5,
        );
    }
}
