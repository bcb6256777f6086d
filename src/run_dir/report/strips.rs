//! Step-by-step strips of the report's samples: each sample's final image, then its map at
//! several steps laid over it (one colour scale per step, shared by the samples, with its
//! colour bar; [`robust_range`]), or where guidance acted at each guided step.

use super::html::{colour_bar, escape, img_of};
use super::shrink_factor;
use crate::error::Result;
use crate::images::{self, Image8};
use crate::run_dir::maps::Plane;
use crate::run_dir::render::robust_range;

/// At most this many steps of a window are shown, spread evenly over it.
const COLUMNS: usize = 6;

/// Where guided elements are tinted.
const MASK_COLOUR: [u8; 3] = [0, 190, 255];

/// One row: a sample's caption, its image and its planes (one per window step).
pub struct Row {
    pub caption: String,
    pub image: Image8,
    pub planes: Vec<Plane>,
}

/// What the strips draw at each step.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Uncertainty maps, coloured over the image.
    Maps,
    /// Guidance masks, tinted over the image.
    Masks,
}

/// The strips of `rows` over the window `steps` ((step, timestep) of each plane).
pub fn strips(rows: &[Row], steps: &[(usize, usize)], kind: Kind) -> Result<String> {
    let count = rows.iter().map(|r| r.planes.len()).max().unwrap_or(0);
    let columns = spread(count, COLUMNS);
    // Each step's scale spans its maps over all the rows.
    let ranges: Vec<(f32, f32)> = columns
        .iter()
        .map(|&i| {
            robust_range(
                rows.iter()
                    .filter_map(|r| r.planes.get(i))
                    .map(|p| &p.values[..]),
            )
        })
        .collect();
    let mut html = String::from("<table class='strips'><tr><th>sample</th><th>final image</th>");
    for (c, &i) in columns.iter().enumerate() {
        // The planes are the window's steps in order; say so plainly if they are not.
        let head = match (steps.len() == count, steps.get(i)) {
            (true, Some((step, t))) => format!("step {step} · t = {t}"),
            _ => format!("map {} of {count}", i + 1),
        };
        let bar = match kind {
            Kind::Maps => colour_bar(&format!("map-bar-{c}"), ranges[c], 120),
            Kind::Masks => String::new(),
        };
        html += &format!("<th>{head}<br>{bar}</th>");
    }
    html += "</tr>";
    for row in rows {
        let factor = shrink_factor(&row.image);
        let image = images::shrink(&row.image, factor);
        html += &format!(
            "<tr><th>{}</th><td>{}</td>",
            escape(&row.caption),
            img_of(&image, "final image", "tile")?
        );
        for (c, &i) in columns.iter().enumerate() {
            let Some(plane) = row.planes.get(i) else {
                html += "<td>–</td>";
                continue;
            };
            let values = images::shrink_plane(&plane.values, plane.height, plane.width, factor);
            let tile = match kind {
                Kind::Maps => images::overlay(&image, &values, ranges[c]),
                Kind::Masks => images::tint(&image, &values, MASK_COLOUR),
            };
            let alt = format!("{} at column {}", kind.name(), c + 1);
            html += &format!("<td>{}</td>", img_of(&tile, &alt, "tile")?);
        }
        html += "</tr>";
    }
    Ok(html + "</table>")
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Maps => "map",
            Kind::Masks => "mask",
        }
    }
}

/// Up to `k` of the indices 0..n, evenly spread and always with the first and the last.
fn spread(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    (0..k)
        .map(|i| ((i * (n - 1)) as f64 / (k - 1) as f64).round() as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn columns_spread_over_the_window_with_both_ends() {
        assert_eq!(spread(3, 6), [0, 1, 2]);
        assert_eq!(spread(10, 6), [0, 2, 4, 5, 7, 9]);
        assert_eq!(spread(1000, 6), [0, 200, 400, 599, 799, 999]);
        assert!(spread(0, 6).is_empty());
    }
}
