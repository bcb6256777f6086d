// Element-wise backward kernels whose forward has no linear adjoint among the existing kernels.
// 1-D grid folded into y when large: the linear index is gid.x + gid.y * num_workgroups.x * WG.

struct Params {
    total: u32,   // elements to write
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// silu_grad, gelu_grad, quick_gelu_grad: dx = dy · f'(z) for the activation f (the derivatives
// are prelude.wgsl's). The OP override picks f.
override OP: u32 = 0u;
const ACTIVATION_SILU: u32 = 0u;
const ACTIVATION_GELU: u32 = 1u;
const ACTIVATION_QUICK_GELU: u32 = 2u;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(WG)
fn activation_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i >= p.total {
        return;
    }
    switch OP {
        case ACTIVATION_GELU: { dx[i] = dy[i] * gelu_derivative(z[i]); }
        case ACTIVATION_QUICK_GELU: { dx[i] = dy[i] * quick_gelu_derivative(z[i]); }
        case ACTIVATION_SILU, default: { dx[i] = dy[i] * silu_derivative(z[i]); }
    }
}
