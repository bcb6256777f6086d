//! f16 activations (`ops::to_half`, the kernels' half variants, `UNet2DModel::with_f16_activations`).
//!
//! Each op's half variant reads the same values as its f32 variant (the inputs are f16-rounded
//! first and fed to both) and computes in f32, so its output must be the f32 output (itself held
//! to the f64 references elsewhere) rounded to f16: one of its two f16 neighbours (WGSL leaves
//! which to the implementation), within 2^-10 relative. On both kernel classes. Then the models: the fixture UNets against their float64 PyTorch outputs,
//! and the shipped model against its f32 self, with the error stated.

mod common;

use common::{
    attention_gpus, conv_out_hw, fixture, gpus, read_from, to_f64, upload_to, Rng, CONV_CASES,
};
use half::f16;
use std::path::Path;
use wgsl_diff::gpu::{DType, Gpu, Tensor};
use wgsl_diff::models::{load_eps_model, Cond, WeightFile};
use wgsl_diff::ops::{self, Conv2dArgs};

/// `data` rounded to f16 and back: the values an f16 activation holds.
fn f16_values(data: &[f32]) -> Vec<f32> {
    data.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
}

/// An f32 tensor of `shape` with f16-exact random values, and its f16 twin.
fn pair(g: &Gpu, rng: &mut Rng, shape: &[usize]) -> (Tensor, Tensor) {
    let data = f16_values(&rng.vec(shape.iter().product()));
    let full = upload_to(g, &data, shape);
    let half = ops::to_half(g, &full).unwrap();
    assert_eq!(half.dtype(), DType::F16);
    (full, half)
}

/// `half` (an f16 activation) is `full` rounded to f16, up or down: within one f16 ulp (2^-10
/// relative, and 2^-24 absolute below f16's normal range).
fn assert_rounded(g: &Gpu, what: &str, half: &Tensor, full: &Tensor) {
    assert_eq!(half.dtype(), DType::F16, "{what}: output storage");
    assert_eq!(half.shape(), full.shape(), "{what}: shape");
    let got = read_from(g, &ops::to_f32(g, half).unwrap());
    let want = read_from(g, full);
    let mut worst = 0f64;
    for (i, (&h, &f)) in got.iter().zip(&want).enumerate() {
        let bound = (f.abs() as f64) * 2f64.powi(-10) + 2f64.powi(-24);
        let err = (h as f64 - f as f64).abs();
        assert!(
            err <= bound,
            "{what} {:?}: element {i} is {h} in f16, {f} in f32 (error {err:.3e} > {bound:.3e})",
            g.kernel_class()
        );
        worst = worst.max(err / (f.abs() as f64).max(1e-30));
    }
    eprintln!(
        "{what} {:?}: worst relative error {worst:.2e}",
        g.kernel_class()
    );
}

#[test]
fn conversions_round_to_nearest_and_back_exactly() {
    let mut rng = Rng::new(90);
    let g = gpus()[0];
    // Beyond random values: ties, subnormals, the largest finite f16 and overflow to infinity.
    let mut data: Vec<f32> = rng.vec(999).iter().map(|v| 40.0 * v).collect();
    data.extend([1.0 + 2f32.powi(-11), 3e-6, -6e-8, 65504.0, 70000.0, -0.0]);
    let x = upload_to(g, &data, &[data.len()]);
    let back = read_from(g, &ops::to_f32(g, &ops::to_half(g, &x).unwrap()).unwrap());
    assert_eq!(back.len(), data.len());
    // WGSL lets a conversion round to either neighbour: the nearest f16 (lavapipe does) or the
    // one toward zero (65504 rather than infinity for 70000); f16-exact values come back as is.
    for (i, (&b, &v)) in back.iter().zip(&data).enumerate() {
        let nearest = f16::from_f32(v);
        let toward_zero = match nearest.to_f32().abs() > v.abs() {
            true => f16::from_bits(nearest.to_bits() - 1),
            false => nearest,
        };
        let ok = [nearest, toward_zero]
            .iter()
            .any(|h| h.to_f32().to_bits() == b.to_bits());
        assert!(ok, "{i}: {v} → {b}, want {nearest} or {toward_zero}");
    }
    let err = ops::add(g, &x, &ops::to_half(g, &x).unwrap()).unwrap_err();
    assert!(err.to_string().contains("f16 activations mix"), "{err}");
}

