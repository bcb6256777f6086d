// The blocked kernels' row sharing (see conv2d.wgsl's conv2d_blocked) where the device has no
// subgroup operations: a subgroup of one, so every invocation loads all of its block's rows.
const LANES: u32 = 1u;

fn lane_share(v: f32, lane: u32) -> f32 {
    return v;
}

fn lane_share4(v: vec4<f32>, lane: u32) -> vec4<f32> {
    return v;
}

// A subgroup of one has no neighbours: these are never read (see lanes_subgroup.wgsl).
fn lane_before(v: vec4<f32>) -> vec4<f32> {
    return v;
}

fn lane_after(v: vec4<f32>) -> vec4<f32> {
    return v;
}

fn lane_before_u32(v: u32) -> u32 {
    return v;
}

fn lane_after_u32(v: u32) -> u32 {
    return v;
}
