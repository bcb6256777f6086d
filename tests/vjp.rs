//! The UNet's input gradient (`EpsModel::vjp`) against `torch.autograd.grad` in float64
//! (tools/fixtures/vjp.py), its batch slicing, and the saving forward's equality with the
//! plain forward.

mod common;

use common::{fixture, gpu, read, read_safetensors as read_tensors, Rng};
use std::path::Path;
use wgsl_diff::gpu::{Gpu, Tensor};
use wgsl_diff::models::{Cond, EpsModel, UNet2DModel, WeightFile};

/// The required agreement with autograd: max |got − want| over max |want|.
const MAX_REL_ERR: f64 = 1e-4;

fn load(weights: &Path) -> UNet2DModel {
    UNet2DModel::load(gpu(), &WeightFile::open(weights).unwrap()).unwrap()
}

/// max |got − want| / max |want|: one scale for the whole gradient, so entries near zero do
/// not turn f32 rounding into huge relative errors.
fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs() as f64));
    let worst = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((*g as f64 - *w as f64).abs()));
    worst / scale
}

struct Case {
    x: Tensor,
    t: Tensor,
    labels: Option<Tensor>,
    v: Tensor,
    grad: Vec<f32>,
}

/// The inputs of `inputs` (a fixture's `_io` file, or the vjp file itself) and the cotangent and
/// float64 gradient of `vjp_file`.
fn case(g: &Gpu, inputs: &Path, vjp_file: &Path) -> Case {
    let io = read_tensors(inputs);
    let vjp = read_tensors(vjp_file);
    let up = |(s, d): &(Vec<usize>, Vec<f32>)| g.upload(s, d).unwrap();
    Case {
        x: up(&io["sample"]),
        t: up(&io["timestep"]),
        labels: io.get("class_labels").map(up),
        v: up(&vjp["cotangent"]),
        grad: vjp["grad"].1.clone(),
    }
}

fn check_against_autograd(name: &str, model: &UNet2DModel, c: &Case) {
    let got = model
        .vjp(gpu(), &c.x, &c.t, c.labels.as_ref(), &c.v)
        .unwrap();
    assert_eq!(got.shape(), c.x.shape(), "{name}: gradient shape");
    let err = max_rel_err(&read(&got), &c.grad);
    eprintln!("{name}: VJP vs float64 autograd, max relative error {err:.3e}");
    assert!(
        err <= MAX_REL_ERR,
        "{name}: max relative error {err:.3e} > {MAX_REL_ERR:e}"
    );
}

fn check_fixture(name: &str) {
    let model = load(&fixture(&format!("{name}.safetensors")));
    let c = case(
        gpu(),
        &fixture(&format!("{name}_io.safetensors")),
        &fixture(&format!("{name}_vjp.safetensors")),
    );
    check_against_autograd(name, &model, &c);
}

#[test]
fn tiny_rgb_vjp_matches_autograd() {
    check_fixture("unet_tiny_rgb");
}

#[test]
fn tiny_gray_vjp_matches_autograd() {
    check_fixture("unet_tiny_gray");
}

#[test]
fn class_conditional_vjp_matches_autograd() {
    check_fixture("unet_tiny_class");
}

#[test]
fn scale_shift_vjp_matches_autograd() {
    check_fixture("unet_tiny_scale_shift");
}

#[test]
fn odd_channels_vjp_matches_autograd() {
    check_fixture("unet_tiny_odd");
}

#[test]
fn shipped_model_vjp_matches_autograd() {
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/fashion_mnist_ddpm.safetensors");
    let model = load(&weights);
    let file = fixture("shipped_vjp.safetensors");
    check_against_autograd(
        "shipped fashion_mnist_ddpm",
        &model,
        &case(gpu(), &file, &file),
    );
}

/// Slicing the batch changes nothing: every kernel treats samples independently, in the same
/// order of operations whatever the batch size.
#[test]
fn sliced_vjp_equals_whole_batch() {
    let g = gpu();
    let model = load(&fixture("unet_tiny_class.safetensors"));
    let mut rng = Rng::new(40);
    let b = 5;
    let x = g.upload(&[b, 1, 8, 8], &rng.vec(b * 64)).unwrap();
    let t = g.upload(&[b], &[999.0, 0.0, 500.0, 17.0, 250.0]).unwrap();
    let labels = g.upload(&[b], &[3.0, 0.0, 9.0, 3.0, 1.0]).unwrap();
    let v = g.upload(&[b, 1, 8, 8], &rng.vec(b * 64)).unwrap();
    let whole = read(&model.vjp_sliced(g, &x, &t, Some(&labels), &v, b).unwrap());
    for per_call in [1, 2, 3] {
        let sliced = model
            .vjp_sliced(g, &x, &t, Some(&labels), &v, per_call)
            .unwrap();
        assert_eq!(read(&sliced), whole, "{per_call} samples per call");
    }
    assert!(model.vjp_max_batch(g) >= 1 && model.vjp_max_batch(g) <= model.max_batch(g));
}

/// The saving forward runs the same kernels (attention's only adds the log-sum-exp output).
#[test]
fn saving_forward_equals_plain_forward() {
    let g = gpu();
    for name in ["unet_tiny_rgb", "unet_tiny_scale_shift", "unet_tiny_odd"] {
        let model = load(&fixture(&format!("{name}.safetensors")));
        let io = read_tensors(&fixture(&format!("{name}_io.safetensors")));
        let x = g.upload(&io["sample"].0, &io["sample"].1).unwrap();
        let t = g.upload(&io["timestep"].0, &io["timestep"].1).unwrap();
        let plain = read(&model.forward(g, &x, &t, None).unwrap());
        let (saving, _tape) = model.forward_saving(g, &x, &t, None).unwrap();
        assert_eq!(read(&saving), plain, "{name}");
    }
}

#[test]
fn bad_cotangents_and_models_without_backward_are_errors() {
    let g = gpu();
    let model = load(&fixture("unet_tiny_gray.safetensors"));
    let x = g.zeros(&[2, 1, 8, 8]).unwrap();
    let t = g.zeros(&[2]).unwrap();
    let err = model
        .vjp(g, &x, &t, None, &g.zeros(&[2, 1, 4, 4]).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("cotangent"), "{err}");
    let err = model
        .vjp(g, &x, &g.zeros(&[3]).unwrap(), None, &x)
        .unwrap_err();
    assert!(err.to_string().contains("one entry per sample"), "{err}");

    /// A model with no backward pass of its own.
    struct ForwardOnly;
    impl EpsModel for ForwardOnly {
        fn predict_eps(
            &self,
            _: &Gpu,
            x: &Tensor,
            _: &Tensor,
            _: &Cond,
        ) -> wgsl_diff::Result<Tensor> {
            Ok(x.clone())
        }
        fn sample_shape(&self) -> wgsl_diff::Result<[usize; 3]> {
            Ok([1, 8, 8])
        }
        fn num_classes(&self) -> Option<usize> {
            None
        }
        fn max_batch(&self, _: &Gpu) -> usize {
            1
        }
    }
    let err = ForwardOnly
        .vjp(g, &x, &t, &Cond::None, &x)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no backward pass") && err.contains("guidance"),
        "{err}"
    );
}
