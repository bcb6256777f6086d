//! A model as users have it: one weight file written by `tools/convert.py`, or a diffusers
//! pipeline folder as `save_pretrained` writes it and the hub serves it — a `model_index.json`
//! naming one folder per component (`unet/`, `scheduler/`, and for latent pipelines `vae/`,
//! `text_encoder/`, `tokenizer/`), each with its own config and weights — read in place, with no
//! conversion. Both become one [`WeightFile`] for the loaders: the UNet's tensors, with the
//! metadata a converted file carries (architecture, model config, scheduler config).
//!
//! Components are checked by name against what this version runs: a pixel-space pipeline (a
//! `UNet2DModel` and its scheduler). Any other component is refused by name, never skipped.
//! Only safetensors weights are read, never pickles (`.bin`).

use super::weights::{UniqueKeys, WeightFile, FORMAT, FORMAT_VERSION};
use super::UNet2DModel;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// The index file of a diffusers pipeline folder.
pub const MODEL_INDEX: &str = "model_index.json";

/// The weight files of a diffusers model folder, in the order they are tried: full precision,
/// then the `fp16` variant.
const WEIGHT_FILES: [&str; 2] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
];

/// Opens `path`: a converted weight file, a diffusers pipeline folder (with `model_index.json`)
/// or a bare diffusers model folder (`config.json` and its weights).
pub fn open_model(path: &Path) -> Result<WeightFile> {
    if !path.is_dir() {
        return WeightFile::open(path);
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
    if unet != "UNet2DModel" {
        return Err(Error::Weights(format!(
            "{}: the `unet` component is a {unet}; this version runs UNet2DModel pipelines",
            index.display()
        )));
    }
    if let Some((name, class)) = components
        .iter()
        .find(|(name, _)| !["unet", "scheduler"].contains(&name.as_str()))
    {
        return Err(Error::Weights(format!(
            "{}: component `{name}` ({class}) is not supported yet: this version runs \
             pixel-space pipelines (a unet and its scheduler)",
            index.display()
        )));
    }
    let scheduler = path.join("scheduler/scheduler_config.json");
    let scheduler = components
        .contains_key("scheduler")
        .then(|| read_json_object(&scheduler))
        .transpose()?;
    open_unet_folder(&path.join("unet"), scheduler)
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
            _ => {
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
    match config.get("_class_name").and_then(|c| c.as_str()) {
        None | Some(UNet2DModel::ARCH) => {}
        Some(other) => {
            return Err(Error::Weights(format!(
                "{}: a {other}; this version runs UNet2DModel folders",
                dir.join("config.json").display()
            )))
        }
    }
    let Some(weights) = WEIGHT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
    else {
        let pickle = dir.join("diffusion_pytorch_model.bin");
        return Err(Error::Weights(match pickle.is_file() {
            true => format!(
                "{} holds PyTorch pickle weights, which wgsl-diff never loads: convert the \
                 folder with tools/convert.py (it reads them through PyTorch)",
                dir.display()
            ),
            false => format!(
                "{} holds no {} (or its fp16 variant)",
                dir.display(),
                WEIGHT_FILES[0]
            ),
        }));
    };
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("arch".to_string(), UNet2DModel::ARCH.to_string()),
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
    let file = WeightFile::open(&weights)?.with_metadata(metadata);
    check_attention_names(&file)?;
    Ok(file)
}

/// diffusers' bookkeeping keys (`_class_name`, `_diffusers_version`, `_name_or_path`) dropped,
/// as `tools/convert.py` drops them.
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
    let text = std::fs::read_to_string(path).map_err(Error::file("read", path))?;
    let invalid =
        |e: serde_json::Error| Error::Weights(format!("{}: invalid JSON: {e}", path.display()));
    let value: serde_json::Value = serde_json::from_str(&text).map_err(invalid)?;
    if value.is_object() {
        serde_json::from_str::<UniqueKeys>(&text).map_err(invalid)?;
    }
    match value.is_object() {
        true => Ok(value),
        false => Err(Error::Weights(format!(
            "{}: a JSON object was expected",
            path.display()
        ))),
    }
}
