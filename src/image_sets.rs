//! Sets of images read from disk as the metrics and the real-image reference take them: a
//! folder of PNGs (a run's `sample_*.png` when it has any) or an idx images file, all of one
//! size.

use crate::error::{Error, Result};
use crate::idx::parse_idx_images;
use crate::images::{self, Image8};
use std::path::{Path, PathBuf};

/// Image formats pytorch-fid reads that this port does not: their presence is an error rather
/// than a silently smaller set.
const OTHER_IMAGE_EXTENSIONS: &[&str] =
    &["bmp", "jpg", "jpeg", "pgm", "ppm", "tif", "tiff", "webp"];

/// The images of a folder or idx file, all of one size, at least two; and a description.
pub fn load_images(path: &Path) -> Result<(Vec<Image8>, String)> {
    let (images, what) = if path.is_dir() {
        let files = list_pngs(path)?;
        let images = files
            .iter()
            .map(|f| images::read_png(f))
            .collect::<Result<Vec<_>>>()?;
        check_sizes(&images, &files)?;
        (images, format!("folder {}", path.display()))
    } else if path.is_file() {
        (read_idx(path)?, format!("idx file {}", path.display()))
    } else {
        return Err(Error::Invalid(format!("{} does not exist", path.display())));
    };
    if images.len() < 2 {
        return Err(Error::Invalid(format!(
            "{} holds {} image(s); a covariance needs at least 2",
            path.display(),
            images.len()
        )));
    }
    let description = format!("{} images from {what}", images.len());
    Ok((images, description))
}

/// A run's `sample_*.png` if the folder has any, otherwise every `*.png`; sorted by name.
fn list_pngs(dir: &Path) -> Result<Vec<PathBuf>> {
    let cannot_list = Error::file("list", dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(cannot_list)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(cannot_list)?;
    files.sort();
    let extension = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
    };
    if let Some(other) = files
        .iter()
        .find(|p| extension(p).is_some_and(|e| OTHER_IMAGE_EXTENSIONS.contains(&e.as_str())))
    {
        return Err(Error::Invalid(format!(
            "{} is not a PNG: only PNG images are read (convert the folder to PNG)",
            other.display()
        )));
    }
    files.retain(|p| p.extension().is_some_and(|e| e == "png"));
    let is_sample = |p: &PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("sample_"))
    };
    if files.iter().any(is_sample) {
        files.retain(is_sample);
    }
    Ok(files)
}

/// pytorch-fid stacks each batch, so images of different sizes fail there: refuse them here.
fn check_sizes(images: &[Image8], files: &[PathBuf]) -> Result<()> {
    if let Some(i) = images
        .iter()
        .position(|img| (img.width, img.height) != (images[0].width, images[0].height))
    {
        return Err(Error::Invalid(format!(
            "images differ in size: {} is {}x{}, {} is {}x{} (resize them to one size first)",
            files[0].display(),
            images[0].width,
            images[0].height,
            files[i].display(),
            images[i].width,
            images[i].height
        )));
    }
    Ok(())
}

fn read_idx(path: &Path) -> Result<Vec<Image8>> {
    let raw = crate::io::read_input(path, crate::limits::MAX_INPUT_BYTES)?;
    let (_, height, width, pixels) =
        parse_idx_images(&raw).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    Ok(pixels
        .chunks(height * width)
        .map(|p| Image8 {
            width,
            height,
            channels: 1,
            pixels: p.to_vec(),
        })
        .collect())
}
