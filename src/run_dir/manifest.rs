//! The run folder's index: one record per sample PNG, rebuilt from the PNGs' tEXt chunks (index,
//! class, score, per-step scores), written as `samples.json` and `scores.csv`.

use super::{heatmap_name, png_name};
use crate::error::{Error, Result};
use crate::images;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleRecord {
    pub index: usize,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub class: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
    /// Each window step's score (step → the sum of its map; for typicality, Δ_t), so a study
    /// can choose its window after the fact.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "non_finite_as_nan"
    )]
    pub step_scores: Option<BTreeMap<usize, f64>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub heatmap: Option<String>,
    /// The first step at which the sample held a NaN or ±Inf (written only with
    /// `--keep-non-finite`; its image and score are then not to be trusted).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub non_finite_step: Option<usize>,
}

/// The PNG tEXt keyword of [`SampleRecord::non_finite_step`].
pub const NON_FINITE_KEY: &str = "non_finite_step";

/// The PNG tEXt keyword of [`SampleRecord::step_scores`]: `step:score` pairs joined by commas.
pub const STEP_SCORES_KEY: &str = "uncertainty_step_scores";

#[derive(Serialize, Deserialize)]
pub struct Manifest {
    pub parameters: serde_json::Value,
    pub samples: Vec<SampleRecord>,
}

/// The indices of the sample PNGs in `dir`, in order.
pub fn sample_indices(dir: &Path) -> Result<Vec<usize>> {
    let cannot = Error::file("list", dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let name = entry.map_err(cannot)?.file_name();
        let name = name.to_string_lossy();
        let index = name
            .strip_prefix("sample_")
            .and_then(|n| n.strip_suffix(".png"))
            .and_then(|n| n.parse().ok())
            .filter(|&i| png_name(i) == name);
        out.extend(index);
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads the records of the samples `indices` that exist in `dir`.
pub fn collect(dir: &Path, indices: &[usize]) -> Result<Vec<SampleRecord>> {
    let mut out = Vec::new();
    for &index in indices {
        if let Some(record) = read_record(dir, index)? {
            out.push(record);
        }
    }
    Ok(out)
}

/// The records of every sample PNG in `dir`, reading only those not in `known` (which keeps
/// what it read): a run rewrites its manifest after every batch, and other workers' samples
/// appear in the folder meanwhile.
pub fn collect_folder(
    dir: &Path,
    known: &mut std::collections::BTreeMap<usize, SampleRecord>,
) -> Result<Vec<SampleRecord>> {
    let mut out = Vec::new();
    for index in sample_indices(dir)? {
        let record = match known.entry(index) {
            std::collections::btree_map::Entry::Occupied(e) => Some(e.get().clone()),
            std::collections::btree_map::Entry::Vacant(e) => {
                read_record(dir, index)?.map(|r| e.insert(r).clone())
            }
        };
        out.extend(record);
    }
    Ok(out)
}

/// Sample `index`'s record from its PNG, None when it has none.
fn read_record(dir: &Path, index: usize) -> Result<Option<SampleRecord>> {
    let path = dir.join(png_name(index));
    if !path.exists() {
        return Ok(None);
    }
    let text = images::read_png_text(&path)?;
    let bad = |key: &str, e: &dyn std::fmt::Display| {
        Error::Invalid(format!("{}: bad {key}: {e}", path.display()))
    };
    let float = |key: &str| {
        text.get(key)
            .map(|v| v.parse::<f64>().map_err(|e| bad(key, &e)))
            .transpose()
    };
    let count = |key: &str| {
        text.get(key)
            .map(|v| v.parse::<usize>().map_err(|e| bad(key, &e)))
            .transpose()
    };
    // A PNG renamed or copied under another sample's name would lend that sample its score.
    if let Some(own) = count("index")? {
        if own != index {
            return Err(Error::Invalid(format!(
                "{} holds sample {own}, not {index}",
                path.display()
            )));
        }
    }
    Ok(Some(SampleRecord {
        index,
        file: png_name(index),
        class: count("class")?,
        score: float("uncertainty_score")?,
        step_scores: text
            .get(STEP_SCORES_KEY)
            .map(|v| parse_step_scores(v).ok_or_else(|| bad(STEP_SCORES_KEY, &v)))
            .transpose()?,
        heatmap: dir
            .join(heatmap_name(index))
            .exists()
            .then(|| heatmap_name(index)),
        non_finite_step: count(NON_FINITE_KEY)?,
    }))
}

/// JSON writes a NaN or ±Inf step score as null; it reads back as NaN.
fn non_finite_as_nan<'de, D>(d: D) -> std::result::Result<Option<BTreeMap<usize, f64>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let scores = Option::<BTreeMap<usize, Option<f64>>>::deserialize(d)?;
    Ok(scores.map(|m| {
        m.into_iter()
            .map(|(step, v)| (step, v.unwrap_or(f64::NAN)))
            .collect()
    }))
}

/// `step:score,step:score,…` (empty: no steps); None when a pair does not parse or a step is
/// given twice.
fn parse_step_scores(text: &str) -> Option<BTreeMap<usize, f64>> {
    let mut scores = BTreeMap::new();
    for pair in text.split(',').filter(|pair| !pair.is_empty()) {
        let (step, score) = pair.split_once(':')?;
        if scores
            .insert(step.parse().ok()?, score.parse().ok()?)
            .is_some()
        {
            return None;
        }
    }
    Some(scores)
}

pub fn write_manifest(
    dir: &Path,
    parameters: &serde_json::Value,
    samples: &[SampleRecord],
) -> Result<()> {
    let m = Manifest {
        parameters: parameters.clone(),
        samples: samples.to_vec(),
    };
    let json = serde_json::to_string_pretty(&m)
        .map_err(|e| Error::Invalid(format!("cannot serialise the manifest: {e}")))?;
    crate::io::write_atomic(&dir.join("samples.json"), json.as_bytes())
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("samples.json");
    let text = crate::io::read_text_input(&path, crate::limits::MAX_INPUT_BYTES).map_err(|e| {
        Error::Invalid(format!(
            "cannot read {} (is {} a sample folder?): {e}",
            path.display(),
            dir.display()
        ))
    })?;
    crate::json::from_str(&text).map_err(|e| {
        Error::Invalid(format!(
            "{} is not a wgsl-diff manifest: {e}",
            path.display()
        ))
    })
}

/// `index,file,score`, then one `score_step_{i}` column per window step any sample has (empty
/// where a sample lacks it).
pub fn write_scores_csv(dir: &Path, samples: &[SampleRecord]) -> Result<()> {
    let steps: std::collections::BTreeSet<usize> = samples
        .iter()
        .flat_map(|s| s.step_scores.iter().flat_map(|m| m.keys().copied()))
        .collect();
    let mut csv = String::from("index,file,score");
    steps
        .iter()
        .for_each(|i| csv.push_str(&format!(",score_step_{i}")));
    csv.push('\n');
    for s in samples {
        if let Some(score) = s.score {
            csv.push_str(&format!("{},{},{score}", s.index, s.file));
            for i in &steps {
                let value = s.step_scores.as_ref().and_then(|m| m.get(i));
                csv.push_str(&value.map_or(",".into(), |v| format!(",{v}")));
            }
            csv.push('\n');
        }
    }
    crate::io::write_atomic(&dir.join("scores.csv"), csv.as_bytes())
}
