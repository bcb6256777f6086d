//! End to end: one UNet forward of the DDPM CIFAR-10 architecture (google/ddpm-cifar10-32,
//! random weights) at batch 1 and 8, and one sampling step (B = 8, shipped-size Fashion-MNIST
//! architecture) plain, with uncertainty estimation (M = 5) and guided by either rule (M = 5),
//! each with its peak GPU tensor memory printed.
//! The CIFAR-10 forwards are also stated in GFLOP/s and as a fraction of the adapter's SGEMM
//! ceiling, measured first in the same run.
//! Opt-in (minutes a forward on a CPU rasteriser): ADM-64 (`WGSL_DIFF_BENCH_ADM64=1`) and
//! U-ViT-H/2 at 256, U-ViT-H/4 at 512 (`WGSL_DIFF_BENCH_UVIT=1`), random weights.
//! `tools/bench/bench_torch.py` runs the same work in PyTorch and prints both side by side.
//!
//! With `WGSL_DIFF_PROFILE_DIR=DIR`, one untimed run of each forward and of each plain sampling
//! step is profiled first (`Gpu::start_profile`): the table goes to stderr and the profile to
//! `DIR/<group>_<name>.json`. A filter matching no benchmark (`--bench none`) profiles only.

#[path = "common/ceiling.rs"]
mod ceiling;

use ceiling::{timed, Ceiling};
use criterion::{criterion_group, criterion_main, Criterion};
use std::cell::Cell;
use std::time::Duration;
use wgsl_diff::gpu::{AdapterChoice, Gpu, Tensor};
use wgsl_diff::guidance::{GuidanceConfig, GuidanceHook, GuidanceRule};
use wgsl_diff::models::adm::{AdmConfig, AdmModel};
use wgsl_diff::models::{Cond, EpsModel, UNet2DConfig, UNet2DModel, UViT, UViTConfig};
use wgsl_diff::noise::NoisePlan;
use wgsl_diff::ops;
use wgsl_diff::sampling::{
    NoiseSchedule, NonFiniteFlags, SamplerConfig, ScheduleConfig, Scheduler, StepContext, StepHook,
};
use wgsl_diff::uncertainty::{UncertaintyConfig, UncertaintyEstimator};

const CIFAR10: &str = r#"{"sample_size":32,"in_channels":3,"out_channels":3,"block_out_channels":[128,256,256,256],
 "layers_per_block":2,"down_block_types":["DownBlock2D","AttnDownBlock2D","DownBlock2D","DownBlock2D"],
 "up_block_types":["UpBlock2D","UpBlock2D","AttnUpBlock2D","UpBlock2D"],"attention_head_dim":null,
 "norm_num_groups":32,"norm_eps":1e-6,"freq_shift":1,"flip_sin_to_cos":false,"downsample_padding":0}"#;

/// openai/guided-diffusion's released 64×64 class-conditional model (`--preset 64x64_diffusion`,
/// 296 M parameters), as tools/converters/adm.py writes its config.
const ADM64: &str = r#"{"attention_resolutions":[2,4,8],"channel_mult":[1.0,2.0,3.0,4.0],"conv_resample":true,
 "dims":2,"dropout":0.1,"image_size":64,"in_channels":3,"model_channels":192,"num_classes":1000,
 "num_head_channels":64,"num_heads":4,"num_heads_upsample":-1,"num_res_blocks":3,"out_channels":6,
 "resblock_updown":true,"use_fp16":true,"use_new_attention_order":true,"use_scale_shift_norm":true}"#;

/// U-ViT-H/2 and U-ViT-H/4, the paper's ImageNet 256 and 512 networks (501 M parameters each),
/// as `tools/convert.py --uvit --preset imagenet{256,512}_uvit_huge` writes their configs: the
/// name and latent side of each.
const UVIT_H: [(&str, &str); 2] = [
    (
        "uvit256",
        r#"{"img_size":32,"patch_size":2,"in_chans":4,"embed_dim":1152,"depth":28,"num_heads":16,
 "mlp_ratio":4,"qkv_bias":false,"mlp_time_embed":false,"num_classes":1001,"conv":false}"#,
    ),
    (
        "uvit512",
        r#"{"img_size":64,"patch_size":4,"in_chans":4,"embed_dim":1152,"depth":28,"num_heads":16,
 "mlp_ratio":4,"qkv_bias":false,"mlp_time_embed":false,"num_classes":1001,"conv":false}"#,
    ),
];

/// The architecture of the shipped model (tools/train/train_demo.py).
const FASHION: &str = r#"{"sample_size":32,"in_channels":1,"out_channels":1,"block_out_channels":[32,64,64],
 "layers_per_block":1,"down_block_types":["DownBlock2D","DownBlock2D","DownBlock2D"],
 "up_block_types":["UpBlock2D","UpBlock2D","UpBlock2D"],"norm_num_groups":8,"add_attention":false}"#;

