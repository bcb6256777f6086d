// Backward of attention.wgsl, flash style: the probabilities are recomputed from the forward's
// saved log-sum-exp, so no N×N matrix is ever stored. Per (batch, head), with scaled scores
// s_ij = scale·q_i·k_j, P_ij = exp(s_ij − lse_i), output o_i = Σ_j P_ij v_j and its gradient g_i:
//   delta_i = g_i · o_i                       (= Σ_j P_ij·(g_i·v_j))
//   dS_ij   = P_ij · (g_i·v_j − delta_i)
//   dq_i    = scale · Σ_j dS_ij k_j           grad_q:  one pass over the keys per query block
//   dk_j    = scale · Σ_i dS_ij q_i           grad_kv: one pass over the queries per key block
//   dv_j    = Σ_i P_ij g_i
// Layout as in attention.wgsl: q, k, v, o, g and the gradients token-major (B, N, heads·D);
// lse and delta (B, heads, N). Threads split head vectors in CHUNK-wide slices exactly as the
// forward does (so the recomputed scores round as the forward's did), and the other side's
// vectors are staged through workgroup memory a tile at a time.
//
// As in attention.wgsl, the loop over the other side's rows may be split into `segments` runs
// of `segment_rows` (workgroup z) to bound one invocation's loop nest (llvmpipe). With one
// segment the gradients are written directly; with more, each segment's partial gradient goes
// to grad_a / grad_b laid out (segments, B, N, C) and `segment_sum` adds them up.

struct Params {
    batch: u32,      // B
    tokens: u32,     // N (queries = keys)
    channels: u32,   // C
    heads: u32,
    head_dim: u32,   // D
    chunks: u32,     // threads per query or key
    tile_rows: u32,  // rows per staged tile (≤ MAX_TILE_ROWS, tile_rows·D ≤ TILE_CAP)
    scale: f32,
    segment_rows: u32, // rows per segment (a multiple of tile_rows)
    segments: u32,     // segments of the row loop (workgroup z); 1 = the direct path
}

const WG: u32 = 64u;
const CHUNK: u32 = 64u;
const MAX_TILE_ROWS: u32 = 16u;
// Two staged tiles and the (score, g·v) partials fill 16 KiB of workgroup memory.
const TILE_CAP: u32 = 1024u;
const ROW_WG: u32 = 64u;
// Threads per workgroup of segment_sum, launched over Gpu::grid_1d.
const LINEAR_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
// grad_q: dq; grad_kv: dk and dv.
@group(0) @binding(7) var<storage, read_write> grad_a: array<f32>;
@group(0) @binding(8) var<storage, read_write> grad_b: array<f32>;

var<workgroup> tile_a: array<f32, TILE_CAP>;
var<workgroup> tile_b: array<f32, TILE_CAP>;
var<workgroup> partial: array<vec2<f32>, WG * MAX_TILE_ROWS>;

// Where one thread works: its row (query or key) of head (b, h) and its slice of the head vector.
struct Slot {
    b: u32,
    h: u32,
    row: u32,
    chunk: u32,
    first_thread: u32,
    live: bool,
    d0: u32,
    width: u32,
    head_col: u32,
}

fn slot_of(lid: u32, wid: vec3<u32>) -> Slot {
    let rows_per_group = WG / p.chunks;
    let slot = lid / p.chunks;
    let chunk = lid % p.chunks;
    let row = wid.x * rows_per_group + slot;
    let live = slot < rows_per_group && row < p.tokens;
    let d0 = chunk * CHUNK;
    let width = select(0u, min(CHUNK, p.head_dim - min(d0, p.head_dim)), live);
    return Slot(wid.y / p.heads, wid.y % p.heads, row, chunk, slot * p.chunks, live, d0, width,
                (wid.y % p.heads) * p.head_dim);
}

// Index of element d of the slot's slice in row `row` of a token-major tensor.
fn at(s: Slot, row: u32, d: u32) -> u32 {
    return (s.b * p.tokens + row) * p.channels + s.head_col + s.d0 + d;
}

