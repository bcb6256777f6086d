//! End to end: one UNet forward of the DDPM CIFAR-10 architecture (google/ddpm-cifar10-32,
//! random weights) at batch 1 and 8, and one sampling step with and without uncertainty
//! estimation (M = 5, B = 8) on the shipped-size Fashion-MNIST architecture.
//! `tools/bench_torch.py` runs the same work in PyTorch and prints both side by side.

use criterion::{criterion_group, criterion_main, Criterion};
use wgsl_diff::gpu::{AdapterChoice, Gpu};
use wgsl_diff::models::{UNet2DConfig, UNet2DModel};
use wgsl_diff::ops;
use wgsl_diff::sampling::{
    NoisePlan, NoiseSchedule, NonFiniteFlags, SamplerConfig, ScheduleConfig, Scheduler,
    StepContext, StepHook,
};
use wgsl_diff::uncertainty::{UncertaintyConfig, UncertaintyEstimator};

const CIFAR10: &str = r#"{"sample_size":32,"in_channels":3,"out_channels":3,"block_out_channels":[128,256,256,256],
 "layers_per_block":2,"down_block_types":["DownBlock2D","AttnDownBlock2D","DownBlock2D","DownBlock2D"],
 "up_block_types":["UpBlock2D","UpBlock2D","AttnUpBlock2D","UpBlock2D"],"attention_head_dim":null,
 "norm_num_groups":32,"norm_eps":1e-6,"freq_shift":1,"flip_sin_to_cos":false,"downsample_padding":0}"#;

/// The architecture of the shipped model (tools/train_demo.py).
const FASHION: &str = r#"{"sample_size":32,"in_channels":1,"out_channels":1,"block_out_channels":[32,64,64],
 "layers_per_block":1,"down_block_types":["DownBlock2D","DownBlock2D","DownBlock2D"],
 "up_block_types":["UpBlock2D","UpBlock2D","UpBlock2D"],"norm_num_groups":8,"add_attention":false}"#;

fn model(gpu: &Gpu, json: &str) -> UNet2DModel {
    let config: UNet2DConfig = serde_json::from_str(json).unwrap();
    UNet2DModel::random(gpu, config, 0).unwrap()
}

fn forward(c: &mut Criterion) {
    let gpu = Gpu::new(&AdapterChoice::Default).expect("a GPU adapter");
    let unet = model(&gpu, CIFAR10);
    let mut group = c.benchmark_group("unet_forward");
    group.sample_size(10);
    let batches: &[usize] = if std::env::var("WGSL_DIFF_BENCH_QUICK").is_ok() {
        &[1]
    } else {
        &[1, 8]
    };
    for &b in batches {
        let x = NoisePlan::new(1).initial(&gpu, &[b, 3, 32, 32], 0).unwrap();
        let t = gpu.upload(&[b], &vec![500.0; b]).unwrap();
        group.bench_function(format!("cifar10_b{b}"), |it| {
            it.iter(|| {
                let y = unet.forward(&gpu, &x, &t, None).unwrap();
                gpu.sync().unwrap();
                y
            })
        });
    }
    group.finish();
}

fn uncertainty_step(c: &mut Criterion) {
    let gpu = Gpu::new(&AdapterChoice::Default).expect("a GPU adapter");
    let unet = model(&gpu, FASHION);
    let scheduler = Scheduler::new(
        SamplerConfig::ddim(50),
        NoiseSchedule::from_config(&ScheduleConfig::default()).unwrap(),
    )
    .unwrap();
    let b = 8;
    let x = NoisePlan::new(1).initial(&gpu, &[b, 1, 32, 32], 0).unwrap();
    let t = gpu.upload(&[b], &vec![500.0; b]).unwrap();
    let mut group = c.benchmark_group("sampling_step_b8");
    group.sample_size(10);
    // A plain step: the forward and the fused update.
    group.bench_function("plain", |it| {
        it.iter(|| {
            let eps = unet.forward(&gpu, &x, &t, None).unwrap();
            let out = ops::sampler_step(&gpu, &scheduler.coeffs(10), &x, &eps, None, None).unwrap();
            gpu.sync().unwrap();
            out
        })
    });
    group.bench_function("uncertainty_m5", |it| {
        it.iter(|| {
            let mut est = UncertaintyEstimator::new(UncertaintyConfig {
                copies: 5,
                ..Default::default()
            })
            .unwrap();
            let eps = unet.forward(&gpu, &x, &t, None).unwrap();
            let ctx = StepContext {
                gpu: &gpu,
                model: &unet,
                scheduler: &scheduler,
                noise: &NoisePlan::new(0),
                first_index: 0,
                step: 10,
                timestep: scheduler.timesteps[10],
                timesteps: &t,
                labels: None,
                x: &x,
                non_finite: &NonFiniteFlags::new(&gpu, x.dim(0)).unwrap(),
            };
            let eps = est.on_eps(&ctx, eps).unwrap();
            let out = ops::sampler_step(&gpu, &scheduler.coeffs(10), &x, &eps, None, None).unwrap();
            gpu.sync().unwrap();
            out
        })
    });
    group.finish();
}

criterion_group!(benches, forward, uncertainty_step);
criterion_main!(benches);
