//! f16 weight storage (`WeightFile::with_f16_weights`, `--f16-weights`): conv2d and matmul with
//! an f16 weight against the f64 reference computed with the f16-rounded weights (the products
//! accumulate in f32, so the f32 tolerances hold), on both kernel classes; f16 checkpoints
//! loading as stored; and the shipped model's error against its f32 self.

mod common;

use common::{
    assert_close, fixture, gemm_gpu, gemm_gpus, gpu, read_from, read_safetensors, reference as r,
    to_f64, upload_to, Rng, CONV_CASES,
};
use half::f16;
use std::path::Path;
use wgsl_diff::gpu::{AdapterChoice, DType, Gpu, Tensor};
use wgsl_diff::models::{load_eps_model, Cond, WeightFile};
use wgsl_diff::ops::{self, Conv2dArgs};

/// `data` rounded to f16, as uploaded and as the f64 values the kernels should multiply by.
fn halves(g: &Gpu, data: &[f32], shape: &[usize]) -> (Tensor, Vec<f64>) {
    let h: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
    let t = g.upload_f16(shape, &h).unwrap();
    assert_eq!(t.dtype(), DType::F16);
    (t, h.iter().map(|v| f64::from(v.to_f32())).collect())
}

#[test]
fn conv2d_with_f16_weights_matches_reference() {
    let mut rng = Rng::new(161);
    // The f32 kernel tests' cases, with the weight rounded to f16.
    for (b, ci, h, w, co, k, stride, pad, extra) in CONV_CASES {
        let x = rng.vec(b * ci * h * w);
        let wt = rng.vec(co * ci * k * k);
        let bias = rng.vec(co);
        let args = Conv2dArgs {
            stride,
            padding: pad,
            pad_bottom_right: extra,
            ..Default::default()
        };
        for g in gemm_gpus() {
            let (w16, w64) = halves(g, &wt, &[co, ci, k, k]);
            let (want, ho, wo) = r::conv2d(
                &to_f64(&x),
                (b, ci, h, w),
                &w64,
                (co, k, k),
                Some(&to_f64(&bias)),
                stride,
                pad,
                extra,
            );
            let y = ops::conv2d(
                g,
                &upload_to(g, &x, &[b, ci, h, w]),
                &w16,
                Some(&upload_to(g, &bias, &[co])),
                args,
            )
            .unwrap();
            assert_eq!(y.shape(), [b, co, ho, wo]);
            let what = format!(
                "f16-weight conv2d {} {:?}",
                gemm_gpu(g),
                (b, ci, h, w, co, k, stride, pad, extra)
            );
            assert_close(&what, &read_from(g, &y), &want, 1e-5, 1e-4);
        }
    }
}

#[test]
fn matmul_and_linear_with_f16_weights_match_reference() {
    let mut rng = Rng::new(162);
    // Every entry point: K % 4 = 0 takes the vec4 loads (tiled linear, blocked plain product
    // with N % 4 = 0 too), odd sizes the scalar ones; a batched B in both layouts.
    for (batch, m, k, n, b_batched) in [
        (1, 1, 1, 1, false),
        (2, 7, 13, 5, false),
        (3, 65, 33, 70, true),
        (1, 3, 4, 2, false),
        (2, 37, 64, 45, false),
        (1, 70, 128, 68, false),
        (2, 9, 8, 12, true),
    ] {
        let a = rng.vec(batch * m * k);
        let b_batch = if b_batched { batch } else { 1 };
        let b = rng.vec(b_batch * k * n);
        let wt = rng.vec(b_batch * n * k);
        let bias = rng.vec(n);
        let b_shape = |r, c| {
            if b_batched {
                vec![batch, r, c]
            } else {
                vec![r, c]
            }
        };
        for g in gemm_gpus() {
            let what = |op| format!("f16 {op} {} {:?}", gemm_gpu(g), (batch, m, k, n));
            let a_gpu = upload_to(g, &a, &[batch, m, k]);
            let (b16, b64) = halves(g, &b, &b_shape(k, n));
            let (w16, w64) = halves(g, &wt, &b_shape(n, k));
            // The reference shares B over the batch: one product per batch item when it is not.
            let per_item = |a_all: &[f32], bm: &[f64], trans, bias: Option<&[f64]>| {
                (0..batch)
                    .flat_map(|z| {
                        let bz = if b_batched {
                            &bm[z * n * k..(z + 1) * n * k]
                        } else {
                            bm
                        };
                        let az = to_f64(&a_all[z * m * k..(z + 1) * m * k]);
                        r::matmul(&az, bz, 1, m, k, n, trans, bias)
                    })
                    .collect::<Vec<f64>>()
            };
            let y = ops::matmul(g, &a_gpu, &b16).unwrap();
            let want = per_item(&a, &b64, false, None);
            assert_close(&what("matmul"), &read_from(g, &y), &want, 1e-5, 1e-4);
            if !b_batched {
                let y = ops::linear(g, &a_gpu, &w16, Some(&upload_to(g, &bias, &[n]))).unwrap();
                let want = per_item(&a, &w64, true, Some(&to_f64(&bias)));
                assert_close(&what("linear"), &read_from(g, &y), &want, 1e-5, 1e-4);
            }
        }
    }
}

/// f16 tensors go where a kernel reads them (a weight operand, or the activations of an op with
/// a half variant, tests/f16_activations.rs) and nowhere else.
#[test]
fn f16_tensors_are_refused_where_f32_is_read() {
    let g = gpu();
    let (w16, _) = halves(g, &[0.5; 12], &[3, 4]);
    let err = g.read(&w16).unwrap_err().to_string();
    assert!(err.contains("f16"), "{err}");
    // As the input of a kernel with f32 bindings only (the backward pass's), and beside f32
    // activations.
    let z = upload_to(g, &[0.0; 12], &[3, 4]);
    let err = ops::silu_grad(g, &w16, &z).unwrap_err().to_string();
    assert!(err.contains("f16"), "{err}");
    let err = ops::silu_grad(g, &w16, &w16).unwrap_err().to_string();
    assert!(err.contains("f16"), "{err}");
    let err = ops::add(g, &w16, &z).unwrap_err().to_string();
    assert!(err.contains("f16"), "{err}");
}

