//! The score histogram as SVG, with labelled axes at round ticks and, when the folder has been
//! filtered, the kept samples told from the dropped ones, the cut-off, and the random subset's
//! histogram drawn over it for comparison.

use crate::ticks;

const BINS: usize = 20;
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 280.0;
/// The plot area's margins: left (count labels), right, top (the cut-off's label), bottom
/// (score labels, the axis title).
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 52.0;
const KEPT: &str = "#b5367a";
const DROPPED: &str = "#c9c9c9";
const RANDOM: &str = "#1f5fa8";

/// A filtering, for the histogram: each sample's membership and the cut-off.
pub struct Marks<'a> {
    pub kept: &'a dyn Fn(usize) -> bool,
    pub random: &'a dyn Fn(usize) -> bool,
    /// The highest kept score.
    pub cut_off: f64,
}

/// The histogram of `scores` ((sample index, finite score)).
pub fn svg(scores: &[(usize, f64)], marks: Option<&Marks>) -> String {
    if scores.is_empty() {
        return "<p>No finite score to plot.</p>".into();
    }
    let (lo, hi) = scores
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, s)| {
            (lo.min(s), hi.max(s))
        });
    // The axis spans whole ticks around the scores, and the bins split it evenly.
    let step = ticks::nice_step(hi - lo, 6);
    let start = (lo / step + 1e-9).floor() * step;
    let end = ((hi / step - 1e-9).ceil() * step).max(start + step);
    let bin_of = |s: f64| (((s - start) / (end - start) * BINS as f64) as usize).min(BINS - 1);
    // (kept or all, dropped, random) per bin.
    let mut counts = vec![[0usize; 3]; BINS];
    for &(index, s) in scores {
        let b = bin_of(s);
        match marks {
            Some(m) if !(m.kept)(index) => counts[b][1] += 1,
            _ => counts[b][0] += 1,
        }
        if marks.is_some_and(|m| (m.random)(index)) {
            counts[b][2] += 1;
        }
    }
    let top = counts
        .iter()
        .map(|c| (c[0] + c[1]).max(c[2]))
        .max()
        .unwrap_or(1)
        .max(1);
    let y_step = ticks::nice_step(top as f64, 5).max(1.0).round();
    let y_max = ((top as f64 / y_step).ceil() * y_step).max(1.0);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |v: f64| LEFT + plot_w * (v - start) / (end - start);
    let y = |count: f64| TOP + plot_h * (1.0 - count / y_max);
    let bin_w = plot_w / BINS as f64;

    let mut out = format!(
        "<svg id='histogram-plot' width='{WIDTH}' height='{HEIGHT}' font-size='11' role='img' \
         aria-label='histogram of the uncertainty scores'>"
    );
    for (b, c) in counts.iter().enumerate() {
        let x0 = LEFT + b as f64 * bin_w;
        let (kept_top, all_top) = (y(c[0] as f64), y((c[0] + c[1]) as f64));
        let kept_title = if marks.is_some() { " kept" } else { "" };
        out += &format!(
            "<rect x='{:.1}' y='{kept_top:.1}' width='{:.1}' height='{:.1}' fill='{KEPT}'>\
             <title>{}{kept_title}</title></rect>",
            x0 + 1.0,
            bin_w - 2.0,
            TOP + plot_h - kept_top,
            c[0]
        );
        if c[1] > 0 {
            out += &format!(
                "<rect x='{:.1}' y='{all_top:.1}' width='{:.1}' height='{:.1}' fill='{DROPPED}'>\
                 <title>{} dropped</title></rect>",
                x0 + 1.0,
                bin_w - 2.0,
                kept_top - all_top,
                c[1]
            );
        }
    }
    if marks.is_some() {
        // The random subset as a step outline over the bars.
        let mut path = format!("M{:.1},{:.1}", LEFT, y(0.0));
        for (b, c) in counts.iter().enumerate() {
            let (x0, x1, h) = (
                LEFT + b as f64 * bin_w,
                LEFT + (b + 1) as f64 * bin_w,
                y(c[2] as f64),
            );
            path += &format!(" L{x0:.1},{h:.1} L{x1:.1},{h:.1}");
        }
        path += &format!(" L{:.1},{:.1}", LEFT + plot_w, y(0.0));
        out += &format!(
            "<path d='{path}' fill='none' stroke='{RANDOM}' stroke-width='1.5' \
             stroke-dasharray='4 2'/>"
        );
    }
    // Axes, ticks and titles.
    let base = TOP + plot_h;
    out += &format!(
        "<line x1='{LEFT}' x2='{:.1}' y1='{base:.1}' y2='{base:.1}' stroke='#333'/>\
         <line x1='{LEFT}' x2='{LEFT}' y1='{TOP}' y2='{base:.1}' stroke='#333'/>",
        LEFT + plot_w
    );
    let axis = ticks::ticks(start, end, 6);
    for &v in &axis.values {
        out += &format!(
            "<line x1='{0:.1}' x2='{0:.1}' y1='{base:.1}' y2='{1:.1}' stroke='#333'/>\
             <text x='{0:.1}' y='{2:.1}' text-anchor='middle'>{3}</text>",
            x(v),
            base + 5.0,
            base + 18.0,
            ticks::label(v, axis.step)
        );
    }
    let mut count = 0.0;
    while count <= y_max + 1e-9 {
        out += &format!(
            "<line x1='{0:.1}' x2='{LEFT}' y1='{1:.1}' y2='{1:.1}' stroke='#333'/>\
             <text x='{2:.1}' y='{3:.1}' text-anchor='end'>{count}</text>",
            LEFT - 5.0,
            y(count),
            LEFT - 8.0,
            y(count) + 4.0
        );
        count += y_step;
    }
    out += &format!(
        "<text x='{:.1}' y='{:.1}' text-anchor='middle'>uncertainty score (lower: more \
         certain)</text><text transform='translate(14 {:.1}) rotate(-90)' \
         text-anchor='middle'>samples</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        TOP + plot_h / 2.0
    );
    if let Some(m) = marks {
        let cx = x(m.cut_off);
        out += &format!(
            "<line id='cut-off' x1='{cx:.1}' x2='{cx:.1}' y1='{:.1}' y2='{base:.1}' \
             stroke='#000' stroke-width='1.5' stroke-dasharray='6 3'/>\
             <text x='{cx:.1}' y='{:.1}' text-anchor='middle'>cut-off {}</text>",
            TOP - 8.0,
            TOP - 11.0,
            ticks::label(m.cut_off, step / 100.0)
        );
        out += &legend();
    }
    out + "</svg>"
}

