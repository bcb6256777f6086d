// Multi-head softmax attention, flash style: one pass over the keys with an online softmax,
// so the N×N score matrix is never stored. Q, K, V and the output are token-major
// (B, N, C) with C = heads · head_dim; head h owns columns [h·D, (h+1)·D).
//
// A workgroup serves one (batch, head) and a block of queries. Each query's head vector is
// split in CHUNK-wide slices over `chunks` threads (chunks = ceil(D / CHUNK)), so per-thread
// state stays CHUNK floats whatever D is. Keys and values are staged through workgroup
// memory a tile at a time and shared by all queries of the block.
//
// `attention_lse` also writes each query's softmax log-sum-exp, lse = max + log(Σ exp(s − max))
// over its scaled scores s, laid out (B, heads, N): what attention_grad.wgsl recomputes the
// softmax from.
//
// Keys may be split into `segments` runs of `segment_keys` (workgroup z), flash-decoding style,
// to bound how many loop iterations one invocation runs (llvmpipe silently ends a loop nest after
// 65535; see Gpu::max_loop_iterations). With one segment the kernels write the output and lse
// directly; with more, `attention_lse` writes each segment's unnormalised output to `out` laid
// out (segments, B, N, C) and its (running max, running sum) to `lse` laid out
// (segments, B·heads, N, 2), and `attention_combine` merges them as the online softmax would.

struct Params {
    tokens: u32,     // N (queries = keys)
    channels: u32,   // C
    heads: u32,
    head_dim: u32,   // D
    chunks: u32,     // threads per query
    tile_keys: u32,  // keys per staged tile (≤ MAX_TILE_KEYS, tile_keys·D ≤ KV_CAP)
    scale: f32,      // usually 1/sqrt(D)
    batch: u32,      // B
    segment_keys: u32, // keys per segment (a multiple of tile_keys)
    segments: u32,   // key segments (workgroup z); 1 = the direct path
}

const WG: u32 = 64u;
const CHUNK: u32 = 64u;
const MAX_TILE_KEYS: u32 = 16u;
const KV_CAP: u32 = 1536u;
// Threads per workgroup of attention_combine, launched over Gpu::grid_1d.
const LINEAR_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;

var<workgroup> k_tile: array<f32, KV_CAP>;
var<workgroup> v_tile: array<f32, KV_CAP>;
var<workgroup> partial: array<f32, WG * MAX_TILE_KEYS>;

// Writes the outputs of this thread's query slice; returns its (running max, running sum).
fn attend(lid: u32, wid: vec3<u32>) -> vec2<f32> {
    let queries_per_group = WG / p.chunks;
    let slot = lid / p.chunks;
    let chunk = lid % p.chunks;
    let first_thread = slot * p.chunks;
    let b = wid.y / p.heads;
    let h = wid.y % p.heads;
    let query = wid.x * queries_per_group + slot;
    let live = slot < queries_per_group && query < p.tokens;
    let d0 = chunk * CHUNK;
    let width = select(0u, min(CHUNK, p.head_dim - min(d0, p.head_dim)), live);
    let head_col = h * p.head_dim;

    var qv: array<f32, CHUNK>;
    var acc: array<f32, CHUNK>;
    for (var d = 0u; d < width; d++) {
        qv[d] = q[(b * p.tokens + query) * p.channels + head_col + d0 + d] * p.scale;
        acc[d] = 0.0;
    }
    var running_max = -3.4e38;
    var running_sum = 0.0;

    let key_end = min(p.tokens, (wid.z + 1u) * p.segment_keys);
    for (var key0 = wid.z * p.segment_keys; key0 < key_end; key0 += p.tile_keys) {
        let n_keys = min(p.tile_keys, key_end - key0);
        for (var e = lid; e < n_keys * p.head_dim; e += WG) {
            let row = (b * p.tokens + key0 + e / p.head_dim) * p.channels + head_col + e % p.head_dim;
            k_tile[e] = k[row];
            v_tile[e] = v[row];
        }
        workgroupBarrier();
        for (var j = 0u; j < n_keys; j++) {
            var s = 0.0;
            for (var d = 0u; d < width; d++) {
                s += qv[d] * k_tile[j * p.head_dim + d0 + d];
            }
            partial[lid * MAX_TILE_KEYS + j] = s;
        }
        workgroupBarrier();
        if live {
            for (var j = 0u; j < n_keys; j++) {
                var score = 0.0;
                for (var c = 0u; c < p.chunks; c++) {
                    score += partial[(first_thread + c) * MAX_TILE_KEYS + j];
                }
                let new_max = max(running_max, score);
                let correction = exp(running_max - new_max);
                let weight = exp(score - new_max);
                running_sum = running_sum * correction + weight;
                for (var d = 0u; d < width; d++) {
                    acc[d] = acc[d] * correction + weight * v_tile[j * p.head_dim + d0 + d];
                }
                running_max = new_max;
            }
        }
        workgroupBarrier();
    }

    if p.segments == 1u {
        for (var d = 0u; d < width; d++) {
            out[(b * p.tokens + query) * p.channels + head_col + d0 + d] = acc[d] / running_sum;
        }
    } else {
        let base = ((wid.z * p.batch + b) * p.tokens + query) * p.channels + head_col + d0;
        for (var d = 0u; d < width; d++) {
            out[base + d] = acc[d];
        }
    }
    return vec2<f32>(running_max, running_sum);
}

