// Input gradient of conv2d.wgsl (NCHW, OIHW weights, groups = 1) as an implicit GEMM:
//   rows    m = input channel             (M = C_in)
//   columns n = (batch, input pixel)      (N = B * H * W)
//   depth   k = (output channel, ky, kx)  (K = C_out * KH * KW)
//   dx[b, ci, iy, ix] = Σ w[co, ci, ky, kx] · dy[b, co, oy, ox]
// over the taps with oy·STRIDE + ky − PAD = iy and ox·STRIDE + kx − PAD = ix inside dy. Taps that
// fall between strided outputs or off dy contribute nothing, so no transposed or flipped weight is
// materialised. The forward's extra bottom/right padding only shapes dy (h_out, w_out): the zeros
// it adds have no gradient. The GEMM is tiled_gemm.wgsl's (appended by the host), staged from
// this file's `gemm_a` (the transposed weight) and `gemm_b` (the output gradient).

struct Params {
    batch: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    h_out: u32,
    w_out: u32,
    // Split-K: the depth of one slice (a multiple of TILE_K) and the number of slices.
    k_chunk: u32,
    splits: u32,
}

override KH: u32 = 3u;
override KW: u32 = 3u;
override STRIDE: u32 = 1u;
override PAD: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
// Split-K's slice sums (split, C_in, N) are written by conv2d_input_grad_partial in dx's place
// and read by conv2d_input_grad_reduce in dy's (tiled_gemm.wgsl's `partial_in`).

// Weight entry (row ci, depth k = (co, tap)) of the transposed weight matrix.
fn gemm_a(ci: u32, k: u32, k_total: u32) -> f32 {
    if ci < p.c_in && k < k_total {
        let taps = KH * KW;
        return weight[((k / taps) * p.c_in + ci) * taps + k % taps];
    }
    return 0.0;
}

// The dy value that tap k = (co, ky, kx) of input pixel `col` reads, or 0 where none does.
fn gemm_b(k: u32, k_total: u32, col: GemmStage) -> f32 {
    if !col.valid || k >= k_total {
        return 0.0;
    }
    let co = k / (KH * KW);
    let tap = k % (KH * KW);
    let ty = i32(col.y + PAD) - i32(tap / KW);
    let tx = i32(col.x + PAD) - i32(tap % KW);
    if ty < 0 || tx < 0 || u32(ty) % STRIDE != 0u || u32(tx) % STRIDE != 0u {
        return 0.0;
    }
    let oy = u32(ty) / STRIDE;
    let ox = u32(tx) / STRIDE;
    if oy >= p.h_out || ox >= p.w_out {
        return 0.0;
    }
    return dy[((col.b * p.c_out + co) * p.h_out + oy) * p.w_out + ox];
}

// The staging state: this invocation's B column (input pixel), decoded once.
struct GemmStage {
    valid: bool,
    b: u32,
    y: u32,
    x: u32,
}

fn gemm_stage_init(tid: u32, m0: u32, n0: u32, k_begin: u32) -> GemmStage {
    let hw = p.h * p.w;
    let n = n0 + tid % TILE_N;
    return GemmStage(n < p.batch * hw, n / hw, (n % hw) / p.w, n % p.w);
}

// Stages scalars: A along K (consecutive invocations read consecutive taps), B down its column.
fn gemm_stage(tid: u32, m0: u32, n0: u32, k0: u32, s: ptr<function, GemmStage>) {
    let k_total = p.c_out * KH * KW;
    for (var r = 0u; r < 4u * A_QUADS_EACH; r++) {
        let e = tid + r * THREADS;
        let row = e / TILE_K;
        let ka = e % TILE_K;
        put_a(ka, row, gemm_a(m0 + row, k0 + ka, k_total));
    }
    let col = tid % TILE_N;
    for (var r = 0u; r < B_ROWS_EACH; r++) {
        let kb = tid / TILE_N + r * (THREADS / TILE_N);
        put_b(kb, col, gemm_b(k0 + kb, k_total, *s));
    }
}

@compute @workgroup_size(TILE_N / BLOCK, TILE_M / BLOCK, 1)
fn conv2d_input_grad(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let hw = p.h * p.w;
    let n_total = p.batch * hw;
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TILE_N;
    let acc = gemm_tile(lid, m0, n0, 0u, p.c_out * KH * KW);
    for (var r = 0u; r < GEMM_ROWS; r++) {
        let o = gemm_row(lid, m0, n0, acc, r);
        if o.row < p.c_in {
            for (var j = 0u; j < 4u; j++) {
                let n = o.col + j;
                if n < n_total {
                    dx[((n / hw) * p.c_in + o.row) * hw + n % hw] = o.v[j];
                }
            }
        }
    }
}

