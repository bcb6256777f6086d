//! Stable Diffusion 1.x single files (`models::single_file`): a checkpoint in the original LDM
//! layout is assembled here, bytes copied, from the tiny diffusers fixtures (sd_unet_three_levels,
//! vae_sd_tiny, clip_text_quick) by the name map of tests/fixtures/sd_single_file.safetensors,
//! which `python -m tools.fixtures.sd_single_file` checked against diffusers' own single-file
//! loaders. Read back with the fixtures' configs, every tensor is the diffusers-named one bit for
//! bit and the networks compute exactly what they compute from the diffusers files; what this
//! version does not run is refused by name, from the library and the command line.

mod common;

use common::weights_file::{header_and_data, WeightsFile};
use common::{assert_clean_failure, fixture, gpu, read, read_safetensors, tmp_dir};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use wgsl_diff::models::clip::{ClipTextConfig, ClipTextModel};
use wgsl_diff::models::diffusers::autoencoder_kl::AutoencoderKlDecoder;
use wgsl_diff::models::diffusers::unet_2d_condition::UNet2DConditionModel;
use wgsl_diff::models::pipeline::stable_diffusion_parts;
use wgsl_diff::models::single_file::{self, SingleFileConfigs};
use wgsl_diff::models::{open_model, Cond, Decoder, EpsModel, WeightFile};
use wgsl_diff::sampling::{default_sampler, SamplerKind, ScheduleConfig};

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP: &str = "cond_stage_model.transformer.";

/// A safetensors file of `tensors` (name, dtype, shape, bytes), in that order.
fn write_safetensors(path: &Path, tensors: &[(String, Value, Value, &[u8])]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let offsets = json!([data.len(), data.len() + bytes.len()]);
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}),
        );
        data.extend_from_slice(bytes);
    }
    std::fs::write(
        path,
        header_and_data(&Value::Object(header).to_string(), &data),
    )
    .unwrap();
}

