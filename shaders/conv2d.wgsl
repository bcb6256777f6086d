// 2-D convolution (NCHW, OIHW weights, groups = 1) as an implicit GEMM:
//   rows    m = output channel              (M = C_out)
//   columns n = (batch, output pixel)       (N = B * H_out * W_out)
//   depth   k = (tap, input channel)        (K = KH * KW * C_in_pad)
// The tiled kernels (GPU class) read the weight staged tap-major by `restage_weight` (once, at
// load): K × M_pad with input channels padded with zeros to a multiple of TILE_K, so that a K tile
// lies under one tap (ky, kx) and the K loop has no division, and output channels padded to a
// multiple of 4, so that an A tile row is read as aligned, coalesced vec4s. The input patch matrix
// is gathered on the fly (no im2col buffer); the GEMM is tiled_gemm.wgsl's (appended by the host).
// Optional fused epilogue:
//   out = (conv + bias + residual) * out_scale
// which is a diffusers ResnetBlock2D's `(shortcut + h) / output_scale_factor`, then optionally
// max(out, 0) (Inception's conv + folded batch norm + ReLU). With split-K, `conv2d_partial`
// writes each K slice's sums and `conv2d_reduce` adds them up through the epilogue.
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
    // The tiled kernels' staged weight: input channels per tap and rows (output channels), padded.
    c_in_pad: u32,
    m_pad: u32,
    // Split-K: the depth of one slice (a multiple of TILE_K) and the number of slices.
    k_chunk: u32,
    splits: u32,
}

override KH: u32 = 3u;
override KW: u32 = 3u;
override STRIDE: u32 = 1u;
override PAD_Y: u32 = 1u;
override PAD_X: u32 = 1u;
override HAS_BIAS: bool = true;
override HAS_RESIDUAL: bool = false;
override RELU: bool = false;

// Activations (x, residual, out) are `act`: f32, or f16 in the half variant (f16 activations);
// products and sums are f32 either way.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<act>;
// The weights as raw 32-bit words, decoded by `weight_at` (and `weight4_quad`).
@group(0) @binding(2) var<storage, read> weight: array<u32>;
// Bindings 3 and 4 are only read when their flag is set; the host binds a stand-in otherwise.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<act>;
@group(0) @binding(5) var<storage, read_write> out: array<act>;
// The input seen as vec4s, conv2d_blocked's only view of it (an entry point may use one view of
// a binding; buffers are padded to whole vec4s).
@group(0) @binding(1) var<storage, read> x4: array<act4>;
// Split-K's f32 slice sums (split, C_out, N): written by conv2d_partial in the output's place,
// read by conv2d_reduce in the input's (tiled_gemm.wgsl's `partial_in`).
@group(0) @binding(5) var<storage, read_write> partial_out: array<f32>;

// Set by the host for an f16 weight tensor: IEEE half values packed two to a word (element i
// in the low half of word i / 2 when i is even), else f32. Either way the products accumulate
// in f32; only the weight loads differ.
override F16_WEIGHTS: bool = false;

// Weight element i through the scalar view (restage_weight's and the blocked kernels').
fn weight_at(i: u32) -> f32 {
    if F16_WEIGHTS {
        return unpack2x16float(weight[i / 2u])[i % 2u];
    }
    return bitcast<f32>(weight[i]);
}

// The weights seen as vec4s: the tiled kernels' view (an entry point may use one view of a
// binding; buffers are padded to whole vec4s).
@group(0) @binding(2) var<storage, read> weight4: array<vec4<u32>>;

// Weight elements 4q .. 4q + 3 through the vec4 view.
fn weight4_quad(q: u32) -> vec4<f32> {
    if F16_WEIGHTS {
        let w = weight4[q / 2u];
        let pair = select(w.xy, w.zw, q % 2u == 1u);
        return vec4<f32>(unpack2x16float(pair.x), unpack2x16float(pair.y));
    }
    return bitcast<vec4<f32>>(weight4[q]);
}

