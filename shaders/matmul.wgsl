// Matrix multiply with optional bias: C[b] = A[b] · op(B[b]) (+ bias), f32 (B f32 or f16).
// A is (M, K) row-major; B is (N, K) when TRANS_B (a PyTorch Linear weight) else (K, N).
// The tiled kernels (GPU class) are tiled_gemm.wgsl's GEMM (appended by the host) staged from
// here: with VEC4 (K % 4 = 0, and N % 4 = 0 unless TRANS_B) each operand is loaded as vec4s
// along its contiguous axis, else as scalars with bounds checks (any M, N, K). `matmul` writes C
// (+ bias); with split-K `matmul_partial` writes each K slice's sums and `matmul_reduce` adds
// them up (+ bias). The blocked kernels (CPU class) follow below.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch_stride_a: u32,
    batch_stride_b: u32,
    batch_stride_c: u32,
    // Split-K: the depth of one slice (a multiple of TILE_K), the number of slices, and the
    // batch (matmul_reduce's extent).
    k_chunk: u32,
    splits: u32,
    batch: u32,
}

override TRANS_B: bool = true;
override HAS_BIAS: bool = false;
override VEC4: bool = false;

// A and C are activations, `act`: f32, or f16 in the half variant; B is a weight (f32 or packed
// f16 pairs) or, in attention's products, an activation read as packed f16 pairs; sums are f32.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<act>;
// B as raw 32-bit words, decoded by `b_elem` and `b_quad`.
@group(0) @binding(2) var<storage, read> b: array<u32>;
// Without HAS_BIAS the host binds any buffer here and it is never read.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<act>;

// The same operands seen as vec4 rows: the tiled kernels' and matmul_blocked_vec4's views.
@group(0) @binding(1) var<storage, read> a4: array<act4>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<u32>>;
// Split-K's f32 slice sums (batch, split, M, N): written by matmul_partial in C's place, read by
// matmul_reduce in A's (tiled_gemm.wgsl's `partial_in`).
@group(0) @binding(4) var<storage, read_write> partial_out: array<f32>;

// Set by the host for an f16 B (a weight): IEEE half values packed two to a word (element i in
// the low half of word i / 2 when i is even), else f32. The products accumulate in f32 either
// way; only B's loads differ.
override F16_WEIGHTS: bool = false;

// B element i through the scalar view (matmul_blocked).
fn b_elem(i: u32) -> f32 {
    if F16_WEIGHTS {
        return unpack2x16float(b[i / 2u])[i % 2u];
    }
    return bitcast<f32>(b[i]);
}

// B element i through the vec4 view (the tiled kernels' scalar staging).
fn b4_elem(i: u32) -> f32 {
    let word = select(i, i / 2u, F16_WEIGHTS);
    let bits = b4[word / 4u][word % 4u];
    if F16_WEIGHTS {
        return unpack2x16float(bits)[i % 2u];
    }
    return bitcast<f32>(bits);
}

// B elements 4q .. 4q + 3 through the vec4 view.
fn b_quad(q: u32) -> vec4<f32> {
    if F16_WEIGHTS {
        let w = b4[q / 2u];
        let pair = select(w.xy, w.zw, q % 2u == 1u);
        return vec4<f32>(unpack2x16float(pair.x), unpack2x16float(pair.y));
    }
    return bitcast<vec4<f32>>(b4[q]);
}

// The tiled kernels' staging state: where this workgroup's batch item starts in A and B.
struct GemmStage {
    base_a: u32,
    base_b: u32,
}

// The batch item a tiled workgroup stages, set by its entry point before gemm_tile (the core
// passes the staging functions no workgroup id): wid.z, or wid.z / splits with split-K, whose
// wid.z is batch item · splits + slice.
var<private> stage_batch: u32;

fn gemm_stage_init(tid: u32, m0: u32, n0: u32, k_begin: u32) -> GemmStage {
    return GemmStage(stage_batch * p.batch_stride_a, stage_batch * p.batch_stride_b);
}

