//! Input-gradient (backward) kernels. First the f64 reference gradients are held to their f64
//! forwards by central differences, element by element and along a random direction u (the
//! adjoint identity ⟨J·u, v⟩ = ⟨u, Jᵀ·v⟩); then the GPU kernels are held to those references
//! on awkward shapes (sizes 1, odd channels and sides, off-tile, batch > 1, split reductions).

mod common;

use common::attention_case::AttentionCase;
use common::{
    assert_close, attention_gpus, conv_out_hw, conv_out_len, gemm_gpu, gemm_gpus, gpu, gpus, read,
    read_from, reference as r, tiled_variants, to_f64, upload, upload_to, ConvCase, Rng,
    CONV_CASES,
};
use wgsl_diff::gpu::{AdapterChoice, Gpu, KernelClass};
use wgsl_diff::ops::{self, Conv2dArgs};

fn rand64(rng: &mut Rng, n: usize) -> Vec<f64> {
    to_f64(&rng.vec(n))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central-difference step; with O(1) data the truncation (~h²) and rounding (~1e-16/h) errors
/// both stay near 1e-10.
const H: f64 = 1e-5;
/// Allowed |finite difference − gradient|, relative to the largest gradient entry.
const FD_TOL: f64 = 1e-7;

/// Holds `grad` to ∂⟨f(x), v⟩/∂x: per element and along a random direction.
fn check_vjp(what: &str, f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], v: &[f64], grad: &[f64]) {
    assert_eq!(grad.len(), x.len(), "{what}: gradient length");
    let pairing = |shift: &dyn Fn(usize) -> f64| {
        let moved: Vec<f64> = x.iter().enumerate().map(|(i, xi)| xi + shift(i)).collect();
        dot(&f(&moved), v)
    };
    let scale = grad.iter().fold(1e-3f64, |m, g| m.max(g.abs()));
    let mut worst = 0f64;
    for (i, g) in grad.iter().enumerate() {
        let up = pairing(&|j| if j == i { H } else { 0.0 });
        let down = pairing(&|j| if j == i { -H } else { 0.0 });
        let fd = (up - down) / (2.0 * H);
        worst = worst.max((fd - g).abs() / scale);
    }
    assert!(
        worst <= FD_TOL,
        "{what}: finite differences off by {worst:.2e} (relative)"
    );
    let u = rand64(&mut Rng::new(x.len() as u64), x.len());
    let directional = (pairing(&|j| H * u[j]) - pairing(&|j| -H * u[j])) / (2.0 * H);
    let adjoint = dot(&u, grad);
    let norm = dot(&u, &u).sqrt() * dot(grad, grad).sqrt();
    let adjoint_err = (directional - adjoint).abs() / norm.max(1e-12);
    assert!(
        adjoint_err <= FD_TOL,
        "{what}: ⟨J·u, v⟩ − ⟨u, Jᵀ·v⟩ = {adjoint_err:.2e} (relative)"
    );
    eprintln!("{what}: finite differences {worst:.2e}, adjoint {adjoint_err:.2e} (relative)");
}

#[test]
fn reference_conv2d_input_grad_matches_finite_differences() {
    let mut rng = Rng::new(10);
    let cases: [ConvCase; 4] = [
        (2, 3, 5, 4, 2, 3, 1, 1, 0),
        (1, 2, 7, 6, 3, 3, 2, 1, 0),
        (2, 2, 6, 5, 3, 3, 2, 0, 1),
        (1, 4, 3, 3, 5, 1, 1, 0, 0),
    ];
    for case in cases {
        let (b, ci, h, w, co, k, stride, pad, extra) = case;
        let x = rand64(&mut rng, b * ci * h * w);
        let wt = rand64(&mut rng, co * ci * k * k);
        let dy = rand64(&mut rng, conv_out_len(case));
        let f =
            |x: &[f64]| r::conv2d(x, (b, ci, h, w), &wt, (co, k, k), None, stride, pad, extra).0;
        let grad = r::conv2d_input_grad(&dy, (b, ci, h, w), &wt, (co, k, k), stride, pad, extra);
        check_vjp(
            &format!("reference conv2d grad {case:?}"),
            f,
            &x,
            &dy,
            &grad,
        );
    }
}