// The tiled kernels' staging state: the input pixel this invocation stages for its B column, and
// the tap and first input channel of the next K tile.
struct GemmStage {
    valid: bool,
    // Offset of the pixel's image (batch item) in x, and its window's top left corner.
    image: u32,
    iy0: i32,
    ix0: i32,
    ky: u32,
    kx: u32,
    ci0: u32,
}

fn gemm_stage_init(tid: u32, m0: u32, n0: u32, k_begin: u32) -> GemmStage {
    let hw_out = p.h_out * p.w_out;
    let n = n0 + tid % TILE_N;
    let pixel = n % hw_out;
    let tap = k_begin / p.c_in_pad;
    return GemmStage(
        n < p.batch * hw_out,
        (n / hw_out) * p.c_in * p.h * p.w,
        i32((pixel / p.w_out) * STRIDE) - i32(PAD_Y),
        i32((pixel % p.w_out) * STRIDE) - i32(PAD_X),
        tap / KW,
        tap % KW,
        k_begin - tap * p.c_in_pad,
    );
}

fn gemm_stage(tid: u32, m0: u32, n0: u32, k0: u32, s: ptr<function, GemmStage>) {
    // A: TILE_K rows of the staged weight, TILE_M / 4 aligned quads each.
    let quads = TILE_M / 4u;
    for (var r = 0u; r < A_QUADS_EACH; r++) {
        let e = tid + r * THREADS;
        let kk = e / quads;
        let m = m0 + 4u * (e % quads);
        var v = vec4<f32>(0.0);
        if m < p.m_pad {
            v = weight4_quad(((k0 + kk) * p.m_pad + m) / 4u);
        }
        put_a4(kk, e % quads, v);
    }
    // B: this invocation's pixel under tap (ky, kx), input channels ci0 + kb.
    let iy = (*s).iy0 + i32((*s).ky);
    let ix = (*s).ix0 + i32((*s).kx);
    let inside = (*s).valid && iy >= 0 && ix >= 0 && iy < i32(p.h) && ix < i32(p.w);
    let hw = p.h * p.w;
    let at = (*s).image + select(0u, u32(iy) * p.w + u32(ix), inside);
    let col = tid % TILE_N;
    for (var r = 0u; r < B_ROWS_EACH; r++) {
        let kb = tid / TILE_N + r * (THREADS / TILE_N);
        let ci = (*s).ci0 + kb;
        var v = 0.0;
        if inside && ci < p.c_in {
            v = f32(x[at + ci * hw]);
        }
        put_b(kb, col, v);
    }
    (*s).ci0 += TILE_K;
    if (*s).ci0 == p.c_in_pad {
        (*s).ci0 = 0u;
        (*s).kx += 1u;
        if (*s).kx == KW {
            (*s).kx = 0u;
            (*s).ky += 1u;
        }
    }
}

@compute @workgroup_size(TILE_N / BLOCK, TILE_M / BLOCK, 1)
fn conv2d(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let hw_out = p.h_out * p.w_out;
    let n_total = p.batch * hw_out;
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TILE_N;
    let acc = gemm_tile(lid, m0, n0, 0u, KH * KW * p.c_in_pad);
    for (var r = 0u; r < GEMM_ROWS; r++) {
        let o = gemm_row(lid, m0, n0, acc, r);
        store_channel(o.row, o.col, hw_out, n_total, o.v);
    }
}

// Split-K: slice wid.z of K into the f32 slice sums (C_out rows of N per slice).
@compute @workgroup_size(TILE_N / BLOCK, TILE_M / BLOCK, 1)
fn conv2d_partial(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let n_total = p.batch * p.h_out * p.w_out;
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TILE_N;
    let k = k_slice(wid.z, p.k_chunk, KH * KW * p.c_in_pad);
    let acc = gemm_tile(lid, m0, n0, k.x, k.y);
    for (var r = 0u; r < GEMM_ROWS; r++) {
        let o = gemm_row(lid, m0, n0, acc, r);
        if o.row < p.c_out {
            let base = (wid.z * p.c_out + o.row) * n_total;
            for (var j = 0u; j < 4u; j++) {
                if o.col + j < n_total {
                    partial_out[base + o.col + j] = o.v[j];
                }
            }
        }
    }
}

