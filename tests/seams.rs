//! The seams the next model families plug into: conditioning with classifier-free guidance
//! (`models::cond`) against the network's own calls combined in f64 and against central finite
//! differences; the decode stage (`Run::decoder`); and scheduler history owned by each batch.

mod common;

use common::{fixture_model, gpu, read, Rng};
use wgsl_diff::gpu::{Gpu, Tensor};
use wgsl_diff::models::{denoise, denoise_vjp, Cond, Decoder, EpsModel, MapSpace, UNet2DModel};
use wgsl_diff::noise::NoisePlan;
use wgsl_diff::ops;
use wgsl_diff::sampling::{
    ClassChoice, ClassLabels, NonFiniteFlags, Run, SamplerConfig, SamplerKind, Scheduler, Spacing,
    StepContext,
};

const B: usize = 3;

fn labels(g: &Gpu, classes: [f32; B]) -> Cond {
    Cond::Class(g.upload(&[B], &classes).unwrap())
}

/// x (B, 1, 8, 8), timesteps and the two conditions of the class fixture (class 1 stands in for
/// a null class: the combination is the same whatever the unconditional label means).
fn inputs(g: &Gpu, seed: u64) -> (Tensor, Tensor, Cond, Cond) {
    let x = g
        .upload(&[B, 1, 8, 8], &Rng::new(seed).vec(B * 64))
        .unwrap();
    let t = g.upload(&[B], &[999.0, 17.0, 500.0]).unwrap();
    (x, t, labels(g, [3.0, 0.0, 9.0]), labels(g, [1.0, 1.0, 1.0]))
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// ε_u + w·(ε_c − ε_u) from one stacked call equals the two conditions' own calls combined in
/// f64 (the network treats rows independently, so the halves are the same ε).
#[test]
fn classifier_free_guidance_combines_both_conditions() {
    let g = gpu();
    let model = fixture_model("unet_tiny_class.safetensors");
    let (x, t, cond, uncond) = inputs(g, 1);
    let e_c = read(&model.predict_eps(g, &x, &t, &cond).unwrap());
    let e_u = read(&model.predict_eps(g, &x, &t, &uncond).unwrap());
    for w in [0.0f32, 1.0, 7.5, -2.0] {
        let guided = Cond::guided(cond.clone(), uncond.clone(), w).unwrap();
        let got = read(&denoise(&model, g, &x, &t, &guided).unwrap());
        let want: Vec<f64> = e_u
            .iter()
            .zip(&e_c)
            .map(|(&u, &c)| u as f64 + w as f64 * (c as f64 - u as f64))
            .collect();
        let err = max_abs_diff(&got, &want);
        assert!(err <= 1e-5, "w = {w}: max abs error {err:e}");
    }
}

/// The guided VJP is (1 − w)·VJP(uncond) + w·VJP(cond), and it is the gradient of the guided ε:
/// ⟨∂⟨ε, v⟩/∂x, d⟩ against a central difference of ⟨ε(x ± h·d), v⟩.
#[test]
fn classifier_free_guidance_vjp_is_the_guided_gradient() {
    let g = gpu();
    let model = fixture_model("unet_tiny_class.safetensors");
    let (x, t, cond, uncond) = inputs(g, 2);
    let w = 3.0f32;
    let guided = Cond::guided(cond.clone(), uncond.clone(), w).unwrap();
    let mut rng = Rng::new(3);
    let v = g.upload(&[B, 1, 8, 8], &rng.vec(B * 64)).unwrap();
    let got = read(&denoise_vjp(&model, g, &x, &t, &guided, &v).unwrap());
    let g_c = read(&EpsModel::vjp(&model, g, &x, &t, &cond, &v).unwrap());
    let g_u = read(&EpsModel::vjp(&model, g, &x, &t, &uncond, &v).unwrap());
    let want: Vec<f64> = g_u
        .iter()
        .zip(&g_c)
        .map(|(&u, &c)| (1.0 - w as f64) * u as f64 + w as f64 * c as f64)
        .collect();
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = max_abs_diff(&got, &want);
    assert!(err <= 1e-5 * scale.max(1.0), "VJP: max abs error {err:e}");

    let d = rng.vec(B * 64);
    let h = 1e-2f32;
    let shifted = |sign: f32| {
        let xs: Vec<f32> = read(&x)
            .iter()
            .zip(&d)
            .map(|(&a, &b)| a + sign * h * b)
            .collect();
        let xs = g.upload(&[B, 1, 8, 8], &xs).unwrap();
        let eps = read(&denoise(&model, g, &xs, &t, &guided).unwrap());
        eps.iter()
            .zip(&read(&v))
            .map(|(&e, &vv)| e as f64 * vv as f64)
            .sum::<f64>()
    };
    let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * h as f64);
    let analytic: f64 = got.iter().zip(&d).map(|(&a, &b)| a as f64 * b as f64).sum();
    let rel = (fd - analytic).abs() / analytic.abs().max(1e-3);
    assert!(
        rel < 2e-2,
        "directional derivative: finite difference {fd}, VJP {analytic}"
    );
}

