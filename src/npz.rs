//! NumPy `.npz` archives of float arrays: a zip of `.npy` members, stored or deflated, with or
//! without zip64 records — what `np.savez` and `np.savez_compressed` write (pytorch-fid saves its
//! statistics with the latter). Written archives are deflated zips that `np.load` reads.

use crate::error::{Error, Result};
use crate::npy;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

/// One member array, widened to f64.
#[derive(Clone, Debug, PartialEq)]
pub struct NpzArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const END_SIG: u32 = 0x0605_4b50;
const ZIP64_END_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EXTRA: u16 = 0x0001;
const STORED: u16 = 0;
const DEFLATED: u16 = 8;
/// A 32-bit field whose real value is in the zip64 extra field.
const IN_ZIP64: u32 = u32::MAX;

/// Little-endian field reads that fail as "truncated" rather than panic.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn get<const N: usize>(&self, at: usize) -> Result<[u8; N]> {
        self.0
            .get(at..at.saturating_add(N))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Invalid("truncated zip structure".into()))
    }
    fn u16(&self, at: usize) -> Result<u16> {
        Ok(u16::from_le_bytes(self.get(at)?))
    }
    fn u32(&self, at: usize) -> Result<u32> {
        Ok(u32::from_le_bytes(self.get(at)?))
    }
    fn u64(&self, at: usize) -> Result<u64> {
        Ok(u64::from_le_bytes(self.get(at)?))
    }
    /// An offset the archive states, checked to lie inside it (so that adding a structure's
    /// field offsets to it cannot overflow).
    fn offset(&self, value: u64) -> Result<usize> {
        usize::try_from(value)
            .ok()
            .filter(|&at| at <= self.0.len())
            .ok_or_else(|| Error::Invalid(format!("offset {value} lies past the archive's end")))
    }
}

/// A central-directory entry: what to extract and where.
struct Entry {
    name: String,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local_offset: u64,
}

/// Reads every member of the archive at `path`, keyed by name without `.npy`.
pub fn read(path: &Path) -> Result<BTreeMap<String, NpzArray>> {
    let bytes = crate::io::read_input(path, crate::limits::MAX_INPUT_BYTES)?;
    let in_file =
        |e: Error| Error::Invalid(format!("{} is not a valid .npz file: {e}", path.display()));
    let entries = central_directory(&Bytes(&bytes)).map_err(in_file)?;
    let mut arrays = BTreeMap::new();
    for entry in entries {
        let raw = extract(&Bytes(&bytes), &entry).map_err(in_file)?;
        let what = format!("{} member {}", path.display(), entry.name);
        let (descr, shape, payload) = npy::parse(&raw, &what)?;
        let data = match descr.as_str() {
            "<f8" => bytemuck::pod_collect_to_vec::<u8, f64>(payload),
            _ => bytemuck::pod_collect_to_vec::<u8, f32>(payload)
                .into_iter()
                .map(f64::from)
                .collect(),
        };
        let name = entry.name.strip_suffix(".npy").unwrap_or(&entry.name);
        // Two members of one name (`x.npy` and `x` too): zip readers differ on which is meant.
        if arrays
            .insert(name.to_string(), NpzArray { shape, data })
            .is_some()
        {
            return Err(in_file(Error::Invalid(format!(
                "two members are named {name}"
            ))));
        }
    }
    Ok(arrays)
}

