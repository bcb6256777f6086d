//! `.npy` arrays (`npy::read`: `--init-noise`, maps, raw images) and calibrated threshold files
//! (`CalibratedThreshold::load`: the `.npy` and its `FILE.json` calibration record).

use super::{judge, put, Expect, Target, Verdict};
use crate::json::{self, JsonMutation, Step};
use crate::mutate::{mutate_bytes, Rng};
use crate::npy_file::NpyPlan;
use std::path::Path;
use wgsl_diff::guidance::{CalibratedThreshold, Calibration, GuidanceRule};
use wgsl_diff::limits::{MAX_COPIES, MAX_TRAIN_TIMESTEPS, SAMPLE_INDEX_END};

/// A valid array of up to 4 small dimensions and random finite values; sometimes changed in
/// structure (up to three times), sometimes damaged byte-wise on top. Returns the plan, the
/// bytes and what was done (None: nothing byte-level, so the plan says what the file means).
fn npy_case(rng: &mut Rng, shape: &[usize]) -> (NpyPlan, Vec<u8>, String, bool) {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| (rng.u64() as i32) as f32 / 1e6).collect();
    let mut plan = NpyPlan::f32s(shape, &values);
    let mut what = Vec::new();
    if rng.chance(0.7) {
        for _ in 0..rng.below(3) + 1 {
            what.push(plan.mutate(rng));
        }
    }
    let mut bytes = plan.encode();
    let damaged = rng.chance(0.3);
    if damaged {
        what.push(mutate_bytes(rng, &mut bytes));
    }
    let what = match what.is_empty() {
        true => "unchanged".to_string(),
        false => what.join("; "),
    };
    (plan, bytes, what, damaged)
}

/// What reading the planned file must do.
fn npy_expect(plan: &NpyPlan, damaged: bool) -> Expect {
    if damaged {
        return Expect::Either;
    }
    match plan.invalid(&["<f4"]) {
        Some(why) => Expect::Refuse(why),
        None if plan.numpy_spelling() => Expect::Accept,
        None => Expect::Either,
    }
}

/// What was read is what the plan holds (when it was not damaged) and survives a round trip.
fn npy_consistent(
    plan: &NpyPlan,
    damaged: bool,
    (shape, data): (Vec<usize>, Vec<f32>),
    dir: &Path,
) -> Result<(), String> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(format!("shape {shape:?} for {} values", data.len()));
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    if !damaged {
        if Some(&shape) != plan.shape().as_ref() {
            return Err(format!("shape {shape:?}, the file says {:?}", plan.dims));
        }
        if bytemuck::cast_slice::<f32, u8>(&data) != plan.payload {
            return Err("values differ from the file's".into());
        }
    }
    let again = dir.join("again.npy");
    wgsl_diff::npy::write(&again, &shape, &data).map_err(|e| e.to_string())?;
    let (s, d) = wgsl_diff::npy::read(&again).map_err(|e| e.to_string())?;
    match s == shape && bits(&d) == bits(&data) {
        true => Ok(()),
        false => Err("the array does not survive a write and read".into()),
    }
}

pub struct Npy;

impl Target for Npy {
    fn name(&self) -> &'static str {
        "npy"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        let rank = rng.below(5);
        let shape: Vec<usize> = (0..rank)
            .map(|_| rng.below(5) + usize::from(rank > 0))
            .collect();
        let (plan, bytes, what, damaged) = npy_case(rng, &shape);
        let path = put(dir, "a.npy", &bytes);
        judge(
            wgsl_diff::npy::read(&path),
            &npy_expect(&plan, damaged),
            &what,
            |read| npy_consistent(&plan, damaged, read, dir),
        )
    }
}

pub struct Thresholds;

/// Whether the number `text` is a valid value for the record's top-level `key` (None: the
/// spelling leaves it to the JSON reader, e.g. `-0`).
fn record_number_valid(key: &str, text: &str, rule: GuidanceRule) -> Option<bool> {
    if text == "-0" {
        return None;
    }
    let int = text.parse::<u64>().ok();
    Some(match key {
        "copies" => {
            let least = if rule == GuidanceRule::Gradient { 2 } else { 1 };
            int.is_some_and(|c| (least..=MAX_COPIES as u64).contains(&c))
        }
        "samples" => int.is_some_and(|n| (1..=SAMPLE_INDEX_END).contains(&n)),
        "seed" => int.is_some(),
        "percentile" => text.parse::<f64>().is_ok_and(|p| p > 0.0 && p < 1.0),
        _ => false,
    })
}

