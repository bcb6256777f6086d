//! End-to-end parity with diffusers' DDIMPipeline, and with an independent PyTorch
//! implementation of Algorithm 1 (tools/reference_pipeline.py, tools/reference_uncertainty.py).

mod common;

use common::{assert_close, gpu, read, to_f64};
use safetensors::SafeTensors;
use std::path::Path;
use wgsl_diff::models::{UNet2DModel, WeightFile};
use wgsl_diff::ops::UncertaintyMode;
use wgsl_diff::sampling::{
    sample_batch, BatchSpec, NoiseSchedule, SamplerConfig, ScheduleConfig, Scheduler,
};
use wgsl_diff::uncertainty::{UncertaintyConfig, UncertaintyEstimator};

fn fixtures(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let v = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture lacks {name}"));
    (v.shape().to_vec(), bytemuck::pod_collect_to_vec(v.data()))
}

fn model(name: &str) -> UNet2DModel {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    UNet2DModel::load(gpu(), &WeightFile::open(&path).unwrap()).unwrap()
}

fn ddim(steps: usize) -> Scheduler {
    Scheduler::new(
        SamplerConfig::ddim(steps),
        NoiseSchedule::from_config(&ScheduleConfig::default()).unwrap(),
    )
    .unwrap()
}

#[test]
fn ddim_sampling_matches_the_diffusers_pipeline() {
    let bytes = fixtures("pipeline_ddim.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (case, weights) in [
        ("gray", "unet_tiny_gray.safetensors"),
        ("rgb", "unet_tiny_rgb.safetensors"),
    ] {
        let (shape, noise) = tensor(&st, &format!("{case}/init_noise"));
        let (_, want) = tensor(&st, &format!("{case}/images"));
        let (_, timesteps) = tensor(&st, &format!("{case}/timesteps"));
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
        let x = read(&sample_batch(g, &model(weights), &sched, 0, spec, &mut [], |_| {}).unwrap());
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
    let bytes = fixtures("uncertainty_ddim.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let g = gpu();
    let unet = model("unet_tiny_gray.safetensors");
    let (shape, noise) = tensor(&st, "init_noise");
    let (_, timesteps) = tensor(&st, "timesteps");
    let steps = timesteps.len();
    let sched = ddim(steps);
    let perturbation: Vec<(Vec<usize>, Vec<f32>)> = (0..steps)
        .map(|i| tensor(&st, &format!("perturbation/{i}")))
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
        .unwrap()
        .replaying(replay);
        let spec = BatchSpec {
            first_index: 0,
            size: shape[0],
            labels: None,
            init_noise: Some(g.upload(&shape, &noise).unwrap()),
        };
        let x = read(&sample_batch(g, &unet, &sched, 0, spec, &mut [&mut est], |_| {}).unwrap());
        for (i, (step, map)) in est.maps.iter().enumerate() {
            assert_eq!(*step, i);
            let (_, want) = tensor(&st, &format!("maps/{name}/{i}"));
            let top = want.iter().fold(0f64, |m, &v| m.max(v as f64));
            assert_close(
                &format!("{name} map, step {i}"),
                &read(map),
                &to_f64(&want),
                1e-4 * top,
                1e-4,
            );
        }
        let (_, want_scores) = tensor(&st, &format!("scores/{name}"));
        assert_close(
            &format!("{name} scores"),
            &read(&est.scores(g).unwrap().unwrap()),
            &to_f64(&want_scores),
            0.0,
            1e-4,
        );
        let (_, want_final) = tensor(&st, "final");
        assert_close("final sample", &x, &to_f64(&want_final), 1e-4, 0.0);
    }
}

/// The shipped model sampled here and by diffusers' DDIMPipeline from the same noise
/// (fixture: `tools/reference_pipeline.py --shipped`, regenerated whenever weights/ changes).
#[test]
fn shipped_model_matches_the_diffusers_pipeline() {
    let bytes = fixtures("shipped_ddim.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, noise) = tensor(&st, "shipped/init_noise");
    let (_, want) = tensor(&st, "shipped/images");
    let (_, timesteps) = tensor(&st, "shipped/timesteps");
    let g = gpu();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/fashion_mnist_ddpm.safetensors");
    let unet = UNet2DModel::load(g, &WeightFile::open(&path).unwrap()).unwrap();
    let spec = BatchSpec {
        first_index: 0,
        size: shape[0],
        labels: None,
        init_noise: Some(g.upload(&shape, &noise).unwrap()),
    };
    let x =
        read(&sample_batch(g, &unet, &ddim(timesteps.len()), 0, spec, &mut [], |_| {}).unwrap());
    let ours: Vec<f32> = x.iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect();
    assert_close(
        "shipped model vs DDIMPipeline (regenerate the fixture if weights/ changed)",
        &ours,
        &to_f64(&want),
        1e-3,
        0.0,
    );
}
