//! Minimal NumPy `.npy` reading and writing of little-endian C-order arrays (float32 files;
//! float64 too for [`crate::npz`]), so noise, maps, images and statistics can be exchanged with
//! Python and other implementations.

use crate::error::{Error, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "npy shape/data mismatch"
    );
    crate::io::write_atomic(path, &encode("<f4", shape, bytemuck::cast_slice(data)))
}

/// A `.npy` file of dtype `descr` (`<f4`, `<f8`) holding `data`, C order.
pub(crate) fn encode(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad so that the data starts on a 64-byte boundary, header ending in '\n'.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(64 + data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Reads a float32 (little-endian, C-order) array: (shape, data).
pub fn read(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = crate::io::read_input(path, crate::limits::MAX_INPUT_BYTES)?;
    let what = path.display().to_string();
    let (descr, shape, payload) = parse(&bytes, &what)?;
    if descr != "<f4" {
        return Err(Error::Invalid(format!(
            "{what} is not a float32 .npy file: dtype must be '<f4' (float32), not {descr:?}"
        )));
    }
    Ok((shape, bytemuck::pod_collect_to_vec(payload)))
}

/// Splits a C-order `.npy` file into (dtype descr, shape, data bytes), checking that the data
/// is exactly the size the shape needs; `what` names the file in errors.
pub(crate) fn parse<'a>(bytes: &'a [u8], what: &str) -> Result<(String, Vec<usize>, &'a [u8])> {
    let bad = |why: &str| Error::Invalid(format!("{what} is not a valid .npy array: {why}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => return Err(bad(&format!("unsupported version {v}"))),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .ok_or_else(|| bad("truncated header"))?,
    )
    .map_err(|_| bad("header is not text"))?;
    let (descr, fortran_order, shape) = parse_header(header).map_err(|why| bad(&why))?;
    if fortran_order {
        return Err(bad("Fortran order is not supported"));
    }
    let item = match descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(bad(&format!(
                "unsupported dtype {other:?} (float32 or float64 only)"
            )))
        }
    };
    let payload = &bytes[start + header_len..];
    let needed = shape
        .iter()
        .try_fold(item, |n: usize, &d| n.checked_mul(d))
        .ok_or_else(|| bad(&format!("shape {shape:?} overflows")))?;
    if payload.len() != needed {
        return Err(bad(&format!(
            "shape {shape:?} needs {needed} data bytes, found {}",
            payload.len()
        )));
    }
    Ok((descr, shape, payload))
}

/// The header's dict, read as strictly as numpy writes it: `descr` (a quoted string),
/// `fortran_order` (`True` or `False`) and `shape` (a tuple of non-negative integers), each
/// exactly once — numpy keeps the last of a key given twice, so a repeat is refused rather than
/// read as another array than numpy would — in any order and spacing, then only padding.
fn parse_header(header: &str) -> std::result::Result<(String, bool, Vec<usize>), String> {
    let mut rest = header.trim_start();
    if !take(&mut rest, "{") {
        return Err("the header is not a dict".into());
    }
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    while !take(&mut rest, "}") {
        let key = quoted(&mut rest)?;
        rest = rest.trim_start();
        if !take(&mut rest, ":") {
            return Err(format!("no ':' after header key '{key}'"));
        }
        let slot_taken = match key.as_str() {
            "descr" => descr.replace(quoted(&mut rest)?).is_some(),
            "fortran_order" => {
                let value = match () {
                    _ if take(&mut rest, "True") => true,
                    _ if take(&mut rest, "False") => false,
                    _ => return Err("fortran_order is neither True nor False".into()),
                };
                fortran.replace(value).is_some()
            }
            "shape" => shape.replace(tuple(&mut rest)?).is_some(),
            other => return Err(format!("unknown header key '{other}'")),
        };
        if slot_taken {
            return Err(format!("header key '{key}' appears twice"));
        }
        rest = rest.trim_start();
        if !take(&mut rest, ",") && !rest.starts_with('}') {
            return Err("header items are not separated by commas".into());
        }
    }
    if !rest.trim().is_empty() {
        return Err("text after the header's dict".into());
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err("the header lacks descr, fortran_order or shape".into()),
    }
}

/// Consumes `token` and the spaces after it when `rest` starts with it.
fn take(rest: &mut &str, token: &str) -> bool {
    match rest.strip_prefix(token) {
        Some(after) => {
            *rest = after.trim_start();
            true
        }
        None => false,
    }
}

/// A Python string literal in single or double quotes (no escapes: no dtype needs one).
fn quoted(rest: &mut &str) -> std::result::Result<String, String> {
    let text = *rest;
    let quote = match text.chars().next() {
        Some(q @ ('\'' | '"')) => q,
        _ => return Err("a header key or dtype is not a quoted string".into()),
    };
    let end = text[1..]
        .find(quote)
        .ok_or("an unterminated string in the header")?;
    let value = &text[1..1 + end];
    if value.contains('\\') {
        return Err("an escape in a header string".into());
    }
    *rest = &text[end + 2..];
    Ok(value.to_string())
}

/// A Python tuple of non-negative integers, spelled as Python would read it (no leading zeros;
/// one element needs its trailing comma).
fn tuple(rest: &mut &str) -> std::result::Result<Vec<usize>, String> {
    let bad = || "the shape is not a tuple of non-negative integers".to_string();
    let text = rest.strip_prefix('(').ok_or_else(bad)?;
    let close = text.find(')').ok_or_else(bad)?;
    let inner = text[..close].trim();
    *rest = &text[close + 1..];
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<&str> = inner.split(',').map(str::trim).collect();
    let (last, dims) = items.split_last().ok_or_else(bad)?;
    // "(3)" is 3, not a tuple; "(3,)" and "(2, 3)" are tuples.
    let dims = match (last.is_empty(), dims.is_empty()) {
        (true, _) => dims.to_vec(),
        (false, false) => items.clone(),
        (false, true) => return Err(bad()),
    };
    dims.iter()
        .map(|d| {
            let digits = !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
            match digits && (*d == "0" || !d.starts_with('0')) {
                true => d
                    .parse::<usize>()
                    .map_err(|_| format!("dimension {d} is too large")),
                false => Err(bad()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        super::write(&path, &[2, 3, 4], &data).unwrap();
        assert_eq!(super::read(&path).unwrap(), (vec![2, 3, 4], data));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(super::read(&path).is_err());
        // A shape whose byte count overflows is an error, not a panic or a wrapped size.
        let huge =
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((huge.len() as u16).to_le_bytes());
        bytes.extend(huge.as_bytes());
        std::fs::write(&path, bytes).unwrap();
        let err = super::read(&path).unwrap_err().to_string();
        assert!(err.contains("overflows"), "{err}");
    }
}
