//! Writing finished batches into the folder, and telling which samples are already there.

use super::manifest::{NON_FINITE_KEY, STEP_SCORES_KEY};
use super::{
    guidance_masks_name, png_name, raw_name, saved_map_name, step_maps_name, total_map_name,
};
use crate::error::{Error, Result};
use crate::images;
use crate::noise::{NoiseDraw, NoisePurpose};
use crate::npy;
use crate::sampling::FinishedBatch;
use crate::uncertainty::UncertaintyBatch;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What a run writes for each batch besides the PNGs.
pub struct BatchWriter {
    pub out: PathBuf,
    /// The run's parameters, embedded in every PNG and the manifest.
    pub parameters: serde_json::Value,
    /// The sampler's timesteps, for file names.
    pub timesteps: Vec<usize>,
    pub save_raw: bool,
    /// Whether the run estimates uncertainty (each sample then has a summed map).
    pub uncertainty: bool,
    /// Whether the run is guided.
    pub guided: bool,
    /// The samples that also get their per-step maps and guidance masks
    /// ([`super::report_samples`]).
    pub report_samples: Range<usize>,
    pub save_maps: Option<PathBuf>,
    pub dump_noise: Option<PathBuf>,
}

impl BatchWriter {
    /// Whether sample `index` is complete in the folder.
    pub fn done(&self, index: usize) -> bool {
        let exists = |name: String| self.out.join(name).exists();
        let shown = self.report_samples.contains(&index);
        exists(png_name(index))
            && (!self.save_raw || exists(raw_name(index)))
            && (!self.uncertainty || exists(total_map_name(index)))
            && (!(shown && self.uncertainty) || exists(step_maps_name(index)))
            && (!(shown && self.guided) || exists(guidance_masks_name(index)))
    }

    /// Writes a batch's files, with its uncertainty maps and guidance masks (`masks`, each
    /// guided step's (B, C, H, W)) when it has them; each PNG last, once its sample is
    /// complete. `non_finite` marks the samples kept although they went non-finite (the first
    /// step, in the PNG and so in the manifest).
    pub fn write<T>(
        &self,
        batch: &FinishedBatch<T>,
        uc: Option<&UncertaintyBatch>,
        masks: &[(usize, Vec<f32>)],
        non_finite: &[Option<usize>],
    ) -> Result<()> {
        for (k, index) in batch.indices().enumerate() {
            if self.report_samples.contains(&index) {
                let len: usize = batch.map_shape.iter().product();
                let maps = uc.map_or(&[][..], |u| &u.maps[..]);
                self.write_steps(&step_maps_name(index), maps, k, len, batch.map_shape)?;
                self.write_steps(&guidance_masks_name(index), masks, k, len, batch.map_shape)?;
            }
            let mark = non_finite.get(k).copied().flatten();
            self.write_sample(batch, uc, k, index, mark)?;
        }
        Ok(())
    }