// Invocations per workgroup of the one-element-per-invocation kernels (`Gpu::grid_1d`).
const WG: u32 = 256u;

// Split-K's second pass: each output element is the sum of its slices through the epilogue.
@compute @workgroup_size(WG)
fn conv2d_reduce(@builtin(global_invocation_id) gid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    let hw_out = p.h_out * p.w_out;
    let n_total = p.batch * hw_out;
    if idx >= n_total * p.c_out {
        return;
    }
    let b = idx / (p.c_out * hw_out);
    let co = (idx / hw_out) % p.c_out;
    let n = b * hw_out + idx % hw_out;
    let sum = slice_sum(co * n_total + n, p.c_out * n_total, p.splits);
    out[idx] = act(epilogue(sum, co, idx));
}

// The staged weight's geometry (restage_weight).
struct StageParams {
    c_out: u32,
    c_in: u32,
    taps: u32,
    c_in_pad: u32,
    m_pad: u32,
    // Elements written: of the staged weight, or of the OIHW weight with UNSTAGE.
    total: u32,
}

@group(0) @binding(0) var<uniform> sp: StageParams;
// Set by the host to turn a staged weight back into OIHW (the input gradient reads it so).
override UNSTAGE: bool = false;

// The tiled kernels' weight layout: OIHW (C_out, C_in, KH·KW) into tap-major (KH·KW, C_in_pad,
// M_pad), zeros in the padding; with UNSTAGE the way back. Reads `weight` (binding 2) and writes
// `out` (binding 5), in the weight's storage type (the half variant for f16).
@compute @workgroup_size(WG)
fn restage_weight(@builtin(global_invocation_id) gid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= sp.total {
        return;
    }
    if UNSTAGE {
        let co = i / (sp.c_in * sp.taps);
        let ci = (i / sp.taps) % sp.c_in;
        let tap = i % sp.taps;
        out[i] = act(weight_at((tap * sp.c_in_pad + ci) * sp.m_pad + co));
        return;
    }
    let co = i % sp.m_pad;
    let ci = (i / sp.m_pad) % sp.c_in_pad;
    let tap = i / (sp.m_pad * sp.c_in_pad);
    var v = 0.0;
    if co < sp.c_out && ci < sp.c_in {
        v = weight_at((co * sp.c_in + ci) * sp.taps + tap);
    }
    out[i] = act(v);
}

// Output channel `co` at columns n0 .. n0 + 3 (batch, pixel) through the fused epilogue; columns
// past the end skipped.
fn store_channel(co: u32, n0: u32, hw_out: u32, n_total: u32, v: vec4<f32>) {
    if co >= p.c_out {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + j;
        if n >= n_total {
            return;
        }
        let idx = ((n / hw_out) * p.c_out + co) * hw_out + n % hw_out;
        out[idx] = act(epilogue(v[j], co, idx));
    }
}

// The fused epilogue of output element `idx` (channel `co`): + bias, then (· + residual) ·
// out_scale, then max(·, 0), each where the host set its flag.
fn epilogue(conv: f32, co: u32, idx: u32) -> f32 {
    var v = conv;
    if HAS_BIAS {
        v += bias[co];
    }
    if HAS_RESIDUAL {
        v = (v + f32(residual[idx])) * p.out_scale;
    }
    if RELU {
        v = max(v, 0.0);
    }
    return v;
}