#[test]
fn elementwise_resampling_and_norm_ops_round_their_f32_results() {
    let mut rng = Rng::new(91);
    for g in gpus() {
        // Planes of 16 and of 15 pixels: the vec4 entries and the scalar ones.
        for (h, w) in [(4, 4), (3, 5)] {
            let shape = [2, 8, h, w];
            let (x, xh) = pair(g, &mut rng, &shape);
            let (y, yh) = pair(g, &mut rng, &shape);
            let (v, vh) = pair(g, &mut rng, &[2, 8]);
            let (emb, embh) = pair(g, &mut rng, &[2, 16]);
            let check = |what: &str, half: Result<Tensor, _>, full: Result<Tensor, _>| {
                let what = format!("{what} {h}x{w}");
                assert_rounded(g, &what, &half.unwrap(), &full.unwrap());
            };
            check("silu", ops::silu(g, &xh), ops::silu(g, &x));
            check(
                "affine",
                ops::affine(g, &xh, 0.5, -2.0),
                ops::affine(g, &x, 0.5, -2.0),
            );
            check("add", ops::add(g, &xh, &yh), ops::add(g, &x, &y));
            check("mul", ops::mul(g, &xh, &yh), ops::mul(g, &x, &y));
            check(
                "add_channel_vec",
                ops::add_channel_vec(g, &xh, &vh),
                ops::add_channel_vec(g, &x, &v),
            );
            check(
                "scale_shift",
                ops::scale_shift(g, &xh, &embh),
                ops::scale_shift(g, &x, &emb),
            );
            check(
                "concat_channels",
                ops::concat_channels(g, &[&xh, &yh]),
                ops::concat_channels(g, &[&x, &y]),
            );
            check(
                "slice_channels",
                ops::slice_channels(g, &xh, 3, 4),
                ops::slice_channels(g, &x, 3, 4),
            );
            check(
                "upsample_nearest2x",
                ops::upsample_nearest2x(g, &xh),
                ops::upsample_nearest2x(g, &x),
            );
            check(
                "avg_pool2x",
                ops::avg_pool2x(g, &xh),
                ops::avg_pool2x(g, &x),
            );
            let flat = |t: &Tensor| t.reshape(&[2, 8, h * w]).unwrap();
            check(
                "transpose_last2",
                ops::transpose_last2(g, &flat(&xh)),
                ops::transpose_last2(g, &flat(&x)),
            );
            let (gamma, beta) = (
                upload_to(g, &rng.vec(8), &[8]),
                upload_to(g, &rng.vec(8), &[8]),
            );
            for silu in [false, true] {
                check(
                    &format!("group_norm silu={silu}"),
                    ops::group_norm(g, &xh, 4, 1e-5, &gamma, &beta, silu),
                    ops::group_norm(g, &x, 4, 1e-5, &gamma, &beta, silu),
                );
            }
        }
    }
}

#[test]
fn conv2d_rounds_its_f32_result_on_every_case() {
    let mut rng = Rng::new(92);
    for g in gpus() {
        for case in CONV_CASES {
            let (b, c_in, h, w, c_out, k, stride, pad, extra) = case;
            let (x, xh) = pair(g, &mut rng, &[b, c_in, h, w]);
            let weight = upload_to(g, &rng.vec(c_out * c_in * k * k), &[c_out, c_in, k, k]);
            let bias = upload_to(g, &rng.vec(c_out), &[c_out]);
            let (ho, wo) = conv_out_hw(case);
            let (r, rh) = pair(g, &mut rng, &[b, c_out, ho, wo]);
            let args = |residual| Conv2dArgs {
                stride,
                pad_bottom_right: extra,
                residual,
                out_scale: 0.5,
                ..Conv2dArgs::padded(pad)
            };
            let full = ops::conv2d(g, &x, &weight, Some(&bias), args(Some(&r)));
            let half = ops::conv2d(g, &xh, &weight, Some(&bias), args(Some(&rh)));
            assert_rounded(
                g,
                &format!("conv2d {case:?}"),
                &half.unwrap(),
                &full.unwrap(),
            );
        }
    }
}

