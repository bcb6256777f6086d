// Pixel-wise uncertainty from M ε predictions at re-noised copies of x̂0 (Algorithm 1 of
// De Vita & Belagiannis). For each element, one pass over the M copies keeps a Welford mean
// and M2 and the sum of squared deviations from the unperturbed ε, which yields every mode
// (the MODE_* constants below, which the host's UncertaintyMode maps to).

struct Params {
    total: u32,   // B·C·H·W
    copies: u32,  // M
}

override MODE: u32 = 0u;
const MODE_CENTRED: u32 = 0u;          // Σ_m (ε_m − ε)² / M  (the official code's estimator)
const MODE_VARIANCE: u32 = 1u;         // M2 / (M − 1)        (sample variance of {ε_m})
const MODE_VARIANCE_BIASED: u32 = 2u;  // M2 / M

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> eps: array<f32>;
@group(0) @binding(2) var<storage, read> eps_copies: array<f32>;  // (M·B, C, H, W), copy-major
@group(0) @binding(3) var<storage, read_write> map: array<f32>;

@compute @workgroup_size(WG)
fn uncertainty_map(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.total {
        return;
    }
    let centre = eps[i];
    var mean = 0.0;
    var m2 = 0.0;
    var centred = 0.0;
    for (var m = 0u; m < p.copies; m++) {
        let v = eps_copies[m * p.total + i];
        let d = v - mean;
        mean += d / f32(m + 1u);
        m2 += d * (v - mean);
        centred += (v - centre) * (v - centre);
    }
    let n = f32(p.copies);
    switch MODE {
        case MODE_CENTRED: { map[i] = centred / n; }
        case MODE_VARIANCE: { map[i] = m2 / (n - 1.0); }
        case MODE_VARIANCE_BIASED, default: { map[i] = m2 / n; }
    }
}

// Row sums of a (rows, len) matrix, one workgroup per row, accumulated in f32 by a tree.
struct SumParams {
    len: u32,
}

@group(0) @binding(0) var<uniform> sp: SumParams;
@group(0) @binding(1) var<storage, read> rows_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> sums: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn row_sum(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let base = wid.x * sp.len;
    var acc = 0.0;
    for (var j = lid; j < sp.len; j += WG) {
        acc += rows_in[base + j];
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        sums[wid.x] = partial[0];
    }
}
