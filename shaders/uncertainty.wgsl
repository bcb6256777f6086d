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

// The Stein modes (host: UncertaintyMode::Typicality / PosteriorVariance / Residual) also read the
// re-noise draws n_m that made the copies. One pass over the M copies keeps Welford means of n and
// ε, their co-moment C = Σ_m (n_m − n̄)(ε_m − ε̄) = Σ_m n_m (ε_m − ε̄), Σ_m ε_m² and Σ_m (ε_m − n_m)²:
//   Ĵ_i   = C / (M − 1)                       Stein estimate of ∂ε̂_i/∂n_i
//   raw_i = (1/M) Σ_m ε_m,i² − Ĵ_i             typicality: its sum over i, scaled by 1/√(2D), is Δ_t
//         = ρ · max(0, 1 − Ĵ_i)                posterior variance v̂_i, ρ = (1 − ᾱ_t)/ᾱ_t
//         = (1/M) Σ_m (ε_m,i − n_m,i)²         residual: its sum over i is R_t
// and the map is (raw_i − shift_i) · scale_i, shift and scale being one value per element of a
// sample (C·H·W, broadcast over the batch) that the host sets per step: 0 and 1/√(2D) for
// typicality; the real-image reference's mean and 1/sd per (step, element) for the posterior
// variance; its per-step mean/D and 1/sd for the residual (so the map sums to the z-score of R_t);
// 0 and 1 for the raw values the reference itself is built from.
struct SteinParams {
    total: u32,   // B·C·H·W
    copies: u32,  // M ≥ 2
    len: u32,     // C·H·W, the length of shift and scale
    rho: f32,     // (1 − ᾱ_t)/ᾱ_t
}

const MODE_TYPICALITY: u32 = 3u;
const MODE_POSTERIOR_VARIANCE: u32 = 4u;
const MODE_RESIDUAL: u32 = 5u;

@group(0) @binding(0) var<uniform> sp_stein: SteinParams;
@group(0) @binding(1) var<storage, read> stein_copies: array<f32>;  // ε_m, (M·B, C, H, W), copy-major
@group(0) @binding(2) var<storage, read> stein_noise: array<f32>;   // n_m, the same layout
@group(0) @binding(3) var<storage, read> shift: array<f32>;         // (C·H·W)
@group(0) @binding(4) var<storage, read> scale: array<f32>;         // (C·H·W)
@group(0) @binding(5) var<storage, read_write> stein_map: array<f32>;

@compute @workgroup_size(WG)
fn stein(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let total = sp_stein.total;
    if i >= total {
        return;
    }
    var mean_n = 0.0;
    var mean_e = 0.0;
    var co = 0.0;
    var sum_sq = 0.0;
    var residual = 0.0;
    for (var m = 0u; m < sp_stein.copies; m++) {
        let e = stein_copies[m * total + i];
        let n = stein_noise[m * total + i];
        let k = f32(m + 1u);
        let dn = n - mean_n;
        mean_n += dn / k;
        mean_e += (e - mean_e) / k;
        co += dn * (e - mean_e);
        sum_sq += e * e;
        residual += (e - n) * (e - n);
    }
    let copies = f32(sp_stein.copies);
    let jacobian = co / (copies - 1.0);
    var raw: f32;
    switch MODE {
        case MODE_TYPICALITY: { raw = sum_sq / copies - jacobian; }
        case MODE_POSTERIOR_VARIANCE: { raw = sp_stein.rho * max(0.0, 1.0 - jacobian); }
        case MODE_RESIDUAL, default: { raw = residual / copies; }
    }
    let j = i % sp_stein.len;
    stein_map[i] = (raw - shift[j]) * scale[j];
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
