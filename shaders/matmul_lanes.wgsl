// matmul.wgsl's blocked entry points with the rows of A loaded across the subgroup
// (lanes_subgroup.wgsl): the module is this file, matmul.wgsl, tiled_gemm.wgsl and
// lanes_subgroup.wgsl, built only for devices with subgroups.

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn matmul_blocked_lanes(@builtin(local_invocation_id) lid: vec3<u32>,
                        @builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(subgroup_invocation_id) lane: u32) {
    blocked_matmul(lid, wid, lane);
}

@compute @workgroup_size(BLOCKED_WG, 1, 1)
fn matmul_blocked_vec4_lanes(@builtin(local_invocation_id) lid: vec3<u32>,
                             @builtin(workgroup_id) wid: vec3<u32>,
                             @builtin(subgroup_invocation_id) lane: u32) {
    blocked_matmul_vec4(lid, wid, lane);
}
