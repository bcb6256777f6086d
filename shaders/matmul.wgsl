// Tiled matrix multiply with optional bias: C[b] = A[b] · op(B[b]) (+ bias), f32 (B f32 or f16).
// A is (M, K) row-major; B is (N, K) when TRANS_B (a PyTorch Linear weight) else (K, N).
// Each 16x16 workgroup computes a TILE x TILE block of C, each thread a 4x4 patch held
// in four named vec4 accumulators (`Patch`: an array indexed by a loop variable may live in
// memory where the driver does not unroll the loop); operand tiles are staged through
// workgroup memory TILE_K at a time, both as vec4s so a thread reads its 4 rows and its 4
// columns with one load each.
// `matmul` loads scalars with bounds checks (any M, N, K); `matmul_vec4` loads both operands
// as vec4 along K and needs TRANS_B and K % 4 == 0 (the host picks it when that holds).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch_stride_a: u32,
    batch_stride_b: u32,
    batch_stride_c: u32,
}

override TRANS_B: bool = true;
override HAS_BIAS: bool = false;

const TILE: u32 = 64u;
const TILE_K: u32 = 16u;
const THREADS: u32 = 256u;

// A and C are activations, `act`: f32, or f16 in the half variant; B is a weight (f32 or packed
// f16 pairs) or, in attention's products, an activation read as packed f16 pairs; sums are f32.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<act>;
// B as raw 32-bit words, decoded by `b_elem` and `b_quad`.
@group(0) @binding(2) var<storage, read> b: array<u32>;
// Without HAS_BIAS the host binds any buffer here and it is never read.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<act>;

// The same operands seen as vec4 rows, for matmul_vec4.
@group(0) @binding(1) var<storage, read> a4: array<act4>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<u32>>;

// Set by the host for an f16 B (a weight): IEEE half values packed two to a word (element i in
// the low half of word i / 2 when i is even), else f32. The products accumulate in f32 either
// way; only B's loads differ.
override F16_WEIGHTS: bool = false;

// B element i through the scalar view (matmul, matmul_blocked).
fn b_elem(i: u32) -> f32 {
    if F16_WEIGHTS {
        return unpack2x16float(b[i / 2u])[i % 2u];
    }
    return bitcast<f32>(b[i]);
}

// B elements 4q .. 4q + 3 through the vec4 view (matmul_vec4, matmul_blocked_vec4).
fn b_quad(q: u32) -> vec4<f32> {
    if F16_WEIGHTS {
        let w = b4[q / 2u];
        let pair = select(w.xy, w.zw, q % 2u == 1u);
        return vec4<f32>(unpack2x16float(pair.x), unpack2x16float(pair.y));
    }
    return bitcast<vec4<f32>>(b4[q]);
}

var<workgroup> tile_a: array<array<vec4<f32>, 16>, TILE_K>;
var<workgroup> tile_b: array<array<vec4<f32>, 16>, TILE_K>;

fn load_a(base: u32, row: u32, col: u32) -> f32 {
    if row < p.m && col < p.k {
        return f32(a[base + row * p.k + col]);
    }
    return 0.0;
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if kk < p.k && col < p.n {
        if TRANS_B {
            return b_elem(base + col * p.k + kk);
        }
        return b_elem(base + kk * p.n + col);
    }
    return 0.0;
}

// Stages the TILE_K-deep slices of A and B starting at k0, one scalar at a time.
fn stage_scalar(tid: u32, wid: vec3<u32>, k0: u32) {
    let base_a = wid.z * p.batch_stride_a;
    let base_b = wid.z * p.batch_stride_b;
    for (var r = 0u; r < TILE * TILE_K / THREADS; r++) {
        let e = tid + r * THREADS;
        // A: consecutive threads walk K so global reads are contiguous.
        let row = e / TILE_K;
        let ka = e % TILE_K;
        tile_a[ka][row / 4u][row % 4u] = load_a(base_a, wid.y * TILE + row, k0 + ka);
        var kb: u32;
        var col: u32;
        if TRANS_B {
            col = e / TILE_K;
            kb = e % TILE_K;
        } else {
            kb = e / TILE;
            col = e % TILE;
        }
        tile_b[kb][col / 4u][col % 4u] = load_b(base_b, k0 + kb, wid.x * TILE + col);
    }
}

// The same slices as one vec4 of A and one of B per thread (TILE·TILE_K / 4 = THREADS).
fn stage_vec4(tid: u32, wid: vec3<u32>, k0: u32) {
    let row = tid / 4u;
    let quad = tid % 4u;
    let k = k0 + quad * 4u;
    let m_row = wid.y * TILE + row;
    var va = vec4<f32>(0.0);
    if m_row < p.m && k < p.k {
        va = vec4<f32>(a4[(wid.z * p.batch_stride_a + m_row * p.k + k) / 4u]);
    }
    let n_row = wid.x * TILE + row;
    var vb = vec4<f32>(0.0);
    if n_row < p.n && k < p.k {
        vb = b_quad((wid.z * p.batch_stride_b + n_row * p.k + k) / 4u);
    }
    for (var e = 0u; e < 4u; e++) {
        tile_a[quad * 4u + e][row / 4u][row % 4u] = va[e];
        tile_b[quad * 4u + e][row / 4u][row % 4u] = vb[e];
    }
}