    /// Sample `k`'s slice of each step's batch map, stacked as (steps, C, H, W); nothing when
    /// there are no steps.
    fn write_steps(
        &self,
        name: &str,
        steps: &[(usize, Vec<f32>)],
        k: usize,
        len: usize,
        shape: [usize; 3],
    ) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let stacked: Vec<f32> = steps
            .iter()
            .flat_map(|(_, map)| &map[k * len..(k + 1) * len])
            .copied()
            .collect();
        let shape = [steps.len(), shape[0], shape[1], shape[2]];
        npy::write(&self.out.join(name), &shape, &stacked)
    }

    fn write_sample<T>(
        &self,
        batch: &FinishedBatch<T>,
        uc: Option<&UncertaintyBatch>,
        k: usize,
        index: usize,
        non_finite: Option<usize>,
    ) -> Result<()> {
        // Maps and noise go into one file per sample, so that a resumed run (which samples the
        // unfinished ones again, maybe in other batches) rewrites the same files with the same
        // bytes and leaves what an uninterrupted run of any batch size or shard split leaves.
        if let (Some(dir), Some(uc)) = (&self.save_maps, uc) {
            let len: usize = batch.map_shape.iter().product();
            let shape = [&[1][..], &batch.map_shape[..]].concat();
            for (step, map) in &uc.maps {
                let t = self.timesteps[*step];
                let name = saved_map_name(*step, t, index);
                npy::write(&dir.join(name), &shape, &map[k * len..(k + 1) * len])?;
            }
        }
        if let Some(dir) = &self.dump_noise {
            for (draw, values) in &batch.noise {
                self.write_noise(dir, draw, values, index)?;
            }
        }
        let raw = batch.image(k);
        let shape = &batch.sample_shape;
        if self.save_raw {
            npy::write(&self.out.join(raw_name(index)), shape, raw)?;
        }
        if let Some(uc) = uc {
            // The map lives in the model's space (the latents of a latent model).
            let len: usize = batch.map_shape.iter().product();
            let total = &uc.total[k * len..(k + 1) * len];
            npy::write(
                &self.out.join(total_map_name(index)),
                &batch.map_shape,
                total,
            )?;
        }
        let mut text = vec![
            ("parameters", self.parameters.to_string()),
            ("index", index.to_string()),
        ];
        if let Some(classes) = &batch.classes {
            text.push(("class", classes[k].to_string()));
        }
        if let Some(uc) = uc {
            text.push(("uncertainty_score", uc.scores[k].to_string()));
            let steps: Vec<String> = uc
                .step_scores
                .iter()
                .map(|(step, s)| format!("{step}:{}", s[k]))
                .collect();
            text.push((STEP_SCORES_KEY, steps.join(",")));
        }
        if let Some(step) = non_finite {
            text.push((NON_FINITE_KEY, step.to_string()));
        }
        let [c, h, w] = *shape;
        images::write_png(
            &self.out.join(png_name(index)),
            &images::quantize(raw, c, h, w),
            &text,
        )
    }

    /// Sample `index`'s row of a draw, one file per copy:
    /// `noise_{purpose}[_step{i}_t{t}][_layer{l}][_m{m}]_sample{index}.npy`, of the draw's shape
    /// with one sample (so an initial noise file is `--init-noise` for that sample alone).
    fn write_noise(
        &self,
        dir: &Path,
        draw: &NoiseDraw,
        values: &[f32],
        index: usize,
    ) -> Result<()> {
        let rows = draw.shape.first().copied().unwrap_or(0);
        let row = index
            .checked_sub(draw.first_index)
            .filter(|r| *r < rows)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "sample {index} is not among the {rows} rows of a {} noise draw from {}",
                    draw.purpose.name(),
                    draw.first_index
                ))
            })?;
        let per_copy = values.len() / draw.copies;
        let per_row = per_copy / rows;
        let shape = [&[1][..], &draw.shape[1..]].concat();
        let step = match draw.purpose {
            NoisePurpose::Initial => String::new(),
            _ => format!("_step{:03}_t{:04}", draw.step, self.timesteps[draw.step]),
        };
        let step = match draw.purpose {
            NoisePurpose::Dropout => format!("{step}_layer{:03}", draw.layer),
            _ => step,
        };
        for m in 0..draw.copies {
            let copy = match draw.purpose.per_copy() {
                true => format!("_m{m}"),
                false => String::new(),
            };
            let name = format!(
                "noise_{}{step}{copy}_{}.npy",
                draw.purpose.name(),
                sample_tag(index)
            );
            let start = m * per_copy + row * per_row;
            npy::write(&dir.join(name), &shape, &values[start..start + per_row])?;
        }
        Ok(())
    }
}

/// The end of a per-sample noise file's name.
fn sample_tag(index: usize) -> String {
    format!("sample{index:06}")
}

/// Refuses a folder holding samples made with other parameters: resuming into it would keep
/// those images under this run's manifest.
pub fn check_same_run(
    dir: &Path,
    existing: &[usize],
    parameters: &serde_json::Value,
) -> Result<()> {
    for &i in existing {
        let path = dir.join(png_name(i));
        let theirs: Option<serde_json::Value> = images::read_png_text(&path)?
            .get("parameters")
            .and_then(|p| crate::json::from_str(p).ok());
        if theirs.as_ref() == Some(parameters) {
            continue;
        }
        return Err(Error::Invalid(format!(
            "{} was made with other parameters ({}); use another output folder or remove it",
            path.display(),
            differences(theirs.as_ref(), parameters)
        )));
    }
    Ok(())
}

/// "different seed, steps": the top-level parameters that differ.
pub(super) fn differences(theirs: Option<&serde_json::Value>, ours: &serde_json::Value) -> String {
    let (Some(a), Some(b)) = (theirs.and_then(|t| t.as_object()), ours.as_object()) else {
        return "no readable parameters".to_string();
    };
    let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
    let names: Vec<&str> = keys
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.as_str())
        .collect();
    format!("different {}", names.join(", "))
}