/// FLOPs of one CIFAR-10-architecture forward per sample (2 per multiply-add: convolutions,
/// linear layers, attention), as torch.utils.flop_counter.FlopCounterMode counts diffusers'
/// UNet2DModel of the same config (12,443,713,536 at B = 1, exactly 8 times that at B = 8).
const CIFAR10_FLOP_PER_SAMPLE: f64 = 12_443_713_536.0;

/// Profiles one untimed run of `work` when `WGSL_DIFF_PROFILE_DIR` is set.
fn profile<T>(gpu: &Gpu, id: &str, work: impl FnOnce() -> T) {
    let Some(dir) = std::env::var_os("WGSL_DIFF_PROFILE_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("the profile folder");
    gpu.sync().unwrap();
    gpu.start_profile();
    drop(work());
    let p = gpu.finish_profile().unwrap().expect("a profile");
    let path = dir.join(format!("{}.json", id.replace('/', "_")));
    p.save(&path).unwrap();
    eprintln!("== profile of {id} ({})\n{}", path.display(), p.table(25));
}

fn model(gpu: &Gpu, json: &str) -> UNet2DModel {
    let config: UNet2DConfig = serde_json::from_str(json).unwrap();
    UNet2DModel::random(gpu, config, 0).unwrap()
}

fn forward(c: &mut Criterion) {
    let gpu = Gpu::new(&AdapterChoice::Default).expect("a GPU adapter");
    eprintln!("{}", gpu.describe());
    let ceiling = Ceiling::measure();
    // The model with f32 activations, and with f16 ones where the adapter has SHADER_F16.
    let variants: Vec<(&str, UNet2DModel)> = [("", false), ("_f16act", true)]
        .into_iter()
        .filter(|&(_, half)| !half || gpu.caps.shader_f16)
        .map(|(suffix, half)| (suffix, model(&gpu, CIFAR10).with_f16_activations(half)))
        .collect();
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
        for (suffix, unet) in &variants {
            let name = format!("cifar10_b{b}{suffix}");
            profile(&gpu, &format!("unet_forward/{name}"), || {
                unet.forward(&gpu, &x, &t, None).unwrap()
            });
            let best = Cell::new(Duration::MAX);
            group.bench_function(&name, |it| {
                it.iter_custom(timed(&best, || {
                    drop(unet.forward(&gpu, &x, &t, None).unwrap());
                    gpu.sync().unwrap();
                }))
            });
            let flop = CIFAR10_FLOP_PER_SAMPLE * b as f64;
            ceiling.report(&format!("unet_forward/{name}"), flop, best.get());
        }
    }
    group.finish();
    ceiling.finish();
    // ADM-64 takes about a minute per forward on a CPU rasteriser, U-ViT-H minutes: opt in.
    if std::env::var("WGSL_DIFF_BENCH_ADM64").is_ok() {
        adm64_forward(c, &gpu, batches);
    }
    if std::env::var("WGSL_DIFF_BENCH_UVIT").is_ok() {
        uvit_forward(c, &gpu, batches);
    }
}

/// One forward of U-ViT-H/2 (256) and U-ViT-H/4 (512) with random weights, class 207.
fn uvit_forward(c: &mut Criterion, gpu: &Gpu, batches: &[usize]) {
    let mut group = c.benchmark_group("unet_forward");
    group.sample_size(10);
    for (name, json) in UVIT_H {
        let config: UViTConfig = serde_json::from_str(json).unwrap();
        let side = config.img_size;
        let uvit = UViT::random(gpu, config, 0).unwrap();
        for &b in batches {
            let x = NoisePlan::new(1)
                .initial(gpu, &[b, 4, side, side], 0)
                .unwrap();
            let t = gpu.upload(&[b], &vec![500.0; b]).unwrap();
            let y = gpu.upload(&[b], &vec![207.0; b]).unwrap();
            let id = format!("{name}_b{b}");
            profile(gpu, &format!("unet_forward/{id}"), || {
                uvit.forward(gpu, &x, &t, Some(&y)).unwrap()
            });
            group.bench_function(id, |it| {
                it.iter(|| {
                    let out = uvit.forward(gpu, &x, &t, Some(&y)).unwrap();
                    gpu.sync().unwrap();
                    out
                })
            });
        }
    }
    group.finish();
}

