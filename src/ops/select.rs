//! Exact per-sample quantiles by radix select on the GPU (select.wgsl).
//!
//! [`quantile_per_sample`] gives, for each sample b of x (B, …), exactly the f32 that
//! `torch.quantile(x[b].flatten(), p)` returns (linear interpolation; torch 2.15, the version
//! tools/requirements.txt pins): the same two order statistics, bit for bit, and torch's own
//! rank and `lerp` arithmetic. torch rounds `p` to an f32 q, takes rank = q·(n − 1) in f64
//! (pytorch#187574; older releases used f32 ranks, which can move the last bits), and
//! interpolates with `lerp(sorted[⌊rank⌋], sorted[⌈rank⌉], f32(rank − ⌊rank⌋))`, whose CPU and
//! CUDA kernels round the multiply-add once and switch formula at weight 0.5 (see [`Rank`]).
//! The shader reproduces that in integer arithmetic, so no device float behaviour (denormal
//! flushing, contraction) can change a bit. tools/fixtures/quantile.py checks the formula
//! against torch.quantile itself and writes the fixture the tests compare with.
//!
//! Zeros: the selection orders −0 below +0 (IEEE totalOrder), torch sorts them as equal; where
//! the statistic is a zero the value is the same, its sign may differ from torch's.
//! A row holding a NaN yields NaN (as torch.quantile does); ±Inf statistics go through torch's
//! lerp like any value, so e.g. a row whose selected statistic is +Inf yields NaN there too.

use super::shape_err;
use crate::error::{Error, Result};
use crate::gpu::{checked_u32, kernel_params, shaders, Gpu, Kernel, Tensor};

kernel_params! {
    pub(super) struct SelectParams for SELECT::Params {
        rows: u32,
        len: u32,
        rank: u32,
        gap: u32,
        weight: u32,
        from_end: u32,
        chunk: u32,
        pass_index: u32,
    }
}

/// select.wgsl's `BINS`: histogram buckets of one digit.
pub(super) const BINS: usize = 2048;
/// select.wgsl's `PASSES`: digits per 32-bit key.
pub(super) const PASSES: usize = 3;
/// select.wgsl's `STATE_WORDS`: u32 of search state per row in the chunked path.
pub(super) const STATE_WORDS: usize = 8;

/// Elements one workgroup counts per pass in the chunked path: 32 per thread, so flushing a
/// histogram of up to `BINS` counts into the row's costs little beside the counting.
const CHUNK: usize = 8192;
/// Rows up to this length are selected by one workgroup each, in one dispatch; longer rows
/// get at least three workgroups per pass from the chunked path, worth its six dispatches.
const ONE_WORKGROUP_MAX: usize = 2 * CHUNK;

/// How the selection is spread over workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectPath {
    /// One workgroup per row for rows of up to 16 Ki values, chunked above.
    Auto,
    /// One workgroup per row does every pass: one dispatch.
    OneWorkgroup,
    /// Per pass, many workgroups per row count into a shared histogram, then one workgroup
    /// per row chooses the digit: two dispatches per pass.
    Chunked,
}

/// Which order statistics to select and how to interpolate between them.
#[derive(Clone, Copy, Debug)]
struct Rank {
    /// The lower statistic (0-based).
    k: usize,
    /// 1 when the upper statistic is k + 1, 0 when it is k itself.
    gap: u32,
    /// torch's lerp coefficient: w for w < 0.5 (start + w·d), else w − 1 (end + (w − 1)·d).
    coefficient: f32,
    from_end: bool,
}