fn legend() -> String {
    let items = [
        (KEPT, "kept", false),
        (DROPPED, "dropped", false),
        (RANDOM, "random subset", true),
    ];
    let mut out = String::new();
    for (i, (colour, name, line)) in items.into_iter().enumerate() {
        let (lx, ly) = (WIDTH - RIGHT - 110.0, TOP + 4.0 + 16.0 * i as f64);
        out += &match line {
            true => format!(
                "<line x1='{lx}' x2='{}' y1='{}' y2='{}' stroke='{colour}' stroke-width='1.5' \
                 stroke-dasharray='4 2'/>",
                lx + 14.0,
                ly + 5.0,
                ly + 5.0
            ),
            false => format!("<rect x='{lx}' y='{ly}' width='14' height='10' fill='{colour}'/>"),
        };
        out += &format!("<text x='{}' y='{}'>{name}</text>", lx + 20.0, ly + 9.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_near_eighteen_thousand_read_as_round_integers() {
        let scores: Vec<(usize, f64)> = (0..40).map(|i| (i, 17_950.0 + 11.3 * i as f64)).collect();
        let svg = svg(&scores, None);
        assert!(svg.contains(">18000<") && svg.contains(">18400<"), "{svg}");
        assert!(
            !svg.contains("18000.0"),
            "no decimals a step of 100 cannot support"
        );
        assert!(svg.contains("uncertainty score") && svg.contains(">samples<"));
        assert!(!svg.contains("cut-off"));
    }

    #[test]
    fn a_filtering_marks_the_cut_off_kept_and_random() {
        let scores: Vec<(usize, f64)> = (0..10).map(|i| (i, i as f64)).collect();
        let marks = Marks {
            kept: &|i| i < 8,
            random: &|i| i % 2 == 0,
            cut_off: 7.0,
        };
        let svg = svg(&scores, Some(&marks));
        assert!(
            svg.contains("id='cut-off'") && svg.contains("cut-off 7.00"),
            "{svg}"
        );
        assert!(svg.contains(">random subset<") && svg.contains(" dropped</title>"));
    }

    #[test]
    fn one_score_or_none_still_draws() {
        assert!(svg(&[(0, 5.0)], None).contains("<svg"));
        assert!(svg(&[], None).contains("No finite score"));
    }
}
