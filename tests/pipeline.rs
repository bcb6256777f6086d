//! End-to-end parity with diffusers' DDIMPipeline, and with an independent PyTorch
//! implementation of Algorithm 1 (tools/reference_pipeline.py, tools/reference_uncertainty.py).

mod common;

use common::{assert_close, ddim, fixture, fixture_model, gpu, read, read_safetensors, to_f64};
use std::path::Path;
use wgsl_diff::models::{UNet2DModel, WeightFile};
use wgsl_diff::ops::UncertaintyMode;
use wgsl_diff::sampling::{sample_batch, BatchSpec, NoisePlan, NoisePurpose};
use wgsl_diff::uncertainty::{UncertaintyConfig, UncertaintyEstimator};

#[test]
fn ddim_sampling_matches_the_diffusers_pipeline() {
    let st = read_safetensors(&fixture("pipeline_ddim.safetensors"));
    for (case, weights) in [
        ("gray", "unet_tiny_gray.safetensors"),
        ("rgb", "unet_tiny_rgb.safetensors"),
    ] {
        let (shape, noise) = st[&format!("{case}/init_noise")].clone();
        let (_, want) = st[&format!("{case}/images")].clone();
        let (_, timesteps) = st[&format!("{case}/timesteps")].clone();
        let sched = ddim(timesteps.len());
        assert_eq!(
            sched
                .timesteps
                .iter()
                .map(|&t| t as f32)
                .collect::<Vec<_>>(),
            timesteps
        );
        let g = gpu();
        let spec = BatchSpec {
            first_index: 0,
            size: shape[0],
            labels: None,
            init_noise: Some(g.upload(&shape, &noise).unwrap()),
        };
        let x = read(
            &sample_batch(
                g,
                &fixture_model(weights),
                &sched,
                &NoisePlan::new(0),
                spec,
                &mut [],
                |_| {},
            )
            .unwrap()
            .x,
        );
        // The pipeline's output: (x/2 + 0.5) clamped to [0, 1].
        let ours: Vec<f32> = x.iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect();
        assert_close(
            &format!("{case} images vs DDIMPipeline"),
            &ours,
            &to_f64(&want),
            1e-3,
            0.0,
        );
    }
}

#[test]
fn uncertainty_maps_match_an_independent_pytorch_implementation() {
    let st = read_safetensors(&fixture("uncertainty_ddim.safetensors"));
    let g = gpu();
    let unet = fixture_model("unet_tiny_gray.safetensors");
    let (shape, noise) = st["init_noise"].clone();
    let (_, timesteps) = st["timesteps"].clone();
    let steps = timesteps.len();
    let sched = ddim(steps);
    let perturbation: Vec<(Vec<usize>, Vec<f32>)> = (0..steps)
        .map(|i| st[&format!("perturbation/{i}")].clone())
        .collect();
    let copies = perturbation[0].0[0] / shape[0];
    for (mode, name) in [
        (UncertaintyMode::Centred, "centred"),
        (UncertaintyMode::Variance, "variance"),
        (UncertaintyMode::VarianceBiased, "variance_biased"),
    ] {
        let replay = perturbation
            .iter()
            .map(|(s, d)| g.upload(s, d).unwrap())
            .collect();
        let mut est = UncertaintyEstimator::new(UncertaintyConfig {
            copies,
            mode,
            keep_maps: true,
            ..Default::default()
        })
        .unwrap();
        let spec = BatchSpec {
            first_index: 0,
            size: shape[0],
            labels: None,
            init_noise: Some(g.upload(&shape, &noise).unwrap()),
        };
        let x = read(
            &sample_batch(
                g,
                &unet,
                &sched,
                &NoisePlan::new(0).with_replay(NoisePurpose::Uncertainty, replay),
                spec,
                &mut [&mut est],
                |_| {},
            )
            .unwrap()
            .x,
        );
        for (i, (step, map)) in est.maps.iter().enumerate() {
            assert_eq!(*step, i);
            let (_, want) = st[&format!("maps/{name}/{i}")].clone();
            let top = want.iter().fold(0f64, |m, &v| m.max(v as f64));
            assert_close(
                &format!("{name} map, step {i}"),
                &read(map),
                &to_f64(&want),
                1e-4 * top,
                1e-4,
            );
        }
        let (_, want_scores) = st[&format!("scores/{name}")].clone();
        assert_close(
            &format!("{name} scores"),
            &read(&est.scores(g).unwrap().unwrap()),
            &to_f64(&want_scores),
            0.0,
            1e-4,
        );
        let (_, want_final) = st["final"].clone();
        assert_close("final sample", &x, &to_f64(&want_final), 1e-4, 0.0);
    }
}

/// The shipped model sampled here and by diffusers' DDIMPipeline from the same noise
/// (fixture: `tools/reference_pipeline.py --shipped`, regenerated whenever weights/ changes).
#[test]
fn shipped_model_matches_the_diffusers_pipeline() {
    let st = read_safetensors(&fixture("shipped_ddim.safetensors"));
    let (shape, noise) = st["shipped/init_noise"].clone();
    let (_, want) = st["shipped/images"].clone();
    let (_, timesteps) = st["shipped/timesteps"].clone();
    let g = gpu();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/fashion_mnist_ddpm.safetensors");
    let unet = UNet2DModel::load(g, &WeightFile::open(&path).unwrap()).unwrap();
    let spec = BatchSpec {
        first_index: 0,
        size: shape[0],
        labels: None,
        init_noise: Some(g.upload(&shape, &noise).unwrap()),
    };
    let x = read(
        &sample_batch(
            g,
            &unet,
            &ddim(timesteps.len()),
            &NoisePlan::new(0),
            spec,
            &mut [],
            |_| {},
        )
        .unwrap()
        .x,
    );
    let ours: Vec<f32> = x.iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect();
    assert_close(
        "shipped model vs DDIMPipeline (regenerate the fixture if weights/ changed)",
        &ours,
        &to_f64(&want),
        1e-3,
        0.0,
    );
}
