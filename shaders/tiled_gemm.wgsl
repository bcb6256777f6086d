// ---- The tiled (GPU-class) GEMM core shared by conv2d.wgsl, conv2d_grad.wgsl and matmul.wgsl:
// the host appends this file to each (`shader!` … `with`) ----
// C (M × N) = A (M × K) · B (K × N) over TILE_M × TILE_N tiles of C, one per workgroup of
// (TILE_M / BLOCK) × (TILE_N / BLOCK) invocations. Each invocation holds BLOCK × BLOCK outputs in
// named vec4s (`Acc`: an array indexed by a loop variable may live in memory where a driver does
// not unroll the loop): one 4 × 4 patch for BLOCK 4, or four for BLOCK 8, set TILE_M / 2 rows and
// TILE_N / 2 columns apart so that the invocations of a row still read consecutive vec4s. A and B
// are staged through workgroup memory TILE_K deep, K-major, both as vec4s so an invocation reads
// its 4 rows and its 4 columns with one load each. A workgroup covers K from k_begin to k_end,
// which split-K sets to one slice of K per workgroup layer (the host sums the slices).
// The including shader stages the tiles (the tile geometry below is what it may rely on):
//   struct GemmStage { … }                       per-invocation staging state
//   fn gemm_stage_init(tid: u32, m0: u32, n0: u32, k_begin: u32) -> GemmStage
//   fn gemm_stage(tid: u32, m0: u32, n0: u32, k0: u32, s: ptr<function, GemmStage>)
// where gemm_stage fills tile_a and tile_b with K rows k0 .. k0 + TILE_K − 1 (zeros outside the
// problem) and advances its state to the next K tile.

override TILE_M: u32 = 64u;
override TILE_N: u32 = 64u;
// Outputs per invocation along each axis: 4, or 8 (four 4 × 4 patches).
override BLOCK: u32 = 4u;
override THREADS: u32 = (TILE_M / BLOCK) * (TILE_N / BLOCK);
const TILE_K: u32 = 16u;
// Row strides of the staged tiles in vec4s: one vec4 of padding per K row, so stores that walk
// K (A read along K from a row-major matrix) spread over the banks instead of hitting one.
override A_STRIDE: u32 = TILE_M / 4u + 1u;
override B_STRIDE: u32 = TILE_N / 4u + 1u;
// The staging lanes every shape gives each invocation: A as vec4 quads of rows (TILE_K rows of
// TILE_M / 4 quads), B as single columns (TILE_K rows of TILE_N), spread evenly; the host only
// picks shapes where these divide exactly (`gpu::TILE_SHAPES`, tested there).
override A_QUADS_EACH: u32 = TILE_K * TILE_M / 4u / THREADS;
override B_ROWS_EACH: u32 = TILE_K * TILE_N / THREADS;
// Output rows per invocation (4 per patch).
override GEMM_ROWS: u32 = BLOCK * BLOCK / 4u;

// The tiles' lengths in vec4s, named: naga 30 leaves an array length given as an expression an
// unnamed override, on which its override processing panics.
override A_TILE_LEN: u32 = TILE_K * A_STRIDE;
override B_TILE_LEN: u32 = TILE_K * B_STRIDE;

var<workgroup> tile_a: array<vec4<f32>, A_TILE_LEN>;
var<workgroup> tile_b: array<vec4<f32>, B_TILE_LEN>;

// A quad q (rows 4q .. 4q + 3 of the tile) at depth kk of the staged A tile.
fn put_a4(kk: u32, q: u32, v: vec4<f32>) {
    tile_a[kk * A_STRIDE + q] = v;
}

// One element (tile row `row`, depth kk) of the staged A tile.
fn put_a(kk: u32, row: u32, v: f32) {
    tile_a[kk * A_STRIDE + row / 4u][row % 4u] = v;
}

// Columns 4q .. 4q + 3 of the staged B tile at depth kk.
fn put_b4(kk: u32, q: u32, v: vec4<f32>) {
    tile_b[kk * B_STRIDE + q] = v;
}

fn put_b(kk: u32, col: u32, v: f32) {
    tile_b[kk * B_STRIDE + col / 4u][col % 4u] = v;
}