/// The entries listed by the end-of-central-directory record (zip64 when its fields overflow).
fn central_directory(b: &Bytes) -> Result<Vec<Entry>> {
    let len = b.0.len();
    let end = (0..=len.saturating_sub(22))
        .rev()
        .take(65_557)
        .find(|&at| b.u32(at).is_ok_and(|s| s == END_SIG))
        .ok_or_else(|| Error::Invalid("no end-of-central-directory record".into()))?;
    let (mut count, mut offset) = (b.u16(end + 10)? as u64, b.u32(end + 16)? as u64);
    if count == u16::MAX as u64 || offset == IN_ZIP64 as u64 {
        let locator = end
            .checked_sub(20)
            .filter(|&at| b.u32(at).is_ok_and(|s| s == ZIP64_LOCATOR_SIG));
        let locator = locator.ok_or_else(|| Error::Invalid("no zip64 locator".into()))?;
        let record = b.offset(b.u64(locator + 8)?)?;
        if b.u32(record)? != ZIP64_END_SIG {
            return Err(Error::Invalid("bad zip64 end record".into()));
        }
        (count, offset) = (b.u64(record + 32)?, b.u64(record + 48)?);
    }
    let mut entries = Vec::new();
    let mut at = b.offset(offset)?;
    for _ in 0..count {
        if b.u32(at)? != CENTRAL_SIG {
            return Err(Error::Invalid("bad central directory entry".into()));
        }
        let (name_len, extra_len, comment_len) = (
            b.u16(at + 28)? as usize,
            b.u16(at + 30)? as usize,
            b.u16(at + 32)? as usize,
        );
        let name =
            b.0.get(at + 46..at + 46 + name_len)
                .ok_or_else(|| Error::Invalid("a member's name runs past the archive".into()))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let mut entry = Entry {
            name,
            method: b.u16(at + 10)?,
            crc: b.u32(at + 16)?,
            compressed: b.u32(at + 20)? as u64,
            size: b.u32(at + 24)? as u64,
            local_offset: b.u32(at + 42)? as u64,
        };
        apply_zip64(b, at + 46 + name_len, extra_len, &mut entry)?;
        entries.push(entry);
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

/// Replaces the 32-bit fields that overflowed with the zip64 extra field's values, which come
/// in this order for exactly those fields.
fn apply_zip64(b: &Bytes, extra: usize, extra_len: usize, entry: &mut Entry) -> Result<()> {
    let mut at = extra;
    while at + 4 <= extra + extra_len {
        let (id, size) = (b.u16(at)?, b.u16(at + 2)? as usize);
        if id == ZIP64_EXTRA {
            let mut field = at + 4;
            for value in [
                &mut entry.size,
                &mut entry.compressed,
                &mut entry.local_offset,
            ] {
                if *value == IN_ZIP64 as u64 {
                    *value = b.u64(field)?;
                    field += 8;
                }
            }
        }
        at += 4 + size;
    }
    Ok(())
}

/// The uncompressed bytes of one member, checked against its size and CRC-32.
fn extract(b: &Bytes, entry: &Entry) -> Result<Vec<u8>> {
    let at = b.offset(entry.local_offset)?;
    if b.u32(at)? != LOCAL_SIG {
        return Err(Error::Invalid(format!(
            "bad local header for {}",
            entry.name
        )));
    }
    let start = at + 30 + b.u16(at + 26)? as usize + b.u16(at + 28)? as usize;
    let truncated = || Error::Invalid(format!("{} is truncated", entry.name));
    let end = usize::try_from(entry.compressed)
        .ok()
        .and_then(|n| start.checked_add(n))
        .ok_or_else(truncated)?;
    let data = b.0.get(start..end).ok_or_else(truncated)?;
    let out = match entry.method {
        STORED => data.to_vec(),
        DEFLATED => {
            // Inflated no further than one byte past the size the entry states, whatever the
            // stream would make (a small member may inflate to gigabytes).
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(data)
                .take(entry.size.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| Error::Invalid(format!("{}: {e}", entry.name)))?;
            out
        }
        m => {
            return Err(Error::Invalid(format!(
                "{} uses zip method {m}; only stored and deflated are supported",
                entry.name
            )))
        }
    };
    let mut crc = flate2::Crc::new();
    crc.update(&out);
    if out.len() as u64 != entry.size || crc.sum() != entry.crc {
        return Err(Error::Invalid(format!(
            "{} fails its size or CRC check",
            entry.name
        )));
    }
    Ok(out)
}

/// Writes `arrays` (name, shape, data) as float64 members `name.npy` of a deflated archive.
pub fn write(path: &Path, arrays: &[(&str, &[usize], &[f64])]) -> Result<()> {
    let mut zip = Vec::new();
    let mut central = Vec::new();
    for &(name, shape, data) in arrays {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "npz shape/data mismatch"
        );
        let member = npy::encode("<f8", shape, bytemuck::cast_slice(data));
        let mut crc = flate2::Crc::new();
        crc.update(&member);
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder
            .write_all(&member)
            .and_then(|_| encoder.flush())
            .map_err(|e| Error::Invalid(format!("deflate: {e}")))?;
        let deflated = encoder
            .finish()
            .map_err(|e| Error::Invalid(format!("deflate: {e}")))?;
        let file_name = format!("{name}.npy");
        let too_big = |n: usize| {
            u32::try_from(n)
                .map_err(|_| Error::Invalid(format!("{name} is too large for a zip without zip64")))
        };
        let fields = Fields {
            crc: crc.sum(),
            compressed: too_big(deflated.len())?,
            size: too_big(member.len())?,
            name: &file_name,
        };
        let offset = too_big(zip.len())?;
        fields.put(&mut zip, LOCAL_SIG, None);
        zip.extend_from_slice(&deflated);
        fields.put(&mut central, CENTRAL_SIG, Some(offset));
    }
    let (cd_offset, cd_size) = (zip.len() as u32, central.len() as u32);
    zip.extend_from_slice(&central);
    let count = arrays.len() as u16;
    for v in [
        END_SIG.to_le_bytes().as_slice(),
        &[0; 4],
        &count.to_le_bytes(),
        &count.to_le_bytes(),
        &cd_size.to_le_bytes(),
        &cd_offset.to_le_bytes(),
        &[0; 2],
    ] {
        zip.extend_from_slice(v);
    }
    crate::io::write_atomic(path, &zip)
}

/// The fields a local header and a central-directory entry share.
struct Fields<'a> {
    crc: u32,
    compressed: u32,
    size: u32,
    name: &'a str,
}

