// Sinusoidal timestep embedding (diffusers `get_timestep_embedding`) and table look-ups
// (class embeddings). Timesteps and ids arrive as f32 tensors on the GPU.

struct Params {
    batch: u32,
    dim: u32,
    freq_shift: f32,    // diffusers' downscale_freq_shift
    flip: u32,          // flip_sin_to_cos: [cos | sin] instead of [sin | cos]
    log_max_period: f32,
    scale: f32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> timesteps: array<f32>;
@group(0) @binding(2) var<storage, read_write> emb: array<f32>;

// emb[b, j]: with half = dim/2 and freq_i = exp(−ln(max_period)·i / (half − shift)),
// the first half is sin(t·freq), the second cos(t·freq) (swapped when flip). Odd dim: zero pad.
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
    let idx = j % half;
    let freq = exp(-p.log_max_period * f32(idx) / (f32(half) - p.freq_shift));
    let arg = p.scale * timesteps[b] * freq;
    let first = j < half;
    var use_sin = first;
    if p.flip != 0u {
        use_sin = !first;
    }
    emb[i] = select(cos(arg), sin(arg), use_sin);
}

@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<f32>;
@group(0) @binding(3) var<storage, read_write> rows: array<f32>;

// rows[b, :] = table[ids[b], :]
@compute @workgroup_size(WG)
fn lookup(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.batch * p.dim {
        return;
    }
    let b = i / p.dim;
    rows[i] = table[u32(ids[b]) * p.dim + i % p.dim];
}