/// What a mutation of a valid record (for `rule`) means for loading it: a record outside what
/// `calibrate` writes is refused; one still within it is read.
fn record_expect(m: &JsonMutation, rule: GuidanceRule) -> Expect {
    let refuse = || Expect::Refuse(format!("record {m}"));
    let valid = |ok: Option<bool>| match ok {
        Some(true) => Expect::Accept,
        Some(false) => refuse(),
        None => Expect::Either,
    };
    let path: Vec<&Step> = m.at().map(|p| p.iter().collect()).unwrap_or_default();
    match (m, path.as_slice()) {
        (JsonMutation::Reformatted, _) => Expect::Accept,
        (JsonMutation::Bytes(_), _) => Expect::Either,
        (JsonMutation::Extreme { text, .. }, [Step::Key(k)]) => {
            valid(record_number_valid(k, text, rule))
        }
        (JsonMutation::Extreme { text, .. }, [Step::Key(k), Step::Index(_)])
            if k == "timesteps" =>
        {
            match text.as_str() {
                "-0" => Expect::Either,
                t => valid(Some(
                    t.parse::<u64>()
                        .is_ok_and(|t| t < MAX_TRAIN_TIMESTEPS as u64),
                )),
            }
        }
        (JsonMutation::OddString { .. }, [Step::Key(k)]) if k == "model" => Expect::Accept,
        _ => refuse(),
    }
}

impl Target for Thresholds {
    fn name(&self) -> &'static str {
        "thresholds"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        let steps = rng.below(4) + 1;
        let sample = [rng.below(3) + 1, rng.below(4) + 1, rng.below(4) + 1];
        let shape = [steps, sample[0], sample[1], sample[2]];
        let (plan, bytes, mut what, damaged) = npy_case(rng, &shape);
        let path = put(dir, "thr.npy", &bytes);
        let mut expect = npy_expect(&plan, damaged);
        if let (Expect::Accept | Expect::Either, Some(s)) = (&expect, plan.shape()) {
            if s != shape {
                expect = Expect::Refuse(format!("shape {s:?} for {shape:?}"));
            }
        }
        let finite = plan
            .payload
            .chunks(4)
            .all(|b| b.len() < 4 || f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
        if !finite && !damaged {
            expect = Expect::Refuse("a non-finite threshold".into());
        }
        let rule = *rng.pick(&[GuidanceRule::Gradient, GuidanceRule::Posterior]);
        let record = Calibration {
            rule,
            copies: rng.below(8) + 2,
            percentile: 0.95,
            timesteps: (0..steps).map(|i| 900 - 100 * i).collect(),
            model: "weights/model.safetensors".into(),
            samples: rng.below(1000) + 1,
            seed: rng.u64(),
        };
        let doc = serde_json::to_value(&record).unwrap();
        let mutant = match rng.below(3) {
            0 => None,
            _ => Some(json::mutate(rng, &doc)),
        };
        if let Some(m) = &mutant {
            put(dir, "thr.npy.json", &m.bytes);
            what += &format!("; record: {}", m.mutation);
            expect = match (expect, record_expect(&m.mutation, rule)) {
                (Expect::Refuse(why), _) | (_, Expect::Refuse(why)) => Expect::Refuse(why),
                (Expect::Either, _) | (_, Expect::Either) => Expect::Either,
                _ => Expect::Accept,
            };
        }
        let unchanged = mutant
            .as_ref()
            .is_some_and(|m| matches!(m.mutation, JsonMutation::Reformatted));
        judge(
            CalibratedThreshold::load(&path, steps, sample),
            &expect,
            &what,
            |t| {
                if t.shape != shape {
                    return Err(format!("shape {:?} for {shape:?}", t.shape));
                }
                if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                    return Err(format!("threshold {i} is {}", t.data[i]));
                }
                match (&t.calibration, &mutant) {
                    (Some(_), None) => Err("a record where there is none".into()),
                    (None, Some(_)) => Err("the record was not read".into()),
                    (Some(c), Some(_)) if unchanged && *c != record => {
                        Err(format!("record {c:?}, the file says {record:?}"))
                    }
                    (Some(c), Some(_)) if c.timesteps.len() != steps => Err(format!(
                        "a record of {} timesteps for {steps} steps",
                        c.timesteps.len()
                    )),
                    _ => Ok(()),
                }
            },
        )
    }
}
