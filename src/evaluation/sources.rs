//! Where evaluated images come from: a folder of sample PNGs, an idx3 file, or the sampler's own
//! starting noise, optionally narrowed to a range of images.

use super::input::check_size;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::idx::parse_idx_images;
use crate::images::{self, Image8};
use crate::limits::{self, MAX_EVAL_IMAGES};
use crate::noise::NoisePlan;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A set of images to evaluate, as written on the command line: `noise` or a path.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageSource {
    /// N(0, 1) images clamped and quantised like samples: the starting noise of
    /// `wgsl-diff sample --seed S`.
    Noise,
    /// A folder of grayscale `sample_*.png` files or an idx3 ubyte images file.
    Path(PathBuf),
}

impl std::str::FromStr for ImageSource {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "noise" => ImageSource::Noise,
            path => ImageSource::Path(PathBuf::from(path)),
        })
    }
}

/// Images A..B of a source, written `A..B`; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRange(Range<usize>);

impl ImageRange {
    pub fn new(range: Range<usize>) -> Result<ImageRange> {
        let text = format!("{}..{}", range.start, range.end);
        ImageRange::non_empty(range, &text)
    }

    pub fn range(&self) -> Range<usize> {
        self.0.clone()
    }

    /// `range` unless it is empty or longer than [`MAX_EVAL_IMAGES`]; `text` is how the user
    /// wrote it, for the message.
    fn non_empty(range: Range<usize>, text: &str) -> Result<ImageRange> {
        if range.is_empty() {
            return Err(Error::Invalid(format!(
                "{text:?} is empty: A must be less than B"
            )));
        }
        if range.len() > MAX_EVAL_IMAGES {
            return Err(Error::Invalid(format!(
                "{text:?} holds {} images; a set holds at most {MAX_EVAL_IMAGES}",
                range.len()
            )));
        }
        Ok(ImageRange(range))
    }
}

impl std::str::FromStr for ImageRange {
    type Err = Error;
    fn from_str(s: &str) -> Result<ImageRange> {
        let (start, end) = s
            .split_once("..")
            .ok_or_else(|| Error::Invalid(format!("{s:?} is not a range A..B")))?;
        let number = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|e| Error::Invalid(format!("{v:?} in {s:?}: {e}")))
        };
        ImageRange::non_empty(number(start)?..number(end)?, s)
    }
}

/// One side of a comparison: a source and, optionally, which of its images to use.
#[derive(Clone, Debug, PartialEq)]
pub struct SetSpec {
    pub source: ImageSource,
    pub range: Option<ImageRange>,
}

impl SetSpec {
    /// Whether the set takes its size from the other one: `noise` without a range.
    pub(super) fn sized_by_other(&self) -> bool {
        self.source == ImageSource::Noise && self.range.is_none()
    }
}

/// Grayscale 8-bit images and where they came from.
pub(super) struct ImageSet {
    pub description: String,
    pub images: Vec<Image8>,
}

impl ImageSet {
    /// Loads `spec` as `side`² or 28² images; `noise` of seed `seed` without a range takes
    /// `other_count` images.
    pub(super) fn load(
        gpu: &Gpu,
        spec: &SetSpec,
        side: usize,
        seed: u64,
        other_count: Option<usize>,
    ) -> Result<ImageSet> {
        let range = spec.range.as_ref().map(ImageRange::range);
        match &spec.source {
            ImageSource::Noise => {
                let range = range.or(other_count.map(|n| 0..n)).ok_or_else(|| {
                    Error::Invalid(
                        "`noise` needs a size: give a range, or a real set for it to match".into(),
                    )
                })?;
                noise_images(gpu, range, side, seed)
            }
            ImageSource::Path(path) if path.is_dir() => load_png_folder(path, range, side),
            ImageSource::Path(path) if path.is_file() => load_idx_file(path, range, side),
            ImageSource::Path(path) => Err(Error::Invalid(format!(
                "{} is neither a folder of PNGs nor an idx file (it does not exist)",
                path.display()
            ))),
        }
    }
}

/// `range` of `available` items, or all of them.
fn select(range: Option<Range<usize>>, available: usize, what: &str) -> Result<Range<usize>> {
    let range = range.unwrap_or(0..available);
    if range.end > available {
        return Err(Error::Invalid(format!(
            "range {}..{} goes past the end of {what}, which holds {available} images",
            range.start, range.end
        )));
    }
    Ok(range)
}

