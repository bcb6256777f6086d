//! The CLIP tokenizer against transformers' `CLIPTokenizer` (tests/fixtures/clip_tokens.json,
//! `python -m tools.fixtures.clip_tokenizer`) on CLIP's real 49,408-token vocabulary
//! (tests/fixtures/bpe_simple_vocab_16e6.txt.gz, from the open_clip_torch wheel), written here as
//! the vocab.json / merges.txt pair a Stable Diffusion checkpoint ships.

mod common;

use common::{fixture, tmp_dir};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::PathBuf;
use wgsl_diff::models::clip::tokenizer::byte_symbols;
use wgsl_diff::models::clip::{ClipTokenizer, CONTEXT_LENGTH};

/// vocab.json and merges.txt as CLIP orders its vocabulary: the byte symbols, the same with
/// `</w>`, one token per merge, the two special tokens.
fn write_checkpoint_files(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let mut text = String::new();
    GzDecoder::new(std::fs::File::open(fixture("bpe_simple_vocab_16e6.txt.gz")).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let merges: Vec<&str> = text.split('\n').skip(1).take(49152 - 256 - 2).collect();
    // GPT-2's table in its own order: the bytes that stand for themselves, then the others.
    let table = byte_symbols();
    let (mut own, mut moved): (Vec<usize>, Vec<usize>) =
        (0..256).partition(|&b| table[b] as usize == b);
    own.append(&mut moved);
    let symbols: Vec<String> = own.iter().map(|&b| table[b].to_string()).collect();
    let mut vocab: Vec<String> = symbols.clone();
    vocab.extend(symbols.iter().map(|s| format!("{s}</w>")));
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.extend(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i.into()))
        .collect();
    let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
    std::fs::write(&v, serde_json::to_string(&vocab).unwrap()).unwrap();
    std::fs::write(&m, format!("#version: 0.2\n{}\n", merges.join("\n"))).unwrap();
    (v, m)
}

#[test]
fn token_ids_match_transformers() {
    let dir = tmp_dir("clip-tokenizer");
    let (vocab, merges) = write_checkpoint_files(&dir);
    let tokenizer = ClipTokenizer::from_files(&vocab, &merges).unwrap();
    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("clip_tokens.json")).unwrap()).unwrap();
    assert_eq!(fx["vocab_size"], 49408);
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let got = tokenizer.encode_prompt(prompt);
        assert_eq!(got.ids.len(), CONTEXT_LENGTH);
        assert_eq!(got.ids, want, "{prompt:?}");
        let untruncated = case["untruncated_len"].as_u64().unwrap() as usize;
        assert_eq!(
            got.truncated,
            untruncated.saturating_sub(CONTEXT_LENGTH),
            "{prompt:?}: tokens dropped"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_tokenizer_files_are_errors() {
    let dir = tmp_dir("clip-tokenizer-bad");
    let missing = ClipTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        missing.contains("cannot read") && missing.contains("vocab.json"),
        "{missing}"
    );
    std::fs::write(dir.join("vocab.json"), r#"{"a": 0, "b": 1}"#).unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    let no_specials = ClipTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))
        .err()
        .unwrap()
        .to_string();
    assert!(no_specials.contains("<|startoftext|>"), "{no_specials}");
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\nab\n").unwrap();
    let bad_merge = ClipTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))
        .err()
        .unwrap()
        .to_string();
    assert!(bad_merge.contains("not two symbols"), "{bad_merge}");
    let _ = std::fs::remove_dir_all(&dir);
}
