//! Round-number axis ticks and their labels, shared by the report's histogram and colour bars
//! and the colour bars drawn into heatmap PNGs: a score near 18,000 reads "18000", a map value
//! near 0.03 "0.03", neither with digits its spread cannot support.

/// Ticks at multiples of `step` (1, 2 or 5 × 10^k) inside a range.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticks {
    pub step: f64,
    pub values: Vec<f64>,
}

/// About `target` (at least 1) round steps across `span`; 1 for an empty or non-finite span.
pub fn nice_step(span: f64, target: usize) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let nice = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|&n| n * magnitude >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0);
    nice * magnitude
}

/// The round ticks within [lo, hi], about `target` of them.
pub fn ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let step = nice_step(hi - lo, target);
    if !(lo.is_finite() && hi.is_finite()) {
        return Ticks {
            step,
            values: Vec::new(),
        };
    }
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    // A span that overflowed to infinity falls back to a step of 1: no ticks rather than 10^308.
    if last.saturating_sub(first) > 100 * target.max(1) as i64 {
        return Ticks {
            step,
            values: Vec::new(),
        };
    }
    Ticks {
        step,
        values: (first..=last.max(first - 1))
            .map(|k| k as f64 * step)
            .collect(),
    }
}

/// `v` with as many decimals as `step` resolves: plain up to 10^6, scientific beyond it or
/// below a step of 10^-4.
pub fn label(v: f64, step: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let step = if step.is_finite() && step > 0.0 {
        step
    } else {
        1.0
    };
    if v.abs() >= 1e6 || (v != 0.0 && step < 1e-4) {
        let exponent = v.abs().log10().floor() as i32;
        let mantissa = v / 10f64.powi(exponent);
        let digits = decimals(step / 10f64.powi(exponent));
        return format!("{mantissa:.digits$}e{exponent}");
    }
    let digits = decimals(step);
    let text = format!("{v:.digits$}");
    // "-0" from a tiny negative rounded away says nothing a plain 0 does not.
    match text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        true => text.trim_start_matches('-').to_string(),
        false => text,
    }
}

/// Decimals needed to write multiples of `step` (at most 6).
fn decimals(step: f64) -> usize {
    (-step.log10() - 1e-9).ceil().clamp(0.0, 6.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_near_eighteen_thousand_get_round_integer_ticks() {
        let t = ticks(17_931.4, 18_422.9, 5);
        assert_eq!(t.step, 100.0);
        assert_eq!(t.values, [18_000.0, 18_100.0, 18_200.0, 18_300.0, 18_400.0]);
        let labels: Vec<String> = t.values.iter().map(|&v| label(v, t.step)).collect();
        assert_eq!(labels, ["18000", "18100", "18200", "18300", "18400"]);
    }

    #[test]
    fn small_large_and_degenerate_ranges() {
        let t = ticks(0.0, 0.031, 4);
        assert!((t.step - 0.01).abs() < 1e-12, "{t:?}");
        let labels: Vec<String> = t.values.iter().map(|&v| label(v, t.step)).collect();
        assert_eq!(labels, ["0.00", "0.01", "0.02", "0.03"]);
        assert_eq!(label(2.5e7, 1e6), "2.5e7");
        assert_eq!(label(3.2e-6, 1e-7), "3.2e-6");
        assert_eq!(label(-1e-12, 0.1), "0.0");
        assert_eq!(label(f64::NAN, 1.0), "NaN");
        assert_eq!(nice_step(0.0, 4), 1.0);
        assert_eq!(ticks(5.0, 5.0, 4).values, [5.0]);
        assert!(ticks(f64::NEG_INFINITY, 1.0, 4).values.is_empty());
        assert!(ticks(-1e308, 1e308, 4).values.is_empty());
    }
}