// Where element d of the slot's row goes in grad_a / grad_b: segment z's partial when split.
fn out_at(s: Slot, z: u32, d: u32) -> u32 {
    return select(0u, z * p.batch * p.tokens * p.channels, p.segments > 1u) + at(s, s.row, d);
}

// End of segment z's rows.
fn segment_end(z: u32) -> u32 {
    return min(p.tokens, (z + 1u) * p.segment_rows);
}

// Stages rows [row0, row0 + n) of the head into tile_a and tile_b: k and v when `keys`, else q
// and g.
fn stage(s: Slot, lid: u32, row0: u32, n: u32, keys: bool) {
    for (var e = lid; e < n * p.head_dim; e += WG) {
        let i = (s.b * p.tokens + row0 + e / p.head_dim) * p.channels + s.head_col + e % p.head_dim;
        if keys {
            tile_a[e] = k[i];
            tile_b[e] = v[i];
        } else {
            tile_a[e] = q[i];
            tile_b[e] = g[i];
        }
    }
}

// (score, g·v) of staged row j summed over the threads of this slot's row.
fn row_sums(s: Slot, j: u32) -> vec2<f32> {
    var sum = vec2<f32>(0.0);
    for (var c = 0u; c < p.chunks; c++) {
        sum += partial[(s.first_thread + c) * MAX_TILE_ROWS + j];
    }
    return sum;
}

@compute @workgroup_size(WG)
fn grad_q(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let s = slot_of(lid, wid);
    var qv: array<f32, CHUNK>;
    var gv: array<f32, CHUNK>;
    var acc: array<f32, CHUNK>;
    for (var d = 0u; d < s.width; d++) {
        qv[d] = q[at(s, s.row, d)] * p.scale;
        gv[d] = g[at(s, s.row, d)];
        acc[d] = 0.0;
    }
    let stat = (wid.y * p.tokens + min(s.row, p.tokens - 1u));
    let row_lse = lse[stat];
    let row_delta = delta[stat];

    let key_end = segment_end(wid.z);
    for (var key0 = wid.z * p.segment_rows; key0 < key_end; key0 += p.tile_rows) {
        let n_keys = min(p.tile_rows, key_end - key0);
        stage(s, lid, key0, n_keys, true);
        workgroupBarrier();
        for (var j = 0u; j < n_keys; j++) {
            var sums = vec2<f32>(0.0);
            for (var d = 0u; d < s.width; d++) {
                sums += vec2<f32>(qv[d] * tile_a[j * p.head_dim + s.d0 + d],
                                  gv[d] * tile_b[j * p.head_dim + s.d0 + d]);
            }
            partial[lid * MAX_TILE_ROWS + j] = sums;
        }
        workgroupBarrier();
        if s.live {
            for (var j = 0u; j < n_keys; j++) {
                let sums = row_sums(s, j);
                let ds = exp(sums.x - row_lse) * (sums.y - row_delta);
                for (var d = 0u; d < s.width; d++) {
                    acc[d] += ds * tile_a[j * p.head_dim + s.d0 + d];
                }
            }
        }
        workgroupBarrier();
    }
    for (var d = 0u; d < s.width; d++) {
        grad_a[out_at(s, wid.z, d)] = acc[d] * p.scale;
    }
}

