// Spatial resampling over NCHW planes: nearest ×2 upsampling and 2×2 average pooling.
// One thread per output element; 1-D grid folded into y when large. Elements are `act` (f32, or
// f16 in the half variant), averaged in f32.

struct Params {
    total: u32,  // output elements
    h_in: u32,
    w_in: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read_write> out: array<act>;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn upsample_nearest2x(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let w_out = p.w_in * 2u;
    let plane = i / (p.h_in * 2u * w_out);
    let oy = (i / w_out) % (p.h_in * 2u);
    let ox = i % w_out;
    out[i] = x[(plane * p.h_in + oy / 2u) * p.w_in + ox / 2u];
}

// upsample_nearest2x four output elements (one vec4: two input pixels, each twice) per
// invocation, for an even input width W: on a CPU rasteriser the per-invocation index divisions
// bound the scalar kernel.
@group(0) @binding(2) var<storage, read_write> out4: array<act4>;

@compute @workgroup_size(WG)
fn upsample_nearest2x_4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = linear_index(gid, nwg);
    if q >= p.total / 4u {
        return;
    }
    let i = 4u * q;
    let w_out = p.w_in * 2u;
    let plane = i / (p.h_in * 2u * w_out);
    let oy = (i / w_out) % (p.h_in * 2u);
    let src = (plane * p.h_in + oy / 2u) * p.w_in + (i % w_out) / 2u;
    let a = x[src];
    let b = x[src + 1u];
    out4[q] = act4(a, a, b, b);
}

// Floor semantics like torch's avg_pool2d(kernel 2, stride 2): an odd last row/column is dropped.
@compute @workgroup_size(WG)
fn avg_pool2x(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let h_out = p.h_in / 2u;
    let w_out = p.w_in / 2u;
    let plane = i / (h_out * w_out);
    let oy = (i / w_out) % h_out;
    let ox = i % w_out;
    let base = (plane * p.h_in + oy * 2u) * p.w_in + ox * 2u;
    let sum = f32(x[base]) + f32(x[base + 1u]) + f32(x[base + p.w_in]) + f32(x[base + p.w_in + 1u]);
    out[i] = act(0.25 * sum);
}
