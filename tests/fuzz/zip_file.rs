//! Zip archives (`.npz`) built member by member — stored or deflated, with or without zip64
//! sizes and end records, with a comment or not — and one field of their structure changed,
//! with what that change means for a reader.

use crate::mutate::{put_le, Rng, EXTREME_INTS};
use std::io::Write;

pub struct Member {
    pub name: String,
    pub data: Vec<u8>,
    pub deflate: bool,
}

/// How the archive is written (every choice a valid zip).
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Sizes in the central directory as 0xFFFFFFFF with a zip64 extra field.
    pub zip64_sizes: bool,
    /// A zip64 end record and locator before the classic end record (whose count then reads
    /// 0xFFFF).
    pub zip64_end: bool,
    pub comment: usize,
}

/// Where each structure landed, for mutations.
#[derive(Debug, Default)]
pub struct Layout {
    pub locals: Vec<usize>,
    pub centrals: Vec<usize>,
    pub end: usize,
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

pub fn build(members: &[Member], style: Style) -> (Vec<u8>, Layout) {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut layout = Layout::default();
    for m in members {
        let body = match m.deflate {
            true => {
                let mut enc =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&m.data).unwrap();
                enc.finish().unwrap()
            }
            false => m.data.clone(),
        };
        let method: u16 = if m.deflate { 8 } else { 0 };
        let crc = crc32(&m.data);
        let local = out.len();
        layout.locals.push(local);
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0]);
        out.extend(method.to_le_bytes());
        out.extend([0; 4]);
        out.extend(crc.to_le_bytes());
        out.extend((body.len() as u32).to_le_bytes());
        out.extend((m.data.len() as u32).to_le_bytes());
        out.extend((m.name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(m.name.as_bytes());
        out.extend(&body);

        let mut extra = Vec::new();
        let (csize, usize_) = match style.zip64_sizes {
            true => {
                extra.extend(1u16.to_le_bytes());
                extra.extend(16u16.to_le_bytes());
                extra.extend((m.data.len() as u64).to_le_bytes());
                extra.extend((body.len() as u64).to_le_bytes());
                (u32::MAX, u32::MAX)
            }
            false => (body.len() as u32, m.data.len() as u32),
        };
        layout.centrals.push(central.len());
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0]);
        central.extend(method.to_le_bytes());
        central.extend([0; 4]);
        central.extend(crc.to_le_bytes());
        central.extend(csize.to_le_bytes());
        central.extend(usize_.to_le_bytes());
        central.extend((m.name.len() as u16).to_le_bytes());
        central.extend((extra.len() as u16).to_le_bytes());
        central.extend([0; 10]);
        central.extend((local as u32).to_le_bytes());
        central.extend(m.name.as_bytes());
        central.extend(&extra);
    }
    let cd_offset = out.len();
    for c in &mut layout.centrals {
        *c += cd_offset;
    }
    out.extend(&central);
    let count = members.len() as u64;
    let (small_count, small_offset) = match style.zip64_end {
        true => {
            let record = out.len();
            out.extend(0x0606_4b50u32.to_le_bytes());
            out.extend(44u64.to_le_bytes());
            out.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend(count.to_le_bytes());
            out.extend(count.to_le_bytes());
            out.extend((central.len() as u64).to_le_bytes());
            out.extend((cd_offset as u64).to_le_bytes());
            out.extend(0x0706_4b50u32.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend((record as u64).to_le_bytes());
            out.extend(1u32.to_le_bytes());
            (u16::MAX, u32::MAX)
        }
        false => (count as u16, cd_offset as u32),
    };
    layout.end = out.len();
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0; 4]);
    out.extend(small_count.to_le_bytes());
    out.extend(small_count.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(small_offset.to_le_bytes());
    out.extend((style.comment as u16).to_le_bytes());
    out.extend(std::iter::repeat_n(b'c', style.comment));
    (out, layout)
}

/// What a structural change does to an archive's meaning.
pub enum Damage {
    /// Readers must refuse it (its data fails its CRC, size or method).
    Fatal(String),
    /// A reader may take it or not; what it takes must be the members' own data.
    Harmless(String),
}

/// Changes one field of the archive at `layout`.
pub fn damage(rng: &mut Rng, bytes: &mut [u8], layout: &Layout) -> Damage {
    let k = rng.below(layout.centrals.len());
    let (Some(&central), Some(&local)) = (layout.centrals.get(k), layout.locals.get(k)) else {
        put_le(bytes, layout.end + 10, *rng.pick(EXTREME_INTS), 2);
        return Damage::Harmless("entry count of an empty archive".into());
    };
    let extreme = *rng.pick(EXTREME_INTS);
    match rng.below(8) {
        0 => {
            bytes[central + 16] ^= 1;
            Damage::Fatal(format!("member {k}'s CRC"))
        }
        1 => {
            // A zip64 size would be read from the extra field instead.
            let v = (extreme as u32).min(u32::MAX - 1);
            put_le(bytes, central + 24, v as u64, 4);
            Damage::Harmless(format!("member {k}'s size set to {v}"))
        }
        2 => {
            put_le(bytes, central + 20, extreme, 4);
            Damage::Harmless(format!("member {k}'s compressed size set to {extreme:#x}"))
        }
        3 => {
            put_le(bytes, central + 42, extreme, 4);
            Damage::Harmless(format!("member {k}'s local offset set to {extreme:#x}"))
        }
        4 => {
            let method = *rng.pick(&[1u64, 12, 14, 99, 0xffff]);
            put_le(bytes, central + 10, method, 2);
            Damage::Fatal(format!("member {k}'s method set to {method}"))
        }
        5 => {
            put_le(bytes, central + 28, extreme, 2);
            Damage::Harmless(format!("member {k}'s name length set to {extreme:#x}"))
        }
        6 => {
            put_le(bytes, local + 26, extreme, 2);
            Damage::Harmless(format!(
                "member {k}'s local name length set to {extreme:#x}"
            ))
        }
        _ => {
            put_le(bytes, layout.end + 10, extreme, 2);
            Damage::Harmless(format!("entry count set to {extreme:#x}"))
        }
    }
}
