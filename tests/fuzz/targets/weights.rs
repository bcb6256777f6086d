//! Weight files: the safetensors header (`WeightFile::open`), the model config in its metadata
//! (`UNet2DConfig`, `AdmConfig`, `UNet2DConditionConfig`, `ClipTextConfig`: parsed and
//! validated) and the scheduler config (`sampling::open_scheduler`: parsed, validated and turned
//! into a sampler's timesteps). Each input is a small file with the metadata of a real model
//! (the shipped one and fixtures of each family) and a few tensors.

use super::{judge, put, Expect, Target, Verdict};
use crate::json::{self, JsonMutation};
use crate::mutate::{mutate_bytes, Rng, EXTREME_INTS};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use wgsl_diff::models::clip::ClipTextConfig;
use wgsl_diff::models::diffusers::unet_2d_condition::UNet2DConditionConfig;
use wgsl_diff::models::{AdmConfig, UNet2DConfig};
use wgsl_diff::sampling::{open_scheduler, SamplerChoice, SamplerKind, Spacing};

/// The metadata of the shipped model and of fixtures of each family: a diffusers UNet, an ADM,
/// Stable Diffusion's UNet, CLIP's text encoder, and a Stable Diffusion scheduler.
fn seeds() -> &'static [HashMap<String, String>] {
    static SEEDS: OnceLock<Vec<HashMap<String, String>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        [
            "weights/fashion_mnist_ddpm.safetensors",
            "tests/fixtures/unet_tiny_gray.safetensors",
            "tests/fixtures/adm_cond.safetensors",
            "tests/fixtures/sd_unet_sd_tiny.safetensors",
            "tests/fixtures/clip_text_gelu.safetensors",
            "tests/fixtures/sd_pipeline.safetensors",
        ]
        .iter()
        .map(|f| {
            wgsl_diff::models::WeightFile::open(&root.join(f))
                .expect("a seed weight file")
                .metadata
        })
        .collect()
    })
}

/// A seed with the metadata `key`.
fn seed_with(rng: &mut Rng, key: &str) -> &'static HashMap<String, String> {
    let with: Vec<&'static HashMap<String, String>> =
        seeds().iter().filter(|m| m.contains_key(key)).collect();
    with[rng.below(with.len())]
}

/// A safetensors header for three small tensors after `metadata`, and the data's length.
fn header(metadata: &HashMap<String, String>) -> (Value, usize) {
    let mut h = Map::new();
    let mut at = 0;
    for (name, dtype, shape, item) in [
        ("conv.weight", "F32", vec![2, 3], 4),
        ("conv.bias", "F16", vec![4], 2),
        ("scale", "F32", vec![], 4),
    ] {
        let n = shape.iter().product::<usize>() * item;
        h.insert(
            name.into(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + n]}),
        );
        at += n;
    }
    h.insert("__metadata__".into(), json!(metadata));
    (Value::Object(h), at)
}

/// The file: the header's length, the header (padded to 8 bytes) and `data` zero bytes.
fn file(header: &[u8], data: usize) -> Vec<u8> {
    let mut header = header.to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(std::iter::repeat_n(0u8, data));
    out
}

/// What parsing the config `doc` after `m` must do: a key given twice, or nesting past any
/// config's, is refused, an unknown key too where the family's config says so (`strict`:
/// diffusers' and transformers' own files carry keys that do not change the network); a key's
/// value of another type too, unless a null is involved (an optional key: left to the parser);
/// the rest is for validation to judge.
fn config_expect(doc: &Value, m: &JsonMutation, strict: bool) -> Expect {
    match m {
        JsonMutation::Reformatted => Expect::Accept,
        JsonMutation::DuplicateKey { .. } | JsonMutation::Deep { .. } => {
            Expect::Refuse(m.to_string())
        }
        JsonMutation::UnknownKey { .. } if strict => Expect::Refuse(m.to_string()),
        // (A lenient family's config may hold keys it never reads, of any type.)
        JsonMutation::TypeSwap { to, at: path } if strict => match path.as_slice() {
            [json::Step::Key(k)] if *to != Value::Null && doc[k.as_str()] != Value::Null => {
                Expect::Refuse(m.to_string())
            }
            _ => Expect::Either,
        },
        _ => Expect::Either,
    }
}

