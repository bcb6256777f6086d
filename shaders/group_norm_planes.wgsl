
// ---- Shared by group_norm.wgsl and group_norm_grad.wgsl (the host appends this file to both;
// both Params carry channels and groups) ----

// The channel (x) and the group (y: batch item · G + group within the item) of NCHW plane
// `plane` = b·C + c.
fn channel_and_group(plane: u32) -> vec2<u32> {
    let c = plane % p.channels;
    return vec2<u32>(c, plane / p.channels * p.groups + c / (p.channels / p.groups));
}
