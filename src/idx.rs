//! The idx3 unsigned-byte images format of (Fashion-)MNIST, as distributed: gzip-compressed or
//! not.

use crate::error::{Error, Result};
use std::io::Read;

/// Parses an idx3 unsigned-byte file (gunzipping it first if it is gzip-compressed):
/// (count, rows, cols, pixels). A compressed file is inflated no further than the pixels its
/// header promises (at most [`crate::limits::MAX_INPUT_BYTES`]), so a small file cannot expand
/// to fill the memory.
pub(super) fn parse_idx_images(raw: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    const IDX3_UBYTE_MAGIC: [u8; 4] = [0, 0, 0x08, 0x03];
    let gzipped = raw.starts_with(&GZIP_MAGIC);
    let mut data: Box<dyn Read + '_> = match gzipped {
        true => Box::new(flate2::read::GzDecoder::new(raw)),
        false => Box::new(raw),
    };
    let corrupt = |e: std::io::Error| Error::Invalid(format!("corrupt gzip data: {e}"));
    let not_idx3 = || {
        Error::Invalid(
            "not an idx3 unsigned-byte images file (the header must start 00 00 08 03)".into(),
        )
    };
    let mut header = [0u8; 16];
    match data.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if gzipped && e.kind() != std::io::ErrorKind::UnexpectedEof => {
            return Err(corrupt(e))
        }
        Err(_) => return Err(not_idx3()),
    }
    if header[..4] != IDX3_UBYTE_MAGIC {
        return Err(not_idx3());
    }
    let field = |i: usize| u32::from_be_bytes([0, 1, 2, 3].map(|k| header[4 * i + k])) as usize;
    let (count, rows, cols) = (field(1), field(2), field(3));
    if rows == 0 || cols == 0 {
        return Err(Error::Invalid(format!(
            "the header promises images of {rows}x{cols} pixels: no pixels"
        )));
    }
    // Three u32 factors can overflow even a 64-bit size.
    let promised = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .filter(|&n| n as u64 <= crate::limits::MAX_INPUT_BYTES);
    let Some(promised) = promised else {
        let bytes = match count.checked_mul(rows * cols) {
            Some(n) => n.to_string(),
            None => "more than 2^64".into(),
        };
        return Err(Error::Invalid(format!(
            "the header promises {count} images of {rows}x{cols} ({bytes} bytes), more than an \
             input may hold ({} bytes)",
            crate::limits::MAX_INPUT_BYTES
        )));
    };
    let mut pixels = Vec::new();
    data.take(promised as u64 + 1)
        .read_to_end(&mut pixels)
        .map_err(corrupt)?;
    if pixels.len() != promised {
        let holds = match (gzipped, pixels.len() > promised) {
            (false, _) => (raw.len() - 16).to_string(),
            (true, true) => format!("more than {promised}"),
            (true, false) => pixels.len().to_string(),
        };
        return Err(Error::Invalid(format!(
            "the header promises {count} images of {rows}x{cols} ({promised} bytes), the file \
             holds {holds}"
        )));
    }
    Ok((count, rows, cols, pixels))
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
