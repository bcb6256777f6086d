//! Kernels whose per-invocation loops run long: attention over many keys, matmul over a deep K.
//!
//! Mesa's llvmpipe (lavapipe, every CPU user's Vulkan device) silently breaks out of a loop nest
//! after 65535 iterations counted over the outermost loop and every loop nested in it
//! (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS). These sizes push one invocation's nest past that
//! when the keys are not split ([`Gpu::max_loop_iterations`]), so on a CPU device they fail
//! unless the ops split the work; on a real GPU they are ordinary reference checks.

mod common;

use common::attention_case::{AttentionCase, AttentionShape};
use common::reference as r;
use common::{
    assert_close, attention_gpus, gpu, gpus, read, read_from, to_f64, upload, upload_to, Rng,
};
use wgsl_diff::ops::{self, Conv2dArgs};

/// One attention shape through the products path and through the fused kernels (which split
/// the keys where loops are bounded), against the f64 references.
fn check_attention(rng: &mut Rng, shape: AttentionShape, grad: bool) {
    let case = AttentionCase::new(rng, shape, grad);
    let [own, _, fused] = attention_gpus();
    for g in [own, fused] {
        case.check(g);
    }
}

/// Head dim 16: unsplit, one invocation's nest counts about 35 iterations per key, so 1840
/// tokens stay under 65535 and 1856 go over.
#[test]
fn attention_straddling_the_cpu_loop_limit() {
    let mut rng = Rng::new(40);
    for n in [1840, 1856] {
        check_attention(&mut rng, (1, n, 16, 1), false);
    }
}

/// The sizes measured wrong on lavapipe, ADM-64's (1024 tokens, head dim 64) among them.
#[test]
fn attention_and_grad_over_many_keys() {
    let mut rng = Rng::new(41);
    for shape in [(1, 2048, 16, 1), (1, 1024, 64, 1), (2, 4096, 8, 1)] {
        check_attention(&mut rng, shape, true);
    }
}

/// A product deeper than the CPU loop budget: exact on a real GPU, a clear refusal (not a
/// silently truncated sum) where the device bounds loops.
#[test]
fn matmul_over_a_deep_inner_dimension() {
    let mut rng = Rng::new(42);
    // K = 70000 runs 4375 passes of 18 counted iterations on llvmpipe: over 65535.
    let (m, k, n) = (3, 70000, 5);
    let (a, b) = (rng.vec(m * k), rng.vec(k * n));
    let got = ops::matmul(gpu(), &upload(&a, &[1, m, k]), &upload(&b, &[k, n]));
    if gpu().max_loop_iterations().is_some() {
        match got {
            Err(wgsl_diff::Error::Invalid(msg)) => assert!(msg.contains("70000"), "{msg}"),
            other => panic!(
                "K = {k} must be refused here, got {:?}",
                other.map(|t| read(&t))
            ),
        }
        // The deepest product the budget allows still runs, and is right.
        let k_ok = 29120;
        let (a, b) = (&a[..m * k_ok], &b[..k_ok * n]);
        let y = ops::matmul(gpu(), &upload(a, &[1, m, k_ok]), &upload(b, &[k_ok, n])).unwrap();
        assert_close(
            "matmul K=29120",
            &read(&y),
            &matmul_f64(a, b, m, k_ok, n),
            1e-4,
            1e-4,
        );
        return;
    }
    assert_close(
        "matmul K=70000",
        &read(&got.unwrap()),
        &matmul_f64(&a, &b, m, k, n),
        1e-3,
        1e-4,
    );
}

/// A convolution over many input channels: the register-blocked (CPU) variant loops over them
/// in one invocation, so on a loop-bounded device the deepest it allows must be right (which
/// bounds the driver's count at 65535 / 2520 = 26 per channel, twice the 13 the host assumes),
/// and deeper ones (Stable Diffusion's 2,560-channel joins) run as runs of channels summed
/// through the fused residual; the tiled variant, and real GPUs, take them whole. With a bias, a
/// residual and an output scale, which the split must apply once. Planes of 4 × 4 take
/// conv2d_blocked, of 16 × 16 its 16-pixel form conv2d_blocked_row16.
#[test]
fn conv2d_over_many_input_channels() {
    let mut rng = Rng::new(43);
    let (c_max, co) = (2520, 4);
    let deepest = 2 * c_max + 3;
    for (hw, g) in [4, 16].into_iter().flat_map(|hw| gpus().map(|g| (hw, g))) {
        let x = rng.vec(deepest * hw * hw);
        let w = rng.vec(co * deepest * 9);
        let (bias, residual) = (rng.vec(co), rng.vec(co * hw * hw));
        let scale = 0.5;
        for ci in [c_max, c_max + 1, deepest] {
            let (xs, ws) = (&x[..ci * hw * hw], &w[..co * ci * 9]);
            let residual_t = upload_to(g, &residual, &[1, co, hw, hw]);
            let args = Conv2dArgs {
                residual: Some(&residual_t),
                out_scale: scale,
                ..Conv2dArgs::padded(1)
            };
            let got = ops::conv2d(
                g,
                &upload_to(g, xs, &[1, ci, hw, hw]),
                &upload_to(g, ws, &[co, ci, 3, 3]),
                Some(&upload_to(g, &bias, &[co])),
                args,
            );
            let what = format!("conv2d {:?} C_in={ci} {hw}x{hw}", g.kernel_class());
            let (conv, _, _) = r::conv2d(
                &to_f64(xs),
                (1, ci, hw, hw),
                &to_f64(ws),
                (co, 3, 3),
                Some(&to_f64(&bias)),
                1,
                1,
                0,
            );
            let want: Vec<f64> = conv
                .iter()
                .zip(&residual)
                .map(|(c, r)| (c + *r as f64) * scale as f64)
                .collect();
            // Sums of up to 45,000 products of magnitude ≤ 1: f32 rounding alone reaches 1e-4.
            assert_close(&what, &read_from(g, &got.unwrap()), &want, 1e-3, 1e-4);
        }
    }
}

fn matmul_f64(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for kk in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + kk] as f64 * b[kk * n + j] as f64;
            }
        }
    }
    c
}
