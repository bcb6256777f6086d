//! U-ViT against the authors' own module (`libs/uvit.py` of baofff/U-ViT) in float64 at random
//! weights (tests/fixtures/uvit_*.safetensors, `python -m tools.fixtures.uvit --uvit CHECKOUT`):
//! the ImageNet configs' shape (patch 2 over a 4-channel latent, a class token, no time MLP, no
//! final conv) and the pixel configs' options (qkv bias, time MLP, final conv, unconditional).

mod common;

use common::{assert_close, fixture, gpu, read, read_safetensors, to_f64};
use wgsl_diff::models::{load_eps_model, Cond, WeightFile};

#[test]
fn eps_matches_the_authors_module() {
    let g = gpu();
    for name in ["class", "pixel"] {
        let file = WeightFile::open(&fixture(&format!("uvit_{name}.safetensors"))).unwrap();
        let model = load_eps_model(g, &file).unwrap();
        let io = read_safetensors(&fixture(&format!("uvit_{name}_io.safetensors")));
        let up = |key: &str| g.upload(&io[key].0, &io[key].1).unwrap();
        let cond = Cond::from_labels(io.contains_key("y").then(|| up("y")));
        let eps = model
            .predict_eps(g, &up("x"), &up("timesteps"), &cond)
            .unwrap();
        assert_eq!(eps.shape(), &io["output"].0[..]);
        let want = to_f64(&io["output"].1);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert_close(
            &format!("uvit_{name}"),
            &read(&eps),
            &want,
            1e-4 * scale.max(1.0),
            1e-4,
        );
        assert_eq!(model.sample_shape().unwrap(), [io["x"].0[1], 8, 8]);
    }
}

/// Class labels where the model takes none, none where it needs them, a wrong input size.
#[test]
fn bad_inputs_are_refused() {
    let g = gpu();
    let open = |name: &str| {
        let file = WeightFile::open(&fixture(&format!("uvit_{name}.safetensors"))).unwrap();
        load_eps_model(g, &file).unwrap()
    };
    let (class, pixel) = (open("class"), open("pixel"));
    let t = g.upload(&[1], &[10.0]).unwrap();
    let x = |c: usize, side: usize| {
        g.upload(&[1, c, side, side], &vec![0.5; c * side * side])
            .unwrap()
    };
    let label = Cond::Class(g.upload(&[1], &[2.0]).unwrap());
    for (what, model, x, cond, expected) in [
        ("no label", &class, x(4, 8), Cond::None, "class label"),
        ("a label", &pixel, x(3, 8), label.clone(), "no class labels"),
        ("wrong size", &class, x(4, 6), label, "needs (1, 4, 8, 8)"),
    ] {
        let err = model.predict_eps(g, &x, &t, &cond).unwrap_err().to_string();
        assert!(err.contains(expected), "{what}: {err}");
    }
}
