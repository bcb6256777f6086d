// Pooling over NCHW planes, as FID's Inception-V3 uses it: K×K windowed max or average pooling
// with zero padding (average with or without the padded taps in the divisor, torch's
// count_include_pad), and the global average pool before the features.
// One thread per output element; 1-D grid folded into y when large.

struct Params {
    total: u32,  // output elements (pool2d) or planes (global_avg_pool)
    h: u32,
    w: u32,
    h_out: u32,
    w_out: u32,
}

const WG: u32 = 256u;
const MODE_MAX: u32 = 0u;
// Divide by K*K: padded taps count as zeros (count_include_pad = True).
const MODE_AVG: u32 = 1u;
// Divide by the taps inside the input (count_include_pad = False, TensorFlow's average pool).
const MODE_AVG_VALID: u32 = 2u;

override K: u32 = 3u;
override STRIDE: u32 = 1u;
override PAD: u32 = 0u;
override MODE: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn pool2d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let plane = i / (p.h_out * p.w_out);
    let oy = (i / p.w_out) % p.h_out;
    let ox = i % p.w_out;
    let y0 = i32(oy * STRIDE) - i32(PAD);
    let x0 = i32(ox * STRIDE) - i32(PAD);
    // The host keeps PAD ≤ K/2 (as torch does), so every window holds an input tap and the
    // maximum never stays at its starting value.
    var best = -3.4028235e38;
    var sum = 0.0;
    var taps = 0u;
    for (var ky = 0u; ky < K; ky++) {
        let iy = y0 + i32(ky);
        if iy < 0 || iy >= i32(p.h) {
            continue;
        }
        for (var kx = 0u; kx < K; kx++) {
            let ix = x0 + i32(kx);
            if ix < 0 || ix >= i32(p.w) {
                continue;
            }
            let v = x[(plane * p.h + u32(iy)) * p.w + u32(ix)];
            best = max(best, v);
            sum += v;
            taps++;
        }
    }
    if MODE == MODE_MAX {
        out[i] = best;
    } else if MODE == MODE_AVG {
        out[i] = sum / f32(K * K);
    } else {
        out[i] = sum / f32(taps);
    }
}

// Mean of each H×W plane: (B, C, H, W) → (B, C).
@compute @workgroup_size(WG)
fn global_avg_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let n = p.h * p.w;
    var sum = 0.0;
    for (var j = 0u; j < n; j++) {
        sum += x[i * n + j];
    }
    out[i] = sum / f32(n);
}