fn gemm_stage(tid: u32, m0: u32, n0: u32, k0: u32, s: ptr<function, GemmStage>) {
    let base_a = (*s).base_a;
    let base_b = (*s).base_b;
    if VEC4 {
        // A: TILE_M rows of 4 quads along K, scattered into the K-major tile.
        for (var r = 0u; r < A_QUADS_EACH; r++) {
            let e = tid + r * THREADS;
            let row = e / 4u;
            let k = k0 + 4u * (e % 4u);
            var v = vec4<f32>(0.0);
            if m0 + row < p.m && k < p.k {
                v = vec4<f32>(a4[(base_a + (m0 + row) * p.k + k) / 4u]);
            }
            for (var j = 0u; j < 4u; j++) {
                put_a(4u * (e % 4u) + j, row, v[j]);
            }
        }
        // B: as (N, K) the same way; as (K, N) whole quads of a K row.
        for (var r = 0u; r < B_ROWS_EACH / 4u; r++) {
            let e = tid + r * THREADS;
            if TRANS_B {
                let col = e / 4u;
                let k = k0 + 4u * (e % 4u);
                var v = vec4<f32>(0.0);
                if n0 + col < p.n && k < p.k {
                    v = b_quad((base_b + (n0 + col) * p.k + k) / 4u);
                }
                for (var j = 0u; j < 4u; j++) {
                    put_b(4u * (e % 4u) + j, col, v[j]);
                }
            } else {
                let kb = e / (TILE_N / 4u);
                let q = e % (TILE_N / 4u);
                var v = vec4<f32>(0.0);
                if n0 + 4u * q < p.n && k0 + kb < p.k {
                    v = b_quad((base_b + (k0 + kb) * p.n + n0 + 4u * q) / 4u);
                }
                put_b4(kb, q, v);
            }
        }
        return;
    }
    // Scalars: consecutive invocations walk A's K (contiguous) and B's contiguous axis.
    for (var r = 0u; r < 4u * A_QUADS_EACH; r++) {
        let e = tid + r * THREADS;
        let row = e / TILE_K;
        let ka = e % TILE_K;
        var v = 0.0;
        if m0 + row < p.m && k0 + ka < p.k {
            let i = base_a + (m0 + row) * p.k + k0 + ka;
            v = f32(a4[i / 4u][i % 4u]);
        }
        put_a(ka, row, v);
    }
    for (var r = 0u; r < B_ROWS_EACH; r++) {
        let e = tid + r * THREADS;
        var kb: u32;
        var col: u32;
        if TRANS_B {
            col = e / TILE_K;
            kb = e % TILE_K;
        } else {
            kb = e / TILE_N;
            col = e % TILE_N;
        }
        var v = 0.0;
        if k0 + kb < p.k && n0 + col < p.n {
            v = b4_elem(base_b + select((k0 + kb) * p.n + n0 + col, (n0 + col) * p.k + k0 + kb, TRANS_B));
        }
        put_b(kb, col, v);
    }
}

@compute @workgroup_size(TILE_N / BLOCK, TILE_M / BLOCK, 1)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    stage_batch = wid.z;
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TILE_N;
    let acc = gemm_tile(lid, m0, n0, 0u, p.k);
    let base = wid.z * p.batch_stride_c;
    for (var r = 0u; r < GEMM_ROWS; r++) {
        let o = gemm_row(lid, m0, n0, acc, r);
        if o.row < p.m {
            for (var j = 0u; j < 4u; j++) {
                let col = o.col + j;
                if col < p.n {
                    c[base + o.row * p.n + col] = act(with_bias(o.v[j], col));
                }
            }
        }
    }
}

fn with_bias(v: f32, col: u32) -> f32 {
    if HAS_BIAS {
        return v + bias[col];
    }
    return v;
}

// Split-K: slice wid.z % splits of K of batch item wid.z / splits into its slice sums.
@compute @workgroup_size(TILE_N / BLOCK, TILE_M / BLOCK, 1)
fn matmul_partial(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    stage_batch = wid.z / p.splits;
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TILE_N;
    let k = k_slice(wid.z % p.splits, p.k_chunk, p.k);
    let acc = gemm_tile(lid, m0, n0, k.x, k.y);
    let base = wid.z * p.m * p.n;
    for (var r = 0u; r < GEMM_ROWS; r++) {
        let o = gemm_row(lid, m0, n0, acc, r);
        if o.row < p.m {
            for (var j = 0u; j < 4u; j++) {
                if o.col + j < p.n {
                    partial_out[base + o.row * p.n + o.col + j] = o.v[j];
                }
            }
        }
    }
}