/// A copy of `src` with every tensor stored as float16, as `tools/convert.py --half` writes.
fn write_half(src: &Path, name: &str) -> std::path::PathBuf {
    let meta = WeightFile::open(src).unwrap().metadata.clone();
    let halves: Vec<(String, Vec<usize>, Vec<f16>)> = read_safetensors(src)
        .into_iter()
        .map(|(n, (s, d))| (n, s, d.into_iter().map(f16::from_f32).collect()))
        .collect();
    let views = halves.iter().map(|(n, s, d)| {
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F16,
            s.clone(),
            bytemuck::cast_slice(d),
        );
        (n.clone(), view.unwrap())
    });
    let path = std::env::temp_dir().join(format!("wgsl-diff-{}-{name}", std::process::id()));
    std::fs::write(&path, safetensors::serialize(views, &Some(meta)).unwrap()).unwrap();
    path
}

/// A device of the test's own, so the bytes it holds are the model's: on the shared device the
/// tests running beside this one hold tensors too, and its pool hands out free buffers up to
/// twice a request's size (on an 8-thread run on NVIDIA the f16 model seemed to hold 2.4 times
/// the f32 one's bytes).
fn own_device() -> Gpu {
    Gpu::new(&AdapterChoice::Default).expect("the adapter opens again")
}

/// One forward of the model in `path` on fixed input, loaded with or without f16 weights, with
/// the bytes the loaded model holds: the model's own on a device of its own ([`own_device`]),
/// up to the pool's slack for buffers that the load itself freed and reused.
fn forward(g: &Gpu, path: &Path, f16_weights: bool, batch: usize) -> (Vec<f32>, u64) {
    let before = g.memory().live;
    let file = WeightFile::open(path)
        .unwrap()
        .with_f16_weights(f16_weights);
    let model = load_eps_model(g, &file).unwrap();
    let held = g.memory().live - before;
    let [c, h, w] = model.sample_shape().unwrap();
    let x = Rng::new(163).vec(batch * c * h * w);
    let t: Vec<f32> = (0..batch).map(|i| (100 + 400 * i) as f32).collect();
    let eps = model
        .predict_eps(
            g,
            &g.upload(&[batch, c, h, w], &x).unwrap(),
            &g.upload(&[batch], &t).unwrap(),
            &Cond::None,
        )
        .unwrap();
    (read_from(g, &eps), held)
}

/// An f16 checkpoint's weights reach the GPU as stored: with f16 storage the output matches the
/// file's output with its values widened to f32 up to f32 summation order (on a CPU adapter the
/// widened linear layers run the transposed-weight product, which sums in another order; the
/// convolutions are bit-identical), far closer than either is to the unrounded f32 model, while
/// the weights take about half the bytes.
#[test]
fn f16_checkpoints_load_as_stored() {
    let g = gpu();
    let src = fixture("unet_tiny_gray.safetensors");
    let half_file = write_half(&src, "tiny-f16.safetensors");
    let (stored, bytes_f16) = forward(&own_device(), &half_file, true, 2);
    let (widened, bytes_f32) = forward(&own_device(), &half_file, false, 2);
    let (full, _) = forward(g, &src, false, 2);
    std::fs::remove_file(&half_file).ok();
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let order = max_diff(&stored, &widened);
    let rounding = max_diff(&stored, &full);
    assert!(order <= 1e-5, "f16 storage vs widened f32: {order}");
    assert!(
        rounding >= 100.0 * order.max(1e-7),
        "the f16 file really holds rounded weights: {rounding} vs {order}"
    );
    assert!(
        bytes_f16 < bytes_f32 * 3 / 4,
        "the model holds {bytes_f16} bytes with f16 weights, {bytes_f32} with f32"
    );
}

/// The shipped model with f16 weights stays within 2e-3 of its f32 self on one forward
/// (measured on lavapipe with the step-20,000 weights: max abs error 6.0e-4 over ε of magnitude up
/// to 4.35).
#[test]
fn shipped_model_with_f16_weights_stays_near_f32() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/fashion_mnist_ddpm.safetensors");
    let (full, bytes_f32) = forward(&own_device(), &path, false, 2);
    let (half_out, bytes_f16) = forward(&own_device(), &path, true, 2);
    let max_err = full
        .iter()
        .zip(&half_out)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let max_abs = full.iter().map(|v| v.abs()).fold(0f32, f32::max);
    eprintln!(
        "shipped model, f16 weights vs f32: max abs error {max_err:.3e} (|ε| up to {max_abs:.2}); \
         weights held {bytes_f16} vs {bytes_f32} bytes"
    );
    assert_close("shipped f16 vs f32", &half_out, &to_f64(&full), 2e-3, 0.0);
    assert_ne!(full, half_out);
}

/// Gradient guidance needs the network's backward pass, which reads f32 weights: refused before
/// any sampling.
#[test]
fn gradient_guidance_refuses_f16_weights() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["sample", "--num", "1", "--steps", "2", "--quiet"])
        .args([
            "--uncertainty",
            "--guidance",
            "gradient",
            "--f16-weights",
            "--out",
        ])
        .arg(common::tmp_dir("f16-guidance"))
        .output()
        .unwrap();
    common::assert_clean_failure(&out, "guided f16 sampling", "needs f32 weights");
}