// ---- conv2d_blocked: the variant for CPU adapters (see `KernelClass`) ----
// No workgroup memory and no barriers (a CPU rasteriser runs a workgroup's invocations as SIMD
// lanes of one thread, and a barrier is a coroutine switch). Each invocation computes a 16 x 8
// block of the output held in registers: 16 output channels shared by the whole workgroup times
// 8 consecutive output pixels of one row (read per lane straight from storage). 16 x 8 beat
// 8 x 8 by 1.4x on lavapipe. The block is written out rather than looped over: a loop, or an
// accumulator array indexed by anything but literals, puts the accumulators in memory (measured
// 3x slower on lavapipe). Only the input-channel and tap loops remain; the host checks them
// against the device's loop budget.
//
// The block's weights under a tap are the same for every lane, but lavapipe turns a storage
// load inside a loop into a loop over the lanes, one scalar at a time, whether or not the
// address is the same on all of them: a load costs per lane and component. So the lanes of a
// subgroup share the loading (`tap_rows`): lane l loads rows l, l + LANES, ... and `lane_share`
// hands each row to every lane (a subgroup shuffle by a constant lane: one vector permute).
// LANES is the subgroup size (lanes_subgroup.wgsl, the `*_lanes` entry points), or 1 where the
// device has no subgroups (lanes_off.wgsl: each invocation loads all its rows).
const BLOCK_ROWS: u32 = 16u;
// Set by the host: 32 output channels per invocation instead of 16 (twice the FMAs per input
// load).
override WIDE_BLOCK: bool = false;
const BLOCK_PIXELS: u32 = 8u;
// Invocations per workgroup of conv2d_blocked.
override BLOCKED_WG: u32 = 16u;

// Input element i through the vec4 view.
fn x_at(i: u32) -> f32 {
    return f32(x4[i / 4u][i % 4u]);
}

// Input row `iy` of `plane` at columns ix0, ix0 + STRIDE, ... (four of them), zero in the padding.
fn gather4(plane: u32, iy: i32, ix0: i32) -> vec4<f32> {
    if iy < 0 || iy >= i32(p.h) {
        return vec4<f32>(0.0);
    }
    let row = plane + u32(iy) * p.w;
    let w = i32(p.w);
    let s = i32(STRIDE);
    return vec4<f32>(
        select(0.0, x_at(row + u32(ix0)), ix0 >= 0 && ix0 < w),
        select(0.0, x_at(row + u32(ix0 + s)), ix0 + s >= 0 && ix0 + s < w),
        select(0.0, x_at(row + u32(ix0 + 2 * s)), ix0 + 2 * s >= 0 && ix0 + 2 * s < w),
        select(0.0, x_at(row + u32(ix0 + 3 * s)), ix0 + 3 * s >= 0 && ix0 + 3 * s < w),
    );
}

// Weight row `co` (clamped into C_out: rows past it are not stored) under tap k. With WEIGHT_T
// the host passes the weights transposed to (C_in·KH·KW, C_out), so the rows a subgroup loads
// under one tap are adjacent; with F16_WEIGHTS it passes them as stored (WEIGHT_T off).
override WEIGHT_T: bool = false;

fn weight_row(k: u32, co: u32, k_total: u32) -> f32 {
    let c = min(co, p.c_out - 1u);
    if WEIGHT_T {
        return weight_at(k * p.c_out + c);
    }
    return weight_at(c * k_total + k);
}

// The 16 rows co0 .. co0 + 15 under tap k as this lane loads them for its subgroup: element j
// is row co0 + lane + LANES·j, loaded for j < 16 / LANES (the others are never read). Row r
// of the block is then `lane_share(w[r / LANES], r % LANES)`.
fn tap_rows(k: u32, co0: u32, k_total: u32, lane: u32) -> array<f32, 16> {
    var w: array<f32, 16>;
//#for j in 0..16
    if ${j}u < BLOCK_ROWS / LANES {
        w[${j}] = weight_row(k, co0 + lane + LANES * ${j}u, k_total);
    }
//#end
    return w;
}

