//! Straightforward f64 implementations of every kernel, written from the definitions.
#![allow(clippy::too_many_arguments)] // the references mirror the kernels' argument lists

pub fn conv2d(
    x: &[f64],
    (b, ci, h, w): (usize, usize, usize, usize),
    wt: &[f64],
    (co, kh, kw): (usize, usize, usize),
    bias: Option<&[f64]>,
    stride: usize,
    pad: usize,
    pad_bottom_right: usize,
) -> (Vec<f64>, usize, usize) {
    let (ho, wo) = (
        (h + 2 * pad + pad_bottom_right - kh) / stride + 1,
        (w + 2 * pad + pad_bottom_right - kw) / stride + 1,
    );
    let geometry = ((b, ci, h, w), (co, kh, kw), stride, (pad, pad));
    (conv2d_hw(x, wt, bias, geometry, (ho, wo)), ho, wo)
}

/// Input (b, c_in, h, w), kernel (c_out, kh, kw), stride, padding (rows, columns).
pub type ConvGeometry = (
    (usize, usize, usize, usize),
    (usize, usize, usize),
    usize,
    (usize, usize),
);

/// Convolution with separate row and column padding, into an (ho, wo) output: taps outside the
/// input read zeros.
pub fn conv2d_hw(
    x: &[f64],
    wt: &[f64],
    bias: Option<&[f64]>,
    ((b, ci, h, w), (co, kh, kw), stride, (pad_h, pad_w)): ConvGeometry,
    (ho, wo): (usize, usize),
) -> Vec<f64> {
    let mut out = vec![0.0; b * co * ho * wo];
    for n in 0..b {
        for o in 0..co {
            for y in 0..ho {
                for xo in 0..wo {
                    let mut s = bias.map_or(0.0, |b| b[o]);
                    for c in 0..ci {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * stride + ky) as isize - pad_h as isize;
                                let ix = (xo * stride + kx) as isize - pad_w as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    s += wt[((o * ci + c) * kh + ky) * kw + kx]
                                        * x[((n * ci + c) * h + iy as usize) * w + ix as usize];
                                }
                            }
                        }
                    }
                    out[((n * co + o) * ho + y) * wo + xo] = s;
                }
            }
        }
    }
    out
}

/// C (batch, m, n) = A (batch, m, k) · B, with B (n, k) if trans_b else (k, n); B shared over batch.
pub fn matmul(
    a: &[f64],
    b: &[f64],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_b: bool,
    bias: Option<&[f64]>,
) -> Vec<f64> {
    let mut c = vec![0.0; batch * m * n];
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |b| b[j]);
                for l in 0..k {
                    let bv = if trans_b { b[j * k + l] } else { b[l * n + j] };
                    s += a[(z * m + i) * k + l] * bv;
                }
                c[(z * m + i) * n + j] = s;
            }
        }
    }
    c
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

pub fn group_norm(
    x: &[f64],
    b: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f64,
    gamma: &[f64],
    beta: &[f64],
    fuse_silu: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    let cg = c / groups;
    for n in 0..b {
        for g in 0..groups {
            let start = (n * c + g * cg) * hw;
            let seg = &x[start..start + cg * hw];
            let mean = seg.iter().sum::<f64>() / seg.len() as f64;
            let var = seg.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / seg.len() as f64;
            for (i, v) in seg.iter().enumerate() {
                let ch = g * cg + i / hw;
                let y = (v - mean) / (var + eps).sqrt() * gamma[ch] + beta[ch];
                out[start + i] = if fuse_silu { silu(y) } else { y };
            }
        }
    }
    out
}

/// Token-major (B, N, heads·D) multi-head softmax attention.
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    b: usize,
    n: usize,
    c: usize,
    heads: usize,
    scale: f64,
) -> Vec<f64> {
    let d = c / heads;
    let mut out = vec![0.0; q.len()];
    for z in 0..b {
        for h in 0..heads {
            for i in 0..n {
                let qi = &q[(z * n + i) * c + h * d..][..d];
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        qi.iter()
                            .zip(&k[(z * n + j) * c + h * d..][..d])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let total: f64 = e.iter().sum();
                for dd in 0..d {
                    out[(z * n + i) * c + h * d + dd] = (0..n)
                        .map(|j| e[j] * v[(z * n + j) * c + h * d + dd])
                        .sum::<f64>()
                        / total;
                }
            }
        }
    }
    out
}