/// The M copies of a guided batch: chunked calls (one copy per call) give the same ε as one
/// call over all copies, each copy combined with its own two halves.
#[test]
fn guided_copies_are_the_same_in_one_call_or_many() {
    let g = gpu();
    let model = fixture_model("unet_tiny_class.safetensors");
    let (x, t, cond, uncond) = inputs(g, 4);
    let guided = Cond::guided(cond, uncond, 2.5).unwrap();
    let scheduler = common::ddim(10);
    let noise = NoisePlan::new(0);
    let flags = NonFiniteFlags::new(g, B).unwrap();
    let ctx = StepContext {
        gpu: g,
        model: &model,
        scheduler: &scheduler,
        noise: &noise,
        first_index: 0,
        step: 0,
        timestep: 999,
        timesteps: &t,
        cond: &guided,
        x: &x,
        non_finite: &flags,
    };
    let copies = 3;
    let noisy = g
        .upload(&[copies * B, 1, 8, 8], &Rng::new(5).vec(copies * B * 64))
        .unwrap();
    let whole = read(&ctx.predict_copies(&noisy, copies, None).unwrap());
    let chunked = read(&ctx.predict_copies(&noisy, copies, Some(1)).unwrap());
    assert_eq!(whole, chunked);
    // Copy 1 alone, guided, is the second third of the stacked result.
    let one = common::read(
        &denoise(
            &model,
            g,
            &wgsl_diff::models::cond::row_range(g, &noisy, B, B).unwrap(),
            &t,
            &guided,
        )
        .unwrap(),
    );
    assert_eq!(&whole[B * 64..2 * B * 64], &one[..]);
}

/// Conditions that cannot be combined are refused by name, and a network never sees guidance.
#[test]
fn bad_conditions_are_errors() {
    let g = gpu();
    let model = fixture_model("unet_tiny_class.safetensors");
    let (x, t, cond, uncond) = inputs(g, 6);
    let msg = |r: wgsl_diff::Result<Cond>| r.err().unwrap().to_string();
    assert!(msg(Cond::guided(cond.clone(), uncond.clone(), f32::NAN)).contains("finite"));
    let guided = Cond::guided(cond.clone(), uncond.clone(), 2.0).unwrap();
    assert!(msg(Cond::guided(guided.clone(), uncond.clone(), 2.0)).contains("nest"));
    let two = Cond::Class(g.upload(&[2], &[0.0, 1.0]).unwrap());
    assert!(msg(Cond::guided(cond.clone(), two, 2.0)).contains("one unconditional row"));
    assert!(msg(Cond::guided(cond, Cond::None, 2.0)).contains("one kind"));
    let err = model
        .predict_eps(g, &x, &t, &guided)
        .unwrap_err()
        .to_string();
    assert!(err.contains("denoiser"), "{err}");
}

