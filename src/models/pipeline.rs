//! A model as users have it: one weight file written by `tools/convert.py`, a diffusers
//! pipeline folder as `save_pretrained` writes it and the hub serves it — a `model_index.json`
//! naming one folder per component (`unet/`, `scheduler/`, and for latent pipelines `vae/`,
//! `text_encoder/`, `tokenizer/`), each with its own config and weights — read in place, with no
//! conversion, or a Stable Diffusion 1.x single file ([`super::single_file`]). Each becomes one
//! [`WeightFile`] for the loaders: the UNet's tensors, with the metadata a converted file
//! carries (architecture, model config, scheduler config).
//!
//! Components are checked by name against what this version runs: a pixel-space pipeline (a
//! `UNet2DModel` and its scheduler) or Stable Diffusion 1.x. Any other component is refused by
//! name, never skipped. Only safetensors weights are read, never pickles (`.bin`, `.ckpt`).

use super::diffusers::unet_2d_condition::UNet2DConditionModel;
use super::single_file::{is_single_file, split, SingleFileConfigs};
use super::weights::{WeightFile, FORMAT, FORMAT_VERSION};
use super::UNet2DModel;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The index file of a diffusers pipeline folder.
pub const MODEL_INDEX: &str = "model_index.json";

/// The weight files of a diffusers model folder, in the order they are tried: full precision,
/// then the `fp16` variant.
const WEIGHT_FILES: [&str; 2] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
];

/// Opens `path`: a converted weight file, a Stable Diffusion 1.x single file (its UNet, with SD
/// 1.x's configs), a diffusers pipeline folder (with `model_index.json`) or a bare diffusers
/// model folder (`config.json` and its weights).
pub fn open_model(path: &Path) -> Result<WeightFile> {
    if !path.is_dir() {
        let file = open_file(path)?;
        return match is_single_file(&file) {
            true => Ok(split(&file, &SingleFileConfigs::default())?.unet),
            false => Ok(file),
        };
    }
    let index = path.join(MODEL_INDEX);
    if !index.is_file() {
        return open_unet_folder(path, None);
    }
    let components = read_index(&index)?;
    let unet = components.get("unet").ok_or_else(|| {
        Error::Weights(format!(
            "{} names no `unet` component: wgsl-diff samples with a UNet2DModel",
            index.display()
        ))
    })?;
    let allowed: &[&str] = match unet.as_str() {
        UNet2DModel::ARCH => &["unet", "scheduler"],
        UNet2DConditionModel::ARCH => {
            check_stable_diffusion(&index, &components)?;
            &STABLE_DIFFUSION
        }
        other => {
            return Err(Error::Weights(format!(
                "{}: the `unet` component is a {other}; this version runs UNet2DModel and \
                 Stable Diffusion 1.x (UNet2DConditionModel) pipelines",
                index.display()
            )))
        }
    };
    if let Some((name, class)) = components
        .iter()
        .find(|(name, _)| !allowed.contains(&name.as_str()))
    {
        return Err(Error::Weights(format!(
            "{}: component `{name}` ({class}) is not supported yet: this version runs \
             pixel-space pipelines (a unet and its scheduler) and Stable Diffusion 1.x",
            index.display()
        )));
    }
    let scheduler = components
        .contains_key("scheduler")
        .then(|| read_json_object(&path.join("scheduler/scheduler_config.json")))
        .transpose()?;
    open_unet_folder(&path.join("unet"), scheduler)
}

/// The components of a Stable Diffusion folder this version reads (the safety checker and its
/// feature extractor, which judge finished images, are not run).
const STABLE_DIFFUSION: [&str; 7] = [
    "unet",
    "scheduler",
    "vae",
    "text_encoder",
    "tokenizer",
    "safety_checker",
    "feature_extractor",
];

fn check_stable_diffusion(index: &Path, components: &HashMap<String, String>) -> Result<()> {
    let needed = [
        ("vae", "AutoencoderKL"),
        ("text_encoder", "CLIPTextModel"),
        ("tokenizer", "CLIPTokenizer"),
    ];
    let missing: Vec<String> = needed
        .iter()
        .filter(|(name, class)| components.get(*name).map(String::as_str) != Some(*class))
        .map(|(name, class)| format!("`{name}` ({class})"))
        .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(Error::Weights(format!(
            "{}: a UNet2DConditionModel pipeline (Stable Diffusion 1.x) needs {}; this one lacks \
             them or names other classes",
            index.display(),
            missing.join(", ")
        ))),
    }
}

