// conv2d.wgsl's blocked entry points with each tap's weight rows loaded across the subgroup
// (lanes_subgroup.wgsl): the module is this file, conv2d.wgsl, tiled_gemm.wgsl and
// lanes_subgroup.wgsl, built only for devices with subgroups.

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn conv2d_blocked_lanes(@builtin(local_invocation_id) lid: vec3<u32>,
                        @builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(subgroup_invocation_id) lane: u32) {
    blocked_conv(lid, wid, lane);
}

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn conv2d_blocked_row16_lanes(@builtin(local_invocation_id) lid: vec3<u32>,
                              @builtin(workgroup_id) wid: vec3<u32>,
                              @builtin(subgroup_invocation_id) lane: u32) {
    row16_conv(lid, wid, lane);
}
