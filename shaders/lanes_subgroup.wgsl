// The blocked kernels' row sharing (see conv2d.wgsl's conv2d_blocked) through subgroup
// operations: LANES is the device's subgroup size, set by the host only where the size is fixed
// and divides the blocks' 16 rows and the 16 invocations of a workgroup (so every subgroup is
// whole, and all of its lanes share their rows). `lane` is always a constant where these are
// called, which lavapipe turns into one vector permute.
override LANES: u32 = 8u;

// `v` as lane `lane` of the subgroup holds it.
fn lane_share(v: f32, lane: u32) -> f32 {
    return subgroupShuffle(v, lane);
}

fn lane_share4(v: vec4<f32>, lane: u32) -> vec4<f32> {
    return subgroupShuffle(v, lane);
}

// `v` as the lane before (after) this one holds it; undefined on the first (last) lane. lavapipe
// shuffles by a lane that differs per lane with one permute only for 8 lanes of 32 bits (AVX2's
// vpermd), else one lane at a time, as slowly as it loads: the host uses these at 8 lanes only.
fn lane_before(v: vec4<f32>) -> vec4<f32> {
    return subgroupShuffleUp(v, 1u);
}

fn lane_after(v: vec4<f32>) -> vec4<f32> {
    return subgroupShuffleDown(v, 1u);
}

fn lane_before_u32(v: u32) -> u32 {
    return subgroupShuffleUp(v, 1u);
}

fn lane_after_u32(v: u32) -> u32 {
    return subgroupShuffleDown(v, 1u);
}