// A 4 × 4 patch of C: row i in r<i>, its 4 columns in the lanes.
struct Patch {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// An invocation's outputs: p<R><C> is the patch in row half R and column half C (BLOCK 8); BLOCK
// 4 uses p00 only.
struct Acc {
    p00: Patch,
    p01: Patch,
    p10: Patch,
    p11: Patch,
}

fn mad_patch(acc: Patch, av: vec4<f32>, bv: vec4<f32>) -> Patch {
    return Patch(fma(vec4<f32>(av.x), bv, acc.r0), fma(vec4<f32>(av.y), bv, acc.r1),
                 fma(vec4<f32>(av.z), bv, acc.r2), fma(vec4<f32>(av.w), bv, acc.r3));
}

// This invocation's outputs of the tile at (m0, n0) over K from k_begin to k_end (multiples of
// TILE_K, or k_end the end of K).
fn gemm_tile(lid: vec3<u32>, m0: u32, n0: u32, k_begin: u32, k_end: u32) -> Acc {
    let tid = lid.y * (TILE_N / BLOCK) + lid.x;
    var stage = gemm_stage_init(tid, m0, n0, k_begin);
    let zero = Patch(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var acc = Acc(zero, zero, zero, zero);
    // The second row and column halves, in vec4s (BLOCK 8).
    let half_a = TILE_M / 8u;
    let half_b = TILE_N / 8u;
    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        gemm_stage(tid, m0, n0, k0, &stage);
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a0 = tile_a[kk * A_STRIDE + lid.y];
            let b0 = tile_b[kk * B_STRIDE + lid.x];
            acc.p00 = mad_patch(acc.p00, a0, b0);
            if BLOCK == 8u {
                let a1 = tile_a[kk * A_STRIDE + lid.y + half_a];
                let b1 = tile_b[kk * B_STRIDE + lid.x + half_b];
                acc.p01 = mad_patch(acc.p01, a0, b1);
                acc.p10 = mad_patch(acc.p10, a1, b0);
                acc.p11 = mad_patch(acc.p11, a1, b1);
            }
        }
        workgroupBarrier();
    }
    return acc;
}

// Output row r (< GEMM_ROWS) of an invocation: its row of C, first of 4 columns, and values.
struct GemmRow {
    row: u32,
    col: u32,
    v: vec4<f32>,
}

fn patch_row(pt: Patch, i: u32) -> vec4<f32> {
    switch i {
        case 0u: { return pt.r0; }
        case 1u: { return pt.r1; }
        case 2u: { return pt.r2; }
        default: { return pt.r3; }
    }
}

fn gemm_row(lid: vec3<u32>, m0: u32, n0: u32, acc: Acc, r: u32) -> GemmRow {
    let q = r / 4u;
    var patch_q = acc.p00;
    switch q {
        case 1u: { patch_q = acc.p01; }
        case 2u: { patch_q = acc.p10; }
        case 3u: { patch_q = acc.p11; }
        default: {}
    }
    let row = m0 + lid.y * 4u + (q / 2u) * (TILE_M / 2u) + r % 4u;
    let col = n0 + lid.x * 4u + (q % 2u) * (TILE_N / 2u);
    return GemmRow(row, col, patch_row(patch_q, r % 4u));
}

// Split-K's slice sums as the reduce passes read them: binding 1, each family's first input.
@group(0) @binding(1) var<storage, read> partial_in: array<f32>;

// The sum of element `at` of the first slice and its counterparts in the next, `stride` apart.
fn slice_sum(at: u32, stride: u32, splits: u32) -> f32 {
    var sum = 0.0;
    for (var s = 0u; s < splits; s++) {
        sum += partial_in[at + s * stride];
    }
    return sum;
}

// The K range of split `s` of K: slices of k_chunk (a multiple of TILE_K).
fn k_slice(s: u32, k_chunk: u32, k_total: u32) -> vec2<u32> {
    let k_begin = s * k_chunk;
    return vec2<u32>(k_begin, min(k_begin + k_chunk, k_total));
}

// ---- end of tiled_gemm.wgsl ----