pub fn timestep_embedding(t: &[f64], dim: usize, flip: bool, shift: f64) -> Vec<f64> {
    let half = dim / 2;
    let mut out = vec![0.0; t.len() * dim];
    for (b, &tb) in t.iter().enumerate() {
        for i in 0..half {
            let freq = (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp();
            let (s, c) = (tb * freq).sin_cos();
            let (first, second) = if flip { (c, s) } else { (s, c) };
            out[b * dim + i] = first;
            out[b * dim + half + i] = second;
        }
    }
    out
}

/// Philox4x32-10 exactly as specified by Salmon et al. (Random123), with native u64 products.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = 0xD2511F53u64 * c[0] as u64;
        let p1 = 0xCD9E8D57u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(0x9E3779B9), k[1].wrapping_add(0xBB67AE85)];
    }
    c
}

/// The normal deviates the rng kernel must produce for one row.
pub fn normal_row(seed: u64, tag: u64, sample: u32, len: usize) -> Vec<f64> {
    let unit = |x: u32| ((x >> 8) as f64 + 0.5) / 16777216.0;
    let mut out = Vec::with_capacity(len + 3);
    for block in 0..len.div_ceil(4) as u32 {
        let r = philox4x32_10(
            [block, sample, tag as u32, (tag >> 32) as u32],
            [seed as u32, (seed >> 32) as u32],
        );
        let tau = std::f64::consts::TAU;
        let (r0, r1) = (
            (-2.0 * unit(r[0]).ln()).sqrt(),
            (-2.0 * unit(r[2]).ln()).sqrt(),
        );
        let (t0, t1) = (tau * unit(r[1]), tau * unit(r[3]));
        out.extend([r0 * t0.cos(), r0 * t0.sin(), r1 * t1.cos(), r1 * t1.sin()]);
    }
    out.truncate(len);
    out
}

// ---- Input gradients (vector-Jacobian products) of the references above, in f64. Each is
// checked against finite differences of its forward in tests/backward.rs.

