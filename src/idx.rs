//! The idx3 unsigned-byte images format of (Fashion-)MNIST, as distributed: gzip-compressed or
//! not.

use crate::error::{Error, Result};
use std::io::Read;

/// Parses an idx3 unsigned-byte file (gunzipping it first if it is gzip-compressed):
/// (count, rows, cols, pixels).
pub(super) fn parse_idx_images(raw: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    const IDX3_UBYTE_MAGIC: [u8; 4] = [0, 0, 0x08, 0x03];
    let data = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw)
            .read_to_end(&mut out)
            .map_err(|e| Error::Invalid(format!("corrupt gzip data: {e}")))?;
        out
    } else {
        raw.to_vec()
    };
    if data.len() < 16 || data[..4] != IDX3_UBYTE_MAGIC {
        return Err(Error::Invalid(
            "not an idx3 unsigned-byte images file (the header must start 00 00 08 03)".into(),
        ));
    }
    let header = |i: usize| u32::from_be_bytes(data[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    let (count, rows, cols) = (header(1), header(2), header(3));
    let pixels = &data[16..];
    // Three u32 factors can overflow even a 64-bit size.
    let promised = count.checked_mul(rows).and_then(|n| n.checked_mul(cols));
    if promised != Some(pixels.len()) {
        let bytes = promised.map_or("more than 2^64".into(), |n| n.to_string());
        return Err(Error::Invalid(format!(
            "the header promises {count} images of {rows}x{cols} ({bytes} bytes), the file holds {}",
            pixels.len()
        )));
    }
    Ok((count, rows, cols, pixels.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_bytes(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, 3];
        for v in [count, rows, cols] {
            out.extend(v.to_be_bytes());
        }
        out.extend(pixels);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn idx_files_parse_with_or_without_gzip() {
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let raw = idx_bytes(2, 3, 4, &pixels);
        for bytes in [raw.clone(), gzip(&raw)] {
            let (count, rows, cols, got) = parse_idx_images(&bytes).unwrap();
            assert_eq!((count, rows, cols, got), (2, 3, 4, pixels.clone()));
        }
        let truncated = parse_idx_images(&raw[..raw.len() - 1]).unwrap_err();
        assert!(format!("{truncated:#}").contains("promises 2 images"));
        let huge = parse_idx_images(&idx_bytes(u32::MAX, u32::MAX, u32::MAX, &pixels)).unwrap_err();
        assert!(format!("{huge:#}").contains("more than 2^64"), "{huge:#}");
        let labels = parse_idx_images(&[0, 0, 8, 1, 0, 0, 0, 0]).unwrap_err();
        assert!(format!("{labels:#}").contains("not an idx3"));
    }
}
