// Tiled matrix multiply with optional bias: C[b] = A[b] · op(B[b]) (+ bias), f32.
// A is (M, K) row-major; B is (N, K) when TRANS_B (a PyTorch Linear weight) else (K, N).
// Each 16x16 workgroup computes a TILE x TILE block of C, each thread a 4x4 patch held
// in vec4 accumulators; operand tiles are staged through workgroup memory TILE_K at a time.
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

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
// Without HAS_BIAS the host binds any buffer here and it is never read.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// The same operands seen as vec4 rows, for matmul_vec4.
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;

var<workgroup> tile_a: array<array<f32, TILE>, TILE_K>;
var<workgroup> tile_b: array<array<vec4<f32>, 16>, TILE_K>;

fn load_a(base: u32, row: u32, col: u32) -> f32 {
    if row < p.m && col < p.k {
        return a[base + row * p.k + col];
    }
    return 0.0;
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if kk < p.k && col < p.n {
        if TRANS_B {
            return b[base + col * p.k + kk];
        }
        return b[base + kk * p.n + col];
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
        tile_a[ka][row] = load_a(base_a, wid.y * TILE + row, k0 + ka);
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
        va = a4[(wid.z * p.batch_stride_a + m_row * p.k + k) / 4u];
    }
    let n_row = wid.x * TILE + row;
    var vb = vec4<f32>(0.0);
    if n_row < p.n && k < p.k {
        vb = b4[(wid.z * p.batch_stride_b + n_row * p.k + k) / 4u];
    }
    for (var e = 0u; e < 4u; e++) {
        tile_a[quad * 4u + e][row] = va[e];
        tile_b[quad * 4u + e][row / 4u][row % 4u] = vb[e];
    }
}

// acc[i] (row i of this thread's patch, 4 columns) += the staged slice's contribution.
fn accumulate(lid: vec3<u32>, acc: ptr<function, array<vec4<f32>, 4>>) {
    for (var kk = 0u; kk < TILE_K; kk++) {
        let bv = tile_b[kk][lid.x];
        for (var i = 0u; i < 4u; i++) {
            (*acc)[i] += tile_a[kk][lid.y * 4u + i] * bv;
        }
    }
}

fn store(lid: vec3<u32>, wid: vec3<u32>, acc: array<vec4<f32>, 4>) {
    let base_c = wid.z * p.batch_stride_c;
    for (var i = 0u; i < 4u; i++) {
        let row = wid.y * TILE + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = wid.x * TILE + lid.x * 4u + j;
            if row < p.m && col < p.n {
                var v = acc[i][j];
                if HAS_BIAS {
                    v += bias[col];
                }
                c[base_c + row * p.n + col] = v;
            }
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
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
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        stage_vec4(lid.y * 16u + lid.x, wid, k0);
        workgroupBarrier();
        accumulate(lid, &acc);
        workgroupBarrier();
    }
    store(lid, wid, acc);
}
