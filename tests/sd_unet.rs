//! diffusers' UNet2DConditionModel (Stable Diffusion's UNet) against PyTorch float64 at random
//! weights (tests/fixtures/sd_unet_*.safetensors, `python -m tools.fixtures.sd_unet`): an SD-shaped
//! toy, diffusers' own test config and three levels with per-block heads, each on an
//! [uncond; cond] pair of text states with H ≠ W; and through the denoiser with classifier-free
//! guidance.

mod common;

use common::{assert_close, fixture, gpu, read, read_safetensors, to_f64};
use wgsl_diff::models::diffusers::unet_2d_condition::UNet2DConditionModel;
use wgsl_diff::models::{denoise, denoise_vjp, row_range, Cond, EpsModel, WeightFile};

fn load(name: &str) -> UNet2DConditionModel {
    let file = WeightFile::open(&fixture(&format!("sd_unet_{name}.safetensors"))).unwrap();
    UNet2DConditionModel::load(gpu(), &file).unwrap()
}

#[test]
fn eps_matches_diffusers() {
    let g = gpu();
    for name in ["sd_tiny", "diffusers_test", "three_levels"] {
        let model = load(name);
        let io = read_safetensors(&fixture(&format!("sd_unet_{name}_io.safetensors")));
        let up = |key: &str| g.upload(&io[key].0, &io[key].1).unwrap();
        let cond = Cond::Text(up("encoder_hidden_states"));
        let eps = model
            .predict_eps(g, &up("sample"), &up("timestep"), &cond)
            .unwrap();
        let (shape, want) = &io["output"];
        assert_eq!(eps.shape(), &shape[..]);
        let want = to_f64(want);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert_close(
            &format!("sd_unet_{name}"),
            &read(&eps),
            &want,
            1e-4 * scale.max(1.0),
            1e-4,
        );
    }
}

/// Classifier-free guidance on the text UNet: one stacked call, ε_u + w·(ε_c − ε_u), against
/// the fixture's two rows combined in f64 (row 0 the unconditional states, row 1 the prompt's).
#[test]
fn classifier_free_guidance_on_text_states() {
    let g = gpu();
    let model = load("sd_tiny");
    let io = read_safetensors(&fixture("sd_unet_sd_tiny_io.safetensors"));
    let up = |key: &str| g.upload(&io[key].0, &io[key].1).unwrap();
    let (sample, states) = (up("sample"), up("encoder_hidden_states"));
    // The second sample at its timestep, guided between the two text states.
    let x = row_range(g, &sample, 1, 1).unwrap();
    let t = g.upload(&[1], &[17.0]).unwrap();
    let uncond = Cond::Text(row_range(g, &states, 0, 1).unwrap());
    let cond = Cond::Text(row_range(g, &states, 1, 1).unwrap());
    let e_u = read(&model.predict_eps(g, &x, &t, &uncond).unwrap());
    let e_c = read(&model.predict_eps(g, &x, &t, &cond).unwrap());
    let w = 7.5;
    let guided = Cond::guided(cond, uncond, w).unwrap();
    let got = read(&denoise(&model, g, &x, &t, &guided).unwrap());
    let want: Vec<f64> = e_u
        .iter()
        .zip(&e_c)
        .map(|(&u, &c)| u as f64 + w as f64 * (c as f64 - u as f64))
        .collect();
    assert_close("guided ε", &got, &want, 1e-4, 1e-5);
    // A class-label or missing condition is refused by this network.
    let err = model
        .predict_eps(g, &x, &t, &Cond::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("text states"), "{err}");
}