@compute @workgroup_size(WG)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    attend(lid, wid);
}

@compute @workgroup_size(WG)
fn attention_lse(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let stats = attend(lid, wid);
    let queries_per_group = WG / p.chunks;
    let slot = lid / p.chunks;
    let query = wid.x * queries_per_group + slot;
    if slot < queries_per_group && query < p.tokens && lid % p.chunks == 0u {
        if p.segments == 1u {
            lse[wid.y * p.tokens + query] = stats.x + log(stats.y);
        } else {
            let at = 2u * ((wid.z * p.batch * p.heads + wid.y) * p.tokens + query);
            lse[at] = stats.x;
            lse[at + 1u] = stats.y;
        }
    }
}

// Merges the key segments: one thread per output element (B, N, C); the first column of each
// head also writes the query's lse.
@group(0) @binding(1) var<storage, read> seg_out: array<f32>;
@group(0) @binding(2) var<storage, read> seg_stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> merged: array<f32>;
@group(0) @binding(4) var<storage, read_write> merged_lse: array<f32>;

@compute @workgroup_size(LINEAR_WG)
fn attention_combine(@builtin(global_invocation_id) gid: vec3<u32>,
                     @builtin(num_workgroups) groups: vec3<u32>) {
    let total = p.batch * p.tokens * p.channels;
    let idx = gid.x + gid.y * groups.x * LINEAR_WG;
    if idx >= total {
        return;
    }
    let col = idx % p.channels;
    let query = (idx / p.channels) % p.tokens;
    let bh = (idx / (p.channels * p.tokens)) * p.heads + col / p.head_dim;
    let stride = p.batch * p.heads * p.tokens;
    var m = -3.4e38;
    for (var s = 0u; s < p.segments; s++) {
        m = max(m, seg_stats[2u * (s * stride + bh * p.tokens + query)]);
    }
    var sum = 0.0;
    var acc = 0.0;
    for (var s = 0u; s < p.segments; s++) {
        let at = 2u * (s * stride + bh * p.tokens + query);
        let w = exp(seg_stats[at] - m);
        sum += seg_stats[at + 1u] * w;
        acc += seg_out[s * total + idx] * w;
    }
    merged[idx] = acc / sum;
    if col % p.head_dim == 0u {
        merged_lse[bh * p.tokens + query] = m + log(sum);
    }
}

// ---- softmax_rows: the products path's softmax, between two matmuls ----
// Per (item, head), attention is two matrix products around a row softmax; the matmul kernels
// run those faster than the fused kernel above on both kernel classes where the scores fit
// (ops::attention's `by_products` has the figures). The scores S = Q·Kᵀ (B, N, N) come in; each invocation turns one
// query's row into probabilities softmax(S·scale) and writes its lse (laid out (B, 1, N), as
// `attention_lse` does). Three passes over the row: the host keeps 3·N under the loop budget.
// Scores and probabilities are activations (`act`: f32, or f16 in the half variant); each
// probability is written once, its exponential taken again in the last pass rather than read back.
@group(0) @binding(1) var<storage, read> scores: array<act>;
@group(0) @binding(2) var<storage, read_write> probs: array<act>;
@group(0) @binding(3) var<storage, read_write> row_lse: array<f32>;

@compute @workgroup_size(LINEAR_WG)
fn softmax_rows(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) groups: vec3<u32>) {
    let row = gid.x + gid.y * groups.x * LINEAR_WG;
    if row >= p.batch * p.tokens {
        return;
    }
    let base = row * p.tokens;
    var m = -3.4e38;
    for (var j = 0u; j < p.tokens; j++) {
        m = max(m, f32(scores[base + j]) * p.scale);
    }
    var sum = 0.0;
    for (var j = 0u; j < p.tokens; j++) {
        sum += exp(f32(scores[base + j]) * p.scale - m);
    }
    let inv = 1.0 / sum;
    for (var j = 0u; j < p.tokens; j++) {
        probs[base + j] = act(exp(f32(scores[base + j]) * p.scale - m) * inv);
    }
    row_lse[row] = m + log(sum);
}
