// Counter-based Gaussian noise: Philox4x32-10 (Salmon et al., SC'11) + Box-Muller.
// Output element j of row r depends only on (seed, row_start + r, tag, j): the counter is
// (j / 4, row_start + r, tag_lo, tag_hi) and the key is the 64-bit seed. So a sample's noise
// is the same whatever batch or shard it is drawn in. Callers encode (step, m, purpose) in tag.
// Several copies of a batch can be drawn at once: row r belongs to copy r / rows_per_copy,
// which is added to tag_hi, and to sample row_start + r % rows_per_copy.

struct Params {
    seed_lo: u32,
    seed_hi: u32,
    tag_lo: u32,
    tag_hi: u32,
    row_start: u32,
    rows: u32,
    row_len: u32,
    rows_per_copy: u32,
}

const WG: u32 = 256u;
const TWO_PI: f32 = 6.283185307179586;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

// 32×32 → 64-bit product as (hi, lo), from 16-bit halves (WGSL has no u64).
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
        k += vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

// (0, 1), never 0, so the logarithm is finite.
fn to_unit(x: u32) -> f32 {
    return (f32(x >> 8u) + 0.5) * (1.0 / 16777216.0);
}

@compute @workgroup_size(WG)
fn normal(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let blocks_per_row = (p.row_len + 3u) / 4u;
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.rows * blocks_per_row {
        return;
    }
    let r = i / blocks_per_row;
    let block = i % blocks_per_row;
    let bits = philox4x32_10(
        vec4<u32>(block, p.row_start + r % p.rows_per_copy, p.tag_lo, p.tag_hi + r / p.rows_per_copy),
        vec2<u32>(p.seed_lo, p.seed_hi),
    );
    let r0 = sqrt(-2.0 * log(to_unit(bits.x)));
    let r1 = sqrt(-2.0 * log(to_unit(bits.z)));
    let t0 = TWO_PI * to_unit(bits.y);
    let t1 = TWO_PI * to_unit(bits.w);
    let z = vec4<f32>(r0 * cos(t0), r0 * sin(t0), r1 * cos(t1), r1 * sin(t1));
    for (var e = 0u; e < 4u; e++) {
        let j = block * 4u + e;
        if j < p.row_len {
            out[r * p.row_len + j] = z[e];
        }
    }
}
