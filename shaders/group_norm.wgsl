// Group normalisation over NCHW, statistics in f32 by Welford/Chan merging (no E[x²]−E[x]²
// cancellation). A group of batch b is one contiguous run of (C/G)·HW values, so large maps
// are split across SPLITS workgroups:
//   stats:    workgroup (group, split) -> partial (count, mean, M2) of its chunk
//   finalize: one thread per group merges the SPLITS partials -> (mean, 1/sqrt(var + eps))
//   apply:    y = (x − mean)·rstd·gamma[c] + beta[c], optionally followed by SiLU

struct Params {
    channels: u32,
    hw: u32,
    groups: u32,
    splits: u32,
    chunk: u32,    // elements per split
    eps: f32,
    total: u32,    // apply: B·C·HW elements; finalize: B·G groups
}

override FUSE_SILU: bool = false;

const WG: u32 = 256u;
const FINALIZE_WG: u32 = 64u;
// Threads per `stats` workgroup: WG on GPUs; on CPU adapters (KernelClass::Blocked) one SIMD
// vector's worth, so the reduction tree's barriers are few (each is a coroutine switch there).
override STATS_WG: u32 = WG;

@group(0) @binding(0) var<uniform> p: Params;

// stats
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read_write> partials: array<vec4<f32>>;

struct Welford {
    n: f32,
    mean: f32,
    m2: f32,
}

// Chan et al.'s parallel merge of two partial summaries.
fn merge(a: Welford, b: Welford) -> Welford {
    let n = a.n + b.n;
    if n == 0.0 {
        return a;
    }
    let delta = b.mean - a.mean;
    let wb = b.n / n;
    return Welford(n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb);
}

var<workgroup> shared_n: array<f32, STATS_WG>;
var<workgroup> shared_mean: array<f32, STATS_WG>;
var<workgroup> shared_m2: array<f32, STATS_WG>;

@compute @workgroup_size(STATS_WG)
fn stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let group = wid.y;
    let split = wid.x;
    let group_len = (p.channels / p.groups) * p.hw;
    let start = split * p.chunk;
    let end = min(start + p.chunk, group_len);
    let base = group * group_len;
    var acc = Welford(0.0, 0.0, 0.0);
    for (var i = start + lid; i < end; i += STATS_WG) {
        let v = f32(x[base + i]);
        acc.n += 1.0;
        let d = v - acc.mean;
        acc.mean += d / acc.n;
        acc.m2 += d * (v - acc.mean);
    }
    shared_n[lid] = acc.n;
    shared_mean[lid] = acc.mean;
    shared_m2[lid] = acc.m2;
    workgroupBarrier();
    for (var stride = STATS_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            let m = merge(
                Welford(shared_n[lid], shared_mean[lid], shared_m2[lid]),
                Welford(shared_n[lid + stride], shared_mean[lid + stride], shared_m2[lid + stride]),
            );
            shared_n[lid] = m.n;
            shared_mean[lid] = m.mean;
            shared_m2[lid] = m.m2;
        }
        workgroupBarrier();
    }
    if lid == 0u {
        partials[group * p.splits + split] = vec4<f32>(shared_n[0], shared_mean[0], shared_m2[0], 0.0);
    }
}

// finalize
@group(0) @binding(1) var<storage, read> partials_in: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> moments: array<vec2<f32>>;

@compute @workgroup_size(FINALIZE_WG)
fn finalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let group = gid.x;
    if group >= p.total {
        return;
    }
    var acc = Welford(0.0, 0.0, 0.0);
    for (var s = 0u; s < p.splits; s++) {
        let q = partials_in[group * p.splits + s];
        acc = merge(acc, Welford(q.x, q.y, q.z));
    }
    moments[group] = vec2<f32>(acc.mean, inverseSqrt(acc.m2 / acc.n + p.eps));
}

// apply
@group(0) @binding(1) var<storage, read> src: array<act>;
@group(0) @binding(2) var<storage, read> moments_in: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> dst: array<act>;

@compute @workgroup_size(WG)
fn apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.total {
        return;
    }
    let cg = channel_and_group(i / p.hw);
    let c = cg.x;
    let group = cg.y;
    let mr = moments_in[group];
    var y = (f32(src[i]) - mr.x) * mr.y * gamma[c] + beta[c];
    if FUSE_SILU {
        y = silu(y);
    }
    dst[i] = act(y);
}

// apply4: `apply` four elements per invocation, for a plane size HW % 4 = 0 (the four then share
// one channel and group), or QUADS · 4 where HW % (QUADS · 4) = 0 (set by the host: 4 on CPU
// adapters, where each invocation's loads of the moments, gamma and beta cost as much as its
// elements' and are shared by four times as many). On a CPU rasteriser the per-invocation index
// divisions, not the memory traffic, bound `apply`: this quarters them at least.
@group(0) @binding(1) var<storage, read> src4: array<act4>;
@group(0) @binding(5) var<storage, read_write> dst4: array<act4>;
override QUADS: u32 = 1u;

@compute @workgroup_size(WG)
fn apply4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q0 = (gid.x + gid.y * nwg.x * WG) * QUADS;
    if q0 >= p.total / 4u {
        return;
    }
    let plane = 4u * q0 / p.hw;
    let cg = channel_and_group(plane);
    let c = cg.x;
    let group = cg.y;
    let mr = moments_in[group];
    let scale = mr.y * gamma[c];
    let shift = beta[c];
//#for j in 0..4
    if ${j}u < QUADS {
        var y = (vec4<f32>(src4[q0 + ${j}u]) - mr.x) * scale + shift;
        if FUSE_SILU {
            y = silu4(y);
        }
        dst4[q0 + ${j}u] = act4(y);
    }
//#end
}
