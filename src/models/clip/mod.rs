//! OpenAI's CLIP as Stable Diffusion 1.x uses it: the text side only. [`tokenizer`] turns a
//! prompt into the 77 token ids that [`text_model`] encodes into the states the UNet's
//! cross-attention reads.

pub mod text_model;
pub mod tokenizer;

pub use text_model::{ClipTextConfig, ClipTextModel};
pub use tokenizer::{ClipTokenizer, PromptTokens, CONTEXT_LENGTH};
