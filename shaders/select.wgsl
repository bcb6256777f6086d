// Exact per-row order statistics, and torch.quantile's linear interpolation between them, by
// radix select.
//
// Keys: each f32 of a row (rows, len) is read as raw bits and mapped to a u32 whose unsigned
// order is IEEE 754 totalOrder (−NaN < −Inf < … < −0 < +0 < … < +Inf < +NaN): negative floats
// flip every bit, the others flip the sign bit. So −0 sorts just below +0. torch.quantile sorts
// them as equal values, so where the selected statistic is a zero torch may return the other
// zero: the same value, possibly with the other sign.
//
// Selection: the key of the order statistic k is found one DIGIT_BITS-wide digit at a time,
// most significant first (3 passes: bits 31..21, 20..10, 9..0). Each pass counts the digit over
// the elements whose higher bits match the key found so far, scans the histogram and keeps the
// bucket holding rank k. The upper statistic k + gap (torch's ceil of the rank) shares k's
// bucket until the two part; k is then the last element of its bucket and k + 1 the first of
// the next non-empty one, so from then on it is the smallest key in that bucket, which the
// following passes find with an atomic max over complemented keys (zero-initialised buffers
// then need no "none" sentinel). Parting at the last digit fixes the whole key at once.
// Everything is integer arithmetic on bits, so the result does not depend on how a device
// treats denormals, infinities or fused multiply-adds; no subgroup operations are used.
//
// A row holding a NaN yields NaN (torch.quantile's answer for such a row) and never a
// selected number: the flag is raised while the keys are built.
//
// Entry points:
//   select_rows:    one workgroup per row runs all passes (one dispatch; rows up to 16 Ki values)
//   select_count:   per pass, workgroup (chunk, row) adds its chunk's histogram into the row's
//   select_choose:  global one; then one workgroup per row picks the bucket, clears the global
//                   histogram for the next pass and, after the last pass, writes the results

struct Params {
    rows: u32,
    len: u32,         // elements per row
    rank: u32,        // k: torch's rank rounded down
    gap: u32,         // 1 when the rank has a fraction (upper statistic k + 1), else 0
    weight: u32,      // f32 bits of the lerp coefficient: w, or w − 1 when from_end is 1
    from_end: u32,    // torch's lerp branch: 0 for w < 0.5, 1 for w ≥ 0.5
    chunk: u32,       // select_count: elements per workgroup
    pass_index: u32,  // select_count, select_choose: the digit this dispatch handles
}

const WG: u32 = 256u;
const DIGIT_BITS: u32 = 11u;
const BINS: u32 = 2048u;                  // 1 << DIGIT_BITS
const PASSES: u32 = 3u;                   // ceil(32 / DIGIT_BITS)
const BINS_PER_THREAD: u32 = BINS / WG;

// A row's state between the chunked path's dispatches: STATE_WORDS u32 per row.
const STATE_WORDS: u32 = 8u;
const S_PREFIX: u32 = 0u;
const S_RANK: u32 = 1u;
const S_APART: u32 = 2u;
const S_HI_PREFIX: u32 = 3u;
const S_HI_SHIFT: u32 = 4u;
const S_HI_MIN_INV: u32 = 5u;  // max of ~key over the upper statistic's bucket
const S_NAN: u32 = 6u;         // non-zero when the row holds a NaN

const SIGN: u32 = 0x80000000u;
const INF: u32 = 0x7f800000u;
const QNAN: u32 = 0x7fc00000u;
const ONE: u32 = 0x3f800000u;