/// A weight file given as a path, refusing PyTorch pickles by their extension before reading a
/// byte: unpickling runs code from the file, and wgsl-diff never does it.
pub(super) fn open_file(path: &Path) -> Result<WeightFile> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ["ckpt", "pt", "pth", "bin", "pkl"].contains(&extension.to_ascii_lowercase().as_str()) {
        return Err(Error::Weights(format!(
            "{} is a PyTorch pickle (.{extension}), which wgsl-diff never loads (unpickling runs \
             code from the file): use the checkpoint's .safetensors release (for SD 1.5, \
             v1-5-pruned-emaonly.safetensors beside v1-5-pruned-emaonly.ckpt)",
            path.display()
        )));
    }
    WeightFile::open(path)
}

/// The scheduler class a Stable Diffusion folder ships (`PNDMScheduler` for SD 1.5), or SD 1.x's
/// for a single file, which it samples with unless told otherwise; None for any other model or
/// an unreadable one.
pub fn stable_diffusion_scheduler(path: &Path) -> Option<String> {
    if path.is_file() {
        let configs = SingleFileConfigs::default();
        return match is_single_file(&open_file(path).ok()?) {
            true => configs.scheduler_class().map(String::from),
            false => None,
        };
    }
    let index = path.join(MODEL_INDEX);
    let components = read_index(&index).ok()?;
    if components.get("unet").map(String::as_str) != Some(UNet2DConditionModel::ARCH) {
        return None;
    }
    components.get("scheduler").cloned()
}

/// The parts of a Stable Diffusion model beside its UNet: the text encoder, the VAE and where
/// the tokenizer's files are.
pub struct StableDiffusionParts {
    pub text_encoder: WeightFile,
    pub vae: WeightFile,
    /// A folder's `tokenizer/`; None for a single file, which holds no tokenizer.
    pub tokenizer: Option<PathBuf>,
}

impl StableDiffusionParts {
    /// CLIP's vocab.json and merges.txt: in the folder's `tokenizer/`, or for a single file in
    /// `given` (`--tokenizer`), which a folder does not take.
    pub fn tokenizer_files(&self, given: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
        let dir = match (&self.tokenizer, given) {
            (Some(own), None) => own,
            (None, Some(given)) => given,
            (Some(own), Some(_)) => {
                return Err(Error::Invalid(format!(
                    "--tokenizer is for single-file checkpoints; this model has its own {}",
                    own.display()
                )))
            }
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "{} is a single-file Stable Diffusion checkpoint, which holds no tokenizer: \
                     give --tokenizer DIR, a folder with CLIP's vocab.json and merges.txt (the \
                     tokenizer/ folder of a diffusers Stable Diffusion 1.x download)",
                    self.text_encoder.path().display()
                )))
            }
        };
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        for file in [&vocab, &merges] {
            if !file.is_file() {
                return Err(Error::Weights(format!(
                    "{} is missing: the CLIP tokenizer reads vocab.json and merges.txt",
                    file.display()
                )));
            }
        }
        Ok((vocab, merges))
    }
}

/// The text encoder and VAE of `path` when it is a Stable Diffusion folder or single file (None
/// for any other model).
pub fn stable_diffusion_parts(path: &Path) -> Result<Option<StableDiffusionParts>> {
    if path.is_file() {
        let file = open_file(path)?;
        if !is_single_file(&file) {
            return Ok(None);
        }
        let networks = split(&file, &SingleFileConfigs::default())?;
        return Ok(Some(StableDiffusionParts {
            text_encoder: networks.text_encoder,
            vae: networks.vae,
            tokenizer: None,
        }));
    }
    let index = path.join(MODEL_INDEX);
    if !path.is_dir() || !index.is_file() {
        return Ok(None);
    }
    let components = read_index(&index)?;
    if components.get("unet").map(String::as_str) != Some(UNet2DConditionModel::ARCH) {
        return Ok(None);
    }
    check_stable_diffusion(&index, &components)?;
    let text_dir = path.join("text_encoder");
    let text_encoder = component(
        &text_dir,
        &["model.safetensors", "model.fp16.safetensors"],
        "CLIPTextModel",
    )?;
    let vae = component(&path.join("vae"), &WEIGHT_FILES, "AutoencoderKL")?;
    Ok(Some(StableDiffusionParts {
        text_encoder,
        vae,
        tokenizer: Some(path.join("tokenizer")),
    }))
}

/// A component folder's weights (the first of `files` present) with its config.json as the
/// `config` metadata and `arch` named.
fn component(dir: &Path, files: &[&str], arch: &str) -> Result<WeightFile> {
    let config = read_json_object(&dir.join("config.json"))?;
    let weights = files
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| no_weights(dir, files[0]))?;
    Ok(WeightFile::open(&weights)?.with_metadata(model_metadata(arch, config, None)))
}

