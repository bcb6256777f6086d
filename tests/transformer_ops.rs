//! The transformer blocks' element-wise and normalisation ops (Stable Diffusion's
//! BasicTransformerBlock and CLIP's encoder; U-ViT's blocks): exact GELU, CLIP's quick_gelu,
//! diffusers' GEGLU, LayerNorm, and their input gradients, against f64 references (libm's erf)
//! on awkward shapes, LayerNorm on both kernel classes.

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
