//! The transformer blocks' ops (Stable Diffusion's BasicTransformerBlock and CLIP's encoder;
//! U-ViT's blocks): exact GELU, CLIP's quick_gelu, diffusers' GEGLU, LayerNorm, their input
//! gradients, and attention with queries ≠ keys or a causal mask, against f64 references
//! (libm's erf) on awkward shapes, LayerNorm and attention on both kernel classes.

mod common;

use common::{assert_close, gpus, read_from, to_f64, upload_to, Rng};
use wgsl_diff::ops;

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

fn gelu_derivative64(x: f64) -> f64 {
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)) + x * pdf
}

fn sigmoid64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn quick_gelu64(x: f64) -> f64 {
    x * sigmoid64(1.702 * x)
}

fn quick_gelu_derivative64(x: f64) -> f64 {
    let s = sigmoid64(1.702 * x);
    s * (1.0 + 1.702 * x * (1.0 - s))
}

/// A scalar function and its derivative, in f64.
type Scalar = fn(f64) -> f64;

/// Inputs spread over [−8, 8] (both tails of Φ) plus exact zeros and the branch points.
fn spread(n: usize, seed: u64) -> Vec<f32> {
    let mut v: Vec<f32> = Rng::new(seed).vec(n).iter().map(|x| 8.0 * x).collect();
    v[..4].copy_from_slice(&[0.0, -0.0, 1e-7, -30.0]);
    v
}

