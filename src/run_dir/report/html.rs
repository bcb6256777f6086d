//! The pieces the report's page is made of: escaped text, images embedded as `data:` URIs (so
//! the page copied alone still shows them) and colour bars drawn in SVG.

use crate::error::Result;
use crate::images::{self, Image8, INFERNO};
use crate::ticks;

/// `text` safe inside an element or a single- or double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An `<img>` whose source is the PNG itself.
pub fn img(png: &[u8], alt: &str, class: &str) -> String {
    format!(
        "<img class='{class}' alt='{}' src='data:image/png;base64,{}'>",
        escape(alt),
        base64(png)
    )
}

/// [`img`] of an image, encoded as PNG.
pub fn img_of(image: &Image8, alt: &str, class: &str) -> Result<String> {
    Ok(img(&images::encode_png(image, &[])?, alt, class))
}

/// Standard base64 (RFC 4648, padded).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out
}

/// A horizontal inferno colour bar `width` pixels wide over [lo, hi] with round ticks below
/// it; `id` names its gradient (unique on the page).
pub fn colour_bar(id: &str, (lo, hi): (f32, f32), width: usize) -> String {
    let stops: String = INFERNO
        .iter()
        .enumerate()
        .map(|(i, [r, g, b])| {
            let offset = 100.0 * i as f64 / (INFERNO.len() - 1) as f64;
            format!("<stop offset='{offset:.1}%' stop-color='rgb({r},{g},{b})'/>")
        })
        .collect();
    let (lo, hi) = (lo as f64, hi as f64);
    let t = ticks::ticks(lo, hi, (width / 60).max(2));
    let x = |v: f64| match hi > lo {
        true => 4.0 + (width - 8) as f64 * (v - lo) / (hi - lo),
        false => 4.0,
    };
    let marks: String = t
        .values
        .iter()
        .map(|&v| {
            format!(
                "<line x1='{0:.1}' x2='{0:.1}' y1='14' y2='18' stroke='#333'/>\
                 <text x='{0:.1}' y='29' text-anchor='middle'>{1}</text>",
                x(v),
                ticks::label(v, t.step)
            )
        })
        .collect();
    format!(
        "<svg class='colour-bar' width='{width}' height='32' font-size='10' role='img' \
         aria-label='colour bar from {lo} to {hi}'><defs><linearGradient id='{id}'>{stops}\
         </linearGradient></defs><rect x='4' y='2' width='{}' height='12' fill='url(#{id})' \
         stroke='#555'/>{marks}</svg>",
        width - 8
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn text_from_the_run_cannot_open_a_tag() {
        assert_eq!(
            escape("<b>'a' & \"b\"</b>"),
            "&lt;b&gt;&#39;a&#39; &amp; &quot;b&quot;&lt;/b&gt;"
        );
    }
}