impl Rank {
    /// torch.quantile's ranks for `p` over rows of `len` values: q = f32(p),
    /// rank = f64(q)·(len − 1) in f64, k = ⌊rank⌋, upper = ⌈rank⌉, w = f32(rank − k).
    fn quantile(p: f64, len: usize) -> Result<Rank> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Invalid(format!(
                "quantile level p must lie in [0, 1], got {p}"
            )));
        }
        let rank = (p as f32) as f64 * (len - 1) as f64;
        let k = rank.floor();
        let w = (rank - k) as f32;
        let (coefficient, from_end) = if w < 0.5 { (w, false) } else { (w - 1.0, true) };
        Ok(Rank {
            k: k as usize,
            gap: (rank > k) as u32,
            coefficient,
            from_end,
        })
    }

    /// Statistic k and the next one (k again when k is the last).
    fn statistic(k: usize, len: usize) -> Result<Rank> {
        if k >= len {
            return Err(Error::Invalid(format!(
                "order statistic {k} of rows of {len} values does not exist"
            )));
        }
        Ok(Rank {
            k,
            gap: (k + 1 < len) as u32,
            coefficient: 0.0,
            from_end: false,
        })
    }
}

/// Rows and row length of x (B, …); every row non-empty.
fn rows_of(x: &Tensor, op: &'static str) -> Result<(usize, usize)> {
    let Some((&rows, rest)) = x.shape().split_first() else {
        return Err(shape_err(op, "x needs a sample axis, got a scalar".into()));
    };
    let len: usize = rest.iter().product();
    if len == 0 {
        return Err(shape_err(
            op,
            format!("x {:?} has empty samples", x.shape()),
        ));
    }
    Ok((rows, len))
}

/// Both order statistics of each row, (B, 2), and the interpolated value, (B).
struct Selection {
    stats: Tensor,
    value: Tensor,
}

fn select(
    gpu: &Gpu,
    x: &Tensor,
    op: &'static str,
    rank: Rank,
    path: SelectPath,
) -> Result<Selection> {
    let (rows, len) = rows_of(x, op)?;
    let params = SelectParams {
        rows: checked_u32(op, "rows", rows)?,
        len: checked_u32(op, "len", len)?,
        rank: checked_u32(op, "rank", rank.k)?,
        gap: rank.gap,
        weight: rank.coefficient.to_bits(),
        from_end: rank.from_end as u32,
        chunk: CHUNK as u32,
        pass_index: 0,
    };
    let stats = gpu.empty(&[rows, 2])?;
    let value = gpu.empty(&[rows])?;
    let chunked = match path {
        SelectPath::Auto => len > ONE_WORKGROUP_MAX,
        SelectPath::OneWorkgroup => false,
        SelectPath::Chunked => true,
    };
    if chunked {
        select_chunked(gpu, x, params, [&stats, &value])?;
    } else {
        let kernel = Kernel::new(&shaders::SELECT, "select_rows");
        gpu.dispatch(&kernel, &params, &[x], &[&stats, &value], [rows, 1, 1])?;
    }
    Ok(Selection { stats, value })
}

/// The multi-workgroup path: per pass, count (chunks × rows workgroups) then choose (rows).
fn select_chunked(gpu: &Gpu, x: &Tensor, params: SelectParams, out: [&Tensor; 2]) -> Result<()> {
    let rows = params.rows as usize;
    let chunks = (params.len as usize).div_ceil(CHUNK);
    // Both start zeroed: empty histograms, and the state of no digit found yet.
    let hist = gpu.zeros(&[rows, BINS])?;
    let state = gpu.zeros(&[rows, STATE_WORDS])?;
    let count = Kernel::new(&shaders::SELECT, "select_count");
    let choose = Kernel::new(&shaders::SELECT, "select_choose");
    for pass in 0..PASSES {
        let p = SelectParams {
            pass_index: pass as u32,
            ..params
        };
        gpu.dispatch(&count, &p, &[x], &[&hist, &state], [chunks, rows, 1])?;
        gpu.dispatch(
            &choose,
            &p,
            &[],
            &[&hist, &state, out[0], out[1]],
            [rows, 1, 1],
        )?;
    }
    Ok(())
}