// One thread's 4x4 patch of C: row i of the patch in r<i>, its 4 columns in the lanes.
struct Patch {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// The patch += the staged slice's contribution.
fn accumulate(lid: vec3<u32>, acc: ptr<function, Patch>) {
    for (var kk = 0u; kk < TILE_K; kk++) {
        let av = tile_a[kk][lid.y];
        let bv = tile_b[kk][lid.x];
        (*acc).r0 += av.x * bv;
        (*acc).r1 += av.y * bv;
        (*acc).r2 += av.z * bv;
        (*acc).r3 += av.w * bv;
    }
}

// Row `i` of the patch (+ bias) into C, the columns past N skipped.
fn store_patch_row(lid: vec3<u32>, wid: vec3<u32>, i: u32, v: vec4<f32>) {
    let row = wid.y * TILE + lid.y * 4u + i;
    if row >= p.m {
        return;
    }
    let base = wid.z * p.batch_stride_c + row * p.n;
    for (var j = 0u; j < 4u; j++) {
        let col = wid.x * TILE + lid.x * 4u + j;
        if col < p.n {
            var value = v[j];
            if HAS_BIAS {
                value += bias[col];
            }
            c[base + col] = act(value);
        }
    }
}

fn store(lid: vec3<u32>, wid: vec3<u32>, acc: Patch) {
    store_patch_row(lid, wid, 0u, acc.r0);
    store_patch_row(lid, wid, 1u, acc.r1);
    store_patch_row(lid, wid, 2u, acc.r2);
    store_patch_row(lid, wid, 3u, acc.r3);
}

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    var acc = Patch(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        stage_scalar(lid.y * 16u + lid.x, wid, k0);
        workgroupBarrier();
        accumulate(lid, &acc);
        workgroupBarrier();
    }
    store(lid, wid, acc);
}

@compute @workgroup_size(16, 16, 1)
fn matmul_vec4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    var acc = Patch(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        stage_vec4(lid.y * 16u + lid.x, wid, k0);
        workgroupBarrier();
        accumulate(lid, &acc);
        workgroupBarrier();
    }
    store(lid, wid, acc);
}

// ---- matmul_blocked: the variant for CPU adapters (see `KernelClass`) ----
// No workgroup memory and no barriers; each invocation computes a 16 x 8 block of C in
// registers: 16 rows shared by the whole workgroup (an A load has one address for all lanes:
// one scalar load and a broadcast on a CPU rasteriser) times 8 consecutive columns of its own
// (gathered per lane from B). The block is written out: a loop over it, or an accumulator array
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

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn matmul_blocked(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * BLOCK_ROWS;
    let col0 = (wid.x * BLOCKED_WG + lid.x) * BLOCK_COLS;
    let base_a = wid.z * p.batch_stride_a;
    let base_b = wid.z * p.batch_stride_b;
    // Rows of A; rows past M repeat the last one and are not stored.
    let last = p.m - 1u;
//#for r in 0..16
    let a${r} = base_a + min(m0 + ${r}u, last) * p.k;
//#end
//#for r in 0..16
    var lo${r} = vec4<f32>(0.0);
    var hi${r} = vec4<f32>(0.0);
//#end
    for (var kk = 0u; kk < p.k; kk++) {
        let bl = vec4<f32>(b_at(base_b, kk, col0), b_at(base_b, kk, col0 + 1u),
                           b_at(base_b, kk, col0 + 2u), b_at(base_b, kk, col0 + 3u));
        let bh = vec4<f32>(b_at(base_b, kk, col0 + 4u), b_at(base_b, kk, col0 + 5u),
                           b_at(base_b, kk, col0 + 6u), b_at(base_b, kk, col0 + 7u));
//#for r in 0..16
        let v${r} = f32(a[a${r} + kk]);
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
// uniform vec4 loads of A and 16 vec4 loads of B feed 1024 multiply-adds. Row r's accumulator
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

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn matmul_blocked_vec4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * BLOCK_ROWS;
    let col0 = (wid.x * BLOCKED_WG + lid.x) * VEC4_COLS;
    let k4s = p.k / 4u;
    let base_a4 = wid.z * p.batch_stride_a / 4u;
    let base_b4 = wid.z * p.batch_stride_b / 4u;
    let base_c = wid.z * p.batch_stride_c;
    let last = p.m - 1u;
//#for r in 0..16
    let ra${r} = base_a4 + min(m0 + ${r}u, last) * k4s;
//#end
//#for r in 0..16
    var c${r} = mat4x4<f32>();
//#end
    for (var k4 = 0u; k4 < k4s; k4++) {
        let b0 = b_rows(base_b4, 4u * k4, col0 / 4u);
        let b1 = b_rows(base_b4, 4u * k4, col0 / 4u + 1u);
        let b2 = b_rows(base_b4, 4u * k4, col0 / 4u + 2u);
        let b3 = b_rows(base_b4, 4u * k4, col0 / 4u + 3u);
//#for r in 0..16
        let v${r} = vec4<f32>(a4[ra${r} + k4]);
        c${r} += mat4x4<f32>(b0 * v${r}, b1 * v${r}, b2 * v${r}, b3 * v${r});
//#end
    }
//#for r in 0..16
    store_vec4_row(base_c, m0 + ${r}u, col0, c${r});
//#end
}