/// Writes the single-file checkpoint to `path` and returns the configs of its networks (the
/// fixtures'; SD 1.x's scheduler).
fn write_checkpoint(path: &Path) -> SingleFileConfigs {
    let map = WeightsFile::read(&fixture("sd_single_file.safetensors"));
    let parts = map.meta_json("parts");
    let sources: Vec<(&str, WeightsFile, &Value)> = [UNET, VAE, CLIP]
        .into_iter()
        .map(|prefix| {
            let part = &parts[prefix];
            let file = WeightsFile::read(&fixture(part["file"].as_str().unwrap()));
            (prefix, file, &part["tensors"])
        })
        .collect();
    let mut tensors = Vec::new();
    for name in map.tensor_names() {
        let info = &map.header[&name];
        let bytes = &map.data[map.tensor_bytes(&name)];
        tensors.push((name, info["dtype"].clone(), info["shape"].clone(), bytes));
    }
    for (prefix, source, names) in &sources {
        for (ldm, entry) in names.as_object().unwrap() {
            let (name, shape) = match entry {
                Value::String(name) => (name.as_str(), source.header[name]["shape"].clone()),
                _ => (entry[0].as_str().unwrap(), entry[1].clone()),
            };
            let dtype = source.header[name]["dtype"].clone();
            let bytes = &source.data[source.tensor_bytes(name)];
            tensors.push((format!("{prefix}{ldm}"), dtype, shape, bytes));
        }
    }
    write_safetensors(path, &tensors);
    let config = |i: usize| sources[i].1.meta_json("config");
    SingleFileConfigs {
        unet: config(0),
        vae: config(1),
        text_encoder: config(2),
        ..SingleFileConfigs::default()
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn every_tensor_is_the_diffusers_one_bit_for_bit() {
    let dir = tmp_dir("single-file-tensors");
    let path = dir.join("v1-tiny.safetensors");
    let configs = write_checkpoint(&path);
    let networks = single_file::open(&path, &configs).unwrap();
    // The VAE's encoder is not read: sampling only decodes.
    let views = [
        (&networks.unet, "sd_unet_three_levels", &[][..]),
        (&networks.vae, "vae_sd_tiny", &["encoder.", "quant_conv."]),
        (&networks.text_encoder, "clip_text_quick", &[]),
    ];
    for (view, name, unread) in views {
        let reference = read_safetensors(&fixture(&format!("{name}.safetensors")));
        let mut want: Vec<&String> = reference
            .keys()
            .filter(|n| !unread.iter().any(|prefix| n.starts_with(prefix)))
            .collect();
        want.sort();
        assert_eq!(
            view.tensor_names().iter().collect::<Vec<_>>(),
            want,
            "{name}"
        );
        let vb = view.var_builder(gpu());
        for tensor in want {
            let (shape, values) = &reference[tensor];
            let got = vb.get_host(tensor, shape).unwrap();
            assert_eq!(bits(&got), bits(values), "{name}: {tensor}");
        }
        vb.finish().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The UNet's ε, CLIP's text states and the VAE's images from the single file are the ones
/// from the diffusers files, to the bit.
#[test]
fn networks_compute_what_their_diffusers_files_do() {
    let g = gpu();
    let dir = tmp_dir("single-file-networks");
    let path = dir.join("v1-tiny.safetensors");
    let networks = single_file::open(&path, &write_checkpoint(&path)).unwrap();
    let open = |name: &str| WeightFile::open(&fixture(&format!("{name}.safetensors"))).unwrap();
    let io = |name: &str| read_safetensors(&fixture(&format!("{name}_io.safetensors")));

    let unet_io = io("sd_unet_three_levels");
    let up = |key: &str| g.upload(&unet_io[key].0, &unet_io[key].1).unwrap();
    let (sample, t) = (up("sample"), up("timestep"));
    let cond = Cond::Text(up("encoder_hidden_states"));
    let eps = |file: &WeightFile| {
        let unet = UNet2DConditionModel::load(g, file).unwrap();
        bits(&read(&unet.predict_eps(g, &sample, &t, &cond).unwrap()))
    };
    let single = eps(&networks.unet);
    assert_eq!(single, eps(&open("sd_unet_three_levels")), "UNet ε");
    assert!(single.iter().any(|&v| v != 0), "a vacuous ε");

    let (shape, ids) = &io("clip_text_quick")["input_ids"];
    let ids = g.upload(shape, ids).unwrap();
    let states = |file: &WeightFile| {
        let text = ClipTextModel::load(g, file).unwrap();
        bits(&read(&text.forward(g, &ids).unwrap()))
    };
    assert_eq!(
        states(&networks.text_encoder),
        states(&open("clip_text_quick")),
        "text states"
    );

    let (shape, latents) = &io("vae_sd_tiny")["latents"];
    let latents = g.upload(shape, latents).unwrap();
    let images = |file: &WeightFile| {
        let vae = AutoencoderKlDecoder::load(g, file).unwrap();
        bits(&read(&vae.decode(g, &latents).unwrap()))
    };
    assert_eq!(
        images(&networks.vae),
        images(&open("vae_sd_tiny")),
        "images"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Given to `--model`, a single file is Stable Diffusion 1.x: SD 1.5's configs and scheduler,
/// PNDM by default, its text encoder and VAE beside the UNet and no tokenizer of its own.
#[test]
fn a_model_path_opens_a_single_file_as_sd1() {
    let dir = tmp_dir("single-file-sd1");
    let path = dir.join("v1-tiny.safetensors");
    write_checkpoint(&path);
    let unet = open_model(&path).unwrap();
    let sd1 = SingleFileConfigs::default();
    assert_eq!(unet.meta("arch").unwrap(), UNet2DConditionModel::ARCH);
    let config: Value = serde_json::from_str(unet.meta("config").unwrap()).unwrap();
    assert_eq!(config, sd1.unet);
    assert_eq!(default_sampler(&path), SamplerKind::Pndm);
    let schedule = ScheduleConfig::from_weights(&unet).unwrap();
    assert_eq!((schedule.steps_offset, schedule.skip_prk_steps), (1, true));
    let text: ClipTextConfig = serde_json::from_value(sd1.text_encoder.clone()).unwrap();
    text.validate().unwrap();
    assert_eq!((text.hidden_size, text.num_hidden_layers), (768, 12));
    let parts = stable_diffusion_parts(&path).unwrap().unwrap();
    assert_eq!(parts.vae.meta("arch").unwrap(), AutoencoderKlDecoder::ARCH);
    assert_eq!(
        parts.text_encoder.meta("arch").unwrap(),
        ClipTextModel::ARCH
    );
    let err = parts.tokenizer_files(None).unwrap_err().to_string();
    assert!(err.contains("--tokenizer DIR"), "{err}");
    let err = parts.tokenizer_files(Some(&dir)).unwrap_err().to_string();
    assert!(err.contains("vocab.json is missing"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn sample(model: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["sample", "--quiet", "--num", "1", "--steps", "2", "--model"])
        .arg(model)
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// A few zero tensors under single-file names: enough to be told what the file is.
fn write_keys(path: &Path, keys: &[(&str, Vec<usize>)]) {
    let data: Vec<Vec<u8>> = keys
        .iter()
        .map(|(_, shape)| vec![0u8; 4 * shape.iter().product::<usize>()])
        .collect();
    let tensors: Vec<_> = keys
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| (name.to_string(), json!("F32"), json!(shape), &bytes[..]))
        .collect();
    write_safetensors(path, &tensors);
}

#[test]
fn other_checkpoints_are_refused_by_name() {
    let dir = tmp_dir("single-file-refused");
    let conv_in = |channels| {
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            vec![8, channels, 3, 3],
        )
    };
    let vae = ("first_stage_model.decoder.conv_in.weight", vec![8, 4, 3, 3]);
    let clip = (
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        vec![8],
    );
    let sdxl_clip = (
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        vec![8],
    );
    let open_clip = ("cond_stage_model.model.ln_final.weight", vec![8]);
    let cross = (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        vec![8, 1024],
    );
    let cases = [
        (
            "sdxl.safetensors",
            vec![conv_in(4), vae.clone(), sdxl_clip],
            "Stable Diffusion XL",
        ),
        (
            "sd2.safetensors",
            vec![conv_in(4), vae.clone(), open_clip],
            "Stable Diffusion 2.x checkpoint (OpenCLIP",
        ),
        (
            "sd2-unet.safetensors",
            vec![conv_in(4), cross, vae.clone(), clip.clone()],
            "1024-wide text context",
        ),
        (
            "inpainting.safetensors",
            vec![conv_in(9), vae, clip.clone()],
            "inpainting checkpoint",
        ),
        ("no-vae.safetensors", vec![conv_in(4), clip], "holds no VAE"),
        ("v1-5-pruned-emaonly.ckpt", vec![], "never loads"),
    ];
    for (name, keys, expected) in cases {
        let path = dir.join(name);
        match keys.is_empty() {
            // Bytes that are no safetensors file: refused for the name, never read.
            true => std::fs::write(&path, b"PK\x03\x04 a zipped pickle").unwrap(),
            false => write_keys(&path, &keys),
        }
        let err = open_model(&path).err().expect(name).to_string();
        assert!(err.contains(expected), "{name}: {err}");
        let out = dir.join(format!("{name}-out"));
        assert_clean_failure(&sample(&path, &out, &["--prompt", "a cat"]), name, expected);
        assert!(!out.exists(), "{name}: the output folder was made");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A single file holds no tokenizer: `--tokenizer` names one, and without it (or without a
/// prompt) the command stops before writing anything.
#[test]
fn the_command_line_asks_for_a_tokenizer() {
    let dir = tmp_dir("single-file-cli");
    let path = dir.join("v1-tiny.safetensors");
    write_checkpoint(&path);
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let empty = empty.to_str().unwrap();
    for (name, extra, expected) in [
        ("no-tokenizer", vec!["--prompt", "a cat"], "--tokenizer DIR"),
        (
            "empty-tokenizer",
            vec!["--prompt", "a cat", "--tokenizer", empty],
            "vocab.json is missing",
        ),
        ("no-prompt", vec![], "say what to draw with --prompt"),
    ] {
        let out = dir.join(name);
        assert_clean_failure(&sample(&path, &out, &extra), name, expected);
        assert!(!out.exists(), "{name}: the output folder was made");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