fn describe(count: usize, what: String, range: &Range<usize>) -> String {
    format!(
        "{count} images from {what} [{}..{}]",
        range.start, range.end
    )
}

/// The `sample_*.png` files of `dir`, in name order.
fn list_samples(dir: &Path) -> Result<Vec<PathBuf>> {
    let cannot_list = Error::file("list", dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(cannot_list)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(cannot_list)?;
    files.retain(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.starts_with("sample_") && name.ends_with(".png")
    });
    if files.is_empty() {
        return Err(Error::Invalid(format!(
            "{} holds no sample_*.png files",
            dir.display()
        )));
    }
    files.sort();
    Ok(files)
}

fn load_png_folder(dir: &Path, range: Option<Range<usize>>, side: usize) -> Result<ImageSet> {
    let files = list_samples(dir)?;
    let range = select(range, files.len(), &dir.display().to_string())?;
    let images = files[range.clone()]
        .iter()
        .map(|path| {
            let img = images::read_png(path)?;
            if img.channels != 1 {
                return Err(Error::Invalid(format!(
                    "{} is not grayscale",
                    path.display()
                )));
            }
            check_size(img.width, img.height, side, &path.display())?;
            Ok(img)
        })
        .collect::<Result<Vec<_>>>()?;
    let description = describe(images.len(), format!("folder {}", dir.display()), &range);
    Ok(ImageSet {
        description,
        images,
    })
}

fn load_idx_file(path: &Path, range: Option<Range<usize>>, side: usize) -> Result<ImageSet> {
    let raw = crate::io::read_input(path, crate::limits::MAX_INPUT_BYTES)?;
    let (count, height, width, pixels) =
        parse_idx_images(&raw).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    check_size(width, height, side, &path.display())?;
    let range = select(range, count, &path.display().to_string())?;
    let plane = height * width;
    let images = pixels[range.start * plane..range.end * plane]
        .chunks(plane)
        .map(|p| Image8 {
            width,
            height,
            channels: 1,
            pixels: p.to_vec(),
        })
        .collect::<Vec<_>>();
    Ok(ImageSet {
        description: describe(images.len(), format!("idx file {}", path.display()), &range),
        images,
    })
}

/// `wgsl-diff sample --seed S`'s starting noise of samples `range`, quantised like its PNGs.
fn noise_images(gpu: &Gpu, range: Range<usize>, side: usize, seed: u64) -> Result<ImageSet> {
    const CHUNK: usize = 1024;
    let range = limits::sample_range("noise images", range.start, range.len())?;
    limits::count_in("the number of noise images", range.len(), MAX_EVAL_IMAGES)?;
    let plan = NoisePlan::new(seed);
    let mut images = Vec::with_capacity(range.len());
    for first in range.clone().step_by(CHUNK) {
        let n = CHUNK.min(range.end - first);
        let noise = gpu.read(&plan.initial(gpu, &[n, 1, side, side], first)?)?;
        images.extend(
            noise
                .chunks(side * side)
                .map(|plane| images::quantize(plane, 1, side, side)),
        );
    }
    Ok(ImageSet {
        description: describe(images.len(), format!("N(0, 1) noise, seed {seed}"), &range),
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_range(s: &str) -> std::result::Result<Range<usize>, String> {
        s.parse::<ImageRange>()
            .map(|r| r.range())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn ranges_parse_and_are_checked() {
        assert_eq!(parse_range("0..5000"), Ok(0..5000));
        assert!(parse_range("5..5").is_err());
        assert!(parse_range("5").is_err());
        assert!(parse_range("a..3").is_err());
        #[allow(clippy::reversed_empty_ranges)] // a reversed range is what must be refused
        let reversed = ImageRange::new(5..2);
        assert!(reversed.is_err());
        assert!(select(Some(0..11), 10, "x").is_err());
        assert!(parse_range("0..18446744073709551615").is_err());
        assert!(parse_range(&format!("0..{}", MAX_EVAL_IMAGES)).is_ok());
        assert_eq!(select(None, 10, "x").unwrap(), 0..10);
    }
}
