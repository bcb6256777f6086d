//! The maps a run folder holds, read back over their image: each sample's summed map, and the
//! per-step maps and guidance masks of the report's samples, and the maps `--save-maps` wrote.
//! Each becomes a plane of the
//! image's size — channels reduced, and a latent model's map element repeated over the block of
//! pixels it covers — so it can be drawn over the image.

use super::manifest::SampleRecord;
use super::{guidance_masks_name, step_maps_name, total_map_name};
use crate::error::{Error, Result};
use crate::images;
use crate::npy;
use std::path::Path;

/// One value per image pixel, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Plane {
    pub height: usize,
    pub width: usize,
    pub values: Vec<f32>,
}

/// How a map's channels become one value per pixel.
#[derive(Clone, Copy)]
enum Channels {
    /// The uncertainty of all channels together (what the score sums).
    Sum,
    /// The share of channels set (a mask's elements are 0 or 1).
    Mean,
}

/// The sample's Σ_t U_t over its image, None when the folder has no summed map for it.
pub fn summed_map(dir: &Path, sample: &SampleRecord) -> Result<Option<Plane>> {
    let map = dir.join(total_map_name(sample.index));
    let planes = read_planes(&map, &dir.join(&sample.file), 3, Channels::Sum)?;
    Ok(planes.and_then(|mut p| p.pop()))
}

/// U_t of each window step of the sample, in step order (None: not kept for it).
pub fn step_maps(dir: &Path, sample: &SampleRecord) -> Result<Option<Vec<Plane>>> {
    let maps = dir.join(step_maps_name(sample.index));
    read_planes(&maps, &dir.join(&sample.file), 4, Channels::Sum)
}

/// One step's map as `--save-maps` writes it ((1, C, H, W) at `path`) over the sample's
/// image at `image`.
pub fn saved_step_map(path: &Path, image: &Path) -> Result<Plane> {
    let planes = read_planes(path, image, 4, Channels::Sum)?.unwrap_or_default();
    <[Plane; 1]>::try_from(planes)
        .map(|[plane]| plane)
        .map_err(|planes| {
            Error::Invalid(format!(
                "{}: expected one step's map (1, C, H, W), got {} steps",
                path.display(),
                planes.len()
            ))
        })
}

/// Each guided step's mask as the share of the sample's channels guided at each pixel, in step
/// order (None: not kept for it).
pub fn guidance_masks(dir: &Path, sample: &SampleRecord) -> Result<Option<Vec<Plane>>> {
    let masks = dir.join(guidance_masks_name(sample.index));
    read_planes(&masks, &dir.join(&sample.file), 4, Channels::Mean)
}

/// The planes of the file at `path`, a (C, H, W) map (`rank` 3) or a stack of them (`rank` 4),
/// over the image at `image`; None when there is no such file.
fn read_planes(
    path: &Path,
    image: &Path,
    rank: usize,
    channels: Channels,
) -> Result<Option<Vec<Plane>>> {
    if !path.exists() {
        return Ok(None);
    }
    let (shape, data) = npy::read(path)?;
    let (count, [c, h, w]) = match shape[..] {
        [c, h, w] if rank == 3 => (1, [c, h, w]),
        [n, c, h, w] if rank == 4 => (n, [c, h, w]),
        _ => {
            return Err(Error::Invalid(format!(
                "{}: expected {}, got {shape:?}",
                path.display(),
                ["(C, H, W)", "(steps, C, H, W)"][rank - 3]
            )))
        }
    };
    let image = images::png_size(image)?;
    let len = c * h * w;
    (0..count)
        .map(|i| {
            over_image(&data[i * len..(i + 1) * len], [c, h, w], image, channels)
                .map_err(|why| Error::Invalid(format!("{}: {why}", path.display())))
        })
        .collect::<Result<Vec<Plane>>>()
        .map(Some)
}

/// A (C, H, W) map reduced over channels and spread over an (ih, iw) image that it covers
/// exactly or in equal square blocks.
fn over_image(
    map: &[f32],
    [c, h, w]: [usize; 3],
    (ih, iw): (usize, usize),
    channels: Channels,
) -> std::result::Result<Plane, String> {
    let blocks = h > 0 && w > 0 && ih % h == 0 && iw % w == 0 && ih / h == iw / w;
    if !blocks {
        return Err(format!(
            "a {h}×{w} map does not cover the {ih}×{iw} image in square blocks"
        ));
    }
    let divisor = match channels {
        Channels::Sum => 1.0,
        Channels::Mean => c.max(1) as f32,
    };
    let plane: Vec<f32> = (0..h * w)
        .map(|p| (0..c).map(|k| map[k * h * w + p]).sum::<f32>() / divisor)
        .collect();
    let factor = ih / h;
    let values = (0..ih * iw)
        .map(|p| plane[(p / iw / factor) * w + (p % iw) / factor])
        .collect();
    Ok(Plane {
        height: ih,
        width: iw,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latent_map_covers_its_image_in_blocks_and_masks_become_shares() {
        // Two channels of 1×2, over a 2×4 image: each element covers a 2×2 block.
        let map = [1.0, 0.0, 1.0, 1.0];
        let sum = over_image(&map, [2, 1, 2], (2, 4), Channels::Sum).unwrap();
        assert_eq!(sum.values, [2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0]);
        let mean = over_image(&map, [2, 1, 2], (2, 4), Channels::Mean).unwrap();
        assert_eq!(mean.values[..4], [1.0, 1.0, 0.5, 0.5]);
        let err = over_image(&map, [2, 1, 2], (3, 4), Channels::Sum).unwrap_err();
        assert!(err.contains("does not cover"), "{err}");
    }
}
