// Non-finite detection without a read-back. For each element of x that is NaN or ±Inf, the
// sample its row belongs to records the current step in `first_step` with atomicMin, so the
// earliest step wins and a sample never flagged keeps NO_STEP (u32::MAX); the host reads the
// flags back once, with the finished batch. The test looks at the bits (an all-ones exponent),
// so no floating-point optimisation can assume NaN and Inf away.

struct Params {
    total: u32,    // elements of x
    row_len: u32,  // elements of one row (one sample's C·H·W)
    samples: u32,  // B: row r belongs to sample r % B, so stacked copies flag their sample
    step: u32,
}

const WG: u32 = 256u;
const EXPONENT_MASK: u32 = 0x7f800000u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> first_step: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn record_non_finite(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.total {
        return;
    }
    if (bitcast<u32>(x[i]) & EXPONENT_MASK) == EXPONENT_MASK {
        atomicMin(&first_step[(i / p.row_len) % p.samples], p.step);
    }
}
