//! The metric values `compare` shows for each run: the results `wgsl-diff eval` and
//! `wgsl-diff fid` wrote into the run's folder with `--json RUN/eval.json` and
//! `--json RUN/fid.json`. They are read as written, with the sets each was measured on, so a
//! page never shows a distance without saying against what.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// A metric a run folder can hold: the file `--json` writes it to, its name on the page, its
/// key in that file and the decimals its command prints.
pub struct MetricKind {
    pub file: &'static str,
    pub name: &'static str,
    key: &'static str,
    decimals: usize,
    command: &'static str,
}

/// What `compare` looks for in each run folder, in the order it shows them.
pub const METRICS: [MetricKind; 2] = [
    MetricKind {
        file: "eval.json",
        name: "classifier Fréchet distance",
        key: "frechet_distance",
        decimals: 4,
        command: "wgsl-diff eval",
    },
    MetricKind {
        file: "fid.json",
        name: "FID",
        key: "fid",
        decimals: 6,
        command: "wgsl-diff fid",
    },
];

/// One metric of one run: its value and the two sets it compared (as the command described
/// them).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricValue {
    pub value: f64,
    pub real: String,
    pub fake: String,
}

impl MetricKind {
    /// `value` as the metric's command prints it.
    pub fn format(&self, value: f64) -> String {
        format!("{value:.*}", self.decimals)
    }

    /// The command line that writes the metric of run folder RUN where `compare` reads it.
    pub fn how_to_write(&self) -> String {
        format!(
            "{} --real REAL --fake RUN --json RUN/{}",
            self.command, self.file
        )
    }

    /// The metric in run folder `dir`, None when the folder has no such file.
    pub fn read(&self, dir: &Path) -> Result<Option<MetricValue>> {
        let path = dir.join(self.file);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(Error::file("read", &path))?;
        let bad = |why: &str| {
            Error::Invalid(format!(
                "{} is not what `{} --json` writes: {why}",
                path.display(),
                self.command
            ))
        };
        let json: Value = crate::json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let value = json[self.key]
            .as_f64()
            .ok_or_else(|| bad(&format!("no number `{}`", self.key)))?;
        let source = |set: &str| {
            json[set]["source"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("no `{set}.source`")))
        };
        Ok(Some(MetricValue {
            value,
            real: source("real")?,
            fake: source("fake")?,
        }))
    }
}

/// Every metric of [`METRICS`] in run folder `dir`, one entry each (None: not there).
pub(super) fn read_metrics(dir: &Path) -> Result<Vec<Option<MetricValue>>> {
    METRICS.iter().map(|kind| kind.read(dir)).collect()
}