/// For each sample b of x (B, …): `torch.quantile(x[b].flatten(), p)` (linear interpolation),
/// bit for bit up to the sign of a zero (see the module docs). (B) f32; a row with a NaN gives
/// NaN. `p` outside [0, 1] or not finite is an [`Error::Invalid`].
pub fn quantile_per_sample(gpu: &Gpu, x: &Tensor, p: f64) -> Result<Tensor> {
    quantile_per_sample_with(gpu, x, p, SelectPath::Auto)
}

/// [`quantile_per_sample`] on a chosen path (the result does not depend on it).
pub fn quantile_per_sample_with(gpu: &Gpu, x: &Tensor, p: f64, path: SelectPath) -> Result<Tensor> {
    const OP: &str = "quantile_per_sample";
    let (_, len) = rows_of(x, OP)?;
    Ok(select(gpu, x, OP, Rank::quantile(p, len)?, path)?.value)
}

/// For each sample b of x (B, …): its order statistics k and k + 1 (0-based, in IEEE
/// totalOrder, so −0 before +0; statistic k again when k is the last), as (B, 2) f32 with the
/// selected elements' exact bits. A row with a NaN gives NaN for both.
pub fn order_statistics(gpu: &Gpu, x: &Tensor, k: usize, path: SelectPath) -> Result<Tensor> {
    const OP: &str = "order_statistics";
    let (_, len) = rows_of(x, OP)?;
    Ok(select(gpu, x, OP, Rank::statistic(k, len)?, path)?.stats)
}

/// [`quantile_per_sample`] read back, for thresholds that must be numbers: a NaN result is an
/// error naming the sample and why (a NaN in the row, or torch's interpolation meeting ±Inf).
pub fn quantiles(gpu: &Gpu, x: &Tensor, p: f64) -> Result<Vec<f32>> {
    const OP: &str = "quantiles";
    let (_, len) = rows_of(x, OP)?;
    let sel = select(gpu, x, OP, Rank::quantile(p, len)?, SelectPath::Auto)?;
    let values = gpu.read(&sel.value)?;
    let Some(b) = values.iter().position(|v| v.is_nan()) else {
        return Ok(values);
    };
    let stats = gpu.read(&sel.stats)?;
    let why = if stats[2 * b].is_nan() {
        "the sample contains NaN".to_string()
    } else {
        format!(
            "torch.quantile's interpolation between {} and {} is NaN",
            stats[2 * b],
            stats[2 * b + 1]
        )
    };
    Err(Error::Invalid(format!(
        "{OP}: the {p} quantile of sample {b} is not a number: {why}"
    )))
}

#[cfg(test)]
mod tests {
    use super::Rank;

    /// torch.quantile's rank arithmetic, checked on values worked out by hand.
    #[test]
    fn ranks_follow_torch_arithmetic() {
        // n = 3072, p = 0.95: f32(0.95) = 0.949999988079071, times 3071 in f64 is
        // 2917.449963390827 (an f32 rank would round to 2917.449951171875).
        let r = Rank::quantile(0.95, 3072).unwrap();
        assert_eq!((r.k, r.gap, r.from_end), (2917, 1, false));
        assert_eq!(r.coefficient, 0.449963390827_f64 as f32);
        // Exact ranks need no second statistic.
        let r = Rank::quantile(0.5, 5).unwrap();
        assert_eq!((r.k, r.gap, r.coefficient), (2, 0, 0.0));
        // w = 0.5 takes torch's second branch: end + (w − 1)·(end − start).
        let r = Rank::quantile(0.5, 2).unwrap();
        assert_eq!((r.k, r.gap, r.coefficient, r.from_end), (0, 1, -0.5, true));
        for p in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(Rank::quantile(p, 10).is_err(), "p = {p}");
        }
        assert!(Rank::statistic(3, 3).is_err());
        assert_eq!(Rank::statistic(2, 3).unwrap().gap, 0);
    }
}
