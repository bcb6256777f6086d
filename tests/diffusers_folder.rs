//! A diffusers pipeline folder read in place (`models::open_model`): `model_index.json`, `unet/`
//! and `scheduler/` as `save_pretrained` writes them, made here from a converted fixture. It
//! samples exactly as the converted file does, and what this version cannot run is refused by
//! name.

mod common;

use common::weights_file::WeightsFile;
use common::{assert_clean_failure, fixture, tmp_dir};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use wgsl_diff::models::open_model;

const FIXTURE: &str = "unet_tiny_gray.safetensors";

/// Writes the fixture as a diffusers pipeline folder: the UNet's tensors without wgsl-diff's
/// metadata, its config and the scheduler's with diffusers' bookkeeping keys, and the index.
fn write_pipeline(dir: &Path) {
    let file = WeightsFile::read(&fixture(FIXTURE));
    let mut config = file.meta_json("config");
    config["_class_name"] = json!("UNet2DModel");
    config["_diffusers_version"] = json!("0.30.0");
    let mut scheduler = file.meta_json("scheduler");
    scheduler["_class_name"] = json!("DDPMScheduler");
    let mut tensors = file.clone();
    tensors
        .header
        .insert("__metadata__".into(), json!({"format": "pt"}));
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    tensors.write(&dir.join("unet/diffusion_pytorch_model.safetensors"));
    let write_json = |path: &str, value: &Value| {
        std::fs::write(dir.join(path), serde_json::to_string_pretty(value).unwrap()).unwrap()
    };
    write_json("unet/config.json", &config);
    write_json("scheduler/scheduler_config.json", &scheduler);
    write_json(
        "model_index.json",
        &json!({
            "_class_name": "DDPMPipeline",
            "_diffusers_version": "0.30.0",
            "unet": ["diffusers", "UNet2DModel"],
            "scheduler": ["diffusers", "DDPMScheduler"],
        }),
    );
}

fn sample(model: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args([
            "sample", "--quiet", "--num", "2", "--steps", "3", "--seed", "5",
        ])
        .args(["--save-raw", "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn a_pipeline_folder_samples_as_its_converted_file() {
    let dir = tmp_dir("diffusers-pipeline");
    let folder = dir.join("pipeline");
    write_pipeline(&folder);
    // The same configs reach the loaders: diffusers' private keys dropped, as convert.py does.
    let from_folder = open_model(&folder).unwrap();
    let from_file = open_model(&fixture(FIXTURE)).unwrap();
    for key in ["arch", "config", "scheduler"] {
        let parse = |f: &wgsl_diff::models::WeightFile| -> Value {
            serde_json::from_str(f.meta(key).unwrap()).unwrap_or(json!(f.meta(key).unwrap()))
        };
        assert_eq!(parse(&from_folder), parse(&from_file), "{key}");
    }
    for (model, out) in [(folder.clone(), "a"), (fixture(FIXTURE), "b")] {
        let run = sample(&model, &dir.join(out));
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    for i in 0..2 {
        let name = format!("sample_{i:06}.npy");
        let a = std::fs::read(dir.join("a").join(&name)).unwrap();
        let b = std::fs::read(dir.join("b").join(&name)).unwrap();
        assert_eq!(a, b, "{name}");
    }
    // A bare model folder (config.json and weights, no index) loads too, with the default
    // schedule.
    let bare = open_model(&folder.join("unet")).unwrap();
    assert!(bare.meta("scheduler").is_err());
    assert_eq!(
        bare.meta("config").unwrap(),
        from_folder.meta("config").unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A name, what it does to a good folder, and what the error must say.
type Breakage = (&'static str, fn(&Path), &'static str);

#[test]
fn what_this_version_cannot_run_is_refused_by_name() {
    let dir = tmp_dir("diffusers-refused");
    let cases: [Breakage; 6] = [
        (
            "latent",
            |d| {
                let mut index: Value =
                    serde_json::from_slice(&std::fs::read(d.join("model_index.json")).unwrap())
                        .unwrap();
                index["vae"] = json!(["diffusers", "AutoencoderKL"]);
                index["safety_checker"] = json!([null, null]);
                std::fs::write(d.join("model_index.json"), index.to_string()).unwrap();
            },
            "component `vae` (AutoencoderKL) is not supported yet",
        ),
        (
            "conditional",
            |d| {
                let text = std::fs::read_to_string(d.join("model_index.json")).unwrap();
                let text = text.replace("\"UNet2DModel\"", "\"UNet2DConditionModel\"");
                std::fs::write(d.join("model_index.json"), text).unwrap();
            },
            "UNet2DConditionModel",
        ),
        (
            "pickle",
            |d| {
                std::fs::rename(
                    d.join("unet/diffusion_pytorch_model.safetensors"),
                    d.join("unet/diffusion_pytorch_model.bin"),
                )
                .unwrap();
            },
            "pickle weights, which wgsl-diff never loads",
        ),
        (
            "old-attention",
            |d| {
                let path = d.join("unet/diffusion_pytorch_model.safetensors");
                let mut file = WeightsFile::read(&path);
                let name = file
                    .tensor_names()
                    .into_iter()
                    .find(|n| n.contains(".attentions.") && n.ends_with("to_q.weight"))
                    .unwrap();
                let value = file.header.remove(&name).unwrap();
                file.header
                    .insert(name.replace("to_q.weight", "query.weight"), value);
                file.write(&path);
            },
            "old diffusers attention names",
        ),
        (
            "duplicate-key",
            |d| {
                let path = d.join("unet/config.json");
                let text = std::fs::read_to_string(&path).unwrap();
                let text = text.replacen('{', "{\"in_channels\": 7, ", 1);
                std::fs::write(&path, text).unwrap();
            },
            "`in_channels` appears twice",
        ),
        (
            "no-unet",
            |d| {
                std::fs::write(
                    d.join("model_index.json"),
                    r#"{"scheduler": ["diffusers", "DDPMScheduler"]}"#,
                )
                .unwrap()
            },
            "names no `unet` component",
        ),
    ];
    for (name, break_it, expected) in cases {
        let folder = dir.join(name);
        write_pipeline(&folder);
        break_it(&folder);
        let err = open_model(&folder).err().expect(name).to_string();
        assert!(err.contains(expected), "{name}: {err}");
        let out = dir.join(format!("{name}-out"));
        assert_clean_failure(&sample(&folder, &out), name, expected);
        assert!(
            !out.join("sample_000000.png").exists(),
            "{name}: wrote a sample"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