// Invocations per workgroup of matmul_reduce (`Gpu::grid_1d`).
const WG: u32 = 256u;

// Split-K's second pass: each element of C is the sum of its slices (+ bias).
@compute @workgroup_size(WG)
fn matmul_reduce(@builtin(global_invocation_id) gid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    let mn = p.m * p.n;
    if idx >= p.batch * mn {
        return;
    }
    let item = idx / mn;
    let at = idx % mn;
    let sum = slice_sum(item * p.splits * mn + at, mn, p.splits);
    c[item * p.batch_stride_c + at] = act(with_bias(sum, at % p.n));
}

// ---- matmul_blocked: the variant for CPU adapters (see `KernelClass`) ----
// No workgroup memory and no barriers; each invocation computes a 16 x 8 block of C in
// registers: 16 rows shared by the whole workgroup (loaded across the subgroup, see `a_rows`)
// times 8 consecutive columns of its own (gathered per lane from B). The block is written out: a loop over it, or an accumulator array
// indexed by anything but literals, would keep the accumulators in memory. Any M, N, K and
// either B layout; one K loop, checked by the host against the device's loop budget.
const BLOCK_ROWS: u32 = 16u;
const BLOCK_COLS: u32 = 8u;
// Invocations per workgroup of matmul_blocked.
override BLOCKED_WG: u32 = 16u;

// B[k, col] (B[col, k] when TRANS_B), col clamped into range (those columns are not stored).
fn b_at(base: u32, kk: u32, col: u32) -> f32 {
    let c = min(col, p.n - 1u);
    if TRANS_B {
        return b_elem(base + c * p.k + kk);
    }
    return b_elem(base + kk * p.n + c);
}

fn store_row(base: u32, row: u32, col0: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if row >= p.m {
        return;
    }
    for (var j = 0u; j < BLOCK_COLS; j++) {
        let col = col0 + j;
        if col >= p.n {
            return;
        }
        var v = select(hi[j - 4u], lo[j], j < 4u);
        if HAS_BIAS {
            v += bias[col];
        }
        c[base + row * p.n + col] = act(v);
    }
}

// Rows of A this lane loads for its subgroup under column kk: element j is row m0 + lane +
// LANES·j (offset `rows[j]` into A), loaded for j < 16 / LANES; row r of the block is then
// `lane_share(v[r / LANES], r % LANES)` (see conv2d.wgsl's conv2d_blocked).
fn a_rows(rows: array<u32, 16>, kk: u32) -> array<f32, 16> {
    var v: array<f32, 16>;
//#for j in 0..16
    if ${j}u < BLOCK_ROWS / LANES {
        v[${j}] = f32(a[rows[${j}] + kk]);
    }
//#end
    return v;
}

// The offsets in A (in elements of the view read, whose rows are `row_len` long) of the rows
// this lane loads: rows past M repeat the last one and are not stored.
fn lane_rows(base: u32, m0: u32, lane: u32, row_len: u32) -> array<u32, 16> {
    let last = p.m - 1u;
    var rows: array<u32, 16>;
//#for j in 0..16
    rows[${j}] = base + min(m0 + lane + LANES * ${j}u, last) * row_len;
//#end
    return rows;
}

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn matmul_blocked(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    blocked_matmul(lid, wid, 0u);
}

// matmul_blocked's body; `lane` is the invocation's lane in its subgroup (0 without LANES).
fn blocked_matmul(lid: vec3<u32>, wid: vec3<u32>, lane: u32) {
    let m0 = wid.y * BLOCK_ROWS;
    let col0 = (wid.x * BLOCKED_WG + lid.x) * BLOCK_COLS;
    let base_b = wid.z * p.batch_stride_b;
    let rows = lane_rows(wid.z * p.batch_stride_a, m0, lane, p.k);
//#for r in 0..16
    var lo${r} = vec4<f32>(0.0);
    var hi${r} = vec4<f32>(0.0);
//#end
    for (var kk = 0u; kk < p.k; kk++) {
        let bl = vec4<f32>(b_at(base_b, kk, col0), b_at(base_b, kk, col0 + 1u),
                           b_at(base_b, kk, col0 + 2u), b_at(base_b, kk, col0 + 3u));
        let bh = vec4<f32>(b_at(base_b, kk, col0 + 4u), b_at(base_b, kk, col0 + 5u),
                           b_at(base_b, kk, col0 + 6u), b_at(base_b, kk, col0 + 7u));
        let own = a_rows(rows, kk);
//#for r in 0..16
        let v${r} = lane_share(own[${r}u / LANES], ${r}u % LANES);
        lo${r} += v${r} * bl;
        hi${r} += v${r} * bh;
//#end
    }
    let base_c = wid.z * p.batch_stride_c;
//#for r in 0..16
    store_row(base_c, m0 + ${r}u, col0, lo${r}, hi${r});
//#end
}