/// The metadata of a converted file for a network read from elsewhere: the format marker,
/// `arch`, its `config` and, for a UNet, its pipeline's `scheduler` (diffusers' bookkeeping keys
/// dropped, as `tools/convert.py` drops them).
pub(super) fn model_metadata(
    arch: &str,
    config: serde_json::Value,
    scheduler: Option<serde_json::Value>,
) -> HashMap<String, String> {
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("arch".to_string(), arch.to_string()),
        (
            "config".to_string(),
            without_private_keys(config).to_string(),
        ),
    ]);
    if let Some(scheduler) = scheduler {
        metadata.insert(
            "scheduler".into(),
            without_private_keys(scheduler).to_string(),
        );
    }
    metadata
}

/// No safetensors weights in `dir`: a clear word for pickles, which are never loaded.
fn no_weights(dir: &Path, expected: &str) -> Error {
    let pickle = ["diffusion_pytorch_model.bin", "pytorch_model.bin"]
        .iter()
        .any(|f| dir.join(f).is_file());
    Error::Weights(match pickle {
        true => format!(
            "{} holds PyTorch pickle weights, which wgsl-diff never loads: convert the \
             folder with tools/convert.py (it reads them through PyTorch)",
            dir.display()
        ),
        false => format!(
            "{} holds no {expected} (or its fp16 variant)",
            dir.display()
        ),
    })
}

/// The components of a `model_index.json`: name → class, for every component that is present
/// (diffusers writes `[null, null]` for an absent optional one).
fn read_index(index: &Path) -> Result<HashMap<String, String>> {
    let index_json = read_json_object(index)?;
    let mut components = HashMap::new();
    let entries = index_json.as_object().into_iter().flatten();
    for (name, value) in entries.filter(|(name, _)| !name.starts_with('_')) {
        let class = match value.as_array().map(Vec::as_slice) {
            Some([_, serde_json::Value::Null]) => continue,
            Some([_, serde_json::Value::String(class)]) => class.clone(),
            // A pipeline option, not a component (`requires_safety_checker`).
            None => continue,
            Some(_) => {
                return Err(Error::Weights(format!(
                    "{}: component `{name}` is {value}, not [library, class]",
                    index.display()
                )))
            }
        };
        components.insert(name.clone(), class);
    }
    Ok(components)
}

/// A diffusers `UNet2DModel` folder (`config.json` and safetensors weights), with the
/// pipeline's scheduler config when there is one.
fn open_unet_folder(dir: &Path, scheduler: Option<serde_json::Value>) -> Result<WeightFile> {
    let config = read_json_object(&dir.join("config.json"))?;
    let arch = match config.get("_class_name").and_then(|c| c.as_str()) {
        None | Some(UNet2DModel::ARCH) => UNet2DModel::ARCH,
        Some(UNet2DConditionModel::ARCH) => UNet2DConditionModel::ARCH,
        Some(other) => {
            return Err(Error::Weights(format!(
                "{}: a {other}; this version runs UNet2DModel and UNet2DConditionModel folders",
                dir.join("config.json").display()
            )))
        }
    };
    let Some(weights) = WEIGHT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
    else {
        return Err(no_weights(dir, WEIGHT_FILES[0]));
    };
    let file = WeightFile::open(&weights)?.with_metadata(model_metadata(arch, config, scheduler));
    check_attention_names(&file)?;
    Ok(file)
}

/// diffusers' bookkeeping keys (`_class_name`, `_diffusers_version`, `_name_or_path`) dropped.
fn without_private_keys(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(object) = value.as_object_mut() {
        object.retain(|key, _| !key.starts_with('_'));
    }
    value
}

/// Old diffusers versions saved attention as `query`/`key`/`value`/`proj_attn`; diffusers
/// renames them while loading, and so does `tools/convert.py`. A folder read in place must
/// have the current names.
fn check_attention_names(file: &WeightFile) -> Result<()> {
    let old = [
        "query.weight",
        "key.weight",
        "value.weight",
        "proj_attn.weight",
    ];
    match file
        .tensor_names()
        .into_iter()
        .find(|n| n.contains(".attentions.") && old.iter().any(|o| n.ends_with(o)))
    {
        Some(name) => Err(Error::Weights(format!(
            "{} uses old diffusers attention names (`{name}`): convert it with tools/convert.py, \
             which renames them",
            file.path().display()
        ))),
        None => Ok(()),
    }
}

fn read_json_object(path: &Path) -> Result<serde_json::Value> {
    let text = crate::io::read_text_input(path, crate::limits::MAX_CONFIG_BYTES)?;
    let invalid =
        |e: serde_json::Error| Error::Weights(format!("{}: invalid JSON: {e}", path.display()));
    let value: serde_json::Value = crate::json::from_str(&text).map_err(invalid)?;
    match value.is_object() {
        true => Ok(value),
        false => Err(Error::Weights(format!(
            "{}: a JSON object was expected",
            path.display()
        ))),
    }
}