// The search for one row, advanced one digit per pass.
struct State {
    prefix: u32,     // the key bits of statistic k found so far, zero below them
    rank: u32,       // rank of statistic k among the elements whose key starts with prefix
    apart: u32,      // 0: statistic k + gap has rank `rank + gap` under the same prefix
    hi_prefix: u32,  // 1: it is the smallest key whose bits from hi_shift up equal hi_prefix's
    hi_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// select_rows, select_count
@group(0) @binding(1) var<storage, read> x: array<u32>;            // (rows, len) f32 bits
// select_rows
@group(0) @binding(2) var<storage, read_write> row_stats: array<u32>;  // (rows, 2) f32 bits
@group(0) @binding(3) var<storage, read_write> row_value: array<u32>;  // (rows) f32 bits
// select_count
@group(0) @binding(2) var<storage, read_write> count_hist: array<atomic<u32>>;   // (rows, BINS)
@group(0) @binding(3) var<storage, read_write> count_state: array<atomic<u32>>;  // (rows, STATE_WORDS)
// select_choose
@group(0) @binding(1) var<storage, read_write> choose_hist: array<u32>;
@group(0) @binding(2) var<storage, read_write> choose_state: array<u32>;
@group(0) @binding(3) var<storage, read_write> stats: array<u32>;
@group(0) @binding(4) var<storage, read_write> value: array<u32>;

var<workgroup> hist: array<atomic<u32>, BINS>;
var<workgroup> hi_min_inv: atomic<u32>;
var<workgroup> saw_nan: atomic<u32>;
var<workgroup> sums: array<u32, WG>;
var<workgroup> found: array<u32, 4>;  // bucket and count below it: of statistic k, then of k + gap

fn to_key(bits: u32) -> u32 {
    if (bits & SIGN) != 0u {
        return ~bits;
    }
    return bits | SIGN;
}

fn from_key(key: u32) -> u32 {
    if (key & SIGN) != 0u {
        return key ^ SIGN;
    }
    return ~key;
}

fn is_nan(bits: u32) -> bool {
    return (bits & ~SIGN) > INF;
}

// The lowest bit of digit number `digit` (0 = most significant), and the lowest bit above it (those are the prefix's).
fn digit_shift(digit: u32) -> u32 {
    return u32(max(32 - i32(DIGIT_BITS * (digit + 1u)), 0));
}

fn digit_top(digit: u32) -> u32 {
    return 32u - DIGIT_BITS * digit;
}

fn clear_hist(lid: u32) {
    for (var b = lid; b < BINS; b += WG) {
        atomicStore(&hist[b], 0u);
    }
}

fn clear_flags(lid: u32) {
    if lid == 0u {
        atomicStore(&hi_min_inv, 0u);
        atomicStore(&saw_nan, 0u);
    }
}

// Adds elements [start, end) of the row at `base` to the workgroup's histogram of this
// digit (those whose higher bits match s.prefix), to the complemented minimum of the upper
// statistic's bucket once the statistics have parted, and to the NaN flag.
fn count(lid: u32, base: u32, start: u32, end: u32, digit: u32, s: State) {
    let top = digit_top(digit);
    let shift = digit_shift(digit);
    let digit_mask = (1u << (top - shift)) - 1u;
    var inv_min = 0u;
    var nan = false;
    for (var i = start + lid; i < end; i += WG) {
        let bits = x[base + i];
        nan = nan || is_nan(bits);
        let key = to_key(bits);
        // WGSL takes shift amounts modulo 32, so the first digit (top = 32) is tested apart.
        if top == 32u || (key >> top) == (s.prefix >> top) {
            atomicAdd(&hist[(key >> shift) & digit_mask], 1u);
        }
        if s.apart != 0u && (key >> s.hi_shift) == (s.hi_prefix >> s.hi_shift) {
            inv_min = max(inv_min, ~key);
        }
    }
    if inv_min != 0u {
        atomicMax(&hi_min_inv, inv_min);
    }
    if nan {
        atomicOr(&saw_nan, 1u);
    }
}

// Inclusive prefix sum of `sums` (Hillis–Steele, no subgroup operations).
fn scan(lid: u32) {
    for (var offset = 1u; offset < WG; offset <<= 1u) {
        var add = 0u;
        if lid >= offset {
            add = sums[lid - offset];
        }
        workgroupBarrier();
        sums[lid] += add;
        workgroupBarrier();
    }
}

// If rank `wanted` falls in this thread's bins [first, first + BINS_PER_THREAD), which start
// after `below` elements and hold `own`, records its bucket and the count below that bucket.
fn locate(first: u32, below: u32, own: u32, wanted: u32, slot: u32) {
    if wanted < below || wanted >= below + own {
        return;
    }
    var before = below;
    for (var j = 0u; j < BINS_PER_THREAD; j++) {
        let c = atomicLoad(&hist[first + j]);
        if wanted < before + c {
            found[slot] = first + j;
            found[slot + 1u] = before;
            return;
        }
        before += c;
    }
}

// One radix step over the workgroup's finished histogram: every thread calls it (it holds
// barriers) and gets the same advanced state.
fn choose(lid: u32, digit: u32, s: State) -> State {
    let first = lid * BINS_PER_THREAD;
    var own = 0u;
    for (var j = 0u; j < BINS_PER_THREAD; j++) {
        own += atomicLoad(&hist[first + j]);
    }
    sums[lid] = own;
    workgroupBarrier();
    scan(lid);
    let below = sums[lid] - own;
    locate(first, below, own, s.rank, 0u);
    if s.apart == 0u {
        locate(first, below, own, s.rank + p.gap, 2u);
    }
    workgroupBarrier();
    let shift = digit_shift(digit);
    var next = s;
    next.prefix = s.prefix | (found[0] << shift);
    next.rank = s.rank - found[1];
    if s.apart == 0u && found[2] != found[0] {
        next.apart = 1u;
        next.hi_prefix = s.prefix | (found[2] << shift);
        next.hi_shift = shift;
    }
    return next;
}

// The key of the upper statistic after the last pass.
fn upper_key(s: State, inv_min: u32) -> u32 {
    if s.apart == 0u {
        return s.prefix;
    }
    if s.hi_shift == 0u {
        return s.hi_prefix;  // parted at the last digit: the bucket is the whole key
    }
    return ~inv_min;
}

// (statistic k, statistic k + gap, torch's lerp between them) as f32 bits.
fn result(s: State, inv_min: u32, nan: bool) -> vec3<u32> {
    if nan {
        return vec3<u32>(QNAN);
    }
    let lo = from_key(s.prefix);
    let hi = from_key(upper_key(s, inv_min));
    return vec3<u32>(lo, hi, lerp_bits(lo, hi));
}

@compute @workgroup_size(WG)
fn select_rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x;
    var s = State(0u, p.rank, 0u, 0u, 0u);
    clear_flags(lid);
    for (var digit = 0u; digit < PASSES; digit++) {
        clear_hist(lid);
        workgroupBarrier();
        count(lid, row * p.len, 0u, p.len, digit, s);
        workgroupBarrier();
        s = choose(lid, digit, s);
    }
    if lid == 0u {
        let r = result(s, atomicLoad(&hi_min_inv), atomicLoad(&saw_nan) != 0u);
        row_stats[2u * row] = r.x;
        row_stats[2u * row + 1u] = r.y;
        row_value[row] = r.z;
    }
}