#[test]
fn activations_and_their_gradients_match_f64() {
    let [g, _] = gpus();
    let shape = [3, 7, 13];
    let n: usize = shape.iter().product();
    let x = spread(n, 1);
    let dy = Rng::new(2).vec(n);
    let (xt, dyt) = (upload_to(g, &x, &shape), upload_to(g, &dy, &shape));
    let cases: [(&str, Scalar, Scalar); 2] = [
        ("gelu", gelu64, gelu_derivative64),
        ("quick_gelu", quick_gelu64, quick_gelu_derivative64),
    ];
    for (name, f, df) in cases {
        let (y, dx) = match name {
            "gelu" => (ops::gelu(g, &xt), ops::gelu_grad(g, &xt, &dyt)),
            _ => (ops::quick_gelu(g, &xt), ops::quick_gelu_grad(g, &xt, &dyt)),
        };
        let want: Vec<f64> = x.iter().map(|&v| f(v as f64)).collect();
        assert_close(name, &read_from(g, &y.unwrap()), &want, 1e-6, 1e-5);
        let want: Vec<f64> = x
            .iter()
            .zip(&dy)
            .map(|(&v, &d)| d as f64 * df(v as f64))
            .collect();
        assert_close(
            &format!("{name} gradient"),
            &read_from(g, &dx.unwrap()),
            &want,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn geglu_gates_the_first_half_by_the_gelu_of_the_second() {
    let [g, _] = gpus();
    let (rows, f) = (2 * 5, 7);
    let x = spread(rows * 2 * f, 3);
    let got = ops::geglu(g, &upload_to(g, &x, &[2, 5, 2 * f])).unwrap();
    assert_eq!(got.shape(), &[2, 5, f]);
    let want: Vec<f64> = (0..rows)
        .flat_map(|r| {
            let row = &x[r * 2 * f..(r + 1) * 2 * f];
            (0..f).map(move |j| row[j] as f64 * gelu64(row[f + j] as f64))
        })
        .collect();
    assert_close("geglu", &read_from(g, &got), &want, 1e-5, 1e-5);
    let odd = ops::geglu(g, &upload_to(g, &x[..3 * 5], &[3, 5])).unwrap_err();
    assert!(odd.to_string().contains("two halves"), "{odd}");
}

/// Row-wise LayerNorm and its input gradient, dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with
/// g = dy·γ, written out here from the definition.
fn layer_norm64(
    x: &[f64],
    c: usize,
    eps: f64,
    gamma: &[f64],
    beta: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    for (r, row) in x.chunks(c).enumerate() {
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = row.iter().map(|v| (v - mean) * rstd).collect();
        let g: Vec<f64> = (0..c).map(|j| dy[r * c + j] * gamma[j]).collect();
        let g_mean = g.iter().sum::<f64>() / c as f64;
        let gx_mean = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / c as f64;
        for j in 0..c {
            y[r * c + j] = xhat[j] * gamma[j] + beta[j];
            dx[r * c + j] = rstd * (g[j] - g_mean - xhat[j] * gx_mean);
        }
    }
    (y, dx)
}

#[test]
fn layer_norm_and_its_gradient_match_f64_on_both_classes() {
    for g in gpus() {
        for (shape, eps) in [
            (vec![2, 9, 40], 1e-5),
            (vec![5, 33], 1e-6),
            (vec![1, 77, 3], 1e-5),
        ] {
            let c = *shape.last().unwrap();
            let n: usize = shape.iter().product();
            let mut rng = Rng::new(n as u64);
            // An offset mean, so the variance is not computed around zero by luck.
            let x: Vec<f32> = rng.vec(n).iter().map(|v| 3.0 + 2.0 * v).collect();
            let (gamma, beta, dy) = (rng.vec(c), rng.vec(c), rng.vec(n));
            let (gt, bt) = (upload_to(g, &gamma, &[c]), upload_to(g, &beta, &[c]));
            let xt = upload_to(g, &x, &shape);
            let (y, moments) = ops::layer_norm_saving(g, &xt, eps as f32, &gt, &bt).unwrap();
            assert_eq!(y.shape(), &shape[..]);
            let dx =
                ops::layer_norm_input_grad(g, &xt, &moments, &gt, &bt, &upload_to(g, &dy, &shape))
                    .unwrap();
            let (want_y, want_dx) = layer_norm64(
                &to_f64(&x),
                c,
                eps,
                &to_f64(&gamma),
                &to_f64(&beta),
                &to_f64(&dy),
            );
            let what = format!("{:?} {shape:?}", g.kernel_class());
            assert_close(
                &format!("layer_norm {what}"),
                &read_from(g, &y),
                &want_y,
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("layer_norm gradient {what}"),
                &read_from(g, &dx),
                &want_dx,
                1e-5,
                1e-4,
            );
        }
    }
}

/// Token-major attention in f64: q (B, Nq, h·D), k and v (B, Nk, h·D), query i seeing keys
/// 0..=i when causal.
fn attention64(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    (b, nq, nk, heads, d): (usize, usize, usize, usize, usize),
    scale: f64,
    causal: bool,
) -> Vec<f64> {
    let c = heads * d;
    let mut out = vec![0.0; b * nq * c];
    for item in 0..b {
        for h in 0..heads {
            for i in 0..nq {
                let seen = if causal { i + 1 } else { nk };
                let qi = &q[(item * nq + i) * c + h * d..][..d];
                let s: Vec<f64> = (0..seen)
                    .map(|j| {
                        let kj = &k[(item * nk + j) * c + h * d..][..d];
                        scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    let p = (sj - m).exp() / z;
                    for e in 0..d {
                        out[(item * nq + i) * c + h * d + e] +=
                            p * v[(item * nk + j) * c + h * d + e];
                    }
                }
            }
        }
    }
    out
}

#[test]
fn cross_and_causal_attention_match_f64_on_both_classes() {
    use ops::AttentionMask;
    for g in gpus() {
        // (B, Nq, Nk, heads, D, causal): text cross-attention shapes, one head, a causal encoder.
        for (b, nq, nk, heads, d, causal) in [
            (2, 5, 7, 3, 4, false),
            (1, 9, 77, 2, 8, false),
            (2, 6, 6, 1, 5, false),
            (2, 6, 6, 2, 5, true),
            (1, 77, 77, 4, 3, true),
        ] {
            let c = heads * d;
            let mut rng = Rng::new((nq * 131 + nk) as u64);
            let (q, k, v) = (
                rng.vec(b * nq * c),
                rng.vec(b * nk * c),
                rng.vec(b * nk * c),
            );
            let scale = 1.0 / (d as f32).sqrt();
            let mask = if causal {
                AttentionMask::Causal
            } else {
                AttentionMask::None
            };
            let got = ops::cross_attention(
                g,
                &upload_to(g, &q, &[b, nq, c]),
                &upload_to(g, &k, &[b, nk, c]),
                &upload_to(g, &v, &[b, nk, c]),
                heads,
                scale,
                mask,
            )
            .unwrap();
            assert_eq!(got.shape(), &[b, nq, c]);
            let want = attention64(
                &to_f64(&q),
                &to_f64(&k),
                &to_f64(&v),
                (b, nq, nk, heads, d),
                scale as f64,
                causal,
            );
            let what = format!(
                "{:?} B{b} Nq{nq} Nk{nk} h{heads} D{d} causal {causal}",
                g.kernel_class()
            );
            assert_close(&what, &read_from(g, &got), &want, 1e-5, 1e-4);
        }
    }
    let g = gpus()[0];
    let t = |n: usize| upload_to(g, &vec![0.5; 2 * n * 4], &[2, n, 4]);
    let err = ops::cross_attention(g, &t(3), &t(5), &t(5), 2, 1.0, ops::AttentionMask::Causal)
        .unwrap_err()
        .to_string();
    assert!(err.contains("as many queries as keys"), "{err}");
    let err = ops::cross_attention(g, &t(3), &t(5), &t(5), 3, 1.0, ops::AttentionMask::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 heads"), "{err}");
}

/// The GEGLU's input gradient against its closed form: the h half takes dy·GELU(gate), the gate
/// half dy·h·GELU'(gate).
#[test]
fn geglu_gradient_matches_f64() {
    let [g, _] = gpus();
    let (rows, f) = (3 * 4, 9);
    let x = spread(rows * 2 * f, 5);
    let dy = Rng::new(6).vec(rows * f);
    let got = ops::geglu_grad(
        g,
        &upload_to(g, &x, &[3, 4, 2 * f]),
        &upload_to(g, &dy, &[3, 4, f]),
    )
    .unwrap();
    assert_eq!(got.shape(), &[3, 4, 2 * f]);
    let want: Vec<f64> = (0..rows)
        .flat_map(|r| {
            let (row, d) = (&x[r * 2 * f..(r + 1) * 2 * f], &dy[r * f..(r + 1) * f]);
            let (h, gate) = row.split_at(f);
            let d_h = (0..f).map(move |j| d[j] as f64 * gelu64(gate[j] as f64));
            let d_gate =
                (0..f).map(move |j| d[j] as f64 * h[j] as f64 * gelu_derivative64(gate[j] as f64));
            d_h.chain(d_gate).collect::<Vec<_>>()
        })
        .collect();
    assert_close("geglu gradient", &read_from(g, &got), &want, 1e-5, 1e-5);
    let mismatched = ops::geglu_grad(
        g,
        &upload_to(g, &x, &[3, 4, 2 * f]),
        &upload_to(g, &dy[..3 * 4 * (f - 1)], &[3, 4, f - 1]),
    )
    .unwrap_err();
    assert!(mismatched.to_string().contains("differ"), "{mismatched}");
}

/// The queries' gradient of cross- and causal attention against a central difference of the f64
/// attention (step 1e-6: its error ~1e-10, far below the tolerance), on both kernel classes.
#[test]
fn cross_attention_query_gradient_matches_f64_differences() {
    use ops::AttentionMask;
    for g in gpus() {
        for (b, nq, nk, heads, d, causal) in [
            (2, 5, 7, 3, 4, false),
            (1, 9, 77, 2, 8, false),
            (2, 6, 6, 2, 5, true),
        ] {
            let c = heads * d;
            let mut rng = Rng::new((nq * 71 + nk) as u64);
            let (q, k, v) = (
                rng.vec(b * nq * c),
                rng.vec(b * nk * c),
                rng.vec(b * nk * c),
            );
            let d_out = rng.vec(b * nq * c);
            let scale = 1.0 / (d as f32).sqrt();
            let mask = if causal {
                AttentionMask::Causal
            } else {
                AttentionMask::None
            };
            let (kt, vt) = (upload_to(g, &k, &[b, nk, c]), upload_to(g, &v, &[b, nk, c]));
            let (out, probs) = ops::cross_attention_saving(
                g,
                &upload_to(g, &q, &[b, nq, c]),
                &kt,
                &vt,
                heads,
                scale,
                mask,
            )
            .unwrap();
            assert_eq!(
                (out.shape(), probs.shape()),
                (&[b, nq, c][..], &[b * heads, nq, nk][..])
            );
            let dq = ops::cross_attention_query_grad(
                g,
                &probs,
                &kt,
                &vt,
                &upload_to(g, &d_out, &[b, nq, c]),
                heads,
                scale,
            )
            .unwrap();
            assert_eq!(dq.shape(), &[b, nq, c]);
            let (k64, v64, d64) = (to_f64(&k), to_f64(&v), to_f64(&d_out));
            let loss = |q: &[f64]| -> f64 {
                let out = attention64(q, &k64, &v64, (b, nq, nk, heads, d), scale as f64, causal);
                out.iter().zip(&d64).map(|(o, g)| o * g).sum()
            };
            let step = 1e-6;
            let want: Vec<f64> = (0..q.len())
                .map(|i| {
                    let (mut plus, mut minus) = (to_f64(&q), to_f64(&q));
                    plus[i] += step;
                    minus[i] -= step;
                    (loss(&plus) - loss(&minus)) / (2.0 * step)
                })
                .collect();
            let what = format!(
                "{:?} dq B{b} Nq{nq} Nk{nk} h{heads} D{d} causal {causal}",
                g.kernel_class()
            );
            assert_close(&what, &read_from(g, &dq), &want, 1e-5, 1e-4);
        }
    }
}