// conv2d_blocked's fast path, set by the host when STRIDE = 1, W % 4 = 0, PAD_X ≤ 4 and
// KW ≤ PAD_X + 5: then the input columns under all KW taps of a block's 8 pixels lie in the 16
// from ox0 - 4, four aligned vec4s that are each wholly inside the row or wholly padding.
override ALIGNED_ROWS: bool = false;

// Input row `iy` of `plane`: the four vec4s from column ox0 - 4 (ox0 a multiple of 8).
fn row_window(plane: u32, iy: i32, ox0: u32) -> array<vec4<f32>, 4> {
    let row = input_row(plane, iy);
    let q = i32(ox0 / 4u) - 1;  // the vec4 before column ox0's
    return array<vec4<f32>, 4>(row_quad(row, q), row_quad(row, q + 1), row_quad(row, q + 2),
                               row_quad(row, q + 3));
}

// Row `iy` of `plane` in the vec4 view: its first vec4, its length in vec4s, and whether it lies
// inside the input (rows in the padding read as zeros).
struct InputRow {
    start4: u32,
    len4: u32,
    inside: bool,
}

fn input_row(plane: u32, iy: i32) -> InputRow {
    let inside = iy >= 0 && iy < i32(p.h);
    let start4 = select(0u, (plane + u32(iy) * p.w) / 4u, inside);
    return InputRow(start4, p.w / 4u, inside);
}

// The vec4 of columns 4q .. 4q + 3 of `row`, zero outside the input.
fn row_quad(row: InputRow, q: i32) -> vec4<f32> {
    if !row.inside || q < 0 || q >= i32(row.len4) {
        return vec4<f32>(0.0);
    }
    return vec4<f32>(x4[row.start4 + u32(q)]);
}

// Values s .. s + 3 of the eight in (a, b), s ≤ 4.
fn shift4(a: vec4<f32>, b: vec4<f32>, s: u32) -> vec4<f32> {
    switch s {
        case 0u: { return a; }
        case 1u: { return vec4<f32>(a.yzw, b.x); }
        case 2u: { return vec4<f32>(a.zw, b.xy); }
        case 3u: { return vec4<f32>(a.w, b.xyz); }
        default: { return b; }
    }
}

// Values s .. s + 3 of the twelve in (a, b, c), s ≤ 8.
fn window4(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, s: u32) -> vec4<f32> {
    if s >= 4u {
        return shift4(b, c, s - 4u);
    }
    return shift4(a, b, s);
}

// Applies the epilogue to output channel `co`'s pixels ox0 .. ox0 + 7 of row `oy` and stores
// those inside the output.
fn store_row(b: u32, co: u32, oy: u32, ox0: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if co >= p.c_out {
        return;
    }
    let row = ((b * p.c_out + co) * p.h_out + oy) * p.w_out;
    for (var j = 0u; j < BLOCK_PIXELS; j++) {
        let ox = ox0 + j;
        if ox >= p.w_out {
            return;
        }
        let idx = row + ox;
        out[idx] = act(epilogue(select(hi[j - 4u], lo[j], j < 4u), co, idx));
    }
}

// The output pixels of a blocked invocation: `pixels` consecutive ones of row `oy` of image `b`
// from column `ox0`; `valid` is false for the invocations past the last block (they still run
// the loops, on clamped indices, and store nothing).
struct PixelBlock {
    b: u32,
    oy: u32,
    ox0: u32,
    valid: bool,
}

// Set by the host on row16 with KH = 3, PAD_Y = 1, STRIDE = 1, sharing input rows across the
// subgroup: consecutive invocations take consecutive output rows of one column of blocks
// (`column_block`), each loads only the input row under its own output row, and takes the rows
// above and below from its neighbours in the subgroup where they hold them (`shared_rows`): a
// third of the input loads.
override SHARE_ROWS: bool = false;

