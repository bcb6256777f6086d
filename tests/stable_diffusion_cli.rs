//! `wgsl-diff sample --prompt` on a Stable Diffusion folder as diffusers lays it out
//! (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), assembled from the tiny
//! fixture networks (sd_unet_sd_tiny, vae_sd_tiny, clip_text_gelu) with SD 1.5's scheduler config
//! and a letters-only tokenizer vocabulary inside the tiny text encoder's 300 tokens. The
//! numbers are held to diffusers in tests/sd_pipeline.rs; this checks the command end to end.

mod common;

use common::weights_file::WeightsFile;
use common::{assert_clean_failure, fixture, tmp_dir};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

fn component(dir: &Path, fixture_name: &str, weights: &str, class: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let file = WeightsFile::read(&fixture(&format!("{fixture_name}.safetensors")));
    let mut config = file.meta_json("config");
    config["_class_name"] = json!(class);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors = file.clone();
    tensors
        .header
        .insert("__metadata__".into(), json!({"format": "pt"}));
    tensors.write(&dir.join(weights));
}

/// A Stable Diffusion folder of the tiny networks.
fn write_folder(dir: &Path) {
    component(
        &dir.join("unet"),
        "sd_unet_sd_tiny",
        "diffusion_pytorch_model.safetensors",
        "UNet2DConditionModel",
    );
    component(
        &dir.join("vae"),
        "vae_sd_tiny",
        "diffusion_pytorch_model.safetensors",
        "AutoencoderKL",
    );
    component(
        &dir.join("text_encoder"),
        "clip_text_gelu",
        "model.safetensors",
        "CLIPTextModel",
    );
    // Letters and their word-final forms, then the special tokens: ids below 300.
    let tokenizer = dir.join("tokenizer");
    std::fs::create_dir_all(&tokenizer).unwrap();
    let mut vocab = serde_json::Map::new();
    for (i, c) in ('a'..='z').enumerate() {
        vocab.insert(c.to_string(), json!(i));
        vocab.insert(format!("{c}</w>"), json!(26 + i));
    }
    vocab.insert("<|startoftext|>".into(), json!(52));
    vocab.insert("<|endoftext|>".into(), json!(53));
    std::fs::write(
        tokenizer.join("vocab.json"),
        Value::Object(vocab).to_string(),
    )
    .unwrap();
    std::fs::write(tokenizer.join("merges.txt"), "#version: 0.2\n").unwrap();
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    let scheduler = json!({
        "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
        "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false
    });
    std::fs::write(
        dir.join("scheduler/scheduler_config.json"),
        scheduler.to_string(),
    )
    .unwrap();
    let index = json!({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [null, null],
        "feature_extractor": [null, null], "requires_safety_checker": false
    });
    std::fs::write(dir.join("model_index.json"), index.to_string()).unwrap();
}

