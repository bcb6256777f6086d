//! OpenAI's CLIP as Stable Diffusion 1.x uses it: the text side only. [`tokenizer`] turns a
//! prompt into the 77 token ids the text encoder reads.

pub mod tokenizer;

pub use tokenizer::{ClipTokenizer, PromptTokens, CONTEXT_LENGTH};