/// ∂⟨conv2d(x), dy⟩/∂x: the convolution's scatter, written as the adjoint of [`conv2d`]'s loops.
pub fn conv2d_input_grad(
    dy: &[f64],
    (b, ci, h, w): (usize, usize, usize, usize),
    wt: &[f64],
    (co, kh, kw): (usize, usize, usize),
    stride: usize,
    pad: usize,
    pad_bottom_right: usize,
) -> Vec<f64> {
    let ho = (h + 2 * pad + pad_bottom_right - kh) / stride + 1;
    let wo = (w + 2 * pad + pad_bottom_right - kw) / stride + 1;
    let mut dx = vec![0.0; b * ci * h * w];
    for n in 0..b {
        for o in 0..co {
            for y in 0..ho {
                for xo in 0..wo {
                    let g = dy[((n * co + o) * ho + y) * wo + xo];
                    for c in 0..ci {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * stride + ky) as isize - pad as isize;
                                let ix = (xo * stride + kx) as isize - pad as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    dx[((n * ci + c) * h + iy as usize) * w + ix as usize] +=
                                        wt[((o * ci + c) * kh + ky) * kw + kx] * g;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

pub fn silu_grad(z: f64) -> f64 {
    let s = 1.0 / (1.0 + (-z).exp());
    s * (1.0 + z * (1.0 - s))
}

/// ∂⟨group_norm(x, …), dy⟩/∂x, from the textbook formula
/// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·(SiLU'(z))·gamma per group.
pub fn group_norm_input_grad(
    x: &[f64],
    (b, c, hw): (usize, usize, usize),
    groups: usize,
    eps: f64,
    gamma: &[f64],
    beta: &[f64],
    fuse_silu: bool,
    dy: &[f64],
) -> Vec<f64> {
    let mut dx = vec![0.0; x.len()];
    let cg = c / groups;
    let len = cg * hw;
    for n in 0..b {
        for grp in 0..groups {
            let start = (n * c + grp * cg) * hw;
            let seg = &x[start..start + len];
            let mean = seg.iter().sum::<f64>() / len as f64;
            let var = seg.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / len as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            let xhat: Vec<f64> = seg.iter().map(|v| (v - mean) * rstd).collect();
            let g: Vec<f64> = (0..len)
                .map(|i| {
                    let ch = grp * cg + i / hw;
                    let z = xhat[i] * gamma[ch] + beta[ch];
                    let dz = if fuse_silu { silu_grad(z) } else { 1.0 };
                    dy[start + i] * dz * gamma[ch]
                })
                .collect();
            let m1 = g.iter().sum::<f64>() / len as f64;
            let m2 = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / len as f64;
            for i in 0..len {
                dx[start + i] = rstd * (g[i] - m1 - xhat[i] * m2);
            }
        }
    }
    dx
}

/// Per-query log-sum-exp of the scaled scores, (B, heads, N).
pub fn attention_lse(
    q: &[f64],
    k: &[f64],
    (b, n, c): (usize, usize, usize),
    heads: usize,
    scale: f64,
) -> Vec<f64> {
    let d = c / heads;
    let mut lse = vec![0.0; b * heads * n];
    for z in 0..b {
        for h in 0..heads {
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        scale
                            * dot(
                                &q[(z * n + i) * c + h * d..][..d],
                                &k[(z * n + j) * c + h * d..][..d],
                            )
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                lse[(z * heads + h) * n + i] =
                    m + s.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            }
        }
    }
    lse
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// (dq, dk, dv) of ⟨attention(q, k, v), d_out⟩ with the probability matrix materialised.
pub fn attention_grad(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    (b, n, c): (usize, usize, usize),
    heads: usize,
    scale: f64,
    d_out: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let d = c / heads;
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; q.len()], vec![0.0; q.len()]);
    let lse = attention_lse(q, k, (b, n, c), heads, scale);
    let at = |z: usize, row: usize, h: usize| (z * n + row) * c + h * d;
    for z in 0..b {
        for h in 0..heads {
            for i in 0..n {
                let (qi, gi) = (&q[at(z, i, h)..][..d], &d_out[at(z, i, h)..][..d]);
                let probs: Vec<f64> = (0..n)
                    .map(|j| {
                        (scale * dot(qi, &k[at(z, j, h)..][..d]) - lse[(z * heads + h) * n + i])
                            .exp()
                    })
                    .collect();
                let dp: Vec<f64> = (0..n).map(|j| dot(gi, &v[at(z, j, h)..][..d])).collect();
                let delta = dot(&probs, &dp);
                for j in 0..n {
                    let ds = probs[j] * (dp[j] - delta);
                    for e in 0..d {
                        dq[at(z, i, h) + e] += scale * ds * k[at(z, j, h) + e];
                        dk[at(z, j, h) + e] += scale * ds * q[at(z, i, h) + e];
                        dv[at(z, j, h) + e] += probs[j] * d_out[at(z, i, h) + e];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Nearest ×2 upsampling of (planes, h, w).
pub fn upsample_nearest2x(x: &[f64], planes: usize, h: usize, w: usize) -> Vec<f64> {
    let mut out = vec![0.0; planes * 4 * h * w];
    for p in 0..planes {
        for y in 0..2 * h {
            for xx in 0..2 * w {
                out[(p * 2 * h + y) * 2 * w + xx] = x[(p * h + y / 2) * w + xx / 2];
            }
        }
    }
    out
}

/// ∂⟨upsample_nearest2x(x), dy⟩/∂x: each pixel sums its 2×2 block.
pub fn upsample_nearest2x_grad(dy: &[f64], planes: usize, h: usize, w: usize) -> Vec<f64> {
    let mut dx = vec![0.0; planes * h * w];
    for p in 0..planes {
        for y in 0..2 * h {
            for xx in 0..2 * w {
                dx[(p * h + y / 2) * w + xx / 2] += dy[(p * 2 * h + y) * 2 * w + xx];
            }
        }
    }
    dx
}

/// Channels [start, start + count) of (b, c, hw).
pub fn slice_channels(
    x: &[f64],
    (b, c, hw): (usize, usize, usize),
    start: usize,
    count: usize,
) -> Vec<f64> {
    (0..b)
        .flat_map(|n| {
            x[(n * c + start) * hw..(n * c + start + count) * hw]
                .iter()
                .copied()
        })
        .collect()
}

/// Order statistics k and k + 1 (0-based; k again when k is the last) of an f32 row sorted by
/// IEEE totalOrder (`f32::total_cmp`: −0 before +0), the order select.wgsl documents. Exact by
/// construction: a sort, then indexing.
pub fn order_statistics_f32(row: &[f32], k: usize) -> (f32, f32) {
    let mut sorted = row.to_vec();
    sorted.sort_by(f32::total_cmp);
    (sorted[k], sorted[(k + 1).min(row.len() - 1)])
}

/// `torch.quantile(row, p)` (linear interpolation) for a float32 row, in torch 2.15's own
/// arithmetic (aten/src/ATen/native/Sorting.cpp, quantile_compute): NaN if the row holds one;
/// q = f32(p), rank = f64(q)·(n − 1) in f64, below = ⌊rank⌋, above = ⌈rank⌉,
/// w = f32(rank − below), then `lerp`. Not an f64 reference on purpose: the point is torch's
/// bits.
pub fn quantile_f32(row: &[f32], p: f64) -> f32 {
    if row.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    let rank = (p as f32) as f64 * (row.len() - 1) as f64;
    let below = rank.floor();
    let (lo, hi) = order_statistics_f32(row, below as usize);
    let hi = if rank > below { hi } else { lo };
    torch_lerp_f32(lo, hi, (rank - below) as f32)
}

/// torch's `lerp(start, end, w)` for f32 (aten/src/ATen/native/Lerp.h) as its CPU kernels,
/// vectorised and scalar, and its CUDA kernel evaluate it: each branch one fused multiply-add,
/// start + w·(end − start) for |w| < 0.5, else end − (end − start)·(1 − w), where
/// −(end − start)·(1 − w) = (w − 1)·(end − start) exactly. tools/fixtures/quantile.py checks
/// this against torch on inputs where a separately rounded product gives other bits.
pub fn torch_lerp_f32(start: f32, end: f32, w: f32) -> f32 {
    let d = end - start;
    if w.abs() < 0.5 {
        w.mul_add(d, start)
    } else {
        (w - 1.0).mul_add(d, end)
    }
}

/// torch's max_pool2d / avg_pool2d (K×K, floor mode) over planes of h×w: `avg` None is the
/// maximum, Some(include_pad) the average with or without the padded taps in the divisor.
pub fn pool2d(
    x: &[f64],
    (planes, h, w): (usize, usize, usize),
    (k, stride, pad): (usize, usize, usize),
    avg: Option<bool>,
) -> (Vec<f64>, usize, usize) {
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (w + 2 * pad - k) / stride + 1;
    let mut out = Vec::with_capacity(planes * ho * wo);
    for p in 0..planes {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut taps = Vec::new();
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            taps.push(x[(p * h + iy as usize) * w + ix as usize]);
                        }
                    }
                }
                let sum: f64 = taps.iter().sum();
                out.push(match avg {
                    None => taps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    Some(true) => sum / (k * k) as f64,
                    Some(false) => sum / taps.len() as f64,
                });
            }
        }
    }
    (out, ho, wo)
}

/// F.interpolate(mode='bilinear', align_corners=False) of planes h×w to ho×wo, written from
/// PyTorch's definition: source s = (d + 0.5)·in/out − 0.5, clamped at 0; taps ⌊s⌋ and the next
/// (the last repeated at the edge).
pub fn resize_bilinear(
    x: &[f64],
    (planes, h, w): (usize, usize, usize),
    (ho, wo): (usize, usize),
) -> Vec<f64> {
    let taps = |d: usize, size_in: usize, size_out: usize| {
        let s = ((d as f64 + 0.5) * size_in as f64 / size_out as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(size_in - 1);
        let i1 = if i0 < size_in - 1 { i0 + 1 } else { i0 };
        (i0, i1, s - i0 as f64)
    };
    let mut out = Vec::with_capacity(planes * ho * wo);
    for p in 0..planes {
        let at = |y: usize, x_: usize| x[(p * h + y) * w + x_];
        for oy in 0..ho {
            let (y0, y1, ly) = taps(oy, h, ho);
            for ox in 0..wo {
                let (x0, x1, lx) = taps(ox, w, wo);
                let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
                let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
                out.push((1.0 - ly) * top + ly * bottom);
            }
        }
    }
    out
}

/// The uncertainty map of each mode from ε (n values) and M copies stacked copy-major (M·n).
pub fn uncertainty_map(
    eps: &[f32],
    copies: &[f32],
    m: usize,
    mode: wgsl_diff::ops::UncertaintyMode,
) -> Vec<f64> {
    use wgsl_diff::ops::UncertaintyMode;
    let n = eps.len();
    (0..n)
        .map(|i| {
            let v: Vec<f64> = (0..m).map(|k| copies[k * n + i] as f64).collect();
            let mean = v.iter().sum::<f64>() / m as f64;
            let ss = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
            match mode {
                UncertaintyMode::Centred => {
                    v.iter().map(|x| (x - eps[i] as f64).powi(2)).sum::<f64>() / m as f64
                }
                UncertaintyMode::Variance => ss / (m - 1) as f64,
                UncertaintyMode::VarianceBiased => ss / m as f64,
                stein => panic!("{stein} needs the re-noise draws: use stein_map"),
            }
        })
        .collect()
}

/// A Stein mode's map from the copies ε_m and their draws n_m (M·n each, copy-major), written
/// from the definitions in two passes: Ĵ_i = Σ_m n_m,i (ε_m,i − ε̄_i)/(M − 1), raw_i as in
/// shaders/uncertainty.wgsl, map_i = (raw_i − shift_j)·scale_j with j = i mod len.
pub struct SteinInputs<'a> {
    pub copies: &'a [f32],
    pub noise: &'a [f32],
    pub m: usize,
    pub shift: &'a [f32],
    pub scale: &'a [f32],
    pub rho: f64,
}

pub fn stein_map(x: &SteinInputs, mode: wgsl_diff::ops::UncertaintyMode) -> Vec<f64> {
    use wgsl_diff::ops::UncertaintyMode;
    let (m, len) = (x.m, x.shift.len());
    let n = x.copies.len() / m;
    (0..n)
        .map(|i| {
            let e: Vec<f64> = (0..m).map(|k| x.copies[k * n + i] as f64).collect();
            let z: Vec<f64> = (0..m).map(|k| x.noise[k * n + i] as f64).collect();
            let mean = e.iter().sum::<f64>() / m as f64;
            let jac = z.iter().zip(&e).map(|(z, e)| z * (e - mean)).sum::<f64>() / (m - 1) as f64;
            let raw = match mode {
                UncertaintyMode::Typicality => {
                    e.iter().map(|e| e * e).sum::<f64>() / m as f64 - jac
                }
                UncertaintyMode::PosteriorVariance => x.rho * (1.0 - jac).max(0.0),
                UncertaintyMode::Residual => {
                    e.iter().zip(&z).map(|(e, z)| (e - z).powi(2)).sum::<f64>() / m as f64
                }
                other => panic!("{other} is not a Stein mode"),
            };
            (raw - x.shift[i % len] as f64) * x.scale[i % len] as f64
        })
        .collect()
}