/// A config accepted from `text` is the one its value spelled another way gives: the parse
/// depends on the document, not on its spelling or key order.
fn spelling_invariant<T: std::fmt::Debug>(
    text: &[u8],
    parsed: &T,
    parse: &impl Fn(&str) -> Result<T, String>,
) -> Result<(), String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let again = parse(&serde_json::to_string_pretty(&value).unwrap())?;
    match format!("{again:?}") == format!("{parsed:?}") {
        true => Ok(()),
        false => Err(format!("{parsed:?} read as {again:?} when respelled")),
    }
}

pub struct WeightFile;

impl Target for WeightFile {
    fn name(&self) -> &'static str {
        "weight_file"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        let mut metadata = seed_with(rng, "config").clone();
        let config: Value = serde_json::from_str(&metadata["config"]).unwrap();
        let (bytes, what, file_expect, config_mutation) = match rng.below(4) {
            // The model config.
            0 | 1 => {
                let m = json::mutate(rng, &config);
                metadata.insert("config".into(), String::from_utf8_lossy(&m.bytes).into());
                let (h, data) = header(&metadata);
                let bytes = file(&serde_json::to_vec(&h).unwrap(), data);
                (
                    bytes,
                    format!("config: {}", m.mutation),
                    Expect::Accept,
                    Some(m),
                )
            }
            // The header's structure.
            2 => {
                let (h, data) = header(&metadata);
                let m = json::mutate(rng, &h);
                let expect = match &m.mutation {
                    JsonMutation::Reformatted => Expect::Accept,
                    JsonMutation::DuplicateKey { .. } => Expect::Refuse("a key twice".into()),
                    _ => Expect::Either,
                };
                (
                    file(&m.bytes, data),
                    format!("header: {}", m.mutation),
                    expect,
                    None,
                )
            }
            // The bytes, or the header's length.
            _ => {
                let (h, data) = header(&metadata);
                let mut bytes = file(&serde_json::to_vec(&h).unwrap(), data);
                let what = match rng.chance(0.3) {
                    true => {
                        let v = *rng.pick(EXTREME_INTS);
                        bytes[..8].copy_from_slice(&v.to_le_bytes());
                        format!("header length {v:#x}")
                    }
                    false => mutate_bytes(rng, &mut bytes),
                };
                (bytes, what, Expect::Either, None)
            }
        };
        let path = put(dir, "model.safetensors", &bytes);
        let opened = wgsl_diff::models::WeightFile::open(&path);
        let opened = match opened {
            Ok(f) => f,
            Err(e) => return judge::<(), _>(Err(e), &file_expect, &what, |_| Ok(())),
        };
        if let Expect::Refuse(why) = &file_expect {
            return Verdict::Wrong(format!("accepted an invalid input ({what}): {why}"));
        }
        let Some(m) = config_mutation else {
            return Verdict::Accepted;
        };
        let text = opened.metadata["config"].clone();
        let arch = opened.metadata.get("arch").cloned().unwrap_or_default();
        let strict = ["UNet2DModel", "ADMUNetModel"].contains(&arch.as_str());
        let expect = config_expect(&config, &m.mutation, strict);
        let text = text.as_str();
        let string = |e: wgsl_diff::Error| e.to_string();
        match arch.as_str() {
            "ADMUNetModel" => {
                let parse = |t: &str| {
                    let c: AdmConfig = wgsl_diff::json::from_str(t).map_err(|e| e.to_string())?;
                    c.validate().map(|()| c).map_err(string)
                };
                let read = opened.config::<AdmConfig>();
                let read = read.and_then(|c| c.validate().map(|()| c)).map_err(string);
                check_config(text, read, &expect, &what, parse)
            }
            "UNet2DConditionModel" => {
                let parse = |t: &str| UNet2DConditionConfig::parse(t).map_err(string);
                check_config(text, parse(text), &expect, &what, parse)
            }
            "CLIPTextModel" => {
                let parse = |t: &str| {
                    let c: ClipTextConfig =
                        wgsl_diff::json::from_str(t).map_err(|e| e.to_string())?;
                    c.validate().map(|()| c).map_err(string)
                };
                let read = opened.config::<ClipTextConfig>();
                let read = read.and_then(|c| c.validate().map(|()| c)).map_err(string);
                check_config(text, read, &expect, &what, parse)
            }
            _ => {
                let parse = |t: &str| {
                    let c: UNet2DConfig =
                        wgsl_diff::json::from_str(t).map_err(|e| e.to_string())?;
                    c.validate().map(|()| c).map_err(string)
                };
                let read = opened.config::<UNet2DConfig>();
                let read = read.and_then(|c| c.validate().map(|()| c)).map_err(string);
                check_config(text, read, &expect, &what, parse)
            }
        }
    }
}