// pixel_block's blocks in column order: output rows fastest, then blocks along the row, then
// images.
fn column_block(wid: vec3<u32>, lid: vec3<u32>, pixels: u32) -> PixelBlock {
    let x_blocks = (p.w_out + pixels - 1u) / pixels;
    let n = wid.x * BLOCKED_WG + lid.x;
    let column = n / p.h_out;
    return PixelBlock(
        min(column / x_blocks, p.batch - 1u),
        n % p.h_out,
        (column % x_blocks) * pixels,
        n < p.batch * p.h_out * x_blocks,
    );
}

// The windows (row_window6) of input rows iy0, iy0 + 1 and iy0 + 2 of `plane` for a lane whose
// output row is iy0 + 1 (SHARE_ROWS): the middle one loaded, the outer ones from the lanes before
// and after where `above` and `below` say they hold them (their output rows are this one's
// neighbours in the same column), else loaded.
struct SharedRows {
    up: array<vec4<f32>, 6>,
    mid: array<vec4<f32>, 6>,
    down: array<vec4<f32>, 6>,
}

fn shared_rows(plane: u32, iy0: i32, ox0: u32, above: bool, below: bool) -> SharedRows {
    let mid = row_window6(plane, iy0 + 1, ox0);
    var up: array<vec4<f32>, 6>;
    var down: array<vec4<f32>, 6>;
//#for q in 0..6
    up[${q}] = lane_before(mid[${q}]);
    down[${q}] = lane_after(mid[${q}]);
//#end
    if !above {
        up = row_window6(plane, iy0, ox0);
    }
    if !below {
        down = row_window6(plane, iy0 + 2, ox0);
    }
    return SharedRows(up, mid, down);
}

fn pixel_block(wid: vec3<u32>, lid: vec3<u32>, pixels: u32) -> PixelBlock {
    let x_blocks = (p.w_out + pixels - 1u) / pixels;
    let n = wid.x * BLOCKED_WG + lid.x;
    return PixelBlock(
        min(n / (p.h_out * x_blocks), p.batch - 1u),
        (n / x_blocks) % p.h_out,
        (n % x_blocks) * pixels,
        n < p.batch * p.h_out * x_blocks,
    );
}

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn conv2d_blocked(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    blocked_conv(lid, wid, 0u);
}

// conv2d_blocked's body; `lane` is the invocation's lane in its subgroup (0 without LANES).
fn blocked_conv(lid: vec3<u32>, wid: vec3<u32>, lane: u32) {
    let co0 = wid.y * select(BLOCK_ROWS, 2u * BLOCK_ROWS, WIDE_BLOCK);
    let block = pixel_block(wid, lid, BLOCK_PIXELS);
    let b = block.b;
    let oy = block.oy;
    let ox0 = block.ox0;
    let taps = KH * KW;
    let k_total = p.c_in * taps;
//#for r in 0..32
    var lo${r} = vec4<f32>(0.0);
    var hi${r} = vec4<f32>(0.0);
//#end
    let iy0 = i32(oy * STRIDE) - i32(PAD_Y);
    let ix0 = i32(ox0 * STRIDE) - i32(PAD_X);
    for (var ci = 0u; ci < p.c_in; ci++) {
        let plane = (b * p.c_in + ci) * p.h * p.w;
        for (var ky = 0u; ky < KH; ky++) {
            var win = array<vec4<f32>, 4>();
            if ALIGNED_ROWS {
                win = row_window(plane, iy0 + i32(ky), ox0);
            }
            let in0 = win[0];
            let in1 = win[1];
            let in2 = win[2];
            let in3 = win[3];
            for (var kx = 0u; kx < KW; kx++) {
                var xl: vec4<f32>;
                var xh: vec4<f32>;
                if ALIGNED_ROWS {
                    let s = kx + 4u - PAD_X;
                    xl = window4(in0, in1, in2, s);
                    xh = window4(in1, in2, in3, s);
                } else {
                    xl = gather4(plane, iy0 + i32(ky), ix0 + i32(kx));
                    xh = gather4(plane, iy0 + i32(ky), ix0 + i32(kx + 4u * STRIDE));
                }
                let k = ci * taps + ky * KW + kx;
                let w = tap_rows(k, co0, k_total, lane);
//#for r in 0..16
                let w${r} = lane_share(w[${r}u / LANES], ${r}u % LANES);
                lo${r} += w${r} * xl;
                hi${r} += w${r} * xh;
//#end
                if WIDE_BLOCK {
                    let v = tap_rows(k, co0 + BLOCK_ROWS, k_total, lane);
//#for r in 0..16
                    let v${r} = lane_share(v[${r}u / LANES], ${r}u % LANES);
                    lo${r + 16} += v${r} * xl;
                    hi${r + 16} += v${r} * xh;
//#end
                }
            }
        }
    }
    if !block.valid {
        return;
    }
//#for r in 0..16
    store_row(b, co0 + ${r}u, oy, ox0, lo${r}, hi${r});
//#end
    if WIDE_BLOCK {
//#for r in 16..32
        store_row(b, co0 + ${r}u, oy, ox0, lo${r}, hi${r});
//#end
    }
}

