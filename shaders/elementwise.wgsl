// Element-wise kernels over flat tensors of `act` elements (f32, or f16 in the half variant the
// host builds for f16 activations; see gpu::kernel's ACT_F16): read widened to f32, computed in
// f32, written back as `act`. Launched as a 1-D grid folded into y when large: the linear index
// is gid.x + gid.y * num_workgroups.x * WG.

struct Params {
    total: u32,   // elements to write
    inner: u32,   // channel_op / scale_shift: HW; copy_channels: C_src·HW;
                  // slice_channels: C_out·HW; transpose: cols
    outer: u32,   // channel_op: length of the vector; copy_channels: C_dst·HW;
                  // slice_channels: C_src·HW; transpose: rows
    offset: u32,  // copy_channels: first destination channel × HW; slice_channels: first
                  // source channel × HW
    alpha: f32,
    beta: f32,
}

// The operation of `unary`, `binary` and `channel_op`: one of the constants below, which the
// host's UnaryOp, BinaryOp and ChannelOp mirror.
override OP: u32 = 0u;
const UNARY_SILU: u32 = 0u;
const UNARY_AFFINE: u32 = 1u;     // alpha·x + beta
const UNARY_GELU: u32 = 2u;       // x·Φ(x), exact (erf)
const UNARY_QUICK_GELU: u32 = 3u; // x·σ(1.702x)
const BINARY_LINCOMB: u32 = 0u;   // alpha·a + beta·b
const BINARY_MUL: u32 = 1u;       // a·b
const CHANNEL_ADD: u32 = 0u;      // x + v[c]
const CHANNEL_MUL: u32 = 1u;      // x · v[c]

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@group(0) @binding(1) var<storage, read> un_x: array<act>;
@group(0) @binding(2) var<storage, read_write> un_out: array<act>;

@compute @workgroup_size(WG)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let v = f32(un_x[i]);
    switch OP {
        case UNARY_SILU: { un_out[i] = act(silu(v)); }
        case UNARY_GELU: { un_out[i] = act(gelu(v)); }
        case UNARY_QUICK_GELU: { un_out[i] = act(quick_gelu(v)); }
        case UNARY_AFFINE, default: { un_out[i] = act(p.alpha * v + p.beta); }
    }
}

@group(0) @binding(1) var<storage, read> bin_a: array<act>;
@group(0) @binding(2) var<storage, read> bin_b: array<act>;
@group(0) @binding(3) var<storage, read_write> bin_out: array<act>;

@compute @workgroup_size(WG)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    switch OP {
        case BINARY_LINCOMB: { bin_out[i] = act(p.alpha * f32(bin_a[i]) + p.beta * f32(bin_b[i])); }
        case BINARY_MUL, default: { bin_out[i] = act(f32(bin_a[i]) * f32(bin_b[i])); }
    }
}

// alpha·a[i % inner] + beta·b[i]: a is repeated along b's leading axis (re-noising one batch
// into M copies: x̃ = √ᾱ·x̂0 + √(1−ᾱ)·n).
@compute @workgroup_size(WG)
fn broadcast_lincomb(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    bin_out[i] = act(p.alpha * f32(bin_a[i % p.inner]) + p.beta * f32(bin_b[i]));
}

// x is (…, HW) planes; plane j takes v[j % outer], so v may be per (batch, channel) or per channel.
@compute @workgroup_size(WG)
fn channel_op(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let v = f32(bin_b[(i / p.inner) % p.outer]);
    switch OP {
        case CHANNEL_ADD: { bin_out[i] = act(f32(bin_a[i]) + v); }
        case CHANNEL_MUL, default: { bin_out[i] = act(f32(bin_a[i]) * v); }
    }
}

// channel_op and copy_channels four elements per invocation, where the planes (inner) hold whole
// vec4s: a CPU rasteriser spends these kernels on per-invocation index divisions.
@group(0) @binding(1) var<storage, read> bin_a4: array<act4>;
@group(0) @binding(3) var<storage, read_write> bin_out4: array<act4>;

@compute @workgroup_size(WG)
fn channel_op4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = linear_index(gid, nwg);
    if q >= p.total / 4u {
        return;
    }
    let v = f32(bin_b[(4u * q / p.inner) % p.outer]);
    switch OP {
        case CHANNEL_ADD: { bin_out4[q] = act4(vec4<f32>(bin_a4[q]) + v); }
        case CHANNEL_MUL, default: { bin_out4[q] = act4(vec4<f32>(bin_a4[q]) * v); }
    }
}

@group(0) @binding(1) var<storage, read> un_x4: array<act4>;
@group(0) @binding(2) var<storage, read_write> un_out4: array<act4>;

@compute @workgroup_size(WG)
fn copy_channels4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = linear_index(gid, nwg);
    if q >= p.total / 4u {
        return;
    }
    let i = 4u * q;
    let b = i / p.inner;
    un_out4[(b * p.outer + p.offset + i % p.inner) / 4u] = un_x4[q];
}

// ADM's scale-shift norm: y = x·(1 + scale[b,c]) + shift[b,c], with emb = [scale | shift] of
// shape (B, 2C). Here outer = C.
@compute @workgroup_size(WG)
fn scale_shift(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let plane = i / p.inner;
    let b = plane / p.outer;
    let c = plane % p.outer;
    let scale = f32(bin_b[b * 2u * p.outer + c]);
    let shift = f32(bin_b[b * 2u * p.outer + p.outer + c]);
    bin_out[i] = act(f32(bin_a[i]) * (1.0 + scale) + shift);
}

// Writes src (B, C_src, HW) into channels [offset/HW, offset/HW + C_src) of dst (B, C_dst, HW):
// channel concatenation as two launches.
@compute @workgroup_size(WG)
fn copy_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let b = i / p.inner;
    un_out[b * p.outer + p.offset + i % p.inner] = un_x[i];
}

// dst (B, C_out, HW) = channels [offset/HW, offset/HW + C_out) of src (B, C_src, HW) with
// inner = C_out·HW, outer = C_src·HW: copy_channels' adjoint (a channel slice in the forward,
// the gradient of one part of a concatenation in the backward).
@compute @workgroup_size(WG)
fn slice_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    un_out[i] = un_x[(i / p.inner) * p.outer + p.offset + i % p.inner];
}

// (batch, rows, cols) -> (batch, cols, rows): NCHW planes <-> token-major sequences.
@compute @workgroup_size(WG)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let plane = p.inner * p.outer;
    let b = i / plane;
    let r = (i % plane) / p.inner;
    let c = i % p.inner;
    un_out[b * plane + c * p.outer + r] = un_x[i];
}

// Between storage types: f32 → act (`to_act`) and act → f32 (`from_act`); copies in the f32
// variant. A model with f16 activations converts its input and output with these.
@group(0) @binding(1) var<storage, read> cast_f32: array<f32>;
@group(0) @binding(2) var<storage, read_write> cast_to_act: array<act>;

@compute @workgroup_size(WG)
fn to_act(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i < p.total {
        cast_to_act[i] = act(cast_f32[i]);
    }
}

@group(0) @binding(1) var<storage, read> cast_act: array<act>;
@group(0) @binding(2) var<storage, read_write> cast_to_f32: array<f32>;

@compute @workgroup_size(WG)
fn from_act(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i < p.total {
        cast_to_f32[i] = f32(cast_act[i]);
    }
}
