//! Turning model outputs in [−1, 1] into 8-bit PNGs (with their parameters embedded) and grids,
//! and uncertainty maps into colours: alone, over their image, with a colour bar.

mod colour_bar;

pub use colour_bar::with_colour_bar;

use crate::error::{Error, Result};
use std::path::Path;

/// One image as 8-bit interleaved pixels (1 or 3 channels).
#[derive(Clone, Debug, PartialEq)]
pub struct Image8 {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

/// diffusers' quantisation: round(clamp(x/2 + 0.5, 0, 1)·255), CHW planes → HWC pixels.
pub fn quantize(chw: &[f32], channels: usize, height: usize, width: usize) -> Image8 {
    let plane = height * width;
    let mut pixels = vec![0u8; plane * channels];
    for c in 0..channels {
        for p in 0..plane {
            let v = (chw[c * plane + p] / 2.0 + 0.5).clamp(0.0, 1.0);
            pixels[p * channels + c] = (v * 255.0).round() as u8;
        }
    }
    Image8 {
        width,
        height,
        channels,
        pixels,
    }
}

fn color_type(channels: usize) -> Result<png::ColorType> {
    match channels {
        1 => Ok(png::ColorType::Grayscale),
        3 => Ok(png::ColorType::Rgb),
        n => Err(Error::Invalid(format!(
            "cannot write a {n}-channel image as PNG"
        ))),
    }
}

/// Encodes a PNG with optional tEXt chunks (keyword, text).
pub fn encode_png(img: &Image8, text: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let err = |e: png::EncodingError| Error::Invalid(format!("PNG encoding: {e}"));
    let mut enc = png::Encoder::new(&mut bytes, img.width as u32, img.height as u32);
    enc.set_color(color_type(img.channels)?);
    enc.set_depth(png::BitDepth::Eight);
    for (k, v) in text {
        enc.add_text_chunk(k.to_string(), v.clone()).map_err(err)?;
    }
    let mut w = enc.write_header().map_err(err)?;
    w.write_image_data(&img.pixels).map_err(err)?;
    w.finish().map_err(err)?;
    Ok(bytes)
}

pub fn write_png(path: &Path, img: &Image8, text: &[(&str, String)]) -> Result<()> {
    crate::io::write_atomic(path, &encode_png(img, text)?)
}

pub fn read_png(path: &Path) -> Result<Image8> {
    let bytes = crate::io::read_input(path, crate::limits::MAX_INPUT_BYTES)?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let (channels, pixels) = match img.color().channel_count() {
        1 => (1, img.into_luma8().into_raw()),
        _ => (3, img.into_rgb8().into_raw()),
    };
    Ok(Image8 {
        width,
        height,
        channels,
        pixels,
    })
}

/// Tiles equally sized images into a grid `cols` wide with a `gap`-pixel white border.
pub fn grid(images: &[Image8], cols: usize, gap: usize) -> Option<Image8> {
    let first = images.first()?;
    let (w, h, ch) = (first.width, first.height, first.channels);
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut pixels = vec![255u8; gw * gh * ch];
    for (i, img) in images.iter().enumerate() {
        let (x0, y0) = (gap + (i % cols) * (w + gap), gap + (i / cols) * (h + gap));
        for y in 0..h {
            let src = &img.pixels[y * w * ch..(y + 1) * w * ch];
            let dst = ((y0 + y) * gw + x0) * ch;
            pixels[dst..dst + w * ch].copy_from_slice(src);
        }
    }
    Some(Image8 {
        width: gw,
        height: gh,
        channels: ch,
        pixels,
    })
}

/// The text chunks of a PNG file (keyword → text): tEXt as wgsl-diff writes them, and zTXt and
/// iTXt as other tools may rewrite them (each inflated to at most the png crate's 2 MiB). A
/// keyword given twice is refused: which of the two values is the sample's?
pub fn read_png_text(path: &Path) -> Result<std::collections::HashMap<String, String>> {
    let reader = png_header(path)?;
    let info = reader.info();
    let bad = |e: &dyn std::fmt::Display| Error::Invalid(format!("{}: {e}", path.display()));
    let mut chunks: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    for mut c in info.compressed_latin1_text.iter().cloned() {
        c.decompress_text().map_err(|e| bad(&e))?;
        chunks.push((c.keyword.clone(), c.get_text().map_err(|e| bad(&e))?));
    }
    for mut c in info.utf8_text.iter().cloned() {
        c.decompress_text().map_err(|e| bad(&e))?;
        chunks.push((c.keyword.clone(), c.get_text().map_err(|e| bad(&e))?));
    }
    let mut text = std::collections::HashMap::new();
    for (keyword, value) in chunks {
        if text.insert(keyword.clone(), value).is_some() {
            return Err(bad(&format!("the text key {keyword:?} appears twice")));
        }
    }
    Ok(text)
}

/// (height, width) of a PNG, from its header alone.
pub fn png_size(path: &Path) -> Result<(usize, usize)> {
    let info = png_header(path)?.info().clone();
    Ok((info.height as usize, info.width as usize))
}

fn png_header(path: &Path) -> Result<png::Reader<std::io::BufReader<std::fs::File>>> {
    crate::io::check_input(path, crate::limits::MAX_INPUT_BYTES)?;
    let file = std::fs::File::open(path).map_err(Error::file("read", path))?;
    png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Matplotlib's "inferno" sampled at nine points (perceptually uniform, dark = low); the
/// report's colour bars use the same points as gradient stops.
pub const INFERNO: [[f32; 3]; 9] = [
    [0.0, 0.0, 4.0],
    [31.0, 12.0, 72.0],
    [85.0, 15.0, 109.0],
    [136.0, 34.0, 106.0],
    [186.0, 54.0, 85.0],
    [227.0, 89.0, 51.0],
    [249.0, 140.0, 10.0],
    [249.0, 201.0, 50.0],
    [252.0, 255.0, 164.0],
];

/// The inferno colour of v ∈ [0, 1] (clamped), linearly interpolated between the samples.
pub fn inferno(v: f32) -> [u8; 3] {
    let x = v.clamp(0.0, 1.0) * (INFERNO.len() - 1) as f32;
    let i = (x.floor() as usize).min(INFERNO.len() - 2);
    let f = x - i as f32;
    let mut out = [0u8; 3];
    for (c, o) in out.iter_mut().enumerate() {
        *o = (INFERNO[i][c] * (1.0 - f) + INFERNO[i + 1][c] * f).round() as u8;
    }
    out
}

/// A colour heatmap of an (H, W) plane, mapping [0, scale] onto the colormap.
pub fn heatmap(plane: &[f32], height: usize, width: usize, (lo, hi): (f32, f32)) -> Image8 {
    let inv = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
    let pixels = plane
        .iter()
        .flat_map(|&v| inferno((v - lo) * inv))
        .collect();
    Image8 {
        width,
        height,
        channels: 3,
        pixels,
    }
}

/// How much of a colour an overlay lays over its image: enough to read the colour, little
/// enough to see the garment through it.
const OVERLAY_ALPHA: f32 = 0.6;

/// The map over its image: the image in grey (so its own colours are not read as the map's),
/// blended with the inferno colour of each value in [lo, hi]. `plane` has the image's size.
pub fn overlay(image: &Image8, plane: &[f32], (lo, hi): (f32, f32)) -> Image8 {
    let inv = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
    blend_over_grey(image, |p| (inferno((plane[p] - lo) * inv), OVERLAY_ALPHA))
}

/// `colour` laid over the image in grey where `weight` (in [0, 1], the image's size) is
/// positive, in proportion to it: a guidance mask, or the share of channels it covers.
pub fn tint(image: &Image8, weight: &[f32], colour: [u8; 3]) -> Image8 {
    blend_over_grey(image, |p| {
        (colour, OVERLAY_ALPHA * weight[p].clamp(0.0, 1.0))
    })
}

/// Each pixel's luma blended with `layer(pixel) = (colour, alpha)`.
fn blend_over_grey(image: &Image8, layer: impl Fn(usize) -> ([u8; 3], f32)) -> Image8 {
    let ch = image.channels;
    let pixels = image
        .pixels
        .chunks_exact(ch)
        .enumerate()
        .flat_map(|(p, px)| {
            let grey = match px {
                [r, g, b] => 0.299 * *r as f32 + 0.587 * *g as f32 + 0.114 * *b as f32,
                _ => px[0] as f32,
            };
            let (colour, alpha) = layer(p);
            colour.map(|c| (grey * (1.0 - alpha) + c as f32 * alpha).round() as u8)
        })
        .collect();
    Image8 {
        channels: 3,
        pixels,
        ..*image
    }
}

/// Averages `factor` × `factor` blocks of an (height, width) plane (the last row and column of
/// blocks may be partial): the report's thumbnails of large images and their maps.
pub fn shrink_plane(plane: &[f32], height: usize, width: usize, factor: usize) -> Vec<f32> {
    let f = factor.max(1);
    let (oh, ow) = (height.div_ceil(f), width.div_ceil(f));
    let mut out = Vec::with_capacity(oh * ow);
    for by in 0..oh {
        for bx in 0..ow {
            let (ys, xs) = (
                by * f..((by + 1) * f).min(height),
                bx * f..((bx + 1) * f).min(width),
            );
            let n = (ys.len() * xs.len()) as f32;
            let sum: f32 = ys
                .flat_map(|y| xs.clone().map(move |x| plane[y * width + x]))
                .sum();
            out.push(sum / n);
        }
    }
    out
}

/// The image with each channel shrunk by [`shrink_plane`].
pub fn shrink(image: &Image8, factor: usize) -> Image8 {
    let (h, w, ch) = (image.height, image.width, image.channels);
    let planes: Vec<Vec<f32>> = (0..ch)
        .map(|c| {
            let plane: Vec<f32> = (0..h * w)
                .map(|p| image.pixels[p * ch + c] as f32)
                .collect();
            shrink_plane(&plane, h, w, factor)
        })
        .collect();
    let f = factor.max(1);
    let (oh, ow) = (h.div_ceil(f), w.div_ceil(f));
    Image8 {
        width: ow,
        height: oh,
        channels: ch,
        pixels: (0..oh * ow)
            .flat_map(|p| planes.iter().map(move |plane| plane[p].round() as u8))
            .collect(),
    }
}

/// The image as RGB (grey replicated), so it can sit beside a heatmap in one grid.
pub fn to_rgb(img: &Image8) -> Image8 {
    match img.channels {
        3 => img.clone(),
        _ => Image8 {
            channels: 3,
            pixels: img.pixels.iter().flat_map(|&p| [p, p, p]).collect(),
            ..*img
        },
    }
}
