//! A Stable Diffusion run's text side: the prompt and the negative prompt tokenized and encoded
//! once per job by the folder's CLIP text encoder, into the one-row condition every batch
//! repeats — classifier-free guidance between them when the scale is above 1, as diffusers
//! decides.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::clip::{ClipTextModel, ClipTokenizer};
use crate::models::diffusers::autoencoder_kl::AutoencoderKlDecoder;
use crate::models::pipeline::StableDiffusionParts;
use crate::models::{row_range, Cond, Decoder};
use std::path::PathBuf;

/// What a prompt asks of a text-to-image run.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptRequest {
    pub prompt: String,
    /// The unconditional side of guidance (diffusers' default: the empty prompt).
    pub negative_prompt: String,
    /// Classifier-free guidance scale w (ε = ε_u + w·(ε_c − ε_u)); none at w ≤ 1.
    pub cfg_scale: f64,
    /// The folder of CLIP's vocab.json and merges.txt, for a single-file checkpoint (which holds
    /// no tokenizer; a diffusers folder has its own).
    pub tokenizer: Option<PathBuf>,
}

impl PromptRequest {
    pub fn validate(&self) -> Result<()> {
        if !(self.cfg_scale.is_finite() && self.cfg_scale.abs() <= 1e4) {
            return Err(Error::Invalid(format!(
                "--cfg-scale must be finite and at most 1e4 in size, got {}",
                self.cfg_scale
            )));
        }
        Ok(())
    }
}

/// The encoded prompt and the VAE of a Stable Diffusion folder.
pub(super) struct TextToImage {
    pub cond: Cond,
    pub decoder: Box<dyn Decoder>,
    /// Tokens past CLIP's 77 positions that were dropped, per prompt (prompt, negative).
    pub truncated: [usize; 2],
}

/// `tokenizer`: CLIP's vocab.json and merges.txt.
pub(super) fn prepare(
    gpu: &Gpu,
    parts: &StableDiffusionParts,
    tokenizer: &(PathBuf, PathBuf),
    request: &PromptRequest,
) -> Result<TextToImage> {
    let tokenizer = ClipTokenizer::from_files(&tokenizer.0, &tokenizer.1)?;
    let text = ClipTextModel::load(gpu, &parts.text_encoder)?;
    let negative = tokenizer.encode_prompt(&request.negative_prompt);
    let positive = tokenizer.encode_prompt(&request.prompt);
    let ids: Vec<f32> = negative
        .ids
        .iter()
        .chain(&positive.ids)
        .map(|&id| id as f32)
        .collect();
    let n = negative.ids.len();
    let vocab = text.config.vocab_size;
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {id} is outside the text encoder's {vocab}-token vocabulary: the tokenizer \
             and text_encoder folders do not belong together"
        )));
    }
    let states = text.forward(gpu, &gpu.upload(&[2, n], &ids)?)?;
    let (uncond, cond) = (
        row_range(gpu, &states, 0, 1)?,
        row_range(gpu, &states, 1, 1)?,
    );
    let cond = match request.cfg_scale > 1.0 {
        true => Cond::guided(
            Cond::Text(cond),
            Cond::Text(uncond),
            request.cfg_scale as f32,
        )?,
        false => Cond::Text(cond),
    };
    Ok(TextToImage {
        cond,
        decoder: Box::new(AutoencoderKlDecoder::load(gpu, &parts.vae)?),
        truncated: [positive.truncated, negative.truncated],
    })
}