/// The verdict on `read`, the config `text` as the crate's loader reads and validates it; what
/// it accepts must not depend on the text's spelling (`parse` reads a respelling).
fn check_config<T: std::fmt::Debug>(
    text: &str,
    read: Result<T, String>,
    expect: &Expect,
    what: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Verdict {
    judge(read, expect, what, |c| {
        spelling_invariant(text.as_bytes(), &c, &parse)
    })
}

pub struct Scheduler;

impl Target for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler_config"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        // A pixel model's metadata, with any seed's scheduler (SD's among them).
        let mut metadata = seeds()[0].clone();
        let config: Value =
            serde_json::from_str(&seed_with(rng, "scheduler")["scheduler"]).unwrap();
        let m = json::mutate(rng, &config);
        metadata.insert("scheduler".into(), String::from_utf8_lossy(&m.bytes).into());
        let (h, data) = header(&metadata);
        let path = put(
            dir,
            "model.safetensors",
            &file(&serde_json::to_vec(&h).unwrap(), data),
        );
        let choice = SamplerChoice {
            kind: *rng.pick(&[
                SamplerKind::Ddim,
                SamplerKind::Ddpm,
                SamplerKind::Dpmpp2m,
                SamplerKind::Pndm,
            ]),
            steps: rng.chance(0.8).then(|| rng.below(60) + 1),
            eta: *rng.pick(&[0.0, 1.0]),
            spacing: rng
                .chance(0.3)
                .then(|| *rng.pick(&[Spacing::Leading, Spacing::Trailing, Spacing::Linspace])),
            steps_offset: rng.chance(0.2).then(|| rng.below(2)),
            clip: rng.chance(0.5),
        };
        // Only the key-level damage is certain; whether a value is in range is validation's
        // call, checked below by what the schedule and timesteps must satisfy.
        let expect = match &m.mutation {
            JsonMutation::DuplicateKey { .. }
            | JsonMutation::UnknownKey { .. }
            | JsonMutation::Deep { .. } => Expect::Refuse(m.mutation.to_string()),
            _ => Expect::Either,
        };
        let what = format!("{} with {choice:?}", m.mutation);
        judge(open_scheduler(&path, &choice), &expect, &what, |(_, s)| {
            let t_train = s.schedule.alphas_cumprod.len();
            let betas_ok = s.schedule.betas.iter().all(|b| *b > 0.0 && *b < 1.0);
            let abar = &s.schedule.alphas_cumprod;
            let abar_ok = abar.iter().all(|a| a.is_finite() && *a > 0.0 && *a <= 1.0)
                && abar.windows(2).all(|w| w[1] <= w[0]);
            if !betas_ok || !abar_ok || t_train != s.schedule.betas.len() {
                return Err(
                    "a schedule with β outside (0, 1) or ᾱ not decreasing in (0, 1]".into(),
                );
            }
            match s.timesteps.iter().find(|&&t| t >= t_train) {
                Some(t) => Err(format!("timestep {t} of a {t_train}-step schedule")),
                None if s.timesteps.is_empty() => Err("no timesteps".into()),
                None => Ok(()),
            }
        })
    }
}