#[test]
fn products_and_attention_round_their_f32_results() {
    let mut rng = Rng::new(93);
    for g in gpus() {
        // Linear layers (A activations, B an f32 weight), with and without vec4 loads.
        for (rows, k, n) in [(5, 12, 8), (3, 7, 5)] {
            let (x, xh) = pair(g, &mut rng, &[rows, k]);
            let weight = upload_to(g, &rng.vec(n * k), &[n, k]);
            let bias = upload_to(g, &rng.vec(n), &[n]);
            assert_rounded(
                g,
                &format!("linear {rows}x{k}x{n}"),
                &ops::linear(g, &xh, &weight, Some(&bias)).unwrap(),
                &ops::linear(g, &x, &weight, Some(&bias)).unwrap(),
            );
        }
        // Batched products of two activations (attention's: B read as f16 too).
        let (a, ah) = pair(g, &mut rng, &[3, 5, 8]);
        let (b, bh) = pair(g, &mut rng, &[3, 8, 12]);
        assert_rounded(
            g,
            "batched matmul",
            &ops::matmul(g, &ah, &bh).unwrap(),
            &ops::matmul(g, &a, &b).unwrap(),
        );
    }
    // Attention as products (its softmax rounds the probabilities to f16, so the output is not
    // one rounding of the f32 output: held to that within the probabilities' rounding instead).
    let [own, other, fused] = attention_gpus();
    for g in [own, other] {
        for (b, n, c, heads) in [(2, 7, 6, 3), (1, 16, 64, 1)] {
            let (q, qh) = pair(g, &mut rng, &[b, n, c]);
            let (k, kh) = pair(g, &mut rng, &[b, n, c]);
            let (v, vh) = pair(g, &mut rng, &[b, n, c]);
            let scale = 1.0 / ((c / heads) as f32).sqrt();
            let full = read_from(g, &ops::attention(g, &q, &k, &v, heads, scale).unwrap());
            let half = ops::attention(g, &qh, &kh, &vh, heads, scale).unwrap();
            let half = read_from(g, &ops::to_f32(g, &half).unwrap());
            let vmax = read_from(g, &v).iter().fold(0f32, |m, x| m.max(x.abs()));
            // Scores, probabilities and output are each rounded to f16 once: each moves the
            // output by a few 2^-11 of the largest |v| at most; held to 8 of them.
            let bound = 2f32.powi(-8) * vmax;
            let worst = half
                .iter()
                .zip(&full)
                .map(|(h, f)| (h - f).abs())
                .fold(0f32, f32::max);
            eprintln!(
                "attention {:?} {:?}: max abs error {worst:.2e} (bound {bound:.2e})",
                g.kernel_class(),
                (b, n, c, heads)
            );
            assert!(
                worst <= bound,
                "attention {:?}: {worst} > {bound}",
                (b, n, c, heads)
            );
        }
    }
    // The fused kernels read f32 only: a clear refusal.
    let (_, qh) = pair(fused, &mut rng, &[1, 4, 8]);
    let err = ops::attention(fused, &qh, &qh, &qh, 1, 0.5).unwrap_err();
    assert!(err.to_string().contains("products"), "{err}");
}

/// One forward of fixture `name`'s model at its inputs, with f32 or f16 activations, and the
/// float64 reference output.
fn fixture_forward(g: &Gpu, name: &str, half: bool) -> (Vec<f32>, Vec<f64>) {
    let path = fixture(&format!("{name}.safetensors"));
    let tensors = common::read_safetensors(&fixture(&format!("{name}_io.safetensors")));
    let input = |key: &str| {
        tensors
            .get(key)
            .unwrap_or_else(|| panic!("{name}: no {key}"))
    };
    let model = load_eps_model(
        g,
        &WeightFile::open(&path).unwrap().with_f16_activations(half),
    )
    .unwrap();
    let (shape, sample) = input("sample");
    let (_, t) = input("timestep");
    let labels = tensors.get("class_labels").map(|(s, d)| upload_to(g, d, s));
    let cond = match tensors.get("encoder_hidden_states") {
        Some((s, d)) => Cond::Text(upload_to(g, d, s)),
        None => Cond::from_labels(labels),
    };
    let eps = model
        .predict_eps(
            g,
            &upload_to(g, sample, shape),
            &upload_to(g, t, &[t.len()]),
            &cond,
        )
        .unwrap();
    (read_from(g, &eps), to_f64(&input("output").1))
}

