//! A Stable Diffusion run's text side: the prompt and the negative prompt tokenized and encoded
//! once per job by the folder's CLIP text encoder, into the one-row condition every batch
//! repeats — classifier-free guidance between them when the scale is above 1, as diffusers
//! decides.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::clip::{ClipTextModel, ClipTokenizer};
use crate::models::diffusers::autoencoder_kl::AutoencoderKlDecoder;
use crate::models::pipeline::StableDiffusionParts;
use crate::models::{row_range, Cond, Decoder, MapSpace};
use std::path::PathBuf;

/// What a prompt asks of a text-to-image run.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptRequest {
    pub prompt: String,
    /// The unconditional side of guidance (diffusers' default: the empty prompt).
    pub negative_prompt: String,
    /// Classifier-free guidance scale w (ε = ε_u + w·(ε_c − ε_u)); none at w ≤ 1.
    pub cfg_scale: f64,
    /// The image's height and width in pixels (None: the model's default).
    pub height: Option<usize>,
    pub width: Option<usize>,
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
        for (flag, side) in [("--height", self.height), ("--width", self.width)] {
            if side.is_some_and(|s| s == 0 || s > MAX_IMAGE_SIDE) {
                return Err(Error::Invalid(format!(
                    "{flag} must be between 1 and {MAX_IMAGE_SIDE} pixels, got {}",
                    side.unwrap_or(0)
                )));
            }
        }
        Ok(())
    }

    /// The latent (height, width) of an image of the asked size under `decoder` (which
    /// upsamples by its factor), or None where neither side is given. An unset side takes
    /// the model's `default` latent side.
    pub(super) fn latent_size(
        &self,
        decoder: &dyn Decoder,
        default: Option<usize>,
    ) -> Result<Option<(usize, usize)>> {
        if self.height.is_none() && self.width.is_none() {
            return Ok(None);
        }
        let factor = match decoder.map_space() {
            MapSpace::Latent { factor } => factor,
            MapSpace::Image => 1,
        };
        let side = |flag: &str, pixels: Option<usize>| match (pixels, default) {
            (Some(p), _) if p % factor == 0 => Ok(p / factor),
            (Some(p), _) => Err(Error::Invalid(format!(
                "{flag} {p}: the image side must be a multiple of the VAE's {factor}× upsampling"
            ))),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(Error::Invalid(format!(
                "the UNet's config has no sample_size to take {flag} from: give both --height \
                 and --width"
            ))),
        };
        Ok(Some((
            side("--height", self.height)?,
            side("--width", self.width)?,
        )))
    }
}

/// The largest image side `--height`/`--width` take (SD 1.x is trained at 512; 8192 keeps
/// every tensor index of a latent batch well inside u32).
const MAX_IMAGE_SIDE: usize = 8192;

/// The encoded prompt and the VAE of a Stable Diffusion folder.
pub(super) struct TextToImage {
    pub cond: Cond,
    pub decoder: Box<dyn Decoder>,
    /// Tokens past CLIP's 77 positions that were dropped, per prompt (prompt, negative).
    pub truncated: [usize; 2],
}

/// Tokenizes (with CLIP's vocab.json and merges.txt, `tokenizer`) and encodes the prompts;
/// with `f16_weights` the text encoder's conv and linear weights are stored as f16, as the
/// UNet's are (its activations stay f32: it runs once per job). The VAE stays f32, as diffusers
/// upcasts it.
pub(super) fn prepare(
    gpu: &Gpu,
    parts: StableDiffusionParts,
    tokenizer: &(PathBuf, PathBuf),
    request: &PromptRequest,
    f16_weights: bool,
) -> Result<TextToImage> {
    let tokenizer = ClipTokenizer::from_files(&tokenizer.0, &tokenizer.1)?;
    let text = ClipTextModel::load(gpu, &parts.text_encoder.with_f16_weights(f16_weights))?;
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