// ---- matmul_blocked_vec4: matmul_blocked's fast path (B as (K, N), K and N multiples of 4) ----
// Each invocation computes 16 rows x 16 columns as four vec4s per row: per 4 steps of K, 16
// vec4s of A (16 / LANES loads per lane) and 16 vec4 loads of B feed 1024 multiply-adds. Row r's accumulator
// is a mat4x4 whose column j holds columns 4j .. 4j + 3 of the invocation's 16; with
// Bj = (B[k], .., B[k + 3]) restricted to those columns, it gains Bj · A[r, k .. k + 3].
// The B-side vec4 view is declared above (`b4`); C is written as scalars.
const VEC4_COLS: u32 = 16u;

fn b_rows(base4: u32, k: u32, col4: u32) -> mat4x4<f32> {
    let n4 = p.n / 4u;
    let c = min(col4, n4 - 1u);
    let i = base4 + k * n4 + c;
    return mat4x4<f32>(b_quad(i), b_quad(i + n4), b_quad(i + 2u * n4), b_quad(i + 3u * n4));
}

fn store_vec4_row(base: u32, row: u32, col0: u32, acc: mat4x4<f32>) {
    if row >= p.m {
        return;
    }
    // WGSL indexes a matrix dynamically only through memory.
    var m = acc;
    for (var j = 0u; j < 4u; j++) {
        for (var e = 0u; e < 4u; e++) {
            let col = col0 + 4u * j + e;
            if col < p.n {
                var v = m[j][e];
                if HAS_BIAS {
                    v += bias[col];
                }
                c[base + row * p.n + col] = act(v);
            }
        }
    }
}

// a_rows through the vec4 view: four steps of K from quad k4.
fn a_rows4(rows: array<u32, 16>, k4: u32) -> array<vec4<f32>, 16> {
    var v: array<vec4<f32>, 16>;
//#for j in 0..16
    if ${j}u < BLOCK_ROWS / LANES {
        v[${j}] = vec4<f32>(a4[rows[${j}] + k4]);
    }
//#end
    return v;
}

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn matmul_blocked_vec4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    blocked_matmul_vec4(lid, wid, 0u);
}

// matmul_blocked_vec4's body; `lane` as in `blocked_matmul`.
fn blocked_matmul_vec4(lid: vec3<u32>, wid: vec3<u32>, lane: u32) {
    let m0 = wid.y * BLOCK_ROWS;
    let col0 = (wid.x * BLOCKED_WG + lid.x) * VEC4_COLS;
    let k4s = p.k / 4u;
    let base_b4 = wid.z * p.batch_stride_b / 4u;
    let base_c = wid.z * p.batch_stride_c;
    let rows = lane_rows(wid.z * p.batch_stride_a / 4u, m0, lane, k4s);
//#for r in 0..16
    var c${r} = mat4x4<f32>();
//#end
    for (var k4 = 0u; k4 < k4s; k4++) {
        let b0 = b_rows(base_b4, 4u * k4, col0 / 4u);
        let b1 = b_rows(base_b4, 4u * k4, col0 / 4u + 1u);
        let b2 = b_rows(base_b4, 4u * k4, col0 / 4u + 2u);
        let b3 = b_rows(base_b4, 4u * k4, col0 / 4u + 3u);
        let own = a_rows4(rows, k4);
//#for r in 0..16
        let v${r} = lane_share4(own[${r}u / LANES], ${r}u % LANES);
        c${r} += mat4x4<f32>(b0 * v${r}, b1 * v${r}, b2 * v${r}, b3 * v${r});
//#end
    }
//#for r in 0..16
    store_vec4_row(base_c, m0 + ${r}u, col0, c${r});
//#end
}
