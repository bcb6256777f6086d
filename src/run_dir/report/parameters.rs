//! The run's recorded parameters as the report shows them: every key of `run.json` as a table
//! row, the step windows they define, and a guided run's settings in words.

use super::html::escape;
use serde_json::Value;

/// Every leaf of the parameters as (dotted key, text): nested objects by their path
/// (`uncertainty.M`), lists joined by commas, strings unquoted, null as "none".
pub fn rows(parameters: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten("", parameters, &mut out);
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let path = match prefix {
                    "" => key.clone(),
                    p => format!("{p}.{key}"),
                };
                flatten(&path, v, out);
            }
        }
        leaf => out.push((prefix.to_string(), text(leaf))),
    }
}

/// A value as the table writes it.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// The table: the parameters, then what wrote the page.
pub fn table(parameters: &Value) -> String {
    let mut html = String::from("<table class='parameters'>");
    let version = (
        "wgsl-diff version (wrote this report)".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    for (key, value) in rows(parameters).into_iter().chain([version]) {
        html += &format!(
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&key),
            escape(&value)
        );
    }
    html + "</table>"
}

/// The (step, timestep) pairs of a window recorded under `key` (`uncertainty`, `guidance`):
/// `start` and `steps` (none: to the last step) over the run's timesteps.
pub fn window(parameters: &Value, key: &str) -> Vec<(usize, usize)> {
    let timesteps: Vec<usize> = parameters["timesteps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_u64())
                .map(|t| t as usize)
                .collect()
        })
        .unwrap_or_default();
    let start = parameters[key]["start"].as_u64().unwrap_or(0) as usize;
    let count = parameters[key]["steps"]
        .as_u64()
        .map_or(usize::MAX, |n| n as usize);
    (start..timesteps.len())
        .take(count)
        .map(|step| (step, timesteps[step]))
        .collect()
}

/// A guided run's settings in words (None for an unguided run).
pub fn guidance_words(parameters: &Value) -> Option<String> {
    let g = parameters.get("guidance")?;
    let rule = match g["rule"].as_str() {
        Some("gradient") => format!(
            "Rule G (gradient, the paper's): ε ← ε + λ·mask·∂ΣU/∂ε with λ = {}",
            text(&g["strength"])
        ),
        Some("posterior") => "Rule P (posterior): ε ← mask·ε_post + (1 − mask)·ε, the \
                              precision-weighted mean of the copies where masked (no λ)"
            .to_string(),
        _ => format!("rule {}", text(&g["rule"])),
    };
    let mask = match (&g["threshold"]["percentile"], &g["threshold"]["calibrated"]) {
        (Value::Number(p), _) => {
            format!("the elements whose U exceeds the image's {p}-quantile of U at that step")
        }
        (_, Value::String(file)) => {
            format!("the elements whose U exceeds their calibrated per-element threshold ({file})")
        }
        _ => format!("threshold {}", text(&g["threshold"])),
    };
    let steps: Vec<String> = window(parameters, "guidance")
        .iter()
        .map(|(s, t)| format!("{s} (t = {t})"))
        .collect();
    Some(format!(
        "{rule}. U is the spread of M = {} re-noised copies' predictions (their own noise \
         stream); the mask is {mask}. Guided steps: {}.",
        text(&g["M"]),
        steps.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_becomes_a_row_and_windows_follow_the_timesteps() {
        let p = serde_json::json!({
            "seed": 7, "timesteps": [900, 500, 100], "model": "m<1>",
            "uncertainty": {"M": 5, "mode": "centred", "start": 1, "steps": null},
            "guidance": {"rule": "gradient", "strength": 1.0, "M": 5, "start": 0, "steps": 2,
                         "threshold": {"percentile": 0.95}},
        });
        let rows = rows(&p);
        let get = |k: &str| rows.iter().find(|r| r.0 == k).map(|r| r.1.as_str());
        assert_eq!(get("seed"), Some("7"));
        assert_eq!(get("timesteps"), Some("900, 500, 100"));
        assert_eq!(get("uncertainty.steps"), Some("none"));
        assert_eq!(get("guidance.threshold.percentile"), Some("0.95"));
        assert!(table(&p).contains("m&lt;1&gt;"), "escaped");
        assert_eq!(window(&p, "uncertainty"), [(1, 500), (2, 100)]);
        assert_eq!(window(&p, "guidance"), [(0, 900), (1, 500)]);
        let words = guidance_words(&p).unwrap();
        assert!(
            words.contains("λ = 1.0") && words.contains("0.95-quantile"),
            "{words}"
        );
        assert!(words.contains("0 (t = 900), 1 (t = 500)"), "{words}");
        assert_eq!(guidance_words(&serde_json::json!({})), None);
    }
}