/// The fixture UNets with f16 activations against their float64 PyTorch outputs: f16's 2^-11
/// rounding at every layer, stated and bounded relative to the output's size (measured on
/// lavapipe: 1.7e-3 to 2.7e-3 over ε up to 1.4–2.2, where f32 activations give ≤ 2.9e-6), Stable
/// Diffusion's text UNets (their text states entering as f16) among them.
#[test]
fn fixture_unets_with_f16_activations_stay_near_float64() {
    for g in gpus() {
        for name in [
            "unet_tiny_rgb",
            "unet_tiny_gray",
            "unet_tiny_class",
            "unet_tiny_scale_shift",
            "unet_tiny_odd",
            "sd_unet_sd_tiny",
            "sd_unet_diffusers_test",
            "sd_unet_three_levels",
        ] {
            let (half, want) = fixture_forward(g, name, true);
            let (full, _) = fixture_forward(g, name, false);
            let err = |got: &[f32]| {
                got.iter()
                    .zip(&want)
                    .map(|(g, w)| (*g as f64 - w).abs())
                    .fold(0f64, f64::max)
            };
            let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
            let (e_half, e_full) = (err(&half), err(&full));
            eprintln!("{name} {:?}: max abs error f16 activations {e_half:.2e}, f32 {e_full:.2e} (|ε| up to {scale:.2})", g.kernel_class());
            assert!(
                e_half <= 5e-3 * scale,
                "{name}: f16 activations off by {e_half} (|ε| up to {scale})"
            );
            assert!(
                e_half > e_full,
                "{name}: f16 activations ({e_half}) not less exact than f32 ({e_full})"
            );
        }
    }
}

/// The shipped model's ε with f16 activations against its f32 self (B 2).
#[test]
fn shipped_model_with_f16_activations_stays_near_f32() {
    let g = gpus()[0];
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/fashion_mnist_ddpm.safetensors");
    let forward = |half_activations, half_weights| {
        let file = WeightFile::open(&path)
            .unwrap()
            .with_f16_activations(half_activations)
            .with_f16_weights(half_weights);
        let model = load_eps_model(g, &file).unwrap();
        let [c, h, w] = model.sample_shape().unwrap();
        let x = Rng::new(163).vec(2 * c * h * w);
        let t = [100.0, 500.0];
        let eps = model
            .predict_eps(
                g,
                &upload_to(g, &x, &[2, c, h, w]),
                &upload_to(g, &t, &[2]),
                &Cond::None,
            )
            .unwrap();
        read_from(g, &eps)
    };
    let full = forward(false, false);
    let max_abs = full.iter().fold(0f32, |m, v| m.max(v.abs()));
    // Half the bytes per activation: twice the batch per binding.
    let max_batch = |half| {
        let file = WeightFile::open(&path).unwrap().with_f16_activations(half);
        load_eps_model(g, &file).unwrap().max_batch(g)
    };
    let (half_batch, full_batch) = (max_batch(true), max_batch(false));
    assert!(
        (2 * full_batch..=2 * full_batch + 1).contains(&half_batch),
        "{half_batch} vs {full_batch}"
    );
    // f16 activations alone, and with f16 weights (whose own error is 6.0e-4 here,
    // tests/f16_weights.rs).
    for (what, half, bound) in [
        ("f16 activations", forward(true, false), 2e-3),
        ("f16 activations and weights", forward(true, true), 3e-3),
    ] {
        let max_err = full
            .iter()
            .zip(&half)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "shipped model, {what} vs f32: max abs error {max_err:.3e} (|ε| up to {max_abs:.2})"
        );
        assert!(
            max_err <= bound * max_abs,
            "{what}: {max_err} vs |ε| up to {max_abs}"
        );
        assert_ne!(full, half, "{what}");
    }
}

/// From the CLI: a run with f16 activations records them in run.json (so it never resumes an
/// f32 run or the other way round), and gradient guidance refuses them before sampling.
#[test]
fn the_cli_samples_with_f16_activations_and_records_them() {
    let dir = common::tmp_dir("f16-activations");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args([
                "sample",
                "--num",
                "2",
                "--steps",
                "2",
                "--quiet",
                "--f16-activations",
            ])
            .args(extra)
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read_to_string(dir.join("run.json")).unwrap();
    assert!(manifest.contains("\"f16_activations\": true"), "{manifest}");
    assert!(dir.join("sample_000001.png").exists());
    let out = run(&["--uncertainty", "--guidance", "gradient"]);
    common::assert_clean_failure(&out, "guided f16 sampling", "drop --f16-activations");
}
