//! Per-step heatmaps on request (`sample --save-maps DIR --step-heatmaps`): each map U_t that
//! `--save-maps` wrote, `map_stepSSS_tTTTT_sampleNNNNNN.npy`, drawn as the summed map is in
//! `heatmap_NNNNNN.png` — the same style and colour bar — into
//! `heatmap_stepSSS_tTTTT_sampleNNNNNN.png` beside it. The summed map is dominated by the
//! structureless early steps; step by step one sees where the uncertainty settles.

use super::manifest::SampleRecord;
use super::maps::{saved_step_map, Plane};
use super::render::{load, robust_range, write_heatmap, HeatmapScale, HeatmapStyle};
use super::{saved_map_name, step_heatmap_name};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// One saved map: window step, its timestep, and the sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SavedMap {
    step: usize,
    t: usize,
    index: usize,
}

impl SavedMap {
    /// The map of a [`saved_map_name`], None for any other file.
    fn parse(name: &str) -> Option<SavedMap> {
        let rest = name.strip_prefix("map_step")?.strip_suffix(".npy")?;
        let (step, rest) = rest.split_once("_t")?;
        let (t, index) = rest.split_once("_sample")?;
        let map = SavedMap {
            step: step.parse().ok()?,
            t: t.parse().ok()?,
            index: index.parse().ok()?,
        };
        // Only the name this crate writes, so that a stray file is not taken for a map.
        (saved_map_name(map.step, map.t, map.index) == name).then_some(map)
    }
}

/// Renders a heatmap of every map in `maps` (the `--save-maps` folder) of a sample in
/// `samples` (the run in `run`), over its image with `style`. With [`HeatmapScale::Image`]
/// each heatmap spans its own map's [`robust_range`]; with [`HeatmapScale::Shared`] each step
/// has one scale for all samples, as the report's strips have. Returns how many it wrote.
pub fn render_step_heatmaps(
    maps: &Path,
    run: &Path,
    samples: &[SampleRecord],
    scale: HeatmapScale,
    style: HeatmapStyle,
) -> Result<usize> {
    let records: BTreeMap<usize, &SampleRecord> = samples.iter().map(|s| (s.index, s)).collect();
    let mut saved = Vec::new();
    for entry in std::fs::read_dir(maps).map_err(Error::file("read", maps))? {
        let entry = entry.map_err(Error::file("read", maps))?;
        let parsed = entry.file_name().to_str().and_then(SavedMap::parse);
        if let Some(record) = parsed.and_then(|m| records.get(&m.index).map(|r| (m, *r))) {
            saved.push(record);
        }
    }
    saved.sort_by_key(|(map, _)| *map);
    let plane = |map: &SavedMap, record: &SampleRecord| -> Result<Plane> {
        let path = maps.join(saved_map_name(map.step, map.t, map.index));
        saved_step_map(&path, &run.join(&record.file))
    };
    // A step's shared scale is the robust range of all its maps: the lowest value and the
    // highest 99th percentile, folded map by map so that no step holds every sample's map.
    let mut shared: BTreeMap<usize, (f32, f32)> = BTreeMap::new();
    if scale == HeatmapScale::Shared {
        for (map, record) in &saved {
            let (lo, hi) = robust_range(std::iter::once(&plane(map, record)?.values[..]));
            let range = shared.entry(map.step).or_insert((lo, hi));
            *range = (range.0.min(lo), range.1.max(hi));
        }
    }
    for (map, record) in &saved {
        let values = plane(map, record)?;
        let range = match scale {
            HeatmapScale::Image => robust_range(std::iter::once(&values.values[..])),
            HeatmapScale::Shared => shared[&map.step],
        };
        let path = maps.join(step_heatmap_name(map.step, map.t, map.index));
        write_heatmap(&path, &load(run, &record.file)?, &values, range, style)?;
    }
    Ok(saved.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_saved_map_names_are_maps() {
        let map = SavedMap {
            step: 12,
            t: 981,
            index: 7,
        };
        assert_eq!(SavedMap::parse(&saved_map_name(12, 981, 7)), Some(map));
        // Steps past 999 and timesteps past 9999 widen their fields.
        let wide = SavedMap::parse(&saved_map_name(1234, 12345, 3)).unwrap();
        assert_eq!((wide.step, wide.t, wide.index), (1234, 12345, 3));
        for other in [
            "map_step012_t0981_sample000007.png",
            "map_step12_t0981_sample000007.npy",
            "uncertainty_000007.npy",
            "map_stepx_t1_sample000001.npy",
        ] {
            assert_eq!(SavedMap::parse(other), None, "{other}");
        }
    }
}
