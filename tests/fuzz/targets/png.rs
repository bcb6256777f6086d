//! A sample PNG's text chunks (`images::read_png_text`) and the record a run folder makes of
//! them (`run_dir::collect`: index, class, score, per-step scores, the non-finite mark), with
//! values of the right kind or not, keywords given twice, compressed (zTXt) and international
//! (iTXt) chunks as other tools rewrite them, and damaged bytes.

use super::{judge, put, Expect, Target, Verdict};
use crate::mutate::{mutate_bytes, Rng};
use std::collections::BTreeMap;
use std::path::Path;
use wgsl_diff::run_dir::SampleRecord;

pub struct PngText;

/// How a text chunk is stored.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Plain,
    Compressed,
    International,
}

fn encode(w: u32, h: u32, chunks: &[(String, String, Kind)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    for (k, v, kind) in chunks {
        let added = match kind {
            Kind::Plain => enc.add_text_chunk(k.clone(), v.clone()),
            Kind::Compressed => enc.add_ztxt_chunk(k.clone(), v.clone()),
            Kind::International => enc.add_itxt_chunk(k.clone(), v.clone()),
        };
        added.unwrap();
    }
    let mut writer = enc.write_header().unwrap();
    writer
        .write_image_data(&vec![128; (w * h) as usize])
        .unwrap();
    writer.finish().unwrap();
    out
}

/// A value for `key` and whether the record may hold it (None: written otherwise than
/// wgsl-diff writes it, either answer is right).
fn value(rng: &mut Rng, key: &str, index: usize) -> (String, Option<bool>) {
    let good = |s: String| (s, Some(true));
    let bad = |s: &str| (s.to_string(), Some(false));
    let odd = rng.chance(0.25);
    match key {
        "index" if !odd => good(index.to_string()),
        "index" => match rng.below(3) {
            0 => bad(&(index + 1).to_string()),
            1 => bad("x"),
            _ => (format!("0{index}"), None),
        },
        "class" | "non_finite_step" if !odd => good(rng.below(10).to_string()),
        "class" | "non_finite_step" => match rng.below(4) {
            0 => bad("-1"),
            1 => bad("18446744073709551616"),
            2 => bad("1e3"),
            _ => ("07".into(), None),
        },
        "uncertainty_score" if !odd => good(format!("{}", rng.u64() as f64 / 1e15)),
        "uncertainty_score" => match rng.below(5) {
            0 => good("NaN".into()),
            1 => good("inf".into()),
            2 => bad("x"),
            3 => bad(" 1.5"),
            _ => ("1e400".into(), None),
        },
        _ if !odd => good(format!("0:{},2:{}", rng.below(100), rng.below(100))),
        _ => match rng.below(5) {
            0 => bad("0:1.5,0:2.5"),
            1 => bad("a:1"),
            2 => bad("0"),
            3 => good(String::new()),
            _ => ("0:1.5,".into(), None),
        },
    }
}

/// The record wgsl-diff makes of a sample's checked text.
fn record(index: usize, text: &BTreeMap<String, String>) -> SampleRecord {
    let steps = text.get("uncertainty_step_scores").map(|v| {
        v.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (s, x) = p.split_once(':').unwrap();
                (s.parse().unwrap(), x.parse().unwrap())
            })
            .collect()
    });
    SampleRecord {
        index,
        file: format!("sample_{index:06}.png"),
        class: text.get("class").map(|v| v.parse().unwrap()),
        score: text.get("uncertainty_score").map(|v| v.parse().unwrap()),
        step_scores: steps,
        heatmap: None,
        non_finite_step: text.get("non_finite_step").map(|v| v.parse().unwrap()),
    }
}

impl Target for PngText {
    fn name(&self) -> &'static str {
        "png_text"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        let index = rng.below(1000);
        let keys = [
            "parameters",
            "index",
            "class",
            "uncertainty_score",
            "uncertainty_step_scores",
            "non_finite_step",
        ];
        let mut chunks = Vec::new();
        let mut expect = Expect::Accept;
        let mut what = Vec::new();
        for key in keys {
            if key != "parameters" && rng.chance(0.3) {
                continue;
            }
            let (v, valid) = match key {
                "parameters" => (r#"{"seed":0}"#.to_string(), Some(true)),
                _ => value(rng, key, index),
            };
            let kind = *rng.pick(&[
                Kind::Plain,
                Kind::Plain,
                Kind::Compressed,
                Kind::International,
            ]);
            match valid {
                Some(false) => expect = Expect::Refuse(format!("{key} {v:?}")),
                None if matches!(expect, Expect::Accept) => expect = Expect::Either,
                _ => {}
            }
            what.push(format!("{key}={v:?} {kind:?}"));
            chunks.push((key.to_string(), v, kind));
        }
        if rng.chance(0.1) {
            let k = rng.below(chunks.len());
            let (key, _, kind) = chunks[k].clone();
            chunks.push((key.clone(), "1".into(), kind));
            what.push(format!("{key} twice"));
            expect = Expect::Refuse(format!("{key} given twice"));
        }
        let mut bytes = encode(rng.below(3) as u32 + 1, rng.below(3) as u32 + 1, &chunks);
        let damaged = rng.chance(0.3);
        if damaged {
            what.push(mutate_bytes(rng, &mut bytes));
            expect = Expect::Either;
        }
        let what = what.join("; ");
        let path = put(dir, &format!("sample_{index:06}.png"), &bytes);
        let written: BTreeMap<String, String> = chunks
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        let text = wgsl_diff::images::read_png_text(&path);
        let text_verdict = judge(text, &Expect::Either, &what, |text| {
            let text: BTreeMap<String, String> = text.into_iter().collect();
            match damaged || matches!(expect, Expect::Refuse(_)) || text == written {
                true => Ok(()),
                false => Err(format!("text {text:?}, the file holds {written:?}")),
            }
        });
        if let Verdict::Wrong(_) = text_verdict {
            return text_verdict;
        }
        let expect_record = matches!(expect, Expect::Accept).then(|| record(index, &written));
        judge(
            wgsl_diff::run_dir::collect(dir, &[index]),
            &expect,
            &what,
            |records| {
                let [r] = records.as_slice() else {
                    return Err(format!("{} records of one sample", records.len()));
                };
                let json = |r: &SampleRecord| serde_json::to_value(r).unwrap();
                match &expect_record {
                    Some(e) if json(e) != json(r) => Err(format!("record {r:?}, expected {e:?}")),
                    _ if r.index != index => Err(format!("index {}", r.index)),
                    _ => Ok(()),
                }
            },
        )
    }
}
