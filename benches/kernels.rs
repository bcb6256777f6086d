//! Per-kernel throughput: conv2d 3×3 and matmul in FLOP/s (also as a fraction of the adapter's
//! SGEMM ceiling, measured first), group norm in bytes/s, the per-sample quantile in elements/s.
//! Each iteration records the op, submits and waits, so the figure includes submit overhead.
//! `WGSL_DIFF_KERNELS=tiled|blocked` forces a kernel class (`KernelClass`).

#[path = "common/ceiling.rs"]
mod ceiling;

use ceiling::{filled, timed, Ceiling};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::cell::Cell;
use std::time::Duration;
use wgsl_diff::gpu::{AdapterChoice, Gpu};
use wgsl_diff::ops::{self, Conv2dArgs};

fn kernels(c: &mut Criterion) {
    let gpu = Gpu::new(&AdapterChoice::Default).expect("a GPU adapter");
    eprintln!("{}", gpu.describe());
    let ceiling = Ceiling::measure();
    let mut group = c.benchmark_group("kernels");
    group.sample_size(10);

    let (b, ch, hw) = (8, 128, 32);
    let x = filled(&gpu, &[b, ch, hw, hw]);
    let w = filled(&gpu, &[ch, ch, 3, 3]);
    let bias = filled(&gpu, &[ch]);
    let flop = 2 * b * ch * ch * 9 * hw * hw;
    group.throughput(Throughput::Elements(flop as u64));
    let name = "conv2d_3x3_b8_128to128_32x32 (FLOP)";
    let best = Cell::new(Duration::MAX);
    group.bench_function(name, |it| {
        it.iter_custom(timed(&best, || {
            drop(ops::conv2d(&gpu, &x, &w, Some(&bias), Conv2dArgs::padded(1)).unwrap());
            gpu.sync().unwrap();
        }))
    });
    ceiling.report(name, flop as f64, best.get());

    let n = 1024;
    let a = filled(&gpu, &[1, n, n]);
    let m = filled(&gpu, &[n, n]);
    let flop = 2 * n * n * n;
    group.throughput(Throughput::Elements(flop as u64));
    let name = "matmul_1024 (FLOP)";
    let best = Cell::new(Duration::MAX);
    group.bench_function(name, |it| {
        it.iter_custom(timed(&best, || {
            drop(ops::matmul(&gpu, &a, &m).unwrap());
            gpu.sync().unwrap();
        }))
    });
    ceiling.report(name, flop as f64, best.get());

    let x = filled(&gpu, &[8, 256, 32, 32]);
    let gamma = filled(&gpu, &[256]);
    // Two reads (statistics, normalisation) and one write of the activation.
    group.throughput(Throughput::Bytes(3 * x.byte_len()));
    group.bench_function("group_norm_b8_256ch_32x32_g32 (bytes)", |it| {
        it.iter(|| {
            let y = ops::group_norm(&gpu, &x, 32, 1e-5, &gamma, &gamma, true).unwrap();
            gpu.sync().unwrap();
            y
        })
    });

    // The guidance threshold: torch.quantile of each sample at p = 0.95, on a batch of CIFAR-size
    // maps (one workgroup per row) and on one long row (the chunked path).
    for (b, n, name) in [
        (8, 3 * 32 * 32, "quantile_b8_3x32x32_p95 (elements)"),
        (1, 1 << 20, "quantile_b1_2p20_p95 (elements)"),
    ] {
        let x = filled(&gpu, &[b, n]);
        group.throughput(Throughput::Elements((b * n) as u64));
        group.bench_function(name, |it| {
            it.iter(|| {
                let q = ops::quantile_per_sample(&gpu, &x, 0.95).unwrap();
                gpu.sync().unwrap();
                q
            })
        });
    }
    group.finish();
    ceiling.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