@compute @workgroup_size(WG)
fn select_count(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y;
    let start = wid.x * p.chunk;
    let end = min(start + p.chunk, p.len);
    let at = row * STATE_WORDS;
    clear_hist(lid);
    clear_flags(lid);
    workgroupBarrier();
    // The first pass reads the zeroed state: no prefix, statistics together.
    let s = State(
        atomicLoad(&count_state[at + S_PREFIX]),
        0u,
        atomicLoad(&count_state[at + S_APART]),
        atomicLoad(&count_state[at + S_HI_PREFIX]),
        atomicLoad(&count_state[at + S_HI_SHIFT]),
    );
    count(lid, row * p.len, start, end, p.pass_index, s);
    workgroupBarrier();
    for (var b = lid; b < BINS; b += WG) {
        let c = atomicLoad(&hist[b]);
        if c != 0u {
            atomicAdd(&count_hist[row * BINS + b], c);
        }
    }
    if lid == 0u {
        let inv_min = atomicLoad(&hi_min_inv);
        if inv_min != 0u {
            atomicMax(&count_state[at + S_HI_MIN_INV], inv_min);
        }
        if atomicLoad(&saw_nan) != 0u {
            atomicOr(&count_state[at + S_NAN], 1u);
        }
    }
}

@compute @workgroup_size(WG)
fn select_choose(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x;
    let h = row * BINS;
    for (var b = lid; b < BINS; b += WG) {
        atomicStore(&hist[b], choose_hist[h + b]);
        choose_hist[h + b] = 0u;  // ready for the next pass's counts
    }
    let at = row * STATE_WORDS;
    var s = State(
        choose_state[at + S_PREFIX],
        choose_state[at + S_RANK],
        choose_state[at + S_APART],
        choose_state[at + S_HI_PREFIX],
        choose_state[at + S_HI_SHIFT],
    );
    if p.pass_index == 0u {
        s.rank = p.rank;
    }
    workgroupBarrier();
    s = choose(lid, p.pass_index, s);
    if lid == 0u {
        choose_state[at + S_PREFIX] = s.prefix;
        choose_state[at + S_RANK] = s.rank;
        choose_state[at + S_APART] = s.apart;
        choose_state[at + S_HI_PREFIX] = s.hi_prefix;
        choose_state[at + S_HI_SHIFT] = s.hi_shift;
        if p.pass_index == PASSES - 1u {
            let r = result(s, choose_state[at + S_HI_MIN_INV], choose_state[at + S_NAN] != 0u);
            stats[2u * row] = r.x;
            stats[2u * row + 1u] = r.y;
            value[row] = r.z;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// torch's lerp, exactly. torch.quantile ends in values_below.lerp_(values_above, weights), which
// its CPU (vectorised and scalar, with FMA) and CUDA kernels evaluate with one rounding of the
// product and sum: start + w·(end − start) for w < 0.5, else end − (end − start)·(1 − w).
// WGSL's fma may round twice and devices may flush subnormals, so a correctly rounded f32 fma
// is built here from integer operations.

struct U64 {
    hi: u32,
    lo: u32,
}

// v · 2^e.
struct Wide {
    v: U64,
    e: i32,
}

// s < 64 in both shifts.
fn shl64(v: U64, s: u32) -> U64 {
    if s == 0u {
        return v;
    }
    if s >= 32u {
        return U64(v.lo << (s - 32u), 0u);
    }
    return U64((v.hi << s) | (v.lo >> (32u - s)), v.lo << s);
}

fn shr64(v: U64, s: u32) -> U64 {
    if s == 0u {
        return v;
    }
    if s >= 32u {
        return U64(0u, v.hi >> (s - 32u));
    }
    return U64(v.hi >> s, (v.lo >> s) | (v.hi << (32u - s)));
}

fn nonzero64(v: U64) -> bool {
    return v.hi != 0u || v.lo != 0u;
}

// Whether any of the lowest n bits of v is set (n ≤ 64).
fn any_low(v: U64, n: u32) -> bool {
    if n == 0u {
        return false;
    }
    if n >= 64u {
        return nonzero64(v);
    }
    return nonzero64(shl64(v, 64u - n));
}

// v shifted right by s with every lost bit ORed into bit 0 ("jamming"), enough for rounding
// when bit 0 lies at least two places below the rounding position.
fn shr_jam(v: U64, s: u32) -> U64 {
    if s >= 64u {
        return U64(0u, select(0u, 1u, nonzero64(v)));
    }
    let kept = shr64(v, s);
    return U64(kept.hi, kept.lo | select(0u, 1u, any_low(v, s)));
}

fn add64(a: U64, b: U64) -> U64 {
    let lo = a.lo + b.lo;
    return U64(a.hi + b.hi + select(0u, 1u, lo < a.lo), lo);
}

fn sub64(a: U64, b: U64) -> U64 {
    return U64(a.hi - b.hi - select(0u, 1u, a.lo < b.lo), a.lo - b.lo);
}

fn less64(a: U64, b: U64) -> bool {
    return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo);
}

// Index of the highest set bit of a non-zero v.
fn msb64(v: U64) -> u32 {
    if v.hi != 0u {
        return 63u - countLeadingZeros(v.hi);
    }
    return 31u - countLeadingZeros(v.lo);
}

// The exact 48-bit product of two 24-bit integers, from 16-bit halves.
fn mul24(a: u32, b: u32) -> U64 {
    let al = a & 0xffffu;
    let ah = a >> 16u;
    let bl = b & 0xffffu;
    let bh = b >> 16u;
    let low = al * bl;
    let mid = ah * bl + al * bh;  // < 2^25
    let lo = low + (mid << 16u);
    return U64(ah * bh + (mid >> 16u) + select(0u, 1u, lo < low), lo);
}

// A finite f32 as an integer significand (below 2^24) times a power of two.
fn unpack(bits: u32) -> Wide {
    let biased = (bits >> 23u) & 0xffu;
    let frac = bits & 0x7fffffu;
    if biased == 0u {
        return Wide(U64(0u, frac), -149);
    }
    return Wide(U64(0u, frac | 0x800000u), i32(biased) - 150);
}

// The same value with its leading bit at bit 61 (w non-zero).
fn normalize(w: Wide) -> Wide {
    let s = 61u - msb64(w.v);
    return Wide(shl64(w.v, s), w.e - i32(s));
}

// The f32 nearest to w's value (ties to even), with the given sign; w is non-zero.
fn round_wide(w: Wide, sign: u32) -> u32 {
    let top = i32(msb64(w.v)) + w.e;
    let q = max(top - 23, -149);  // weight of the result's last significand bit
    if q + 149 > 254 {
        return sign | INF;
    }
    let s = q - w.e;  // bits to drop
    var m = 0u;
    if s <= 0 {
        m = shl64(w.v, u32(-s)).lo;  // at most 24 significant bits: exact
    } else if s < 64 {
        m = shr64(w.v, u32(s)).lo;
        let half = (shr64(w.v, u32(s) - 1u).lo & 1u) != 0u;
        let sticky = any_low(w.v, u32(s) - 1u);
        if half && (sticky || (m & 1u) != 0u) {
            m += 1u;
        }
    }  // else every bit lies below half of the smallest subnormal: m = 0
    // A carry out of the significand moves into the exponent field, as it should.
    let bits = (u32(q + 149) << 23u) + m;
    return sign | min(bits, INF);
}

struct Special {
    done: bool,
    bits: u32,
}

// The cases with a NaN, an infinity or a zero product, where nothing is rounded.
fn fma_special(a: u32, b: u32, c: u32) -> Special {
    let sign_p = (a ^ b) & SIGN;
    let ma = a & ~SIGN;
    let mb = b & ~SIGN;
    let mc = c & ~SIGN;
    if ma > INF || mb > INF || mc > INF || (ma == INF && mb == 0u) || (mb == INF && ma == 0u) {
        return Special(true, QNAN);
    }
    if ma == INF || mb == INF {
        if mc == INF && (c & SIGN) != sign_p {
            return Special(true, QNAN);
        }
        return Special(true, sign_p | INF);
    }
    if mc == INF {
        return Special(true, c);
    }
    if ma == 0u || mb == 0u {
        if mc != 0u {
            return Special(true, c);
        }
        return Special(true, sign_p & c);  // (±0) + (±0) is −0 only when both are −0
    }
    return Special(false, 0u);
}

// a·b + c rounded once to the nearest f32, ties to even, on bit patterns (IEEE 754 fma).
fn fma_bits(a: u32, b: u32, c: u32) -> u32 {
    let special = fma_special(a, b, c);
    if special.done {
        return special.bits;
    }
    let fa = unpack(a);
    let fb = unpack(b);
    var x = normalize(Wide(mul24(fa.v.lo, fb.v.lo), fa.e + fb.e));  // the exact product
    var sign = (a ^ b) & SIGN;
    if (c & ~SIGN) == 0u {
        return round_wide(x, sign);
    }
    var y = normalize(unpack(c));
    var sign_y = c & SIGN;
    if y.e > x.e {
        let t = x;
        x = y;
        y = t;
        let ts = sign;
        sign = sign_y;
        sign_y = ts;
    }
    let aligned = shr_jam(y.v, u32(x.e - y.e));
    var sum = add64(x.v, aligned);
    if sign != sign_y {
        if less64(x.v, aligned) {
            sum = sub64(aligned, x.v);
            sign = sign_y;
        } else {
            sum = sub64(x.v, aligned);
        }
    }
    if !nonzero64(sum) {
        return 0u;  // exact cancellation: +0 when rounding to nearest
    }
    return round_wide(Wide(sum, x.e), sign);
}

// torch's lerp(start, end, w): p.weight is w, or w − 1 on the from_end branch.
fn lerp_bits(start: u32, end: u32) -> u32 {
    let d = fma_bits(ONE, end, start ^ SIGN);  // end − start, rounded once
    if p.from_end != 0u {
        return fma_bits(p.weight, d, end);
    }
    return fma_bits(p.weight, d, start);
}
