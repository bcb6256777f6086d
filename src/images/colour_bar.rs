//! A colour bar beside a heatmap, labelled with the values its ends stand for, so that a
//! heatmap PNG opened alone says what its colours mean. The labels are drawn with a 3×5-pixel
//! font of the characters numbers need (no font files, and legible even beside a 32×32 map).

use super::{inferno, Image8};
use crate::ticks;

/// Rows of each glyph, top first; bit 2 is the left column.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        'e' => [0, 3, 7, 4, 3],
        _ => [0; 5],
    }
}

/// Columns a character takes, with its spacing, at scale 1.
const ADVANCE: usize = 4;
const GLYPH_HEIGHT: usize = 5;

/// `tile` (RGB) with a vertical inferno bar to its right, `hi` at the top and `lo` at the bottom,
/// each end labelled. Text and bar scale with the tile (one font pixel per 64 tile rows); the
/// canvas grows below a tile too short for two labels.
pub fn with_colour_bar(tile: &Image8, (lo, hi): (f32, f32)) -> Image8 {
    let s = (tile.height / 64).max(1);
    // The ends are not round numbers: written to about a hundredth of the span between them.
    let step = ticks::nice_step((hi - lo) as f64, 100);
    let labels = [ticks::label(hi as f64, step), ticks::label(lo as f64, step)];
    let text_width = labels.iter().map(|l| l.len()).max().unwrap_or(0) * ADVANCE * s;
    let (gap, bar) = (2 * s, 3 * s);
    let bar_x = tile.width + gap;
    let text_x = bar_x + bar + gap;
    let width = text_x + text_width;
    let height = tile.height.max(2 * GLYPH_HEIGHT * s + 2 * s);
    let mut canvas = Canvas {
        width,
        pixels: vec![255u8; width * height * 3],
    };
    for y in 0..tile.height {
        for x in 0..tile.width {
            let p = (y * tile.width + x) * tile.channels;
            let rgb = match tile.channels {
                3 => [tile.pixels[p], tile.pixels[p + 1], tile.pixels[p + 2]],
                _ => [tile.pixels[p]; 3],
            };
            canvas.set(x, y, rgb);
        }
    }
    for y in 0..height {
        let colour = inferno(1.0 - y as f32 / (height - 1).max(1) as f32);
        for x in bar_x..bar_x + bar {
            canvas.set(x, y, colour);
        }
    }
    canvas.text(text_x, 0, &labels[0], s);
    canvas.text(text_x, height - GLYPH_HEIGHT * s, &labels[1], s);
    Image8 {
        width,
        height,
        channels: 3,
        pixels: canvas.pixels,
    }
}

struct Canvas {
    width: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        let p = (y * self.width + x) * 3;
        self.pixels[p..p + 3].copy_from_slice(&rgb);
    }

    /// Black text with its top-left corner at (x, y), each font pixel `s` × `s`.
    fn text(&mut self, x: usize, y: usize, text: &str, s: usize) {
        for (i, c) in text.chars().enumerate() {
            for (row, bits) in glyph(c).into_iter().enumerate() {
                for col in (0..3).filter(|col| bits & (4 >> col) != 0) {
                    for (dy, dx) in (0..s).flat_map(|dy| (0..s).map(move |dx| (dy, dx))) {
                        let px = x + (i * ADVANCE + col) * s + dx;
                        self.set(px, y + row * s + dy, [0, 0, 0]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(side: usize) -> Image8 {
        Image8 {
            width: side,
            height: side,
            channels: 3,
            pixels: vec![128; side * side * 3],
        }
    }

    #[test]
    fn the_bar_runs_from_the_top_colour_down_and_both_ends_are_labelled() {
        let out = with_colour_bar(&tile(32), (0.0, 29.7));
        assert_eq!(out.height, 32);
        let at = |x: usize, y: usize| {
            let p = (y * out.width + x) * 3;
            [out.pixels[p], out.pixels[p + 1], out.pixels[p + 2]]
        };
        assert_eq!(at(0, 0), [128; 3], "the tile is kept");
        assert_eq!(
            at(34, 0),
            inferno(1.0),
            "the top of the bar is the high end"
        );
        assert_eq!(at(34, 31), inferno(0.0));
        // "29.7" and "0.0" are four and three characters wide.
        assert_eq!(out.width, 32 + 2 + 3 + 2 + 4 * ADVANCE);
        let black = |rows: std::ops::Range<usize>| {
            rows.flat_map(|y| (39..out.width).map(move |x| (x, y)))
                .filter(|&(x, y)| at(x, y) == [0; 3])
                .count()
        };
        assert!(black(0..5) > 0 && black(27..32) > 0 && black(6..26) == 0);
    }

    #[test]
    fn a_tile_too_short_for_two_labels_gets_a_taller_canvas() {
        let out = with_colour_bar(&tile(8), (-1.0, 1.0));
        assert_eq!(out.height, 12);
        assert_eq!(out.pixels.len(), out.width * out.height * 3);
    }
}