#[test]
fn reference_group_norm_input_grad_matches_finite_differences() {
    let mut rng = Rng::new(11);
    // (batch, channels, hw, groups, fused SiLU)
    for (b, c, hw, groups, silu) in [(2, 6, 5, 3, true), (1, 4, 7, 1, false), (2, 3, 1, 3, true)] {
        let x = rand64(&mut rng, b * c * hw);
        let gamma: Vec<f64> = rand64(&mut rng, c).iter().map(|g| 1.0 + 0.5 * g).collect();
        let beta = rand64(&mut rng, c);
        let dy = rand64(&mut rng, x.len());
        let eps = 1e-5;
        let f = |x: &[f64]| r::group_norm(x, b, c, hw, groups, eps, &gamma, &beta, silu);
        let grad = r::group_norm_input_grad(&x, (b, c, hw), groups, eps, &gamma, &beta, silu, &dy);
        let what = format!("reference group_norm grad {:?}", (b, c, hw, groups, silu));
        check_vjp(&what, f, &x, &dy, &grad);
    }
}

#[test]
fn reference_attention_grad_matches_finite_differences() {
    let mut rng = Rng::new(12);
    for (b, n, c, heads) in [(2, 5, 6, 1), (1, 4, 6, 3)] {
        let len = b * n * c;
        let (q, k, v) = (
            rand64(&mut rng, len),
            rand64(&mut rng, len),
            rand64(&mut rng, len),
        );
        let d_out = rand64(&mut rng, len);
        let scale = 1.0 / ((c / heads) as f64).sqrt();
        let (dq, dk, dv) = r::attention_grad(&q, &k, &v, (b, n, c), heads, scale, &d_out);
        let what = |t| format!("reference attention d{t} {:?}", (b, n, c, heads));
        let attn = |q: &[f64], k: &[f64], v: &[f64]| r::attention(q, k, v, b, n, c, heads, scale);
        check_vjp(&what("q"), |x| attn(x, &k, &v), &q, &d_out, &dq);
        check_vjp(&what("k"), |x| attn(&q, x, &v), &k, &d_out, &dk);
        check_vjp(&what("v"), |x| attn(&q, &k, x), &v, &d_out, &dv);
    }
}

#[test]
fn reference_elementwise_grads_match_finite_differences() {
    let mut rng = Rng::new(13);
    let z: Vec<f64> = rand64(&mut rng, 9).iter().map(|v| 4.0 * v).collect();
    let dy = rand64(&mut rng, 9);
    let grad: Vec<f64> = z
        .iter()
        .zip(&dy)
        .map(|(z, g)| g * r::silu_grad(*z))
        .collect();
    let silu = |x: &[f64]| x.iter().map(|v| r::silu(*v)).collect::<Vec<_>>();
    check_vjp("reference silu grad", silu, &z, &dy, &grad);

    let (planes, h, w) = (3, 2, 3);
    let x = rand64(&mut rng, planes * h * w);
    let dy = rand64(&mut rng, 4 * x.len());
    let grad = r::upsample_nearest2x_grad(&dy, planes, h, w);
    let up = |x: &[f64]| r::upsample_nearest2x(x, planes, h, w);
    check_vjp("reference upsample grad", up, &x, &dy, &grad);

    // Concatenation [a | s] along channels: the gradient of s is the slice of dy.
    let (b, ca, cs, hw) = (2, 2, 3, 4);
    let a = rand64(&mut rng, b * ca * hw);
    let s = rand64(&mut rng, b * cs * hw);
    let dy = rand64(&mut rng, b * (ca + cs) * hw);
    let concat = |s: &[f64]| {
        (0..b)
            .flat_map(|n| [&a[n * ca * hw..][..ca * hw], &s[n * cs * hw..][..cs * hw]].concat())
            .collect::<Vec<_>>()
    };
    let grad = r::slice_channels(&dy, (b, ca + cs, hw), ca, cs);
    check_vjp("reference concat grad (slice)", concat, &s, &dy, &grad);

    // Linear x·Wᵀ: the gradient is dy·W.
    let (m, k, n) = (3, 4, 5);
    let (x, wt, dy) = (
        rand64(&mut rng, m * k),
        rand64(&mut rng, n * k),
        rand64(&mut rng, m * n),
    );
    let grad = r::matmul(&dy, &wt, 1, m, n, k, false, None);
    let linear = |x: &[f64]| r::matmul(x, &wt, 1, m, k, n, true, None);
    check_vjp("reference linear grad", linear, &x, &dy, &grad);
}