impl Fields<'_> {
    /// Appends a local header (`central_offset` None) or a central entry pointing at its local
    /// header: version 2.0, deflated, dated 1980-01-01, no extra fields or comment.
    fn put(&self, out: &mut Vec<u8>, sig: u32, central_offset: Option<u32>) {
        out.extend_from_slice(&sig.to_le_bytes());
        if central_offset.is_some() {
            out.extend_from_slice(&20u16.to_le_bytes()); // version made by
        }
        for v in [20u16, 0, DEFLATED, 0, 0x21] {
            // version needed, flags, method, time, date
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.crc, self.compressed, self.size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra length
        if let Some(offset) = central_offset {
            // comment length, disk, internal and external attributes, local header offset
            for v in [0u16, 0, 0] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out.extend_from_slice(self.name.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.npz");
        let mu = [1.5, -2.0, 1e-300];
        let sigma: Vec<f64> = (0..9).map(|i| i as f64 / 7.0).collect();
        write(&path, &[("mu", &[3], &mu), ("sigma", &[3, 3], &sigma)]).unwrap();
        let arrays = read(&path).unwrap();
        assert_eq!(
            arrays["mu"],
            NpzArray {
                shape: vec![3],
                data: mu.to_vec()
            }
        );
        assert_eq!(arrays["sigma"].shape, [3, 3]);
        assert_eq!(arrays["sigma"].data, sigma);
        let mut bytes = std::fs::read(&path).unwrap();
        // A byte of mu's deflated data, after its 30-byte local header and name.
        bytes[30 + "mu.npy".len() + 4] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            read(&path).is_err(),
            "a flipped byte fails the CRC or the inflate"
        );
        std::fs::write(&path, b"PK not a zip").unwrap();
        assert!(read(&path).is_err());
    }
}
