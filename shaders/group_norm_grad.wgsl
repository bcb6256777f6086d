// Input gradient of group_norm.wgsl from the saved input x and its per-group (mean, rstd).
// With x̂ = (x − mean)·rstd, z = x̂·gamma[c] + beta[c] and y = z or SiLU(z):
//   g  = dy · dy/dz · gamma[c]                (dy/dz = SiLU'(z), recomputed from x, or 1)
//   dx = rstd · (g − mean_group(g) − x̂ · mean_group(g · x̂))
// The two per-group means are reductions laid out like the forward's statistics:
//   stats:    workgroup (group, split) -> partial (Σ g, Σ g·x̂) of its chunk
//   finalize: one thread per group sums the SPLITS partials and divides by the group size
//   apply:    one thread per element

struct Params {
    channels: u32,
    hw: u32,
    groups: u32,
    splits: u32,
    chunk: u32,    // elements per split
    total: u32,    // apply: B·C·HW elements; finalize: B·G groups
}

override FUSE_SILU: bool = false;

const WG: u32 = 256u;
const FINALIZE_WG: u32 = 64u;
// Threads of one statistics workgroup: WG, or on a CPU rasteriser a narrower one (the host sets
// it as for the forward's statistics, where its barriers cost more than its width saves).
override STATS_WG: u32 = WG;

@group(0) @binding(0) var<uniform> p: Params;
// stats and apply
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> moments: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;

// (g, x̂) of element i.
fn grad_and_xhat(i: u32) -> vec2<f32> {
    let cg = channel_and_group(i / p.hw);
    let c = cg.x;
    let group = cg.y;
    let mr = moments[group];
    let xhat = (x[i] - mr.x) * mr.y;
    var g = dy[i];
    if FUSE_SILU {
        g *= silu_derivative(xhat * gamma[c] + beta[c]);
    }
    return vec2<f32>(g * gamma[c], xhat);
}

// stats
@group(0) @binding(6) var<storage, read_write> partials: array<vec2<f32>>;

var<workgroup> shared_sums: array<vec2<f32>, STATS_WG>;

@compute @workgroup_size(STATS_WG)
fn stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let group = wid.y;
    let split = wid.x;
    let group_len = (p.channels / p.groups) * p.hw;
    let start = split * p.chunk;
    let end = min(start + p.chunk, group_len);
    let base = group * group_len;
    var acc = vec2<f32>(0.0);
    for (var i = start + lid; i < end; i += STATS_WG) {
        let gx = grad_and_xhat(base + i);
        acc += vec2<f32>(gx.x, gx.x * gx.y);
    }
    shared_sums[lid] = acc;
    workgroupBarrier();
    for (var stride = STATS_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            shared_sums[lid] += shared_sums[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        partials[group * p.splits + split] = shared_sums[0];
    }
}

// finalize
@group(0) @binding(1) var<storage, read> partials_in: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> means: array<vec2<f32>>;

@compute @workgroup_size(FINALIZE_WG)
fn finalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let group = gid.x;
    if group >= p.total {
        return;
    }
    var acc = vec2<f32>(0.0);
    for (var s = 0u; s < p.splits; s++) {
        acc += partials_in[group * p.splits + s];
    }
    means[group] = acc / f32((p.channels / p.groups) * p.hw);
}

// apply
@group(0) @binding(6) var<storage, read> means_in: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(WG)
fn apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.total {
        return;
    }
    let group = channel_and_group(i / p.hw).y;
    let gx = grad_and_xhat(i);
    let m = means_in[group];
    dx[i] = moments[group].y * (gx.x - m.x - gx.y * m.y);
}

// apply4: `apply` four elements per invocation, for a plane size HW % 4 = 0 (the four share one
// channel and group), as the forward's apply4.
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> dx4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn apply4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = gid.x + gid.y * nwg.x * WG;
    if q >= p.total / 4u {
        return;
    }
    let plane = 4u * q / p.hw;
    let cg = channel_and_group(plane);
    let c = cg.x;
    let group = cg.y;
    let mr = moments[group];
    let xhat = (x4[q] - mr.x) * mr.y;
    var g = dy4[q];
    if FUSE_SILU {
        g *= silu_derivative4(xhat * gamma[c] + beta[c]);
    }
    let m = means_in[group];
    dx4[q] = mr.y * (g * gamma[c] - m.x - xhat * m.y);
}