@compute @workgroup_size(WG)
fn grad_kv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let s = slot_of(lid, wid);
    var kv: array<f32, CHUNK>;
    var vv: array<f32, CHUNK>;
    var acc_k: array<f32, CHUNK>;
    var acc_v: array<f32, CHUNK>;
    for (var d = 0u; d < s.width; d++) {
        kv[d] = k[at(s, s.row, d)];
        vv[d] = v[at(s, s.row, d)];
        acc_k[d] = 0.0;
        acc_v[d] = 0.0;
    }

    let query_end = segment_end(wid.z);
    for (var query0 = wid.z * p.segment_rows; query0 < query_end; query0 += p.tile_rows) {
        let n_queries = min(p.tile_rows, query_end - query0);
        stage(s, lid, query0, n_queries, false);
        workgroupBarrier();
        for (var i = 0u; i < n_queries; i++) {
            var sums = vec2<f32>(0.0);
            for (var d = 0u; d < s.width; d++) {
                // (q·scale)·k as the forward rounds it.
                sums += vec2<f32>(tile_a[i * p.head_dim + s.d0 + d] * p.scale * kv[d],
                                  tile_b[i * p.head_dim + s.d0 + d] * vv[d]);
            }
            partial[lid * MAX_TILE_ROWS + i] = sums;
        }
        workgroupBarrier();
        if s.live {
            for (var i = 0u; i < n_queries; i++) {
                let sums = row_sums(s, i);
                let stat = wid.y * p.tokens + query0 + i;
                let prob = exp(sums.x - lse[stat]);
                let ds = prob * (sums.y - delta[stat]);
                for (var d = 0u; d < s.width; d++) {
                    acc_k[d] += ds * tile_a[i * p.head_dim + s.d0 + d];
                    acc_v[d] += prob * tile_b[i * p.head_dim + s.d0 + d];
                }
            }
        }
        workgroupBarrier();
    }
    for (var d = 0u; d < s.width; d++) {
        grad_a[out_at(s, wid.z, d)] = acc_k[d] * p.scale;
        grad_b[out_at(s, wid.z, d)] = acc_v[d];
    }
}

// delta: one thread per (batch, head, query).
@group(0) @binding(1) var<storage, read> row_o: array<f32>;
@group(0) @binding(2) var<storage, read> row_g: array<f32>;
@group(0) @binding(3) var<storage, read_write> row_delta: array<f32>;

@compute @workgroup_size(ROW_WG)
fn row_dot(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    if idx >= p.batch * p.heads * p.tokens {
        return;
    }
    let bh = idx / p.tokens;
    let base = ((bh / p.heads) * p.tokens + idx % p.tokens) * p.channels + (bh % p.heads) * p.head_dim;
    var acc = 0.0;
    for (var d = 0u; d < p.head_dim; d++) {
        acc += row_g[base + d] * row_o[base + d];
    }
    row_delta[idx] = acc;
}

// The segments' partial gradients summed: one thread per element of (B, N, C).
@group(0) @binding(1) var<storage, read> seg_parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> seg_total: array<f32>;

@compute @workgroup_size(LINEAR_WG)
fn segment_sum(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) groups: vec3<u32>) {
    let total = p.batch * p.tokens * p.channels;
    let idx = gid.x + gid.y * groups.x * LINEAR_WG;
    if idx >= total {
        return;
    }
    var acc = 0.0;
    for (var z = 0u; z < p.segments; z++) {
        acc += seg_parts[z * total + idx];
    }
    seg_total[idx] = acc;
}

// ---- softmax_grad_rows: the elementwise middle of the products path ----
// The host forms S = Q·Kᵀ and dP = g·Vᵀ per (item, head) as batched products (batch entry =
// pair, p.batch pairs here) and finishes with dV = Pᵀ·g, dQ = dS·K, dK = dSᵀ·Q; this writes
//   P_ij = exp(scale·S_ij − lse_i)   and   dS_ij = scale · P_ij · (dP_ij − delta_i)
// (dS with respect to the unscaled scores) for row i = pair·N + query.
@group(0) @binding(1) var<storage, read> sg_scores: array<f32>;
@group(0) @binding(2) var<storage, read> sg_dprobs: array<f32>;
@group(0) @binding(3) var<storage, read> sg_lse: array<f32>;
@group(0) @binding(4) var<storage, read> sg_delta: array<f32>;
@group(0) @binding(5) var<storage, read_write> sg_probs: array<f32>;
@group(0) @binding(6) var<storage, read_write> sg_dscores: array<f32>;

@compute @workgroup_size(LINEAR_WG)
fn softmax_grad_rows(@builtin(global_invocation_id) gid: vec3<u32>,
                     @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * LINEAR_WG;
    if i >= p.batch * p.tokens * p.tokens {
        return;
    }
    let row = i / p.tokens;
    let prob = exp(sg_scores[i] * p.scale - sg_lse[row]);
    sg_probs[i] = prob;
    sg_dscores[i] = p.scale * prob * (sg_dprobs[i] - sg_delta[row]);
}
