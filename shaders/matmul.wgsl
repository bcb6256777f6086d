// Tiled matrix multiply with optional bias: C[b] = A[b] · op(B[b]) (+ bias), f32.
// A is (M, K) row-major; B is (N, K) when TRANS_B (a PyTorch Linear weight) else (K, N).
// Each 16x16 workgroup computes a TILE x TILE block of C, each thread a 4x4 patch held
// in vec4 accumulators; operand tiles are staged through workgroup memory TILE_K at a time.
// Global loads are bounds-checked, so any M, N, K works.

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

// Accumulates this thread's 4x4 patch over all of K.
fn tile_product(lid: vec3<u32>, wid: vec3<u32>) -> array<vec4<f32>, 4> {
    let tid = lid.y * 16u + lid.x;
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let base_a = wid.z * p.batch_stride_a;
    let base_b = wid.z * p.batch_stride_b;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        for (var r = 0u; r < TILE * TILE_K / THREADS; r++) {
            let e = tid + r * THREADS;
            // A: consecutive threads walk K so global reads are contiguous.
            let row = e / TILE_K;
            let ka = e % TILE_K;
            tile_a[ka][row] = load_a(base_a, m0 + row, k0 + ka);
            var kb: u32;
            var col: u32;
            if TRANS_B {
                col = e / TILE_K;
                kb = e % TILE_K;
            } else {
                kb = e / TILE;
                col = e % TILE;
            }
            tile_b[kb][col / 4u][col % 4u] = load_b(base_b, k0 + kb, n0 + col);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let bv = tile_b[kk][lid.x];
            for (var i = 0u; i < 4u; i++) {
                acc[i] += tile_a[kk][lid.y * 4u + i] * bv;
            }
        }
        workgroupBarrier();
    }
    return acc;
}

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let acc = tile_product(lid, wid);
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
