//! End-to-end parity with diffusers' DDIMPipeline, and with an independent PyTorch
//! implementation of Algorithm 1 (tools/fixtures/pipeline.py, tools/fixtures/uncertainty.py).

mod common;

use common::{assert_close, ddim, fixture, fixture_model, gpu, read, read_safetensors, to_f64};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use wgsl_diff::models::{UNet2DModel, WeightFile};
use wgsl_diff::noise::NoisePlan;
use wgsl_diff::ops::UncertaintyMode;
use wgsl_diff::sampling::{sample_batch, BatchHook, BatchSpec, SamplerChoice, SamplerKind};
use wgsl_diff::uncertainty::{
    build_reference, ReferenceRequest, UncertaintyConfig, UncertaintyEstimator,
    UncertaintyReference,
};

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

/// The reference file's statistics as the fixture stores them under `prefix` (f32 → f64).
fn fixture_reference(
    st: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    prefix: &str,
    timesteps: &[f32],
    copies: usize,
    images: usize,
) -> UncertaintyReference {
    let get = |name: &str| to_f64(&st[&format!("{prefix}/{name}")].1);
    let shape = &st[&format!("{prefix}/posterior_variance_mean")].0;
    UncertaintyReference {
        source: prefix.into(),
        timesteps: timesteps.iter().map(|&t| t as usize).collect(),
        sample_shape: [shape[1], shape[2], shape[3]],
        copies,
        images,
        seed: 0,
        posterior_variance_mean: get("posterior_variance_mean"),
        posterior_variance_sd: get("posterior_variance_sd"),
        residual_mean: get("residual_mean"),
        residual_sd: get("residual_sd"),
        typicality_mean: get("typicality_mean"),
        typicality_sd: get("typicality_sd"),
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
    // The z-scored modes use the fixture's synthetic reference.
    let reference = Arc::new(fixture_reference(&st, "reference", &timesteps, copies, 0));
    for (mode, name) in [
        (UncertaintyMode::Centred, "centred"),
        (UncertaintyMode::Variance, "variance"),
        (UncertaintyMode::VarianceBiased, "variance_biased"),
        (UncertaintyMode::Typicality, "typicality"),
        (UncertaintyMode::PosteriorVariance, "posterior_variance"),
        (UncertaintyMode::Residual, "residual"),
    ] {
        let replay = perturbation
            .iter()
            .map(|(s, d)| g.upload(s, d).unwrap())
            .collect();
        let mut est = UncertaintyEstimator::new(UncertaintyConfig {
            copies,
            mode,
            keep_maps: 0..usize::MAX,
            reference: mode.needs_reference().then(|| reference.clone()),
            ..Default::default()
        })
        .unwrap();
        let x = common::sample_replaying_draws(
            g,
            &unet,
            &sched,
            (&shape, &noise),
            None,
            replay,
            &mut est,
        );
        common::assert_step_maps(&st, name, &est.maps);
        let batch = est.finish_batch(g).unwrap().unwrap();
        let (_, want_steps) = st[&format!("step_scores/{name}")].clone();
        for (i, (step, got)) in batch.step_scores.iter().enumerate() {
            assert_eq!(*step, i);
            let want: Vec<f32> = want_steps.chunks(steps).map(|row| row[i]).collect();
            let top = want.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
            assert_close(
                &format!("{name} step {i} scores"),
                got,
                &to_f64(&want),
                1e-4 * top,
                1e-4,
            );
        }
        let (_, want_scores) = st[&format!("scores/{name}")].clone();
        assert_close(
            &format!("{name} scores"),
            &batch.scores,
            &to_f64(&want_scores),
            0.0,
            1e-4,
        );
        let (_, want_final) = st["final"].clone();
        assert_close("final sample", &x, &to_f64(&want_final), 1e-4, 0.0);
    }
}

/// `wgsl-diff reference`'s statistics against a float64 PyTorch build of the same reference on
/// the fixture's random images (drawn with tools/common/wgsl_noise.py, the same Philox streams).
#[test]
fn built_reference_matches_an_independent_pytorch_implementation() {
    let st = read_safetensors(&fixture("uncertainty_ddim.safetensors"));
    let (shape, pixels) = st["reference_build/images"].clone();
    let (_, timesteps) = st["timesteps"].clone();
    let dir = common::tmp_dir("reference-images");
    let len = shape[1] * shape[2] * shape[3];
    for (k, image) in pixels.chunks(len).enumerate() {
        let img = wgsl_diff::images::Image8 {
            width: shape[3],
            height: shape[2],
            channels: 1,
            pixels: image.iter().map(|&v| v as u8).collect(),
        };
        wgsl_diff::images::write_png(&dir.join(format!("real_{k}.png")), &img, &[]).unwrap();
    }
    let request = ReferenceRequest {
        model: fixture("unet_tiny_gray.safetensors"),
        sampler: SamplerChoice {
            kind: SamplerKind::Ddim,
            steps: Some(timesteps.len()),
            eta: 0.0,
            spacing: None,
            steps_offset: None,
            clip: true,
        },
        images: dir.clone(),
        count: None,
        copies: 3,
        seed: 5,
        batch: 2,
        max_copies_per_forward: None,
    };
    let built = build_reference(gpu(), &request, |_, _| {}).unwrap();
    let want = fixture_reference(&st, "reference_build", &timesteps, 3, shape[0]);
    assert_eq!(built.timesteps, want.timesteps);
    assert_eq!(built.sample_shape, want.sample_shape);
    assert_eq!((built.images, built.copies, built.seed), (shape[0], 3, 5));
    for (name, got, want) in [
        (
            "pv mean",
            &built.posterior_variance_mean,
            &want.posterior_variance_mean,
        ),
        (
            "pv sd",
            &built.posterior_variance_sd,
            &want.posterior_variance_sd,
        ),
        ("residual mean", &built.residual_mean, &want.residual_mean),
        ("residual sd", &built.residual_sd, &want.residual_sd),
        (
            "typicality mean",
            &built.typicality_mean,
            &want.typicality_mean,
        ),
        ("typicality sd", &built.typicality_sd, &want.typicality_sd),
    ] {
        let top = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let got: Vec<f32> = got.iter().map(|&v| v as f32).collect();
        assert_close(name, &got, want, 1e-4 * top, 1e-4);
    }
    // The file round-trips exactly.
    let file = dir.join("reference.npz");
    built.save(&file).unwrap();
    let back = UncertaintyReference::load(&file).unwrap();
    assert_eq!(
        UncertaintyReference {
            source: built.source.clone(),
            ..back
        },
        built
    );
}

/// The shipped model sampled here and by diffusers' DDIMPipeline from the same noise
/// (fixture: `python -m tools.fixtures.pipeline --shipped`, regenerated whenever weights/ changes).
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