/// A decoder that doubles each side (nearest neighbour): the images come back decoded, the
/// maps' shape and space stay the model's.
struct Upsample2x;

impl Decoder for Upsample2x {
    fn image_shape(&self, [c, h, w]: [usize; 3]) -> [usize; 3] {
        [c, 2 * h, 2 * w]
    }
    fn decode(&self, gpu: &Gpu, samples: &Tensor) -> wgsl_diff::Result<Tensor> {
        ops::upsample_nearest2x(gpu, samples)
    }
    fn map_space(&self) -> MapSpace {
        MapSpace::Latent { factor: 2 }
    }
}

#[test]
fn runs_decode_each_finished_batch() {
    let g = gpu();
    let model: UNet2DModel = fixture_model("unet_tiny_class.safetensors");
    let scheduler = common::ddim(3);
    let noise = NoisePlan::new(9);
    let run = |decoder: &dyn Decoder| {
        Run {
            gpu: g,
            model: &model,
            scheduler: &scheduler,
            noise: &noise,
            labels: ClassLabels::new(model.num_classes(), Some(ClassChoice::Cycle)).unwrap(),
            init_noise: None,
            decoder,
            prompt: None,
        }
        .sample(0, 2, &mut (), |_| {})
        .unwrap()
    };
    let plain = run(&wgsl_diff::models::Identity);
    let decoded = run(&Upsample2x);
    assert_eq!(plain.sample_shape, [1, 8, 8]);
    assert_eq!(
        (plain.map_shape, plain.map_space),
        ([1, 8, 8], MapSpace::Image)
    );
    assert_eq!(decoded.sample_shape, [1, 16, 16]);
    assert_eq!(decoded.map_shape, [1, 8, 8]);
    assert_eq!(decoded.map_space, MapSpace::Latent { factor: 2 });
    for k in 0..2 {
        let (small, big) = (plain.image(k), decoded.image(k));
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(big[y * 16 + x], small[(y / 2) * 8 + x / 2]);
            }
        }
    }
}

/// History belongs to the batch: two DPM-Solver++(2M) batches stepped in turn give what each
/// gives alone (the loop used to hold the one previous x̂0).
#[test]
fn scheduler_history_belongs_to_each_batch() {
    let g = gpu();
    let schedule = wgsl_diff::sampling::NoiseSchedule::from_config(&Default::default()).unwrap();
    let config = SamplerConfig {
        kind: SamplerKind::Dpmpp2m,
        spacing: Spacing::Linspace,
        clip_sample: None,
        ..SamplerConfig::ddim(5)
    };
    let scheduler = Scheduler::new(config, schedule).unwrap();
    let mut rng = Rng::new(11);
    let shape = [2, 1, 4, 4];
    let tensor = |rng: &mut Rng| g.upload(&shape, &rng.vec(32)).unwrap();
    let (xa, xb) = (tensor(&mut rng), tensor(&mut rng));
    let eps: Vec<(Tensor, Tensor)> = (0..5)
        .map(|_| (tensor(&mut rng), tensor(&mut rng)))
        .collect();
    let alone = |x0: &Tensor, pick: fn(&(Tensor, Tensor)) -> &Tensor| {
        let mut state = scheduler.start();
        let mut x = x0.clone();
        for (i, e) in eps.iter().enumerate() {
            x = state.step(g, i, &x, pick(e), None).unwrap();
        }
        read(&x)
    };
    let (want_a, want_b) = (alone(&xa, |e| &e.0), alone(&xb, |e| &e.1));
    let (mut sa, mut sb) = (scheduler.start(), scheduler.start());
    let (mut a, mut b) = (xa.clone(), xb.clone());
    for (i, (ea, eb)) in eps.iter().enumerate() {
        a = sa.step(g, i, &a, ea, None).unwrap();
        b = sb.step(g, i, &b, eb, None).unwrap();
    }
    assert_eq!(read(&a), want_a);
    assert_eq!(read(&b), want_b);
    // The second-order steps read that history: a state started afresh at a second-order step
    // has none and is refused, rather than stepping as if it were first order.
    let err = scheduler
        .start()
        .step(g, 2, &xa, &eps[2].0, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("previous x0"), "{err}");
}

