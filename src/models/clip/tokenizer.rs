//! CLIP's byte-level BPE tokenizer, as transformers' `CLIPTokenizer` runs it, reading the
//! `tokenizer/vocab.json` and `tokenizer/merges.txt` a Stable Diffusion checkpoint ships.
//!
//! 1. The special tokens `<|startoftext|>` and `<|endoftext|>` are found in the raw text first.
//! 2. Each other stretch is normalised: Unicode NFC, every run of whitespace one space, lower
//!    case.
//! 3. It is split into words by CLIP's pattern (contractions, runs of letters, single digits,
//!    runs of other non-space characters); whitespace separates and is dropped.
//! 4. Each word's UTF-8 bytes become GPT-2's byte symbols (every byte a printable character),
//!    the last one marked `</w>`, and pairs are merged in the order of `merges.txt` until none
//!    applies; each piece is looked up in `vocab.json` (unknown pieces become `<|endoftext|>`).
//! 5. A prompt is `<|startoftext|>`, at most 75 tokens, `<|endoftext|>`, padded with
//!    `<|endoftext|>` to 77 — as Stable Diffusion's pipeline calls it (truncation on).

use crate::error::{Error, Result};
use regex::Regex;
use std::collections::HashMap;
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

/// CLIP's context length: the text encoder's 77 positions.
pub const CONTEXT_LENGTH: usize = 77;
pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// CLIP's word pattern (transformers' pre-tokenizer), applied to normalised text.
const WORDS: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// GPT-2's pattern, which the byte-level step applies to each word again; on words without
/// whitespace (all CLIP's are) its whitespace alternatives never match, so they are left out.
const BYTE_LEVEL_WORDS: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";
const END_OF_WORD: &str = "</w>";

/// A prompt's token ids, padded to [`CONTEXT_LENGTH`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTokens {
    pub ids: Vec<u32>,
    /// Tokens past the context that were dropped (diffusers warns about them too).
    pub truncated: usize,
}

pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// (left, right) → rank; a lower rank merges first.
    ranks: HashMap<(String, String), usize>,
    byte_symbols: [char; 256],
    words: Regex,
    byte_level_words: Regex,
    start: u32,
    end: u32,
}

impl ClipTokenizer {
    /// Reads a checkpoint's `vocab.json` and `merges.txt` (its first line may be a
    /// `#version` header).
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<ClipTokenizer> {
        let read = |p: &Path| crate::io::read_text_input(p, crate::limits::MAX_CONFIG_BYTES);
        let vocab: HashMap<String, u32> =
            crate::json::from_str(&read(vocab_json)?).map_err(|e| {
                Error::Invalid(format!("{}: not a vocabulary: {e}", vocab_json.display()))
            })?;
        let merges = read(merges_txt)?;
        let mut ranks = HashMap::new();
        let lines = merges
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.is_empty());
        for (rank, line) in lines.enumerate() {
            let (a, b) = line.split_once(' ').ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: merge {rank} ({line:?}) is not two symbols",
                    merges_txt.display()
                ))
            })?;
            ranks.insert((a.to_string(), b.to_string()), rank);
        }
        ClipTokenizer::new(vocab, ranks)
    }

    /// A tokenizer over `vocab` (token → id) and merge `ranks`, which must know both special
    /// tokens.
    pub fn new(
        vocab: HashMap<String, u32>,
        ranks: HashMap<(String, String), usize>,
    ) -> Result<ClipTokenizer> {
        let special = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| Error::Invalid(format!("the CLIP vocabulary has no {token} token")))
        };
        Ok(ClipTokenizer {
            start: special(START_OF_TEXT)?,
            end: special(END_OF_TEXT)?,
            vocab,
            ranks,
            byte_symbols: byte_symbols(),
            words: Regex::new(WORDS).expect("a valid pattern"),
            byte_level_words: Regex::new(BYTE_LEVEL_WORDS).expect("a valid pattern"),
        })
    }

    /// The token ids of `text`, without the start, end and padding tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next_special = [START_OF_TEXT, END_OF_TEXT]
                .iter()
                .filter_map(|s| rest.find(s).map(|at| (at, *s)))
                .min();
            let (plain, special) = match next_special {
                Some((at, s)) => (&rest[..at], Some(s)),
                None => (rest, None),
            };
            self.encode_plain(plain, &mut ids);
            match special {
                Some(s) => {
                    ids.push(if s == START_OF_TEXT {
                        self.start
                    } else {
                        self.end
                    });
                    rest = &rest[plain.len() + s.len()..];
                }
                None => rest = "",
            }
        }
        ids
    }

    /// `text` as the text encoder takes it: start, at most [`CONTEXT_LENGTH`] − 2 tokens, end,
    /// padded with the end token.
    pub fn encode_prompt(&self, text: &str) -> PromptTokens {
        let tokens = self.encode(text);
        let room = CONTEXT_LENGTH - 2;
        let mut ids = Vec::with_capacity(CONTEXT_LENGTH);
        ids.push(self.start);
        ids.extend(tokens.iter().take(room));
        ids.push(self.end);
        ids.resize(CONTEXT_LENGTH, self.end);
        PromptTokens {
            ids,
            truncated: tokens.len().saturating_sub(room),
        }
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        let normalised = normalise(text);
        for word in self.words.find_iter(&normalised) {
            for piece in self.byte_level_words.find_iter(word.as_str()) {
                let symbols: String = piece
                    .as_str()
                    .bytes()
                    .map(|b| self.byte_symbols[b as usize])
                    .collect();
                ids.extend(
                    self.bpe(&symbols)
                        .iter()
                        .map(|s| self.vocab.get(s).copied().unwrap_or(self.end)),
                );
            }
        }
    }

    /// The merged pieces of one word of byte symbols, its last symbol marked `</w>`.
    fn bpe(&self, word: &str) -> Vec<String> {
        let mut parts: Vec<String> = word.chars().map(String::from).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str(END_OF_WORD);
        }
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| {
                    self.ranks
                        .get(&(pair[0].clone(), pair[1].clone()))
                        .map(|&rank| (rank, i))
                })
                .min();
            let Some((_, i)) = best else {
                return parts;
            };
            let right = parts.remove(i + 1);
            parts[i].push_str(&right);
        }
    }
}

/// NFC, whitespace runs to one space, lower case (transformers' normaliser sequence).
fn normalise(text: &str) -> String {
    let nfc: String = text.nfc().collect();
    let mut out = String::with_capacity(nfc.len());
    let mut in_space = false;
    for c in nfc.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.extend(c.to_lowercase());
            in_space = false;
        }
    }
    out
}

/// GPT-2's byte-to-symbol table: printable Latin-1 bytes stand for themselves, the other 68
/// bytes for the code points from 256 on, in order.
pub fn byte_symbols() -> [char; 256] {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next = 256;
    for b in 0..256u32 {
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(code).expect("below the surrogates");
    }
    table
}