/// Options of Stable Diffusion 2.x, SDXL and inpainting UNets are refused by name.
#[test]
fn other_stable_diffusion_unets_are_refused() {
    use wgsl_diff::models::diffusers::unet_2d_condition::UNet2DConditionConfig;
    for (json, key) in [
        (
            r#"{"use_linear_projection": true}"#,
            "use_linear_projection",
        ),
        (
            r#"{"addition_embed_type": "text_time"}"#,
            "addition_embed_type",
        ),
        (
            r#"{"transformer_layers_per_block": [1, 2, 10]}"#,
            "transformer_layers_per_block",
        ),
        (r#"{"in_channels": 9}"#, "9 channels"),
        (
            r#"{"down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"], "block_out_channels": [32], "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}"#,
            "mid block",
        ),
    ] {
        let err = UNet2DConditionConfig::parse(json).unwrap_err().to_string();
        assert!(err.contains(key), "{json}: {err}");
    }
}

/// ∂⟨ε, v⟩/∂x against torch.autograd in float64 on every fixture config, whole and one sample
/// per slice (the slicing large batches take).
#[test]
fn vjp_matches_autograd() {
    let g = gpu();
    for name in ["sd_tiny", "diffusers_test", "three_levels"] {
        let model = load(name);
        let io = read_safetensors(&fixture(&format!("sd_unet_{name}_io.safetensors")));
        let up = |key: &str| g.upload(&io[key].0, &io[key].1).unwrap();
        let (x, t, states, v) = (
            up("sample"),
            up("timestep"),
            up("encoder_hidden_states"),
            up("cotangent"),
        );
        let want = to_f64(&io["vjp"].1);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for per_call in [2, 1] {
            let got = model.vjp_sliced(g, &x, &t, &states, &v, per_call).unwrap();
            assert_eq!(got.shape(), x.shape());
            assert_close(
                &format!("sd_unet_{name} vjp, {per_call} per call"),
                &read(&got),
                &want,
                1e-4 * scale.max(1.0),
                1e-4,
            );
        }
    }
}

/// The VJP under classifier-free guidance (cotangents (1 − w)·v and w·v through the two halves
/// of one stacked call) against autograd through diffusers' combination.
#[test]
fn guided_vjp_matches_autograd() {
    let g = gpu();
    let model = load("sd_tiny");
    let io = read_safetensors(&fixture("sd_unet_sd_tiny_io.safetensors"));
    let up = |key: &str| g.upload(&io[key].0, &io[key].1).unwrap();
    let (sample, states, cotangent) = (up("sample"), up("encoder_hidden_states"), up("cotangent"));
    let x = row_range(g, &sample, 1, 1).unwrap();
    let v = row_range(g, &cotangent, 1, 1).unwrap();
    let t = g.upload(&[1], &[17.0]).unwrap();
    let uncond = Cond::Text(row_range(g, &states, 0, 1).unwrap());
    let cond = Cond::Text(row_range(g, &states, 1, 1).unwrap());
    let guided = Cond::guided(cond, uncond, 7.5).unwrap();
    let got = read(&denoise_vjp(&model, g, &x, &t, &guided, &v).unwrap());
    let want = to_f64(&io["guided_vjp"].1);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert_close("guided vjp", &got, &want, 1e-4 * scale.max(1.0), 1e-4);
    // A cotangent not shaped like ε is refused.
    let err = model
        .vjp(g, &x, &t, &row_range(g, &states, 1, 1).unwrap(), &sample)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cotangent"), "{err}");
}

/// Stable Diffusion 1.5's full UNet (860 M parameters, random weights) on a 16 × 24 latent with
/// 77-token text states, against diffusers in float64: ε and the input gradient. The fixture is
/// 3.4 GB, so it is made on demand (`python -m tools.fixtures.sd_unet --full-sd15`, then
/// `cargo test --release --test sd_unet -- --ignored`).
#[test]
#[ignore]
fn full_sd15_architecture_matches_diffusers() {
    let g = gpu();
    let file = WeightFile::open(&fixture("large/sd_unet_sd15_arch.safetensors")).unwrap();
    let model = UNet2DConditionModel::load(g, &file).unwrap();
    let io = read_safetensors(&fixture("large/sd_unet_sd15_arch_io.safetensors"));
    let up = |key: &str| g.upload(&io[key].0, &io[key].1).unwrap();
    let (x, t, states) = (up("sample"), up("timestep"), up("encoder_hidden_states"));
    let start = std::time::Instant::now();
    let eps = model
        .predict_eps(g, &x, &t, &Cond::Text(states.clone()))
        .unwrap();
    let want = to_f64(&io["output"].1);
    let got = read(&eps);
    eprintln!(
        "SD 1.5 UNet forward at B 2, 16 × 24: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert_close("sd15 ε", &got, &want, 1e-4 * scale.max(1.0), 1e-4);
    let vjp = model.vjp(g, &x, &t, &states, &up("cotangent")).unwrap();
    let want = to_f64(&io["vjp"].1);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert_close("sd15 vjp", &read(&vjp), &want, 1e-4 * scale.max(1.0), 1e-4);
}
