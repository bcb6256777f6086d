// Sinusoidal timestep embedding (diffusers `get_timestep_embedding`, guided-diffusion's
// `timestep_embedding`) and table look-ups (class embeddings). Timesteps and ids arrive as f32
// tensors on the GPU.

struct Params {
    batch: u32,
    dim: u32,
    flip: u32,          // flip_sin_to_cos: [cos | sin] instead of [sin | cos]
    first: u32,         // lookup: the first row of the table block bound
    rows: u32,          // lookup: the rows of that block
}

const WG: u32 = 64u;
// 2π split in two (Cody–Waite): HI = 201/32 has 8 significant bits, so k·HI is exact for
// k < 2^16 (|t·freq| below ~4e5) and so is arg − k·HI, whether or not a driver fuses the
// products; LO is the rest of 2π rounded to f32 (its own error times k stays below 1e-7).
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> timesteps: array<f32>;
@group(0) @binding(2) var<storage, read> freqs: array<f32>;
@group(0) @binding(3) var<storage, read_write> emb: array<f32>;

// emb[b, j]: with half = dim/2, the first half is sin(t·freq_i), the second cos(t·freq_i)
// (swapped when flip), i = j mod half. Odd dim: zero pad. The frequencies come from the host
// (the f32 values the reference computes); t·freq is rounded to f32 as the reference rounds it.
// The argument is reduced to [−π, π] here because a GPU's sin/cos may only be accurate there:
// NVIDIA's Vulkan driver lost ~1e-4 at arguments near 1000.
@compute @workgroup_size(WG)
fn timestep_embedding(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.batch * p.dim {
        return;
    }
    let b = i / p.dim;
    let j = i % p.dim;
    let half = p.dim / 2u;
    if j >= 2u * half {
        emb[i] = 0.0;
        return;
    }
    let arg = timesteps[b] * freqs[j % half];
    let k = round(arg * INV_TWO_PI);
    let reduced = (arg - k * TWO_PI_HI) - k * TWO_PI_LO;
    let first = j < half;
    var use_sin = first;
    if p.flip != 0u {
        use_sin = !first;
    }
    emb[i] = select(cos(reduced), sin(reduced), use_sin);
}

@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<f32>;
@group(0) @binding(3) var<storage, read_write> rows: array<f32>;

// rows[b, :] = table[ids[b], :] for the ids inside the bound block of rows [first, first +
// rows); a table over one binding is bound a block at a time, each id's row written by its block.
@compute @workgroup_size(WG)
fn lookup(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.batch * p.dim {
        return;
    }
    let id = u32(ids[i / p.dim]);
    if id < p.first || id - p.first >= p.rows {
        return;
    }
    rows[i] = table[(id - p.first) * p.dim + i % p.dim];
}