fn sample(model: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args([
            "sample", "--quiet", "--num", "2", "--steps", "3", "--seed", "3", "--model",
        ])
        .arg(model)
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn a_prompt_samples_a_stable_diffusion_folder() {
    let dir = tmp_dir("sd-cli");
    let model = dir.join("sd");
    write_folder(&model);
    let args = [
        "--prompt",
        "a red cat",
        "--uncertainty",
        "-M",
        "2",
        "--report",
    ];
    for (out, batch) in [("one", "1"), ("two", "2")] {
        let run = sample(
            &model,
            &dir.join(out),
            &[&args[..], &["--batch", batch]].concat(),
        );
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    for i in 0..2 {
        let name = format!("sample_{i:06}.png");
        let (a, b) = (
            std::fs::read(dir.join("one").join(&name)).unwrap(),
            std::fs::read(dir.join("two").join(&name)).unwrap(),
        );
        assert_eq!(a, b, "{name}: batches change a sample");
        let img = image_size(&dir.join("one").join(&name));
        assert_eq!(img, (64, 64, 3), "{name}: the VAE's 8x upsampled RGB image");
        let heat = image_size(&dir.join("one").join(format!("heatmap_{i:06}.png")));
        assert_eq!(
            (heat.0, heat.2),
            (64, 3),
            "the latent map shown over the image"
        );
        assert!(heat.1 > 64, "with its colour bar beside it: {heat:?}");
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("one/samples.json")).unwrap()).unwrap();
    let p = &manifest["parameters"];
    assert_eq!(p["prompt"], "a red cat");
    assert_eq!(p["negative_prompt"], "");
    assert_eq!(p["cfg_scale"], 7.5);
    assert_eq!(p["sampler"], "pndm", "the folder's own scheduler");
    assert_eq!(p["maps"], json!({"space": "latent", "factor": 8}));
    assert_eq!(
        p["timesteps"],
        json!([667, 334, 334, 1]),
        "3 PNDM steps in 4 calls"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rule G through both halves of classifier-free guidance from the CLI: the guided run differs
/// from the unguided one, and batching leaves every sample as it was.
#[test]
fn gradient_guidance_runs_on_stable_diffusion() {
    let dir = tmp_dir("sd-cli-rule-g");
    let model = dir.join("sd");
    write_folder(&model);
    let guided = [
        "--prompt",
        "a red cat",
        "--guidance",
        "gradient",
        "-M",
        "2",
        "--guidance-steps",
        "2",
        "--guidance-strength",
        "50",
    ];
    let runs = [
        ("guided-1", &guided[..], "1"),
        ("guided-2", &guided[..], "2"),
        ("plain", &guided[..2], "2"),
    ];
    for (out, args, batch) in runs {
        let run = sample(
            &model,
            &dir.join(out),
            &[args, &["--batch", batch]].concat(),
        );
        assert!(
            run.status.success(),
            "{out}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    for i in 0..2 {
        let name = format!("sample_{i:06}.png");
        let read = |run: &str| std::fs::read(dir.join(run).join(&name)).unwrap();
        assert_eq!(
            read("guided-1"),
            read("guided-2"),
            "{name}: batches change a sample"
        );
        assert_ne!(
            read("guided-1"),
            read("plain"),
            "{name}: guidance changed nothing"
        );
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("guided-1/samples.json")).unwrap()).unwrap();
    assert_eq!(manifest["parameters"]["guidance"]["rule"], "gradient");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--f16-weights` (UNet and text encoder) and `--f16-activations` (UNet) on a Stable Diffusion
/// folder: each run completes, says so in run.json, and its decoded images stay near the f32
/// run's (the raw [−1, 1] outputs, the same x_T).
#[test]
fn f16_weights_and_activations_run_on_stable_diffusion() {
    let dir = tmp_dir("sd-cli-f16");
    let model = dir.join("sd");
    write_folder(&model);
    let base = ["--prompt", "a red cat", "--save-raw"];
    let runs = [
        ("f32", None),
        ("weights", Some("--f16-weights")),
        ("activations", Some("--f16-activations")),
    ];
    let mut raws = Vec::new();
    for (out, flag) in runs {
        let args: Vec<&str> = base.iter().copied().chain(flag).collect();
        let run = sample(&model, &dir.join(out), &args);
        assert!(
            run.status.success(),
            "{out}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let manifest = std::fs::read_to_string(dir.join(out).join("run.json")).unwrap();
        if let Some(flag) = flag {
            let key = flag.trim_start_matches("--").replace('-', "_");
            assert!(manifest.contains(&format!("\"{key}\": true")), "{manifest}");
        }
        let raw = wgsl_diff::npy::read(&dir.join(out).join("sample_000000.npy")).unwrap();
        raws.push(raw.1);
    }
    for (i, (name, _)) in runs.iter().enumerate().skip(1) {
        let worst = raws[i]
            .iter()
            .zip(&raws[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("SD {name} in f16: max |image − f32 image| {worst:.2e} (of [−1, 1])");
        assert!(worst > 0.0, "{name}: f16 changed nothing");
        assert!(worst < 0.05, "{name}: f16 moved the image by {worst}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--height`/`--width` pick the image size (latent = pixels / the VAE's 8, each side halving
/// through the UNet's levels), recorded in the run's parameters; sizes that do not divide are
/// refused before anything is written.
#[test]
fn height_and_width_set_the_image_size() {
    let dir = tmp_dir("sd-cli-size");
    let model = dir.join("sd");
    write_folder(&model);
    let out = dir.join("wide");
    let args = [
        "--prompt",
        "a red cat",
        "--height",
        "48",
        "--width",
        "80",
        "--uncertainty",
        "-M",
        "2",
    ];
    let run = sample(&model, &out, &args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(image_size(&out.join("sample_000001.png")), (48, 80, 3));
    let heat = image_size(&out.join("heatmap_000001.png"));
    assert_eq!(
        (heat.0, heat.2),
        (48, 3),
        "the heatmap has the image's height"
    );
    assert!(
        heat.1 > 80,
        "the image's width and its colour bar: {heat:?}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("samples.json")).unwrap()).unwrap();
    assert_eq!(manifest["parameters"]["height"], 48);
    assert_eq!(manifest["parameters"]["width"], 80);
    // One side given: the other is the model's (8 latent elements, 64 pixels).
    let tall = dir.join("tall");
    let run = sample(&model, &tall, &["--prompt", "a cat", "--height", "96"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(image_size(&tall.join("sample_000000.png")), (96, 64, 3));
    for (name, extra, expected) in [
        (
            "not a multiple of 8",
            vec!["--height", "44"],
            "multiple of the VAE",
        ),
        ("odd latent", vec!["--width", "40"], "halve through"),
        ("zero", vec!["--width", "0"], "--width must be between"),
    ] {
        let bad = dir.join(name.replace(' ', "-"));
        let args: Vec<&str> = ["--prompt", "a cat"].into_iter().chain(extra).collect();
        assert_clean_failure(&sample(&model, &bad, &args), name, expected);
        assert!(
            !bad.join("sample_000000.png").exists(),
            "{name}: wrote a sample"
        );
    }
    let pixel = fixture("unet_tiny_gray.safetensors");
    let bad = dir.join("pixel");
    assert_clean_failure(
        &sample(&pixel, &bad, &["--height", "64"]),
        "pixel model",
        "--prompt",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn image_size(path: &Path) -> (usize, usize, usize) {
    let img = wgsl_diff::images::read_png(path).unwrap();
    (img.height, img.width, img.channels)
}

#[test]
fn prompts_and_models_are_checked() {
    let dir = tmp_dir("sd-cli-bad");
    let model = dir.join("sd");
    write_folder(&model);
    let pixel = fixture("unet_tiny_gray.safetensors");
    let long = "word ".repeat(90);
    for (name, model, extra, expected) in [
        ("no prompt", &model, vec![], "--prompt"),
        (
            "pixel model",
            &pixel,
            vec!["--prompt", "a cat"],
            "applies to Stable Diffusion",
        ),
        (
            "gradient guidance on f16 weights",
            &model,
            vec![
                "--prompt",
                "a cat",
                "--guidance",
                "gradient",
                "--f16-weights",
            ],
            "f16",
        ),
        (
            "cfg",
            &model,
            vec!["--prompt", "a cat", "--cfg-scale", "inf"],
            "--cfg-scale",
        ),
    ] {
        let out = dir.join(name.replace(' ', "-"));
        assert_clean_failure(&sample(model, &out, &extra), name, expected);
        assert!(
            !out.join("sample_000000.png").exists(),
            "{name}: wrote a sample"
        );
    }
    let out = dir.join("long");
    let run = sample(&model, &out, &["--prompt", &long]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("past CLIP's 77 positions"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
