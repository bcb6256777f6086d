// 2-D convolution (NCHW, OIHW weights, groups = 1) as an implicit GEMM:
//   rows    m = output channel              (M = C_out)
//   columns n = (batch, output pixel)       (N = B * H_out * W_out)
//   depth   k = (input channel, ky, kx)     (K = C_in * KH * KW)
// The weight matrix is read as is; the input patch matrix is gathered on the fly
// (no im2col buffer). Tiling as in matmul.wgsl: 64x64 per workgroup, 4x4 per thread,
// TILE_K deep through workgroup memory. Optional fused epilogue:
//   out = (conv + bias + residual) * out_scale
// which is a diffusers ResnetBlock2D's `(shortcut + h) / output_scale_factor`, then optionally
// max(out, 0) (Inception's conv + folded batch norm + ReLU).
// Padding is PAD_Y rows above and PAD_X columns left (and as much below and right, plus any
// extra the host counted into H_out/W_out: taps past the input read zeros), so 1x7 and 7x1
// kernels pad only along their long axis.

struct Params {
    batch: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    h_out: u32,
    w_out: u32,
    out_scale: f32,
}

override KH: u32 = 3u;
override KW: u32 = 3u;
override STRIDE: u32 = 1u;
override PAD_Y: u32 = 1u;
override PAD_X: u32 = 1u;
override HAS_BIAS: bool = true;
override HAS_RESIDUAL: bool = false;
override RELU: bool = false;

// Output tile TILE x TILE per workgroup of (TILE/4)² invocations, each a 4x4 patch:
// 64 for wide layers, 32 when C_out ≤ 32 so half the tile is not idle.
override TILE: u32 = 64u;
override THREADS: u32 = TILE * TILE / 16u;
const TILE_K: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
// Bindings 3 and 4 are only read when their flag is set; the host binds a stand-in otherwise.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> tile_w: array<f32, TILE_K * TILE>;
var<workgroup> tile_x: array<vec4<f32>, TILE_K * TILE / 4u>;

fn load_weight(row: u32, k: u32, k_total: u32) -> f32 {
    if row < p.c_out && k < k_total {
        return weight[row * k_total + k];
    }
    return 0.0;
}

// One element of the virtual patch matrix: input pixel under tap k for output column n.
fn load_patch(k: u32, k_total: u32, b: u32, oy: u32, ox: u32, valid_n: bool) -> f32 {
    if !valid_n || k >= k_total {
        return 0.0;
    }
    let ci = k / (KH * KW);
    let tap = k % (KH * KW);
    let iy = i32(oy * STRIDE + tap / KW) - i32(PAD_Y);
    let ix = i32(ox * STRIDE + tap % KW) - i32(PAD_X);
    if iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w) {
        return 0.0;
    }
    return x[((b * p.c_in + ci) * p.h + u32(iy)) * p.w + u32(ix)];
}

@compute @workgroup_size(TILE / 4u, TILE / 4u, 1)
fn conv2d(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tid = lid.y * (TILE / 4u) + lid.x;
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let k_total = p.c_in * KH * KW;
    let hw_out = p.h_out * p.w_out;
    let n_total = p.batch * hw_out;

    // Each thread gathers one fixed patch column, so its pixel is decoded once.
    let my_col = tid % TILE;
    let my_n = n0 + my_col;
    let valid_n = my_n < n_total;
    let my_b = my_n / hw_out;
    let my_oy = (my_n % hw_out) / p.w_out;
    let my_ox = my_n % p.w_out;

    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = 0u; k0 < k_total; k0 += TILE_K) {
        for (var r = 0u; r < TILE * TILE_K / THREADS; r++) {
            let e = tid + r * THREADS;
            let row = e / TILE_K;
            let kw = e % TILE_K;
            tile_w[kw * TILE + row] = load_weight(m0 + row, k0 + kw, k_total);
            let kx = e / TILE;
            tile_x[kx * (TILE / 4u) + my_col / 4u][my_col % 4u] =
                load_patch(k0 + kx, k_total, my_b, my_oy, my_ox, valid_n);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let xv = tile_x[kk * (TILE / 4u) + lid.x];
            for (var i = 0u; i < 4u; i++) {
                acc[i] += tile_w[kk * TILE + lid.y * 4u + i] * xv;
            }
        }
        workgroupBarrier();
    }

    for (var j = 0u; j < 4u; j++) {
        let n = n0 + lid.x * 4u + j;
        if n >= n_total {
            continue;
        }
        let b = n / hw_out;
        let pix = n % hw_out;
        for (var i = 0u; i < 4u; i++) {
            let co = m0 + lid.y * 4u + i;
            if co >= p.c_out {
                continue;
            }
            let idx = (b * p.c_out + co) * hw_out + pix;
            var v = acc[i][j];
            if HAS_BIAS {
                v += bias[co];
            }
            if HAS_RESIDUAL {
                v = (v + residual[idx]) * p.out_scale;
            }
            if RELU {
                v = max(v, 0.0);
            }
            out[idx] = v;
        }
    }
}
