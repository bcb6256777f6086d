//! A run folder's JSON: its manifest `samples.json` (`run_dir::read_manifest`, which `filter`
//! starts from) and its identity `run.json` (`run_dir::shared::claim`, which lets a worker in
//! only with the same parameters).

use super::{judge, put, Expect, Target, Verdict};
use crate::json::{self, JsonMutation, Step};
use crate::mutate::Rng;
use serde_json::{json, Value};
use std::path::Path;

/// A run's parameters as `sample` records them.
fn parameters(rng: &mut Rng) -> Value {
    let steps = rng.below(5) + 1;
    let mut p = json!({
        "model": "/runs/weights/fashion_mnist_ddpm.safetensors",
        "sampler": *rng.pick(&["ddim", "ddpm", "dpmpp2m"]),
        "steps": steps, "eta": 0.0, "spacing": "leading", "steps_offset": 0,
        "clip_sample": true, "seed": rng.u64() % 1000,
        "timesteps": (0..steps).map(|i| 999 - 200 * i).collect::<Vec<_>>(),
        "uncertainty": null,
    });
    if rng.chance(0.5) {
        p["uncertainty"] = json!({"M": 5, "mode": "centred", "start": 0, "steps": null});
    }
    p
}

fn manifest(rng: &mut Rng) -> Value {
    let samples: Vec<Value> = (0..rng.below(4))
        .map(|k| {
            let mut s = json!({"index": 3 * k, "file": format!("sample_{:06}.png", 3 * k)});
            if rng.chance(0.5) {
                s["score"] = json!(rng.u64() as f64 / 1e17);
                s["step_scores"] = json!({"0": 1.5, "2": null});
                s["heatmap"] = json!(format!("heatmap_{:06}.png", 3 * k));
            }
            if rng.chance(0.3) {
                s["class"] = json!(rng.below(10));
            }
            if rng.chance(0.2) {
                s["non_finite_step"] = json!(rng.below(10));
            }
            s
        })
        .collect();
    json!({"parameters": parameters(rng), "samples": samples})
}

fn value_at<'a>(doc: &'a Value, at: &[Step]) -> &'a Value {
    at.iter().fold(doc, |v, s| match s {
        Step::Key(k) => &v[k.as_str()],
        Step::Index(i) => &v[*i],
    })
}

/// Numbers no JSON reader here turns into an f64 (past its range).
fn overflows(text: &str) -> bool {
    matches!(text, "1e309" | "-1e309")
}

/// What reading a manifest must do after `m`: its parameters may be any JSON, a record's
/// optional fields may be null or absent, keys are never given twice.
fn manifest_expect(doc: &Value, m: &JsonMutation) -> Expect {
    let refuse = || Expect::Refuse(m.to_string());
    let path: Vec<&Step> = m.at().map(|p| p.iter().collect()).unwrap_or_default();
    let field = match path.as_slice() {
        [Step::Key(s), Step::Index(_), Step::Key(f), ..] if s == "samples" => Some(f.as_str()),
        _ => None,
    };
    let optional = |f: &str| {
        [
            "class",
            "score",
            "step_scores",
            "heatmap",
            "non_finite_step",
        ]
        .contains(&f)
    };
    match m {
        JsonMutation::Reformatted => Expect::Accept,
        JsonMutation::Bytes(_) => Expect::Either,
        JsonMutation::DuplicateKey { .. } | JsonMutation::Deep { .. } => refuse(),
        // Keys it does not know are ignored (nothing reads them).
        JsonMutation::UnknownKey { .. } => Expect::Either,
        _ if m.under("parameters") => match m {
            JsonMutation::Extreme { text, .. } if overflows(text) => refuse(),
            _ => Expect::Accept,
        },
        JsonMutation::RemovedKey { key, .. } => match path.len() {
            0 => refuse(),
            2 if !optional(key) => refuse(),
            _ => Expect::Accept,
        },
        // An optional field, or a step's score (read as NaN), may be null; one that was null
        // may now hold a value of its type, or not.
        JsonMutation::TypeSwap { to, at }
            if path.len() == 3 && field.is_some_and(optional)
                || path.len() == 4 && field == Some("step_scores") =>
        {
            match (to, value_at(doc, at)) {
                (Value::Null, _) => Expect::Accept,
                (_, Value::Null) => Expect::Either,
                _ => refuse(),
            }
        }
        JsonMutation::TypeSwap { .. } => refuse(),
        JsonMutation::Extreme { text, .. } => match field {
            Some("index" | "class" | "non_finite_step") if path.len() == 3 => match text.as_str() {
                "-0" => Expect::Either,
                t if t.parse::<u64>().is_ok() => Expect::Accept,
                _ => refuse(),
            },
            Some("score" | "step_scores") if !overflows(text) && path.len() >= 3 => {
                match path.len() {
                    3 if field == Some("step_scores") => refuse(),
                    _ => Expect::Accept,
                }
            }
            _ => refuse(),
        },
        JsonMutation::OddString { .. } => match field {
            Some("file" | "heatmap") if path.len() == 3 => Expect::Accept,
            _ => refuse(),
        },
    }
}

pub struct Manifest;

impl Target for Manifest {
    fn name(&self) -> &'static str {
        "samples_json"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        let doc = manifest(rng);
        let mutant = json::mutate(rng, &doc);
        put(dir, "samples.json", &mutant.bytes);
        let expect = manifest_expect(&doc, &mutant.mutation);
        let what = mutant.mutation.to_string();
        judge(
            wgsl_diff::run_dir::read_manifest(dir),
            &expect,
            &what,
            |m| {
                let read = serde_json::to_value(&m).map_err(|e| e.to_string())?;
                let again: wgsl_diff::run_dir::Manifest =
                    serde_json::from_value(read.clone()).map_err(|e| e.to_string())?;
                if serde_json::to_value(&again).map_err(|e| e.to_string())? != read {
                    return Err("the manifest does not survive a write and read".into());
                }
                match mutant.mutation {
                    JsonMutation::Reformatted if read != doc => {
                        Err(format!("read {read}, the file holds {doc}"))
                    }
                    _ => Ok(()),
                }
            },
        )
    }
}

pub struct RunJson;

impl Target for RunJson {
    fn name(&self) -> &'static str {
        "run_json"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        let doc = parameters(rng);
        let mutant = json::mutate(rng, &doc);
        put(dir, "run.json", &mutant.bytes);
        // Only the same parameters may claim the folder: any change of value is another run.
        // (A number spelled otherwise, as -0 for 0.0, is the same value.)
        let same_text = |at: &[Step], text: &str| {
            serde_json::from_str::<Value>(text).is_ok_and(|v| v == *value_at(&doc, at))
        };
        let expect = match &mutant.mutation {
            JsonMutation::Reformatted => Expect::Accept,
            JsonMutation::Bytes(_) => Expect::Either,
            JsonMutation::Extreme { at, text } if same_text(at, text) => Expect::Accept,
            m => Expect::Refuse(m.to_string()),
        };
        let what = mutant.mutation.to_string();
        judge(
            wgsl_diff::run_dir::shared::claim(dir, &doc),
            &expect,
            &what,
            |()| {
                let text = std::fs::read(dir.join("run.json")).map_err(|e| e.to_string())?;
                match serde_json::from_slice::<Value>(&text) {
                    Ok(v) if v == doc => Ok(()),
                    _ => Err("claimed with a run.json that holds other parameters".into()),
                }
            },
        )
    }
}