#[test]
fn conv2d_input_grad_matches_reference() {
    let mut rng = Rng::new(20);
    // On the blocked class every case runs as a forward convolution with the flipped weight (C_in
    // is then its output channels: 64 takes the 32-row blocks), of dy spread out in zeros where
    // the stride is 2 or there is extra bottom/right padding; on the tiled class through
    // conv2d_input_grad, and every third case in each tiled variant (tile shape, split-K).
    // The last: padding plus extra padding beyond K − 1, so some of dy meets only padding.
    let extra_cases: [ConvCase; 3] = [
        (2, 64, 6, 8, 5, 3, 1, 1, 0),
        (1, 4, 6, 5, 3, 3, 1, 0, 0),
        (1, 3, 7, 6, 4, 3, 2, 2, 1),
    ];
    let cases = CONV_CASES.iter().chain(&extra_cases).copied();
    for (i, case) in cases.enumerate() {
        let (b, ci, h, w, co, k, stride, pad, extra) = case;
        let wt = rng.vec(co * ci * k * k);
        let dy = rng.vec(conv_out_len(case));
        let want = r::conv2d_input_grad(
            &to_f64(&dy),
            (b, ci, h, w),
            &to_f64(&wt),
            (co, k, k),
            stride,
            pad,
            extra,
        );
        let args = Conv2dArgs {
            stride,
            padding: pad,
            pad_bottom_right: extra,
            ..Default::default()
        };
        let (ho, wo) = conv_out_hw(case);
        let variants = if i % 3 == 0 { tiled_variants() } else { &[] };
        for g in gemm_gpus().into_iter().chain(variants) {
            let dy_t = upload_to(g, &dy, &[b, co, ho, wo]);
            let wt_t = upload_to(g, &wt, &[co, ci, k, k]);
            let dx = ops::conv2d_input_grad(g, &dy_t, &wt_t, (h, w), args).unwrap();
            assert_eq!(dx.shape(), [b, ci, h, w]);
            assert_close(
                &format!("conv2d_input_grad {} {case:?}", gemm_gpu(g)),
                &read_from(g, &dx),
                &want,
                1e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn group_norm_input_grad_matches_reference() {
    let mut rng = Rng::new(21);
    // (batch, channels, h, w, groups, fused SiLU); the third splits each group's reductions over
    // two workgroups (3·40·41 > 4096 elements); the last two have planes of whole vec4s (apply4).
    let cases = [
        (2, 6, 7, 5, 3, true),
        (1, 9, 3, 3, 3, false),
        (2, 6, 40, 41, 2, true),
        (3, 5, 1, 2, 5, false),
        (1, 1, 1, 1, 1, true),
        (2, 6, 4, 6, 3, true),
        (1, 8, 48, 48, 2, false),
    ];
    for (b, c, h, w, groups, silu) in cases {
        let x = rng.vec(b * c * h * w);
        let gamma: Vec<f32> = rng.vec(c).iter().map(|g| 1.0 + 0.5 * g).collect();
        let beta = rng.vec(c);
        let dy = rng.vec(x.len());
        let eps = 1e-5;
        let want = r::group_norm_input_grad(
            &to_f64(&x),
            (b, c, h * w),
            groups,
            eps as f64,
            &to_f64(&gamma),
            &to_f64(&beta),
            silu,
            &to_f64(&dy),
        );
        for g in gpus() {
            let (x_t, gamma_t, beta_t) = (
                upload_to(g, &x, &[b, c, h, w]),
                upload_to(g, &gamma, &[c]),
                upload_to(g, &beta, &[c]),
            );
            let (_, moments) =
                ops::group_norm_saving(g, &x_t, groups, eps, &gamma_t, &beta_t, silu).unwrap();
            let dy_t = upload_to(g, &dy, &[b, c, h, w]);
            let dx = ops::group_norm_input_grad(
                g, &x_t, &moments, groups, &gamma_t, &beta_t, silu, &dy_t,
            )
            .unwrap();
            let what = format!(
                "group_norm_input_grad {:?} {:?}",
                g.kernel_class(),
                (b, c, h, w, groups, silu)
            );
            // A single-element group has variance 0: rstd = 1/sqrt(eps) amplifies f32 rounding
            // of x − mean (which is exactly 0 here, so the gradient is 0 and atol covers it).
            assert_close(&what, &read_from(g, &dx), &want, 1e-5, 1e-4);
        }
    }
}

/// Both kernel classes as batched products per (item, head), and the fused flash-style kernels.
#[test]
fn attention_saving_and_grad_match_reference() {
    let mut rng = Rng::new(22);
    // (batch, tokens, channels, heads): one token; odd head widths; two threads per query
    // (head dim 65, 70) with more tokens than one staged tile; one 64-wide head.
    for case in [
        (1, 1, 4, 1),
        (2, 7, 6, 3),
        (2, 37, 70, 1),
        (1, 20, 130, 2),
        (1, 16, 64, 1),
    ] {
        let case = AttentionCase::new(&mut rng, case, true);
        for g in attention_gpus() {
            case.check(g);
        }
    }
}

/// On both classes, where the scores of all (item, head) pairs exceed one tensor, the products
/// run in groups: 6 pairs in 3 groups of 2.
#[test]
fn attention_in_groups_saving_and_grad_match_reference() {
    let (n, pairs_per_tensor) = (7, 3);
    for class in [KernelClass::Blocked, KernelClass::Tiled] {
        let g = Gpu::new(&AdapterChoice::Default)
            .unwrap()
            .with_kernel_class(class)
            .with_max_tensor_bytes((pairs_per_tensor * n * n * 4) as u64);
        AttentionCase::new(&mut Rng::new(24), (2, n, 6, 3), true).check(&g);
    }
}

#[test]
fn elementwise_grads_match_reference() {
    let mut rng = Rng::new(23);
    let g = gpu();
    let z: Vec<f32> = rng.vec(1001).iter().map(|v| 8.0 * v).collect();
    let dy = rng.vec(1001);
    let want: Vec<f64> = z
        .iter()
        .zip(&dy)
        .map(|(z, d)| *d as f64 * r::silu_grad(*z as f64))
        .collect();
    let got = ops::silu_grad(g, &upload(&z, &[7, 11, 13]), &upload(&dy, &[7, 11, 13])).unwrap();
    assert_close("silu_grad", &read(&got), &want, 1e-6, 1e-5);

    let (b, c, h, w) = (3, 7, 5, 3);
    let x = rng.vec(b * c * h * w);
    for (start, count) in [(0, 7), (2, 4), (6, 1)] {
        let got = ops::slice_channels(g, &upload(&x, &[b, c, h, w]), start, count).unwrap();
        assert_eq!(got.shape(), [b, count, h, w]);
        let want = r::slice_channels(&to_f64(&x), (b, c, h * w), start, count);
        assert_close(
            &format!("slice_channels {start}+{count}"),
            &read(&got),
            &want,
            0.0,
            0.0,
        );
    }

    let dy = rng.vec(b * c * 4 * h * w);
    let got = ops::upsample_nearest2x_grad(g, &upload(&dy, &[b, c, 2 * h, 2 * w])).unwrap();
    assert_eq!(got.shape(), [b, c, h, w]);
    let want = r::upsample_nearest2x_grad(&to_f64(&dy), b * c, h, w);
    assert_close("upsample_nearest2x_grad", &read(&got), &want, 1e-6, 1e-6);

    let (m, k, n) = (37, 5, 70);
    let (dy, wt) = (rng.vec(m * n), rng.vec(n * k));
    let got = ops::linear_input_grad(g, &upload(&dy, &[1, m, n]), &upload(&wt, &[n, k])).unwrap();
    assert_eq!(got.shape(), [1, m, k]);
    let want = r::matmul(&to_f64(&dy), &to_f64(&wt), 1, m, n, k, false, None);
    assert_close("linear_input_grad", &read(&got), &want, 1e-5, 1e-4);
}

#[test]
fn bad_gradient_operands_are_shape_errors() {
    let g = gpu();
    let wt = upload(&[0.0; 2 * 3 * 9], &[2, 3, 3, 3]);
    let dy = upload(&[0.0; 2 * 4 * 4], &[1, 2, 4, 4]);
    let args = Conv2dArgs::padded(1);
    let err = ops::conv2d_input_grad(g, &dy, &wt, (5, 4), args)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv2d_input_grad") && err.contains("not the output"),
        "{err}"
    );
    let x = upload(&[0.0; 12], &[1, 3, 2, 2]);
    let gamma = upload(&[1.0; 3], &[3]);
    let (_, moments) = ops::group_norm_saving(g, &x, 3, 1e-5, &gamma, &gamma, false).unwrap();
    let bad_dy = upload(&[0.0; 8], &[1, 2, 2, 2]);
    let err = ops::group_norm_input_grad(g, &x, &moments, 3, &gamma, &gamma, false, &bad_dy)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must match x"), "{err}");
    let err = ops::slice_channels(g, &x, 2, 2).unwrap_err().to_string();
    assert!(err.contains("channels 2..4 of 3"), "{err}");
    let up = upload(&[0.0; 9], &[1, 1, 3, 3]);
    assert!(ops::upsample_nearest2x_grad(g, &up).is_err());
}