// ---- conv2d_blocked_row16: 16 output channels (32 with WIDE_BLOCK) x 16 pixels per invocation ----
// conv2d_blocked's aligned-row path with W % 16 = 0 (stride 1, PAD_X <= 4, KW <= PAD_X + 5) and
// at most ROW16_TAPS taps per kernel row: per kernel row six vec4s of input (columns ox0 - 4 ..
// ox0 + 19, ox0 a multiple of 16) feed 16 x 16 multiply-adds per tap, and each accumulator takes
// the row's taps in one update (`row_taps`). With SHARE_ROWS the rows come from the subgroup.
const ROW16_PIXELS: u32 = 16u;
const ROW16_TAPS: u32 = 3u;

// Input row `iy` of `plane`: the six vec4s from column ox0 - 4 (ox0 a multiple of 16).
fn row_window6(plane: u32, iy: i32, ox0: u32) -> array<vec4<f32>, 6> {
    let row = input_row(plane, iy);
    let q = i32(ox0 / 4u) - 1;
    return array<vec4<f32>, 6>(row_quad(row, q), row_quad(row, q + 1), row_quad(row, q + 2),
                               row_quad(row, q + 3), row_quad(row, q + 4), row_quad(row, q + 5));
}

// `acc` plus the products of a kernel row's taps 0 .. KW - 1 (KW ≤ 3), (weight wt, input
// quad xt) for tap t, as fused multiply-adds. An accumulator is written back once per kernel
// row, not once per tap: lavapipe writes a value carried around a loop back under the lanes'
// mask (a load, a blend and a store of a spilled register), which cost more than the products
// when it followed every tap.
fn row_taps(acc: vec4<f32>, w0: f32, x0: vec4<f32>, w1: f32, x1: vec4<f32>, w2: f32,
            x2: vec4<f32>) -> vec4<f32> {
    var sum = fma(vec4<f32>(w0), x0, acc);
    if KW > 1u {
        sum = fma(vec4<f32>(w1), x1, sum);
    }
    if KW > 2u {
        sum = fma(vec4<f32>(w2), x2, sum);
    }
    return sum;
}

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn conv2d_blocked_row16(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    row16_conv(lid, wid, 0u);
}

