// Element-wise backward kernels whose forward has no linear adjoint among the existing kernels.
// 1-D grid folded into y when large: the linear index is gid.x + gid.y * num_workgroups.x * WG.

struct Params {
    total: u32,   // elements to write
    inner: u32,   // slice_channels: C_out·HW (one batch item of the slice)
    outer: u32,   // slice_channels: C_src·HW (one batch item of the source)
    offset: u32,  // slice_channels: first source channel × HW
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// silu_grad: dx = dy · SiLU'(z) with SiLU'(z) = σ(z)·(1 + z·(1 − σ(z))).
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(WG)
fn silu_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    let v = z[i];
    let s = 1.0 / (1.0 + exp(-v));
    dx[i] = dy[i] * s * (1.0 + v * (1.0 - s));
}

// slice_channels: dst (B, C_out, HW) = channels [offset/HW, offset/HW + C_out) of src (B, C_src,
// HW), the adjoint of copy_channels (the gradient of a channel concatenation, part by part).
// Elements are `act` (f32, or f16 in the half variant: the forward slices f16 activations too).
@group(0) @binding(1) var<storage, read> src: array<act>;
@group(0) @binding(2) var<storage, read_write> dst: array<act>;

@compute @workgroup_size(WG)
fn slice_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    dst[i] = src[(i / p.inner) * p.outer + p.offset + i % p.inner];
}
