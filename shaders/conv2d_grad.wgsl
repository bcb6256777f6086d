// Input gradient of conv2d.wgsl (NCHW, OIHW weights, groups = 1) as an implicit GEMM:
//   rows    m = input channel             (M = C_in)
//   columns n = (batch, input pixel)      (N = B * H * W)
//   depth   k = (output channel, ky, kx)  (K = C_out * KH * KW)
//   dx[b, ci, iy, ix] = Σ w[co, ci, ky, kx] · dy[b, co, oy, ox]
// over the taps with oy·STRIDE + ky − PAD = iy and ox·STRIDE + kx − PAD = ix inside dy. Taps that
// fall between strided outputs or off dy contribute nothing, so no transposed or flipped weight is
// materialised. The forward's extra bottom/right padding only shapes dy (h_out, w_out): the zeros
// it adds have no gradient. Tiling as in conv2d.wgsl: TILE x TILE per workgroup, 4x4 per thread.

struct Params {
    batch: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    h_out: u32,
    w_out: u32,
}

override KH: u32 = 3u;
override KW: u32 = 3u;
override STRIDE: u32 = 1u;
override PAD: u32 = 1u;
override TILE: u32 = 64u;
override THREADS: u32 = TILE * TILE / 16u;
const TILE_K: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

var<workgroup> tile_w: array<f32, TILE_K * TILE>;
var<workgroup> tile_g: array<vec4<f32>, TILE_K * TILE / 4u>;

// Weight entry (row ci, depth k = (co, tap)) of the transposed weight matrix.
fn load_weight(ci: u32, k: u32, k_total: u32) -> f32 {
    if ci < p.c_in && k < k_total {
        let taps = KH * KW;
        return weight[((k / taps) * p.c_in + ci) * taps + k % taps];
    }
    return 0.0;
}

// The dy value that tap k = (co, ky, kx) of input pixel (iy, ix) reads, or 0 where none does.
fn load_grad(k: u32, k_total: u32, b: u32, iy: u32, ix: u32, valid_n: bool) -> f32 {
    if !valid_n || k >= k_total {
        return 0.0;
    }
    let co = k / (KH * KW);
    let tap = k % (KH * KW);
    let ty = i32(iy + PAD) - i32(tap / KW);
    let tx = i32(ix + PAD) - i32(tap % KW);
    if ty < 0 || tx < 0 || u32(ty) % STRIDE != 0u || u32(tx) % STRIDE != 0u {
        return 0.0;
    }
    let oy = u32(ty) / STRIDE;
    let ox = u32(tx) / STRIDE;
    if oy >= p.h_out || ox >= p.w_out {
        return 0.0;
    }
    return dy[((b * p.c_out + co) * p.h_out + oy) * p.w_out + ox];
}

@compute @workgroup_size(TILE / 4u, TILE / 4u, 1)
fn conv2d_input_grad(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tid = lid.y * (TILE / 4u) + lid.x;
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let k_total = p.c_out * KH * KW;
    let hw = p.h * p.w;
    let n_total = p.batch * hw;

    // Each thread gathers one fixed column, so its pixel is decoded once.
    let my_col = tid % TILE;
    let my_n = n0 + my_col;
    let valid_n = my_n < n_total;
    let my_b = my_n / hw;
    let my_iy = (my_n % hw) / p.w;
    let my_ix = my_n % p.w;

    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < k_total; k0 += TILE_K) {
        for (var r = 0u; r < TILE * TILE_K / THREADS; r++) {
            let e = tid + r * THREADS;
            let row = e / TILE_K;
            let kw = e % TILE_K;
            tile_w[kw * TILE + row] = load_weight(m0 + row, k0 + kw, k_total);
            let kg = e / TILE;
            tile_g[kg * (TILE / 4u) + my_col / 4u][my_col % 4u] =
                load_grad(k0 + kg, k_total, my_b, my_iy, my_ix, valid_n);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let gv = tile_g[kk * (TILE / 4u) + lid.x];
            for (var i = 0u; i < 4u; i++) {
                acc[i] += tile_w[kk * TILE + lid.y * 4u + i] * gv;
            }
        }
        workgroupBarrier();
    }

    for (var j = 0u; j < 4u; j++) {
        let n = n0 + lid.x * 4u + j;
        if n >= n_total {
            continue;
        }
        let b = n / hw;
        let pix = n % hw;
        for (var i = 0u; i < 4u; i++) {
            let ci = m0 + lid.y * 4u + i;
            if ci < p.c_in {
                dx[(b * p.c_in + ci) * hw + pix] = acc[i][j];
            }
        }
    }
}

// ---- flip_weight: the weight whose convolution is a stride-1 convolution's input gradient ----
// For stride 1, ∂⟨conv(x, w, pad), dy⟩/∂x = conv(dy, w', KH − 1 − pad) with
// w'[ci, co, ky, kx] = w[co, ci, KH − 1 − ky, KW − 1 − kx]: the host runs that through conv2d.wgsl's
// kernels where they are faster than conv2d_input_grad above (the blocked class). Reversing both
// spatial axes reverses the flattened tap index ky·KW + kx.

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