// conv2d_blocked_row16's body; `lane` as in `blocked_conv`.
fn row16_conv(lid: vec3<u32>, wid: vec3<u32>, lane: u32) {
    let co0 = wid.y * select(BLOCK_ROWS, 2u * BLOCK_ROWS, WIDE_BLOCK);
    var block = pixel_block(wid, lid, ROW16_PIXELS);
    if SHARE_ROWS {
        block = column_block(wid, lid, ROW16_PIXELS);
    }
    // With SHARE_ROWS: whether the lanes before and after hold the output rows above and below
    // in this column (the subgroup's first and last lanes, and columns' ends, load their own).
    let column = (block.b * p.w_out + block.ox0) * p.h_out;
    let here = column + block.oy;
    let above = lane > 0u && lane_before_u32(here) + 1u == here && block.oy > 0u;
    let below = lane + 1u < LANES && lane_after_u32(here) == here + 1u && block.oy + 1u < p.h_out;
    let b = block.b;
    let oy = block.oy;
    let ox0 = block.ox0;
    let taps = KH * KW;
    let k_total = p.c_in * taps;
//#for r in 0..32
//#for j in 0..4
    var a${r}_${j} = vec4<f32>(0.0);
//#end
//#end
    let iy0 = i32(oy * STRIDE) - i32(PAD_Y);
    for (var ci = 0u; ci < p.c_in; ci++) {
        let plane = (b * p.c_in + ci) * p.h * p.w;
        var rows: SharedRows;
        if SHARE_ROWS {
            rows = shared_rows(plane, iy0, ox0, above, below);
        }
        for (var ky = 0u; ky < KH; ky++) {
            var win: array<vec4<f32>, 6>;
            if SHARE_ROWS {
                win = rows.mid;
                if ky == 0u {
                    win = rows.up;
                }
                if ky == 2u {
                    win = rows.down;
                }
            } else {
                win = row_window6(plane, iy0 + i32(ky), ox0);
            }
            let in0 = win[0];
            let in1 = win[1];
            let in2 = win[2];
            let in3 = win[3];
            let in4 = win[4];
            let in5 = win[5];
            // The row's taps kx = t < KW, written out: tap t's input quads and weight rows.
            let k = ci * taps + ky * KW;
//#for t in 0..3
            let s${t} = ${t}u + 4u - PAD_X;
            let x${t}_0 = window4(in0, in1, in2, s${t});
            let x${t}_1 = window4(in1, in2, in3, s${t});
            let x${t}_2 = window4(in2, in3, in4, s${t});
            let x${t}_3 = window4(in3, in4, in5, s${t});
            let w${t} = tap_rows(min(k + ${t}u, k_total - 1u), co0, k_total, lane);
//#end
//#for r in 0..16
//#for t in 0..3
            let w${t}_${r} = lane_share(w${t}[${r}u / LANES], ${r}u % LANES);
//#end
//#for j in 0..4
            a${r}_${j} = row_taps(a${r}_${j}, w0_${r}, x0_${j}, w1_${r}, x1_${j}, w2_${r}, x2_${j});
//#end
//#end
            if WIDE_BLOCK {
//#for t in 0..3
                let v${t} = tap_rows(min(k + ${t}u, k_total - 1u), co0 + BLOCK_ROWS, k_total, lane);
//#end
//#for r in 0..16
//#for t in 0..3
                let v${t}_${r} = lane_share(v${t}[${r}u / LANES], ${r}u % LANES);
//#end
//#for j in 0..4
                a${r + 16}_${j} = row_taps(a${r + 16}_${j}, v0_${r}, x0_${j}, v1_${r}, x1_${j}, v2_${r}, x2_${j});
//#end
//#end
            }
        }
    }
    if !block.valid {
        return;
    }
//#for r in 0..16
    store_row(b, co0 + ${r}u, oy, ox0, a${r}_0, a${r}_1);
    store_row(b, co0 + ${r}u, oy, ox0 + 8u, a${r}_2, a${r}_3);
//#end
    if WIDE_BLOCK {
//#for r in 16..32
        store_row(b, co0 + ${r}u, oy, ox0, a${r}_0, a${r}_1);
        store_row(b, co0 + ${r}u, oy, ox0 + 8u, a${r}_2, a${r}_3);
//#end
    }
}
