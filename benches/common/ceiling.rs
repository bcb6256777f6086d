//! The adapter's SGEMM ceiling, so every benchmark's throughput is also stated as a fraction of
//! the best matrix product this crate runs on the same adapter, measured in the same run (on a
//! shared machine only ratios within one run mean much).
//!
//! The ceiling is the faster of the two kernel classes' matmul (`KernelClass`: workgroup tiles
//! or register blocks) on 1024³ with B as (K, N), the minimum over a few runs, measured before
//! and again after the benchmarks ([`Ceiling::finish`]) and the higher kept: on a machine whose
//! load changes during the run, a kernel's best time is set against the SGEMM's best time. The blocking of
//! the register-blocked kernel was chosen by a search on lavapipe (README, Performance).
//! Shared by both bench targets (`#[path]`), each using part of it.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};
use wgsl_diff::gpu::{AdapterChoice, Gpu, KernelClass, Tensor};
use wgsl_diff::ops;

/// The best SGEMM throughput measured, in FLOP/s, and the class that reached it.
pub struct Ceiling {
    pub flops_per_s: f64,
    pub class: KernelClass,
    /// (name, FLOP per iteration, fastest iteration) of each benchmark reported.
    reports: RefCell<Vec<(String, f64, Duration)>>,
}

pub fn filled(gpu: &Gpu, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    gpu.upload(shape, &data).unwrap()
}

/// The shortest of `runs` timed calls of `f` (each synchronised by `f` itself).
pub fn fastest(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

impl Ceiling {
    /// Measures both kernel classes on the default adapter and keeps the faster.
    pub fn measure() -> Ceiling {
        const N: usize = 1024;
        let flop = 2.0 * (N * N * N) as f64;
        let mut best: Option<Ceiling> = None;
        for class in [KernelClass::Tiled, KernelClass::Blocked] {
            let gpu = Gpu::new(&AdapterChoice::Default)
                .expect("a GPU adapter")
                .with_kernel_class(class);
            let (a, b) = (filled(&gpu, &[1, N, N]), filled(&gpu, &[N, N]));
            let t = fastest(3, || {
                drop(ops::matmul(&gpu, &a, &b).unwrap());
                gpu.sync().unwrap();
            });
            let flops_per_s = flop / t.as_secs_f64();
            eprintln!(
                "SGEMM 1024³, {class:?} kernels: {:.1} ms, {:.2} GFLOP/s",
                t.as_secs_f64() * 1e3,
                flops_per_s / 1e9
            );
            if best.as_ref().is_none_or(|b| flops_per_s > b.flops_per_s) {
                best = Some(Ceiling {
                    flops_per_s,
                    class,
                    reports: RefCell::default(),
                });
            }
        }
        let best = best.unwrap();
        eprintln!(
            "SGEMM ceiling: {:.2} GFLOP/s ({:?} kernels)",
            best.flops_per_s / 1e9,
            best.class
        );
        best
    }

    /// Records `name`'s fastest iteration of `flop`, printed with its fraction of the ceiling
    /// by [`Ceiling::finish`].
    pub fn report(&self, name: &str, flop: f64, fastest: Duration) {
        self.reports
            .borrow_mut()
            .push((name.to_string(), flop, fastest));
    }

    /// Measures the ceiling again, keeps the higher, and prints every recorded benchmark's
    /// throughput and fraction of it.
    pub fn finish(self) {
        let again = Ceiling::measure();
        let ceiling = self.flops_per_s.max(again.flops_per_s);
        eprintln!("SGEMM ceiling of this run: {:.2} GFLOP/s", ceiling / 1e9);
        // A benchmark a filter skipped has no time.
        let ran = self
            .reports
            .take()
            .into_iter()
            .filter(|r| r.2 < Duration::MAX);
        for (name, flop, fastest) in ran {
            let rate = flop / fastest.as_secs_f64();
            eprintln!(
                "{name}: {:.1} ms, {:.2} GFLOP/s = {:.0} % of the SGEMM ceiling",
                fastest.as_secs_f64() * 1e3,
                rate / 1e9,
                100.0 * rate / ceiling
            );
        }
    }
}

/// A criterion timing loop that also records the fastest iteration seen (for [`Ceiling::report`]).
pub fn timed<'a>(
    best: &'a Cell<Duration>,
    mut f: impl FnMut() + 'a,
) -> impl FnMut(u64) -> Duration + 'a {
    move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let t = Instant::now();
            f();
            best.set(best.get().min(t.elapsed()));
        }
        start.elapsed()
    }
}