/// A ResnetBlock2D without a time embedding (the VAE's blocks): norm1 → SiLU → conv1 → norm2 →
/// SiLU → conv2 plus a 1×1 shortcut, against the f64 reference with the same seeded weights.
#[test]
fn resnet_block_without_time_embedding_matches_f64() {
    use common::reference as r;
    use wgsl_diff::models::diffusers::resnet::{ResnetBlock2D, ResnetConfig, TimeEmbeddingNorm};
    use wgsl_diff::models::weights::VarBuilder;
    let g = gpu();
    let (b, c_in, c_out, h, w, groups, eps) = (2, 4, 6, 5, 7, 2, 1e-6);
    let cfg = ResnetConfig {
        groups,
        eps: eps as f32,
        temb_channels: None,
        time_norm: TimeEmbeddingNorm::Default,
        output_scale_factor: 1.0,
    };
    let block = ResnetBlock2D::load(&VarBuilder::random(g, 21), c_in, c_out, &cfg).unwrap();
    // The same seeded draws, in the order the block loads them.
    let vb = VarBuilder::random(g, 21);
    let next = |shape: &[usize]| -> Vec<f64> {
        read(&vb.get("p", shape).unwrap())
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    let (g1, b1) = (next(&[c_in]), next(&[c_in]));
    let (w1, bias1) = (next(&[c_out, c_in, 3, 3]), next(&[c_out]));
    let (g2, b2) = (next(&[c_out]), next(&[c_out]));
    let (w2, bias2) = (next(&[c_out, c_out, 3, 3]), next(&[c_out]));
    let (ws, bias_s) = (next(&[c_out, c_in, 1, 1]), next(&[c_out]));
    let x = Rng::new(22).vec(b * c_in * h * w);
    let got = read(
        &block
            .forward(g, &g.upload(&[b, c_in, h, w], &x).unwrap(), None)
            .unwrap(),
    );
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let n1 = r::group_norm(&x64, b, c_in, h * w, groups, eps, &g1, &b1, true);
    let (h1, _, _) = r::conv2d(
        &n1,
        (b, c_in, h, w),
        &w1,
        (c_out, 3, 3),
        Some(&bias1),
        1,
        1,
        0,
    );
    let n2 = r::group_norm(&h1, b, c_out, h * w, groups, eps, &g2, &b2, true);
    let (h2, _, _) = r::conv2d(
        &n2,
        (b, c_out, h, w),
        &w2,
        (c_out, 3, 3),
        Some(&bias2),
        1,
        1,
        0,
    );
    let (s, _, _) = r::conv2d(
        &x64,
        (b, c_in, h, w),
        &ws,
        (c_out, 1, 1),
        Some(&bias_s),
        1,
        0,
        0,
    );
    let want: Vec<f64> = h2.iter().zip(&s).map(|(a, b)| a + b).collect();
    let err = max_abs_diff(&got, &want);
    assert!(err <= 1e-4, "max abs error {err:e}");
    // A block without a projection refuses a time embedding, and one with it needs one.
    let temb = g.upload(&[b, 3], &[0.5; 6]).unwrap();
    let x = g.upload(&[b, c_in, h, w], &x).unwrap();
    let err = block.forward(g, &x, Some(&temb)).unwrap_err().to_string();
    assert!(err.contains("no time_emb_proj"), "{err}");
    let with_temb = ResnetConfig {
        temb_channels: Some(3),
        ..cfg
    };
    let block = ResnetBlock2D::load(&VarBuilder::random(g, 21), c_in, c_out, &with_temb).unwrap();
    let err = block.forward(g, &x, None).unwrap_err().to_string();
    assert!(err.contains("needs one"), "{err}");
}
