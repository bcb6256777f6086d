// Bilinear resizing of NCHW planes as torch's F.interpolate(mode='bilinear',
// align_corners=False, antialias=False) does it, the input path of pytorch-fid's Inception:
// output pixel d samples the input at s = scale·(d + 0.5) − 0.5, clamped below at 0, between
// taps ⌊s⌋ and ⌊s⌋ + 1 (the last tap repeated at the far edge), scale = size_in / size_out.
// s is kept as the exact fraction ((2d + 1)·size_in − size_out) / (2·size_out): its integer part
// and remainder are exact, so the weights are the definition's to f32 rounding of a value in
// [0, 1] (computing s in f32 would be off by an ulp of s, ~1e-6 at s ≈ 30). The host keeps
// (2·size_out + 1)·size_in below 2³¹.
// One thread per output element; 1-D grid folded into y when large.

struct Params {
    total: u32,  // output elements
    h_in: u32,
    w_in: u32,
    h_out: u32,
    w_out: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// (first tap, second tap, weight of the second) along one axis.
struct Taps {
    i0: u32,
    i1: u32,
    w1: f32,
}

fn taps(d: u32, size_in: u32, size_out: u32) -> Taps {
    let numerator = i32((2u * d + 1u) * size_in) - i32(size_out);
    let denominator = 2u * size_out;
    // s < 0 clamps to 0. s < size_in − ½ always, so ⌊s⌋ needs no clamp at the top.
    let n = u32(max(numerator, 0));
    let i0 = n / denominator;
    let i1 = select(i0, i0 + 1u, i0 < size_in - 1u);
    return Taps(i0, i1, f32(n % denominator) / f32(denominator));
}

@compute @workgroup_size(WG)
fn resize_bilinear(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let plane = i / (p.h_out * p.w_out);
    let ty = taps((i / p.w_out) % p.h_out, p.h_in, p.h_out);
    let tx = taps(i % p.w_out, p.w_in, p.w_out);
    let row0 = (plane * p.h_in + ty.i0) * p.w_in;
    let row1 = (plane * p.h_in + ty.i1) * p.w_in;
    let top = (1.0 - tx.w1) * x[row0 + tx.i0] + tx.w1 * x[row0 + tx.i1];
    let bottom = (1.0 - tx.w1) * x[row1 + tx.i0] + tx.w1 * x[row1 + tx.i1];
    out[i] = (1.0 - ty.w1) * top + ty.w1 * bottom;
}
