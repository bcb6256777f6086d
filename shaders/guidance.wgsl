// Uncertainty-guided sampling (Algorithm 2 of De Vita & Belagiannis): the per-element statistics
// of the M predictions at re-noised copies, and the masked update of ε. Copies are stacked
// copy-major: element i of copy m is at m·total + i. See docs/method.md §3.

const WG: u32 = 256u;

struct Params {
    total: u32,      // B·C·H·W
    copies: u32,     // M
    per_sample: u32, // C·H·W
    scalar: f32,     // ᾱ_t (posterior), the scale (sum_copies) or λ (masked_update)
}

@group(0) @binding(0) var<uniform> p: Params;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// Rule G: U = unbiased variance of {ε_m} and the cotangent ∂U/∂ε_m = 2(ε_m − ε̄)/(M − 1).
@group(0) @binding(1) var<storage, read> g_copies: array<f32>;
@group(0) @binding(2) var<storage, read_write> g_cotangent: array<f32>;
@group(0) @binding(3) var<storage, read_write> g_variance: array<f32>;

@compute @workgroup_size(WG)
fn gradient_cotangent(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let n = f32(p.copies);
    var sum = 0.0;
    for (var m = 0u; m < p.copies; m++) {
        sum += g_copies[m * p.total + i];
    }
    let mean = sum / n;
    var ss = 0.0;
    for (var m = 0u; m < p.copies; m++) {
        let d = g_copies[m * p.total + i] - mean;
        ss += d * d;
        g_cotangent[m * p.total + i] = 2.0 * d / (n - 1.0);
    }
    g_variance[i] = ss / (n - 1.0);
}

// Rule P: U' = unbiased variance of {ε_1..ε_M, ε}, and the precision-weighted mean with prior
// N(0, ᾱ): ε_post = (Σ_m ε_m / U') / (M / U' + 1/ᾱ) = Σ_m ε_m / (M + U'/ᾱ), which needs no guard
// for U' = 0.
@group(0) @binding(1) var<storage, read> p_eps: array<f32>;
@group(0) @binding(2) var<storage, read> p_copies: array<f32>;
@group(0) @binding(3) var<storage, read_write> p_variance: array<f32>;
@group(0) @binding(4) var<storage, read_write> p_posterior: array<f32>;

@compute @workgroup_size(WG)
fn posterior(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let n = f32(p.copies);
    var sum_copies = 0.0;
    for (var m = 0u; m < p.copies; m++) {
        sum_copies += p_copies[m * p.total + i];
    }
    let centre = p_eps[i];
    let mean = (sum_copies + centre) / (n + 1.0);
    var ss = (centre - mean) * (centre - mean);
    for (var m = 0u; m < p.copies; m++) {
        let d = p_copies[m * p.total + i] - mean;
        ss += d * d;
    }
    let variance = ss / n;
    p_variance[i] = variance;
    p_posterior[i] = sum_copies / (n + variance / p.scalar);
}

// scale · Σ_m x_m: (M·B, …) → (B, …).
@group(0) @binding(1) var<storage, read> s_copies: array<f32>;
@group(0) @binding(2) var<storage, read_write> s_sum: array<f32>;

@compute @workgroup_size(WG)
fn sum_copies(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    var acc = 0.0;
    for (var m = 0u; m < p.copies; m++) {
        acc += s_copies[m * p.total + i];
    }
    s_sum[i] = p.scalar * acc;
}

// ε where the element's uncertainty is at most its threshold; elsewhere ε + λ·update (Rule G) or
// the update itself (Rule P). The threshold is per sample (the image's percentile) or per element
// (a calibrated (C, H, W) map of this step).
override RULE: u32 = 0u;
const RULE_ADD: u32 = 0u;
const RULE_REPLACE: u32 = 1u;
override THRESHOLD: u32 = 0u;
const THRESHOLD_PER_SAMPLE: u32 = 0u;
const THRESHOLD_PER_ELEMENT: u32 = 1u;

@group(0) @binding(1) var<storage, read> u_eps: array<f32>;
@group(0) @binding(2) var<storage, read> u_uncertainty: array<f32>;
@group(0) @binding(3) var<storage, read> u_threshold: array<f32>;
@group(0) @binding(4) var<storage, read> u_update: array<f32>;
@group(0) @binding(5) var<storage, read_write> u_out: array<f32>;

@compute @workgroup_size(WG)
fn masked_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    var threshold: f32;
    switch THRESHOLD {
        case THRESHOLD_PER_ELEMENT: { threshold = u_threshold[i % p.per_sample]; }
        case THRESHOLD_PER_SAMPLE, default: { threshold = u_threshold[i / p.per_sample]; }
    }
    let eps = u_eps[i];
    if !(u_uncertainty[i] > threshold) {
        u_out[i] = eps;
        return;
    }
    switch RULE {
        case RULE_REPLACE: { u_out[i] = u_update[i]; }
        case RULE_ADD, default: { u_out[i] = eps + p.scalar * u_update[i]; }
    }
}
