//! The seeded generator and the byte-level mutations every format gets on top of its own
//! structure-aware ones: bit flips, interesting bytes, truncation, junk appended, spans deleted
//! or duplicated, and numeric extremes (huge lengths, sign bits) written over any 2, 4 or 8
//! bytes in either byte order.

use wgsl_diff::splitmix::SplitMix64;

pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }

    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 => 0,
            n => (self.u64() % n as u64) as usize,
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

/// Integers at the edges of what a length, count, offset or index can hold.
pub const EXTREME_INTS: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// Applies one to three byte-level mutations to `bytes`; returns what they did.
pub fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let done: Vec<String> = (0..rng.below(3) + 1)
        .map(|_| mutate_once(rng, bytes))
        .collect();
    done.join(", ")
}

fn mutate_once(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let len = bytes.len();
    let at = rng.below(len.max(1));
    match rng.below(8) {
        0 if len > 0 => {
            let bit = rng.below(8);
            bytes[at] ^= 1 << bit;
            format!("bit {bit} of byte {at} flipped")
        }
        1 if len > 0 => {
            let v = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, b'"', b'\'', b'{', b',', b'\n', 0x89]);
            bytes[at] = v;
            format!("byte {at} set to {v:#04x}")
        }
        2 => {
            bytes.truncate(at);
            format!("truncated to {at} bytes")
        }
        3 => {
            let n = rng.below(64) + 1;
            let junk = rng.bytes(n);
            bytes.extend(junk);
            format!("{n} random bytes appended")
        }
        4 if len > 0 => {
            let end = (at + rng.below(64) + 1).min(len);
            bytes.drain(at..end);
            format!("bytes {at}..{end} deleted")
        }
        5 if len > 0 => {
            let end = (at + rng.below(64) + 1).min(len);
            let span = bytes[at..end].to_vec();
            let to = rng.below(len + 1);
            bytes.splice(to..to, span);
            format!("bytes {at}..{end} copied to {to}")
        }
        _ if len > 0 => {
            let width = *rng.pick(&[2usize, 4, 8]);
            let v = *rng.pick(EXTREME_INTS);
            let big_endian = rng.chance(0.5);
            let raw = match big_endian {
                true => v.to_be_bytes()[8 - width..].to_vec(),
                false => v.to_le_bytes()[..width].to_vec(),
            };
            let end = (at + width).min(len);
            bytes[at..end].copy_from_slice(&raw[..end - at]);
            let order = if big_endian { "BE" } else { "LE" };
            format!("{v:#x} written as {width} {order} bytes at {at}")
        }
        _ => {
            bytes.extend(rng.bytes(8));
            "8 random bytes given to an empty input".into()
        }
    }
}

/// A little-endian u16, u32 or u64 written over `bytes[at..]` (as far as it fits).
pub fn put_le(bytes: &mut [u8], at: usize, value: u64, width: usize) {
    for (k, b) in value.to_le_bytes()[..width].iter().enumerate() {
        if let Some(slot) = bytes.get_mut(at + k) {
            *slot = *b;
        }
    }
}
