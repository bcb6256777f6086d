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

/// From the command line: U-ViT's latents decoded by an autoencoder given with --vae (the tiny SD
/// VAE, 8× up), classifier-free guidance toward the class away from the null class recorded in
/// the run; batching changes no sample, guidance changes them; --cfg-scale on a model without a
/// null class and --vae beside a Stable Diffusion model are refused.
#[test]
fn the_cli_samples_a_latent_uvit_with_class_guidance() {
    use std::process::Command;
    let dir = common::tmp_dir("uvit-cli");
    let run = |out: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
            .args([
                "sample", "--quiet", "--num", "2", "--steps", "3", "--class", "cycle",
            ])
            .arg("--model")
            .arg(fixture("uvit_class.safetensors"))
            .arg("--vae")
            .arg(fixture("vae_sd_tiny.safetensors"))
            .args(extra)
            .arg("--out")
            .arg(dir.join(out))
            .output()
            .unwrap()
    };
    for (out, extra) in [
        ("guided-1", vec!["--cfg-scale", "1.4", "--batch", "1"]),
        ("guided-2", vec!["--cfg-scale", "1.4", "--batch", "2"]),
        ("plain", vec!["--batch", "2"]),
    ] {
        let o = run(out, &extra);
        assert!(
            o.status.success(),
            "{out}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for i in 0..2 {
        let name = format!("sample_{i:06}.png");
        let read = |run: &str| std::fs::read(dir.join(run).join(&name)).unwrap();
        assert_eq!(
            read("guided-1"),
            read("guided-2"),
            "{name}: batching changed it"
        );
        assert_ne!(
            read("guided-1"),
            read("plain"),
            "{name}: guidance changed nothing"
        );
        let img = wgsl_diff::images::read_png(&dir.join("plain").join(&name)).unwrap();
        assert_eq!(
            (img.height, img.width, img.channels),
            (64, 64, 3),
            "8× the 8 × 8 latent"
        );
    }
    let manifest = std::fs::read_to_string(dir.join("guided-1/run.json")).unwrap();
    assert!(manifest.contains("\"cfg_scale\": 1.4"), "{manifest}");
    assert!(manifest.contains("vae_sd_tiny"), "{manifest}");
    let refused = Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(["sample", "--quiet", "--num", "1", "--cfg-scale", "2"])
        .arg("--model")
        .arg(fixture("unet_tiny_gray.safetensors"))
        .arg("--out")
        .arg(dir.join("refused"))
        .output()
        .unwrap();
    common::assert_clean_failure(
        &refused,
        "cfg on a model without a null class",
        "null class",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
