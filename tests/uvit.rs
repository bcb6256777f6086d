//! U-ViT against the authors' own module (`libs/uvit.py` of baofff/U-ViT) in float64 at random
//! weights (tests/fixtures/uvit_*.safetensors, `python -m tools.fixtures.uvit --uvit CHECKOUT`):
//! the ImageNet configs' shape (patch 2 over a 4-channel latent, a class token, no time MLP, no
//! final conv) and the pixel configs' options (qkv bias, time MLP, final conv, unconditional).

mod common;

use common::{assert_close, fixture, gpu, read, read_safetensors, to_f64};
use wgsl_diff::models::{load_eps_model, Cond, EpsModel, WeightFile};
use wgsl_diff::ops::UncertaintyMode;
use wgsl_diff::sampling::{load_for_sampling, SamplerChoice, SamplerKind};
use wgsl_diff::uncertainty::{UncertaintyConfig, UncertaintyEstimator};

#[test]
fn eps_matches_the_authors_module() {
    let g = gpu();
    for name in ["class", "pixel"] {
        let file = WeightFile::open(&fixture(&format!("uvit_{name}.safetensors"))).unwrap();
        let model = load_eps_model(g, &file).unwrap();
        let io = read_safetensors(&fixture(&format!("uvit_{name}_io.safetensors")));
        let up = |key: &str| g.upload(&io[key].0, &io[key].1).unwrap();
        let cond = Cond::from_labels(io.contains_key("y").then(|| up("y")));
        let eps = model
            .predict_eps(g, &up("x"), &up("timesteps"), &cond)
            .unwrap();
        assert_eq!(eps.shape(), &io["output"].0[..]);
        let want = to_f64(&io["output"].1);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert_close(
            &format!("uvit_{name}"),
            &read(&eps),
            &want,
            1e-4 * scale.max(1.0),
            1e-4,
        );
        assert_eq!(model.sample_shape().unwrap(), [io["x"].0[1], 8, 8]);
    }
}

/// Class labels where the model takes none, none where it needs them, a wrong input size.
#[test]
fn bad_inputs_are_refused() {
    let g = gpu();
    let open = |name: &str| {
        let file = WeightFile::open(&fixture(&format!("uvit_{name}.safetensors"))).unwrap();
        load_eps_model(g, &file).unwrap()
    };
    let (class, pixel) = (open("class"), open("pixel"));
    let t = g.upload(&[1], &[10.0]).unwrap();
    let x = |c: usize, side: usize| {
        g.upload(&[1, c, side, side], &vec![0.5; c * side * side])
            .unwrap()
    };
    let label = Cond::Class(g.upload(&[1], &[2.0]).unwrap());
    for (what, model, x, cond, expected) in [
        ("no label", &class, x(4, 8), Cond::None, "class label"),
        ("a label", &pixel, x(3, 8), label.clone(), "no class labels"),
        ("wrong size", &class, x(4, 6), label, "needs (1, 4, 8, 8)"),
    ] {
        let err = model.predict_eps(g, &x, &t, &cond).unwrap_err().to_string();
        assert!(err.contains(expected), "{what}: {err}");
    }
}