/// One forward of the ADM-64 architecture with random weights (ε and variance), class 207.
fn adm64_forward(c: &mut Criterion, gpu: &Gpu, batches: &[usize]) {
    let config: AdmConfig = serde_json::from_str(ADM64).unwrap();
    let adm = AdmModel::random(gpu, config, 0).unwrap();
    let mut group = c.benchmark_group("unet_forward");
    group.sample_size(10);
    for &b in batches {
        let x = NoisePlan::new(1).initial(gpu, &[b, 3, 64, 64], 0).unwrap();
        let t = gpu.upload(&[b], &vec![500.0; b]).unwrap();
        let y = Cond::Class(gpu.upload(&[b], &vec![207.0; b]).unwrap());
        profile(gpu, &format!("unet_forward/adm64_b{b}"), || {
            adm.predict_eps_and_variance(gpu, &x, &t, &y).unwrap()
        });
        group.bench_function(format!("adm64_b{b}"), |it| {
            it.iter(|| {
                let out = adm.predict_eps_and_variance(gpu, &x, &t, &y).unwrap();
                gpu.sync().unwrap();
                out
            })
        });
    }
    group.finish();
}

/// One sampling step (forward, the hook, the fused update) at step 10 of 50, synchronised.
fn step(
    gpu: &Gpu,
    unet: &UNet2DModel,
    scheduler: &Scheduler,
    x: &Tensor,
    t: &Tensor,
    hook: &mut dyn StepHook,
) -> Tensor {
    let eps = unet.forward(gpu, x, t, None).unwrap();
    let ctx = StepContext {
        gpu,
        model: unet,
        scheduler,
        noise: &NoisePlan::new(0),
        first_index: 0,
        step: 10,
        timestep: scheduler.timesteps[10],
        timesteps: t,
        cond: &Cond::None,
        x,
        non_finite: &NonFiniteFlags::new(gpu, x.dim(0)).unwrap(),
    };
    let eps = {
        let _scope = gpu.scope("hooks");
        hook.on_eps(&ctx, eps).unwrap()
    };
    let _scope = gpu.scope("scheduler");
    let (out, _) = ops::sampler_step(gpu, &scheduler.coeffs(10), x, &eps, None, None).unwrap();
    gpu.sync().unwrap();
    out
}

/// The hooks a step is measured with: none, Algorithm 1, and Algorithm 2 with either rule.
fn hooks(gpu: &Gpu) -> Vec<(&'static str, Box<dyn StepHook>)> {
    let uncertainty = UncertaintyConfig {
        copies: 5,
        ..Default::default()
    };
    let guided = |rule| {
        let config = GuidanceConfig {
            start: 10,
            ..GuidanceConfig::paper(rule)
        };
        Box::new(GuidanceHook::new(gpu, config).unwrap()) as Box<dyn StepHook>
    };
    vec![
        ("plain", Box::new(())),
        (
            "uncertainty_m5",
            Box::new(UncertaintyEstimator::new(uncertainty).unwrap()),
        ),
        ("guided_posterior_m5", guided(GuidanceRule::Posterior)),
        ("guided_gradient_m5", guided(GuidanceRule::Gradient)),
    ]
}

fn sampling_step(c: &mut Criterion) {
    steps_with_hooks(c, "sampling_step_b8", FASHION, 8);
    // A guided step of the CIFAR-10 architecture takes minutes on a CPU rasteriser: opt in.
    if std::env::var("WGSL_DIFF_BENCH_CIFAR_STEPS").is_ok() {
        steps_with_hooks(c, "sampling_step_cifar10_b1", CIFAR10, 1);
    }
}

fn steps_with_hooks(c: &mut Criterion, group_name: &str, config: &str, b: usize) {
    let gpu = Gpu::new(&AdapterChoice::Default).expect("a GPU adapter");
    let unet = model(&gpu, config);
    let scheduler = Scheduler::new(
        SamplerConfig::ddim(50),
        NoiseSchedule::from_config(&ScheduleConfig::default()).unwrap(),
    )
    .unwrap();
    let channels = unet.config.in_channels;
    let x = NoisePlan::new(1)
        .initial(&gpu, &[b, channels, 32, 32], 0)
        .unwrap();
    let t = gpu.upload(&[b], &vec![500.0; b]).unwrap();
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10);
    for (name, mut hook) in hooks(&gpu) {
        if name == "plain" {
            profile(&gpu, &format!("{group_name}/{name}"), || {
                let _step = gpu.profile_step(name);
                step(&gpu, &unet, &scheduler, &x, &t, hook.as_mut())
            });
        }
        // The peak of tensor memory over one step, beyond what was live before it.
        gpu.reset_peak_memory();
        let before = gpu.memory().live;
        drop(step(&gpu, &unet, &scheduler, &x, &t, hook.as_mut()));
        let peak = gpu.memory().peak - before;
        eprintln!(
            "{group_name}/{name}: peak GPU tensor memory {:.1} MB",
            peak as f64 / 1e6
        );
        group.bench_function(name, |it| {
            it.iter(|| step(&gpu, &unet, &scheduler, &x, &t, hook.as_mut()))
        });
    }
    group.finish();
}

criterion_group!(benches, forward, sampling_step);
criterion_main!(benches);
