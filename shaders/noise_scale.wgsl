// Tensors scaled element-wise by a function of counter-based noise z (same shape as x):
//   dropout:       out = x · (z ≥ THRESHOLD ? SCALE : 0)            (inverted dropout; z ~ N(0,1)
//                  with THRESHOLD = Φ⁻¹(p) drops an element with probability p, SCALE = 1/(1−p))
//   learned_range: out = exp(½·(MIN_LOG + (v+1)/2·(MAX_LOG − MIN_LOG)))·z  (the learned-range
//                  standard deviation of ADM's variance output v, times the ancestral noise z)
// One thread per element, over a 1-D grid folded into y when large.

struct Params {
    total: u32,
    // dropout: Φ⁻¹(p), 1/(1−p); learned_range: log of the posterior variance, log β.
    a: f32,
    b: f32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    out[i] = select(0.0, x[i] * p.b, z[i] >= p.a);
}

@compute @workgroup_size(WG)
fn learned_range(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let frac = (x[i] + 1.0) * 0.5;
    let log_var = p.a + frac * (p.b - p.a);
    out[i] = exp(0.5 * log_var) * z[i];
}