/// From the command line: U-ViT's latents decoded by an autoencoder given with --vae (the tiny SD
/// VAE, 8× up), classifier-free guidance toward the class away from the null class recorded in
/// the run; batching changes no sample, guidance changes them; --cfg-scale on a model without a
/// null class and --vae beside a Stable Diffusion model are refused.
#[test]
fn the_cli_samples_a_latent_uvit_with_class_guidance() {
    use std::process::Command;
    let dir = common::tmp_dir("uvit-cli");
    let run = |out: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args([
                "sample", "--quiet", "--num", "2", "--steps", "3", "--class", "cycle",
            ])
            .arg("--model")
            .arg(fixture("uvit_class.safetensors"))
            .arg("--vae")
            .arg(fixture("vae_sd_tiny.safetensors"))
            .args(extra)
            .arg("--out")
            .arg(dir.join(out))
            .output()
            .unwrap()
    };
    for (out, extra) in [
        ("guided-1", vec!["--cfg-scale", "1.4", "--batch", "1"]),
        ("guided-2", vec!["--cfg-scale", "1.4", "--batch", "2"]),
        ("plain", vec!["--batch", "2"]),
    ] {
        let o = run(out, &extra);
        assert!(
            o.status.success(),
            "{out}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for i in 0..2 {
        let name = format!("sample_{i:06}.png");
        let read = |run: &str| std::fs::read(dir.join(run).join(&name)).unwrap();
        assert_eq!(
            read("guided-1"),
            read("guided-2"),
            "{name}: batching changed it"
        );
        assert_ne!(
            read("guided-1"),
            read("plain"),
            "{name}: guidance changed nothing"
        );
        let img = wgsl_diff::images::read_png(&dir.join("plain").join(&name)).unwrap();
        assert_eq!(
            (img.height, img.width, img.channels),
            (64, 64, 3),
            "8× the 8 × 8 latent"
        );
    }
    let manifest = std::fs::read_to_string(dir.join("guided-1/run.json")).unwrap();
    assert!(manifest.contains("\"cfg_scale\": 1.4"), "{manifest}");
    assert!(manifest.contains("vae_sd_tiny"), "{manifest}");
    let refused = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["sample", "--quiet", "--num", "1", "--cfg-scale", "2"])
        .arg("--model")
        .arg(fixture("unet_tiny_gray.safetensors"))
        .arg("--out")
        .arg(dir.join("refused"))
        .output()
        .unwrap();
    common::assert_clean_failure(
        &refused,
        "cfg on a model without a null class",
        "null class",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The paper's ImageNet 256/512 setting at toy size: the latent U-ViT on the Stable Diffusion
/// schedule, 3 DPM-Solver++(2M) steps, each with the uncertainty map from ε (ours) and the
/// official DPM scheduler's estimate from the data prediction (`official-dpm`), against an
/// independent float64 PyTorch implementation (tools/fixtures/uvit_dpm.py) with the same re-noise
/// draws: every map, the sample after each step, the final latents.
#[test]
fn dpm_solver_uncertainty_matches_an_independent_pytorch_implementation() {
    let st = read_safetensors(&fixture("uvit_dpm.safetensors"));
    let g = gpu();
    let (_, timesteps) = st["timesteps"].clone();
    let steps = timesteps.len();
    let choice = SamplerChoice {
        kind: SamplerKind::Dpmpp2m,
        steps: Some(steps),
        eta: 0.0,
        spacing: None,
        steps_offset: None,
        clip: true,
    };
    let (model, sched) =
        load_for_sampling(g, &fixture("uvit_latent.safetensors"), &choice).unwrap();
    let ours: Vec<f32> = sched.timesteps.iter().map(|&t| t as f32).collect();
    assert_eq!(ours, timesteps, "linspace timesteps");
    assert_eq!(
        sched.config.clip_sample, None,
        "the latent schedule clips nothing"
    );
    let (shape, init) = st["init_noise"].clone();
    let labels: Vec<usize> = st["labels"].1.iter().map(|&l| l as usize).collect();
    let draws: Vec<(Vec<usize>, Vec<f32>)> = (0..steps)
        .map(|i| st[&format!("perturbation/{i}")].clone())
        .collect();
    for (mode, name) in [
        (UncertaintyMode::Centred, "centred"),
        (UncertaintyMode::OfficialDpm, "official_dpm"),
    ] {
        let replay = draws.iter().map(|(s, d)| g.upload(s, d).unwrap()).collect();
        let config = UncertaintyConfig {
            copies: draws[0].0[0] / shape[0],
            mode,
            keep_maps: 0..usize::MAX,
            ..Default::default()
        };
        config.check_sampler(&sched.config).unwrap();
        let mut est = UncertaintyEstimator::new(config).unwrap();
        let x = common::sample_replaying_draws(
            g,
            model.as_ref(),
            &sched,
            (&shape, &init),
            Some(&labels),
            replay,
            &mut est,
        );
        assert_eq!(est.maps.len(), steps);
        common::assert_step_maps(&st, name, &est.maps);
        let (_, want) = st["final"].clone();
        let top = want.iter().fold(1f64, |m, &v| m.max(v.abs() as f64));
        assert_close(
            &format!("{name}: final latents"),
            &x,
            &to_f64(&want),
            1e-4 * top,
            0.0,
        );
    }
}

/// A checkpoint whose config flags contradict its tensors is refused at load, naming what does
/// not fit, before any sampling.
#[test]
fn a_checkpoint_whose_flags_contradict_its_tensors_is_refused() {
    for (edit, expected) in [
        (("\"qkv_bias\":false", "\"qkv_bias\":true"), "qkv.bias"),
        (
            ("\"mlp_time_embed\":false", "\"mlp_time_embed\":true"),
            "time_embed",
        ),
        (("\"conv\":false", "\"conv\":true"), "final_layer"),
        (("\"depth\":4", "\"depth\":6"), "blocks"),
        (("\"embed_dim\":32", "\"embed_dim\":48"), "shape"),
        (("\"num_classes\":11", "\"num_classes\":12"), "label_emb"),
    ] {
        let path = common::with_config_edit("uvit_class.safetensors", edit, "uvit.safetensors");
        let err = match load_eps_model(gpu(), &WeightFile::open(&path).unwrap()) {
            Ok(_) => panic!("{edit:?}: a contradictory file loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{edit:?}: {err}");
    }
}

/// From the command line on the latent U-ViT: DPM-Solver++ with the uncertainty from ε and with
/// the official DPM estimate (recorded in the run, scoring differently), Rule P and Rule G
/// guidance; the
/// null class as a class to draw, a latent model without a decoder and the official DPM estimate
/// on DDIM are refused before any sampling.
#[test]
fn the_cli_runs_dpm_solver_uncertainty_and_refuses_what_does_not_fit() {
    use std::process::Command;
    let dir = common::tmp_dir("uvit-dpm-cli");
    let run = |out: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args(["sample", "--quiet", "--num", "2", "--steps", "3"])
            .arg("--model")
            .arg(fixture("uvit_latent.safetensors"))
            .args(extra)
            .arg("--out")
            .arg(dir.join(out))
            .output()
            .unwrap()
    };
    let vae = fixture("vae_sd_tiny.safetensors");
    let vae = vae.to_str().unwrap();
    let dpm = ["--vae", vae, "--class", "cycle", "--sampler", "dpmpp2m"];
    let scores = |out: &str| -> Vec<f64> {
        let text = std::fs::read_to_string(dir.join(out).join("samples.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["score"].as_f64().unwrap())
            .collect()
    };
    for (out, extra) in [
        ("centred", vec!["--uncertainty"]),
        (
            "official",
            vec!["--uncertainty", "--uc-mode", "official-dpm"],
        ),
        (
            "posterior",
            vec!["--uncertainty", "--guidance", "posterior"],
        ),
        ("gradient", vec!["--uncertainty", "--guidance", "gradient"]),
    ] {
        let o = run(out, &[&dpm[..], &extra].concat());
        assert!(
            o.status.success(),
            "{out}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let (centred, official) = (scores("centred"), scores("official"));
    assert_eq!(centred.len(), 2);
    for (c, o) in centred.iter().zip(&official) {
        assert!(c.is_finite() && o.is_finite() && c != o, "{c} vs {o}");
    }
    let manifest = std::fs::read_to_string(dir.join("official/run.json")).unwrap();
    assert!(manifest.contains("official-dpm"), "{manifest}");
    let image = |run: &str| {
        let path = dir.join(run).join("sample_000000.png");
        wgsl_diff::images::read_png(&path).unwrap().pixels
    };
    assert_eq!(
        image("centred"),
        image("official"),
        "the estimate moved the trajectory"
    );
    assert_ne!(
        image("centred"),
        image("posterior"),
        "Rule P changed nothing"
    );
    assert_ne!(
        image("centred"),
        image("gradient"),
        "Rule G changed nothing"
    );
    for (what, extra, expected) in [
        (
            "the null class",
            vec!["--vae", vae, "--class", "10"],
            "null class",
        ),
        ("no decoder", vec!["--class", "1"], "--vae"),
        (
            "official-dpm on ddim",
            vec![
                "--vae",
                vae,
                "--class",
                "1",
                "--uncertainty",
                "--uc-mode",
                "official-dpm",
            ],
            "dpmpp2m",
        ),
    ] {
        common::assert_clean_failure(&run("refused", &extra), what, expected);
        assert!(
            !dir.join("refused/sample_000000.png").exists(),
            "{what}: sampled"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The input gradient gradient guidance needs, ∂⟨ε, v⟩/∂x, against torch.autograd through the
/// authors' module in float64, for both configs (patch 2 with the long skips and a class token;
/// patch 4 with qkv bias, the time MLP and the final conv), whole and one sample per slice; and
/// through `EpsModel::vjp` with the labels as a condition.
#[test]
fn vjp_matches_torch_autograd() {
    let g = gpu();
    for name in ["class", "pixel"] {
        let file = WeightFile::open(&fixture(&format!("uvit_{name}.safetensors"))).unwrap();
        let model = wgsl_diff::models::UViT::load(g, &file).unwrap();
        let io = read_safetensors(&fixture(&format!("uvit_{name}_io.safetensors")));
        let up = |k: &str| g.upload(&io[k].0, &io[k].1).unwrap();
        let (x, t, v) = (up("x"), up("timesteps"), up("v"));
        let labels = io.contains_key("y").then(|| up("y"));
        let want = to_f64(&io["grad"].1);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for per_call in [2, 1] {
            let got = model
                .vjp_sliced(g, &x, &t, labels.as_ref(), &v, per_call)
                .unwrap();
            let what = format!("{name} vjp, {per_call} per call (|grad| ≤ {scale:.2})");
            assert_close(&what, &read(&got), &want, 1e-4 * scale.max(1.0), 1e-4);
        }
        let cond = labels.map_or(Cond::None, Cond::Class);
        let got = EpsModel::vjp(&model, g, &x, &t, &cond, &v).unwrap();
        let what = format!("{name} EpsModel::vjp");
        assert_close(&what, &read(&got), &want, 1e-4 * scale.max(1.0), 1e-4);
    }
}

/// U-ViT's autoencoder as `tools/convert.py --uvit --autoencoder` converts it from the authors'
/// key names (their `libs/autoencoder.py`, toy width, random weights) decodes scaled latents of
/// H ≠ W as the authors' `FrozenAutoencoderKL.decode` does in float64
/// (tools/fixtures/uvit_autoencoder.py).
#[test]
fn the_converted_autoencoder_decodes_as_the_authors_module() {
    use wgsl_diff::models::diffusers::autoencoder_kl::AutoencoderKlDecoder;
    use wgsl_diff::models::Decoder;
    let g = gpu();
    let file = WeightFile::open(&fixture("uvit_autoencoder_vae.safetensors")).unwrap();
    let vae = AutoencoderKlDecoder::load(g, &file).unwrap();
    let io = read_safetensors(&fixture("uvit_autoencoder_io.safetensors"));
    let z = g.upload(&io["z"].0, &io["z"].1).unwrap();
    let images = vae.decode(g, &z).unwrap();
    assert_eq!(images.shape(), &io["output"].0[..]);
    let want = to_f64(&io["output"].1);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert_close(
        "decoded",
        &read(&images),
        &want,
        1e-4 * scale.max(1.0),
        1e-4,
    );
}

/// U-ViT-H/2, the paper's ImageNet 256 network (embedding 1152, depth 28, 16 heads, 501 M
/// parameters), at random weights on a 4 × 32 × 32 latent, against the authors' module in float64:
/// ε and the input gradient. The fixture is 2 GB, so it is made on demand (`python -m
/// tools.fixtures.uvit --uvit CHECKOUT --full imagenet256_uvit_huge`, then `cargo test --release
/// --test uvit -- --ignored`).
#[test]
#[ignore]
fn full_uvit_h2_matches_the_authors_module() {
    let g = gpu();
    let name = "large/uvit_imagenet256_uvit_huge";
    let file = WeightFile::open(&fixture(&format!("{name}.safetensors"))).unwrap();
    let model = wgsl_diff::models::UViT::load(g, &file).unwrap();
    let io = read_safetensors(&fixture(&format!("{name}_io.safetensors")));
    let up = |k: &str| g.upload(&io[k].0, &io[k].1).unwrap();
    let (x, t, y, v) = (up("x"), up("timesteps"), up("y"), up("v"));
    let start = std::time::Instant::now();
    let eps = model.forward(g, &x, &t, Some(&y)).unwrap();
    let got = read(&eps);
    eprintln!(
        "U-ViT-H/2 forward, B 1: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let want = to_f64(&io["output"].1);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert_close("U-ViT-H/2 ε", &got, &want, 1e-4 * scale.max(1.0), 1e-4);
    let start = std::time::Instant::now();
    let grad = read(&model.vjp(g, &x, &t, Some(&y), &v).unwrap());
    eprintln!("U-ViT-H/2 vjp, B 1: {:.1} s", start.elapsed().as_secs_f64());
    let want = to_f64(&io["grad"].1);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert_close("U-ViT-H/2 vjp", &grad, &want, 1e-4 * scale.max(1.0), 1e-4);
}
