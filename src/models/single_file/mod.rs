//! Stable Diffusion 1.x as its original code saves it: one `.safetensors` file
//! (`v1-5-pruned-emaonly.safetensors`) holding the UNet under `model.diffusion_model.`, the VAE
//! under `first_stage_model.` and CLIP's text model under `cond_stage_model.transformer.`, in the
//! LDM code's names, beside buffers no network reads (the schedule, EMA counters), and no
//! configs or tokenizer.
//!
//! Recognised by those prefixes, the file is mapped once and read as three views, each network's
//! tensors under diffusers' names ([`ldm_names`]) with no copy, and built with configs the
//! caller gives ([`SingleFileConfigs`]; SD 1.x's by default). SD 2.x, SDXL and inpainting
//! checkpoints are refused by name.

mod ldm_names;
mod sd1;

use super::clip::ClipTextModel;
use super::diffusers::autoencoder_kl::{AutoencoderKlConfig, AutoencoderKlDecoder};
use super::diffusers::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use super::pipeline::{model_metadata, open_file};
use super::weights::{parse_config, Alias, WeightFile, FORMAT};
use crate::error::{Error, Result};
use ldm_names::Target;
use std::collections::BTreeMap;
use std::path::Path;

/// The configs a single file lacks, as a diffusers folder holds them (each its `config.json`;
/// the scheduler's `scheduler_config.json`). [`Default`]: Stable Diffusion 1.x's.
#[derive(Clone, Debug)]
pub struct SingleFileConfigs {
    pub unet: serde_json::Value,
    pub vae: serde_json::Value,
    pub text_encoder: serde_json::Value,
    pub scheduler: serde_json::Value,
}

impl SingleFileConfigs {
    /// The scheduler class the configs name (`PNDMScheduler` for SD 1.x).
    pub fn scheduler_class(&self) -> Option<&str> {
        self.scheduler.get("_class_name")?.as_str()
    }
}

/// A single file's networks: views of one mapping, under diffusers' names, each with its
/// config as metadata (and the UNet with the scheduler's), as a diffusers folder's components.
pub struct SingleFile {
    pub unet: WeightFile,
    pub text_encoder: WeightFile,
    pub vae: WeightFile,
}

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP: &str = "cond_stage_model.transformer.";

/// Prefixes only the original Stable Diffusion layouts use (1.x's and 2.x's `cond_stage_model.`,
/// SDXL's `conditioner.embedders.`).
const LDM_PREFIXES: [&str; 4] = [UNET, VAE, "cond_stage_model.", "conditioner.embedders."];

/// Whether `file` is in the original single-file layout (a wgsl-diff file never is).
pub fn is_single_file(file: &WeightFile) -> bool {
    file.metadata.get("format").map(String::as_str) != Some(FORMAT)
        && file
            .tensor_names()
            .iter()
            .any(|name| LDM_PREFIXES.iter().any(|p| name.starts_with(p)))
}

/// Opens a Stable Diffusion 1.x single file with `configs` (a pickle is refused unread).
pub fn open(path: &Path, configs: &SingleFileConfigs) -> Result<SingleFile> {
    split(&open_file(path)?, configs)
}

/// The networks of `file`, a Stable Diffusion 1.x single file, with `configs`.
pub(crate) fn split(file: &WeightFile, configs: &SingleFileConfigs) -> Result<SingleFile> {
    let stored = file.stored_shapes();
    check_kind(file.path(), &stored)?;
    let per_block = UNet2DConditionConfig::parse(&configs.unet.to_string())?.layers_per_block;
    let levels = parse_config::<AutoencoderKlConfig>(&configs.vae.to_string())
        .map_err(|e| Error::Invalid(format!("AutoencoderKL config: {e}")))?
        .block_out_channels
        .len();
    let view = |prefix: &str, rename: &dyn Fn(&str) -> Option<Target>, metadata| {
        let mut aliases = BTreeMap::new();
        let under_prefix = stored.iter().filter(|(key, _)| key.starts_with(prefix));
        for (key, shape) in under_prefix {
            let (name, shape) = match rename(&key[prefix.len()..]) {
                Some(Target::Ignored) => continue,
                Some(Target::Tensor(name)) => (name, None),
                Some(Target::Linear(name)) => (name, as_linear(shape)),
                // Shown under its stored name, which the loader lists as unexpected.
                None => (key.clone(), None),
            };
            let alias = Alias {
                key: key.clone(),
                shape,
            };
            if let Some(twin) = aliases.insert(name.clone(), alias) {
                return Err(Error::Weights(format!(
                    "{}: `{}` and `{key}` both name diffusers' `{name}`",
                    file.path().display(),
                    twin.key
                )));
            }
        }
        Ok(file.renamed(aliases, metadata))
    };
    Ok(SingleFile {
        unet: view(
            UNET,
            &|name| ldm_names::unet(name, per_block).map(Target::Tensor),
            model_metadata(
                UNet2DConditionModel::ARCH,
                configs.unet.clone(),
                Some(configs.scheduler.clone()),
            ),
        )?,
        text_encoder: view(
            CLIP,
            &|name| Some(ldm_names::clip(name)),
            model_metadata(ClipTextModel::ARCH, configs.text_encoder.clone(), None),
        )?,
        vae: view(
            VAE,
            &|name| ldm_names::vae(name, levels),
            model_metadata(AutoencoderKlDecoder::ARCH, configs.vae.clone(), None),
        )?,
    })
}

/// A stored (O, I, 1, 1) conv weight as (O, I); any other shape is shown as stored, for the
/// loader to report.
fn as_linear(shape: &[usize]) -> Option<Vec<usize>> {
    match shape {
        [o, i, 1, 1] => Some(vec![*o, *i]),
        _ => None,
    }
}

/// Refuses, by name, the single files of the models this version does not run, and files
/// lacking one of SD 1.x's three networks.
fn check_kind(path: &Path, stored: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    let has = |prefix: &str| stored.keys().any(|key| key.starts_with(prefix));
    let refuse = |what: &str| {
        Err(Error::Weights(format!(
            "{} is a {what}; this version runs Stable Diffusion 1.x text-to-image single files",
            path.display()
        )))
    };
    if has("conditioner.embedders.") {
        return refuse(
            "Stable Diffusion XL checkpoint (text encoders under `conditioner.embedders.`)",
        );
    }
    if has("cond_stage_model.model.") {
        return refuse("Stable Diffusion 2.x checkpoint (OpenCLIP text encoder under `cond_stage_model.model.`)");
    }
    let context = stored
        .iter()
        .find(|(key, _)| key.starts_with(UNET) && key.ends_with(".attn2.to_k.weight"))
        .and_then(|(_, shape)| shape.get(1));
    if context == Some(&1024) {
        return refuse("Stable Diffusion 2.x checkpoint (its UNet reads a 1024-wide text context)");
    }
    let conv_in = stored.get(&format!("{UNET}input_blocks.0.0.weight"));
    if conv_in.and_then(|shape| shape.get(1)) == Some(&9) {
        return refuse(
            "Stable Diffusion inpainting checkpoint (its UNet takes 9 input channels: latents, \
             mask and masked image)",
        );
    }
    for (prefix, what) in [(UNET, "UNet"), (VAE, "VAE"), (CLIP, "CLIP text encoder")] {
        if !has(prefix) {
            return Err(Error::Weights(format!(
                "{} holds no {what} (no `{prefix}` tensors): a Stable Diffusion 1.x single file \
                 holds its UNet, VAE and text encoder",
                path.display()
            )));
        }
    }
    Ok(())
}