// Split-K: slice wid.z of K into its sums, rows of N per input channel, in dx's binding.
@compute @workgroup_size(TILE_N / BLOCK, TILE_M / BLOCK, 1)
fn conv2d_input_grad_partial(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let n_total = p.batch * p.h * p.w;
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TILE_N;
    let k = k_slice(wid.z, p.k_chunk, p.c_out * KH * KW);
    let acc = gemm_tile(lid, m0, n0, k.x, k.y);
    for (var r = 0u; r < GEMM_ROWS; r++) {
        let o = gemm_row(lid, m0, n0, acc, r);
        if o.row < p.c_in {
            let base = (wid.z * p.c_in + o.row) * n_total;
            for (var j = 0u; j < 4u; j++) {
                if o.col + j < n_total {
                    dx[base + o.col + j] = o.v[j];
                }
            }
        }
    }
}

// Split-K's second pass: each element of dx is the sum of its slices.
@compute @workgroup_size(LINEAR_WG)
fn conv2d_input_grad_reduce(@builtin(global_invocation_id) gid: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * LINEAR_WG;
    let hw = p.h * p.w;
    let n_total = p.batch * hw;
    if idx >= n_total * p.c_in {
        return;
    }
    let ci = (idx / hw) % p.c_in;
    let n = (idx / (p.c_in * hw)) * hw + idx % hw;
    dx[idx] = slice_sum(ci * n_total + n, p.c_in * n_total, p.splits);
}

// ---- The input gradient as a forward convolution (the host's path on the blocked class) ----
// ∂⟨conv(x, w, stride s, pad p), dy⟩/∂x = conv(dy', w', pad 0) where
//   w'[ci, co, ky, kx] = w[co, ci, KH − 1 − ky, KW − 1 − kx]                   (flip_weight)
//   dy' (B, C_out, H + KH − 1, W + KW − 1) holds dy[oy, ox] at (KH − 1 − p + s·oy,
//       KW − 1 − p + s·ox) and zeros elsewhere                                 (dilate_pad)
// so conv2d.wgsl's kernels, faster there than conv2d_input_grad above, compute it. For stride 1
// the host skips dy' and pads the convolution by K − 1 − p instead. Reversing both spatial axes
// reverses the flattened tap index ky·KW + kx.

struct FlipParams {
    c_out: u32,
    c_in: u32,
    taps: u32,
}

const LINEAR_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> fp: FlipParams;
@group(0) @binding(1) var<storage, read> flip_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> flip_dst: array<f32>;

@compute @workgroup_size(LINEAR_WG)
fn flip_weight(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * LINEAR_WG;
    if i >= fp.c_out * fp.c_in * fp.taps {
        return;
    }
    // i indexes w' as (ci, co, tap).
    let tap = i % fp.taps;
    let co = (i / fp.taps) % fp.c_out;
    let ci = i / (fp.taps * fp.c_out);
    flip_dst[i] = flip_src[(co * fp.c_in + ci) * fp.taps + (fp.taps - 1u - tap)];
}

struct DilateParams {
    planes: u32,   // B·C_out
    h_out: u32,
    w_out: u32,
    h_pad: u32,    // H + KH − 1
    w_pad: u32,    // W + KW − 1
    stride: u32,
    top: u32,      // KH − 1 − p
    left: u32,     // KW − 1 − p
}

@group(0) @binding(0) var<uniform> dp: DilateParams;
@group(0) @binding(1) var<storage, read> dilate_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dilate_dst: array<f32>;

// One invocation per element of dy', reading the dy element that lands there, if any (taps of dy
// beyond dy' only ever meet the forward's padding, so they are dropped).
@compute @workgroup_size(LINEAR_WG)
fn dilate_pad(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * LINEAR_WG;
    if i >= dp.planes * dp.h_pad * dp.w_pad {
        return;
    }
    let plane = i / (dp.h_pad * dp.w_pad);
    let y = (i / dp.w_pad) % dp.h_pad;
    let x = i % dp.w_pad;
    var v = 0.0;
    if y >= dp.top && x >= dp.left {
        let ry = y - dp.top;
        let rx = x - dp.left;
        let oy = ry / dp.stride;
        let ox = rx / dp.stride;
        if ry % dp.stride == 0u && rx % dp.stride == 0u && oy < dp.h_out && ox < dp.w_out {
            v = dilate_src[(plane * dp.h_out + oy) * dp.w_out + ox];
        }
    }
    dilate_dst[i] = v;
}
