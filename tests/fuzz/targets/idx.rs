//! idx3 image files, gzip-compressed or not (`image_sets::load_images`: Fashion-MNIST for
//! `fid`, `eval` and `reference`): the header's magic and three counts, the pixels after it.

use super::{judge, put, Expect, Target, Verdict};
use crate::mutate::{mutate_bytes, Rng, EXTREME_INTS};
use std::io::Write;
use std::path::Path;

pub struct Idx;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

impl Target for Idx {
    fn name(&self) -> &'static str {
        "idx"
    }

    fn case(&self, rng: &mut Rng, dir: &Path) -> Verdict {
        let mut magic = [0u8, 0, 8, 3];
        let mut dims = [
            rng.below(5) as u64 + 2,
            rng.below(5) as u64 + 1,
            rng.below(5) as u64 + 1,
        ];
        let n = dims.iter().product::<u64>() as usize;
        let mut pixels = rng.bytes(n);
        let mut what = Vec::new();
        match rng.below(6) {
            0 => {
                let k = rng.below(3);
                dims[k] = match rng.chance(0.5) {
                    true => *rng.pick(EXTREME_INTS) & 0xffff_ffff,
                    false => rng.below(3) as u64,
                };
                what.push(format!("header count {k} set to {}", dims[k]));
                // Half the time the pixels follow, where they are few: a consistent odd file.
                let follow = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
                if let Some(n) = follow.filter(|&n| n <= 4096 && rng.chance(0.5)) {
                    pixels = rng.bytes(n as usize);
                    what.push("pixels to match".into());
                }
            }
            1 => {
                magic[rng.below(4)] ^= 1 << rng.below(8);
                what.push(format!("magic {magic:?}"));
            }
            2 => {
                let cut = rng.below(n + 1);
                match rng.chance(0.5) {
                    true => pixels.truncate(cut),
                    false => {
                        let extra = rng.below(8) + 1;
                        pixels.extend(rng.bytes(extra))
                    }
                }
                what.push(format!("{} pixel bytes for {n}", pixels.len()));
            }
            _ => {}
        }
        let mut bytes = magic.to_vec();
        for d in dims {
            bytes.extend((d as u32).to_be_bytes());
        }
        bytes.extend(&pixels);
        let images = dims[0] as usize;
        let side = (dims[1] * dims[2]) as usize;
        let promised = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let mut expect = match () {
            _ if magic != [0, 0, 8, 3] => Expect::Refuse("not idx3 magic".into()),
            _ if promised != Some(pixels.len() as u64) => {
                Expect::Refuse("pixels other than the header promises".into())
            }
            _ if images < 2 => Expect::Refuse(format!("{images} images")),
            _ if side == 0 => Expect::Refuse("images of no pixels".into()),
            _ => Expect::Accept,
        };
        if rng.chance(0.4) {
            bytes = gzip(&bytes);
            what.push("gzipped".into());
        }
        let damaged = rng.chance(0.3);
        if damaged {
            what.push(mutate_bytes(rng, &mut bytes));
            expect = Expect::Either;
        }
        let what = what.join("; ");
        let path = put(dir, "images-idx3-ubyte", &bytes);
        judge(
            wgsl_diff::image_sets::load_images(&path),
            &expect,
            &what,
            |(read, _)| {
                let first = &read[0];
                let (w, h) = (first.width, first.height);
                if read.len() < 2 || w * h == 0 {
                    return Err(format!("{} images of {w}x{h}", read.len()));
                }
                if let Some(i) = read.iter().position(|img| {
                    (img.width, img.height, img.channels) != (w, h, 1) || img.pixels.len() != w * h
                }) {
                    return Err(format!("image {i} is not {w}x{h}, one channel"));
                }
                if !damaged {
                    let got: Vec<u8> = read.iter().flat_map(|i| i.pixels.clone()).collect();
                    if (read.len(), h, w) != (images, dims[1] as usize, dims[2] as usize)
                        || got != pixels
                    {
                        return Err("images other than the file holds".into());
                    }
                }
                Ok(())
            },
        )
    }
}
