//! Every bound the library puts on a number a user supplies — on the command line, in a request,
//! in a weight file's configs — in one place. Each is checked before anything is allocated or
//! computed with it, and the command line states them in `--help`.
//!
//! Most follow from the kernels: WGSL indexes in u32, and the noise plan packs a step and a copy
//! into a 64-bit Philox tag. The rest keep a typo from turning into hours of work or an
//! allocation the machine cannot make; they sit far above any model this crate is meant for.

/// Sample indices run below this: rng.wgsl adds a batch row to the first sample index in u32,
/// so the last sample of any range must be at most `u32::MAX`.
pub const SAMPLE_INDEX_END: u64 = 1 << 32;

/// Most training timesteps of a schedule, and so most sampling steps (the noise tag holds the
/// step in 32 bits; β and ᾱ are kept per timestep).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// Most re-noised copies M per uncertainty step (the noise tag holds the copy in 16 bits; each
/// copy is a network call per step).
pub const MAX_COPIES: usize = 1024;

/// Most samples per GPU batch.
pub const MAX_BATCH: usize = 65_536;

/// Most images in one `eval` set.
pub const MAX_EVAL_IMAGES: usize = 1_000_000;

/// Most channels of any layer in a model config.
pub const MAX_CHANNELS: usize = 16_384;

/// Largest side of a model's square input.
pub const MAX_SAMPLE_SIZE: usize = 4096;

/// Most resolution levels of a UNet, or conv stages of a classifier.
pub const MAX_BLOCKS: usize = 12;

/// Most resnets per UNet block.
pub const MAX_LAYERS_PER_BLOCK: usize = 32;

/// Most classes of a class-conditional model or a classifier.
pub const MAX_CLASSES: usize = 100_000;

/// Largest magnitude of a value in a model config that scales activations (e.g. the mid block's
/// output scale): beyond it f32 activations overflow in the first layers.
pub const MAX_CONFIG_SCALE: f64 = 1e3;

/// The most host memory `calibrate` holds for its N samples' maps (steps × N × C·H·W floats).
pub const MAX_CALIBRATION_BYTES: u64 = 16 << 30;

/// The largest JSON or text file read (configs, tokenizer files: CLIP's vocab.json is 1 MB).
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The largest array file (`.npy`, `.npz`) read: noise, thresholds, maps and statistics are far
/// smaller; a device or a runaway file is refused before it is read.
pub const MAX_INPUT_BYTES: u64 = 8 << 30;

// The noise tag's fields (see `noise::NoisePlan::key`) must hold every copy and step.
const _: () = assert!(MAX_COPIES <= 1 << 16 && MAX_TRAIN_TIMESTEPS as u64 <= 1 << 32);

/// `start .. start + count` as sample indices, or an error naming `what` when it is empty or
/// runs past [`SAMPLE_INDEX_END`] (including its last index, which the kernels compute).
pub fn sample_range(
    what: &str,
    start: usize,
    count: usize,
) -> crate::Result<std::ops::Range<usize>> {
    let end = (start as u64).checked_add(count as u64);
    match end {
        Some(end) if count > 0 && end <= SAMPLE_INDEX_END => Ok(start..end as usize),
        _ if count == 0 => Err(crate::Error::Invalid(format!(
            "{what}: an empty range of samples (count 0)"
        ))),
        _ => Err(crate::Error::Invalid(format!(
            "{what}: samples {start} .. {start} + {count} go past the last sample index the \
             kernels address ({})",
            SAMPLE_INDEX_END - 1
        ))),
    }
}

/// `value` unless it is outside `1 ..= max`; the error names `what`.
pub fn count_in(what: &str, value: usize, max: usize) -> crate::Result<usize> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(crate::Error::Invalid(format!(
            "{what} is {value}; it must be in 1..={max}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_ranges_end_at_the_u32_index_limit() {
        let last = (SAMPLE_INDEX_END - 1) as usize;
        assert_eq!(sample_range("x", last, 1).unwrap(), last..last + 1);
        assert!(sample_range("x", last, 2).is_err());
        assert!(sample_range("x", last + 1, 1).is_err());
        assert!(sample_range("x", usize::MAX, usize::MAX).is_err());
        assert!(sample_range("x", 0, 0).is_err());
        assert!(sample_range("x", 0, usize::MAX).is_err());
        assert_eq!(count_in("M", 3, 4).unwrap(), 3);
        assert!(count_in("M", 0, 4).is_err() && count_in("M", 5, 4).is_err());
    }
}
