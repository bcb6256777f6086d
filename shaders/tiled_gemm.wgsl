// ---- The tiled (GPU-class) implicit GEMM shared by conv2d.wgsl's `conv2d` and conv2d_grad.wgsl's
// `conv2d_input_grad`: the host appends this file to both (`shader!` … `with`) ----
// C (M × N) = A (M × K) · B (K × N) over TILE × TILE tiles of C, one per workgroup of (TILE/4)²
// invocations; each invocation holds a 4 × 4 patch in the named vec4s of `Patch` (an array
// indexed by a loop variable may live in memory where a driver does not unroll the loop), and
// A and B are staged through workgroup memory TILE_K deep, both as vec4s so an invocation reads
// its 4 rows and its 4 columns with one load each. Columns are pixels (batch, y, x) of a plane;
// the including shader defines how A and B read:
//   fn gemm_a(row: u32, k: u32, k_total: u32) -> f32          A[row, k], 0 outside
//   fn gemm_b(k: u32, k_total: u32, col: GemmColumn) -> f32   B[k, col], 0 outside

// TILE is 64 for wide layers, 32 when M ≤ 32 so half the tile is not idle.
override TILE: u32 = 64u;
override THREADS: u32 = TILE * TILE / 16u;
const TILE_K: u32 = 16u;

var<workgroup> tile_a: array<vec4<f32>, TILE_K * TILE / 4u>;
var<workgroup> tile_b: array<vec4<f32>, TILE_K * TILE / 4u>;

// Column n of B decoded once per invocation: its batch item and pixel (y, x) in a w-wide plane.
struct GemmColumn {
    valid: bool,
    b: u32,
    y: u32,
    x: u32,
}

// An invocation's 4 × 4 patch of C: row i in r<i>, its 4 columns in the lanes.
struct Patch {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// This invocation's patch of C for columns that are pixels of (plane_hw / plane_w) × plane_w
// planes, n_total of them.
fn gemm_patch(lid: vec3<u32>, wid: vec3<u32>, k_total: u32, n_total: u32, plane_w: u32,
              plane_hw: u32) -> Patch {
    let tid = lid.y * (TILE / 4u) + lid.x;
    let m0 = wid.y * TILE;
    // Each invocation stages one fixed column of B, so its pixel is decoded once.
    let my_col = tid % TILE;
    let n = wid.x * TILE + my_col;
    let col = GemmColumn(n < n_total, n / plane_hw, (n % plane_hw) / plane_w, n % plane_w);
    var acc = Patch(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < k_total; k0 += TILE_K) {
        for (var r = 0u; r < TILE * TILE_K / THREADS; r++) {
            let e = tid + r * THREADS;
            let row = e / TILE_K;
            let ka = e % TILE_K;
            tile_a[ka * (TILE / 4u) + row / 4u][row % 4u] = gemm_a(m0 + row, k0 + ka, k_total);
            let kb = e / TILE;
            tile_b[kb * (TILE / 4u) + my_col / 4u][my_col % 4u] = gemm_b(k0 + kb, k_total, col);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let av = tile_a[kk * (TILE / 4u) + lid.y];
            let bv = tile_b[kk * (TILE / 4u) + lid.x];
            acc.r0 += av.x * bv;
            acc.r1 += av.y * bv;
            acc.r2 += av.z * bv;
            acc.r3 += av.w * bv;
        }
        workgroupBarrier();
    }
    return acc;
}

// ---- end of tiled_gemm.wgsl ----
