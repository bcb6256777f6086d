//! The tiled (GPU-class) GEMM sweep: every variant the tiled class has (each tile shape of
//! `gpu::TILE_SHAPES`, each whole and split-K by every factor of `gpu::SPLITS` that can help, each
//! built with and without naga's runtime checks) timed on every bench shape: SGEMM 1024³ and
//! 4096³, the kernels bench's conv (3×3, B8, 128→128, 32²) and each distinct convolution of the
//! CIFAR-10 UNet at batch 1 and 8, beside the tiling the chooser picks (`gpu::choose_tiling`).
//! One call on a GPU gives the winner per shape (`tools/device_check.sh`, section `sweep`).
//!
//! Times are the GPU's own (timestamp queries around each dispatch, split-K's reduce included),
//! the mean over the timed runs after one untimed run that builds the pipelines; on an adapter
//! without timestamps, the fastest wall-clock run. Results go to stdout and, with
//! `WGSL_DIFF_SWEEP_OUT=DIR`, to DIR/sweep.md (the winners) and DIR/sweep.tsv (every timing).
//! `WGSL_DIFF_BENCH_QUICK=1` takes small shapes, so a CPU adapter checks the sweep end to end;
//! `WGSL_DIFF_SWEEP_ONLY=PREFIX` only the shapes whose name starts with PREFIX (`cifar10_b1`).
//!
//! Register and spill counts per pipeline (VK_KHR_pipeline_executable_properties) are not
//! reported: wgpu 30 neither enables that extension nor asks for pipeline statistics.

#[path = "common/ceiling.rs"]
mod ceiling;

use ceiling::filled;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;
use wgsl_diff::gpu::{
    AdapterChoice, GemmTiling, Gpu, KernelClass, PlanTarget, Tensor, SPLITS, TILE_SHAPES,
    WORKGROUPS_PER_CU,
};
use wgsl_diff::ops::{self, Conv2dArgs, ConvWeight};

/// One bench shape: a product or a convolution, and how often a model runs it.
struct Problem {
    name: String,
    shape: Shape,
    /// Occurrences per forward (1 for the standalone benches).
    count: usize,
    /// The model and batch whose forward runs it (`cifar10_b8`), if any.
    model: Option<String>,
}

#[derive(Clone, Copy)]
enum Shape {
    /// C (M × N) = A (M × K) · B (K × N).
    Gemm {
        m: usize,
        n: usize,
        k: usize,
    },
    Conv(Conv),
}

/// A square convolution with bias, `kernel` × `kernel`, of `side` × `side` inputs.
#[derive(Clone, Copy)]
struct Conv {
    batch: usize,
    c_in: usize,
    c_out: usize,
    side: usize,
    kernel: usize,
    stride: usize,
}

/// A convolution's (batch, c_in, c_out, side, kernel, stride).
type ConvDims = (usize, usize, usize, usize, usize, usize);

impl From<ConvDims> for Shape {
    fn from((batch, c_in, c_out, side, kernel, stride): ConvDims) -> Shape {
        Shape::Conv(Conv {
            batch,
            c_in,
            c_out,
            side,
            kernel,
            stride,
        })
    }
}

impl Conv {
    /// Its arguments: diffusers' Downsample2D (padding 0) pads one row and column below and
    /// right before its stride-2 3×3 convolution; the others keep the size.
    fn args(&self) -> Conv2dArgs<'static> {
        match self.stride {
            1 => Conv2dArgs::padded(self.kernel / 2),
            _ => Conv2dArgs {
                stride: self.stride,
                pad_bottom_right: 1,
                ..Default::default()
            },
        }
    }

    fn problem(&self) -> ops::ConvProblem {
        let out = self.side / self.stride;
        ops::ConvProblem {
            batch: self.batch,
            c_in: self.c_in,
            w: self.side,
            c_out: self.c_out,
            h_out: out,
            w_out: out,
            kh: self.kernel,
            kw: self.kernel,
            stride: self.stride,
            pad_y: self.args().padding,
            pad_x: self.args().padding,
        }
    }
}

impl Shape {
    /// (M, N, K) of the GEMM it is.
    fn gemm(&self) -> (usize, usize, usize) {
        match *self {
            Shape::Gemm { m, n, k } => (m, n, k),
            Shape::Conv(c) => {
                let p = c.problem();
                (
                    c.c_out,
                    c.batch * p.h_out * p.w_out,
                    c.c_in * c.kernel * c.kernel,
                )
            }
        }
    }

    /// The tiling the ops' planners give this shape for `target` (forced or chosen), its splits
    /// clamped to the K tiles there are.
    fn planned(&self, target: &PlanTarget) -> GemmTiling {
        match *self {
            Shape::Gemm { m, n, k } => {
                let problem = ops::MatmulProblem {
                    batch: 1,
                    m,
                    n,
                    k,
                    trans_b: false,
                };
                ops::plan_matmul(target, &problem)
                    .tiling
                    .expect("the tiled class plans a tiling")
            }
            Shape::Conv(c) => match ops::plan_conv2d(target, &c.problem()).variant {
                ops::ConvVariant::Tiled(tiling) => tiling,
                other => panic!("the tiled class planned {other:?}"),
            },
        }
    }

    fn flop(&self) -> f64 {
        let (m, n, k) = self.gemm();
        2.0 * (m * n * k) as f64
    }
}

/// The distinct convolutions of the CIFAR-10 UNet (diffusers' UNet2DModel, block_out_channels
/// 128, 256, 256, 256, two resnets per down block and three per up block, Downsample2D with
/// padding 0) at `batch`, with how many times one forward runs each.
fn cifar10_convs(batch: usize) -> Vec<Problem> {
    let channels = [128, 256, 256, 256];
    let mut convs: Vec<(usize, usize, usize, usize, usize)> = Vec::new();
    let resnet = |convs: &mut Vec<_>, c_in: usize, c_out: usize, side: usize| {
        convs.push((c_in, c_out, side, 3, 1));
        convs.push((c_out, c_out, side, 3, 1));
        if c_in != c_out {
            convs.push((c_in, c_out, side, 1, 1));
        }
    };
    let mut side = 32;
    convs.push((3, channels[0], side, 3, 1));
    let mut skips = vec![channels[0]];
    let mut ch = channels[0];
    for (i, &out) in channels.iter().enumerate() {
        for _ in 0..2 {
            resnet(&mut convs, ch, out, side);
            ch = out;
            skips.push(out);
        }
        if i + 1 < channels.len() {
            convs.push((out, out, side, 3, 2));
            side /= 2;
            skips.push(out);
        }
    }
    for _ in 0..2 {
        resnet(&mut convs, ch, ch, side);
    }
    for (i, &out) in channels.iter().rev().enumerate() {
        for _ in 0..3 {
            let skip = skips.pop().expect("a skip per up resnet");
            resnet(&mut convs, ch + skip, out, side);
            ch = out;
        }
        if i + 1 < channels.len() {
            side *= 2;
            convs.push((out, out, side, 3, 1));
        }
    }
    convs.push((ch, 3, side, 3, 1));
    let mut distinct: Vec<Problem> = Vec::new();
    for (c_in, c_out, side, kernel, stride) in convs {
        let name = format!("cifar10_b{batch}_{c_in}to{c_out}_{side}x{side}_k{kernel}s{stride}");
        match distinct.iter_mut().find(|p| p.name == name) {
            Some(p) => p.count += 1,
            None => distinct.push(Problem {
                name,
                model: Some(format!("cifar10_b{batch}")),
                shape: Shape::from((batch, c_in, c_out, side, kernel, stride)),
                count: 1,
            }),
        }
    }
    distinct
}

fn problems(quick: bool) -> Vec<Problem> {
    let one = |name: &str, shape| Problem {
        name: name.into(),
        shape,
        count: 1,
        model: None,
    };
    if quick {
        return vec![
            one(
                "sgemm_96",
                Shape::Gemm {
                    m: 96,
                    n: 96,
                    k: 96,
                },
            ),
            one("conv_b2_16to24_8x8", Shape::from((2, 16, 24, 8, 3, 1))),
            one("conv_b1_20to8_8x8_s2", Shape::from((1, 20, 8, 8, 3, 2))),
            one("conv_b1_24to16_4x4_k1", Shape::from((1, 24, 16, 4, 1, 1))),
        ];
    }
    let mut all = vec![
        one(
            "sgemm_1024",
            Shape::Gemm {
                m: 1024,
                n: 1024,
                k: 1024,
            },
        ),
        one(
            "sgemm_4096",
            Shape::Gemm {
                m: 4096,
                n: 4096,
                k: 4096,
            },
        ),
        one(
            "conv2d_3x3_b8_128to128_32x32",
            Shape::from((8, 128, 128, 32, 3, 1)),
        ),
    ];
    all.extend(cifar10_convs(1));
    all.extend(cifar10_convs(8));
    all
}

/// The operands of a problem on one device, the convolution weight staged for the tiled class.
enum Operands {
    Gemm(Tensor, Tensor),
    Conv {
        x: Tensor,
        weight: ConvWeight,
        bias: Tensor,
        args: Conv2dArgs<'static>,
    },
}

impl Operands {
    fn new(gpu: &Gpu, shape: &Shape) -> Operands {
        match *shape {
            Shape::Gemm { m, n, k } => {
                Operands::Gemm(filled(gpu, &[1, m, k]), filled(gpu, &[k, n]))
            }
            Shape::Conv(c) => Operands::Conv {
                x: filled(gpu, &[c.batch, c.c_in, c.side, c.side]),
                weight: ConvWeight::new(gpu, filled(gpu, &[c.c_out, c.c_in, c.kernel, c.kernel]))
                    .unwrap(),
                bias: filled(gpu, &[c.c_out]),
                args: c.args(),
            },
        }
    }

    fn run(&self, gpu: &Gpu) -> wgsl_diff::error::Result<()> {
        let out = match self {
            Operands::Gemm(a, b) => ops::matmul(gpu, a, b)?,
            Operands::Conv {
                x,
                weight,
                bias,
                args,
            } => ops::conv2d_prepared(gpu, x, weight, Some(bias), *args)?,
        };
        drop(out);
        Ok(())
    }
}

/// Microseconds per run of `ops` on `gpu`: see the module doc.
fn time(gpu: &Gpu, ops: &Operands, runs: usize) -> wgsl_diff::error::Result<f64> {
    ops.run(gpu)?;
    gpu.sync()?;
    if gpu.caps.timestamps {
        gpu.start_profile();
        for _ in 0..runs {
            ops.run(gpu)?;
        }
        let profile = gpu.finish_profile()?.expect("a profile was started");
        return Ok(profile.total.gpu_ns.unwrap_or(0) as f64 / 1e3 / runs as f64);
    }
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        ops.run(gpu)?;
        gpu.sync()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(best)
}

/// The tilings timed on a problem: the chooser's (None), then every shape whole and split by
/// each factor that the problem's K tiles keep distinct and that leaves a grid of at most 16
/// workgroups per compute unit (more slices than that only add reduce traffic).
fn variants(shape: &Shape, compute_units: usize) -> Vec<Option<GemmTiling>> {
    let (m, n, _) = shape.gemm();
    let mut out = vec![None];
    let mut seen = Vec::new();
    for tile in TILE_SHAPES {
        for splits in SPLITS {
            let tiling = GemmTiling {
                splits,
                ..GemmTiling::shape(tile)
            };
            let [x, y] = tiling.tiles(m, n);
            let planned = shape.planned(&PlanTarget {
                forced_tiling: Some(tiling),
                ..PlanTarget::new(KernelClass::Tiled, compute_units)
            });
            let too_many = splits > 1 && x * y * splits as usize > 16 * compute_units;
            if seen.contains(&planned) || too_many {
                continue;
            }
            seen.push(planned);
            out.push(Some(tiling));
        }
    }
    out
}

struct Timing {
    problem: usize,
    unchecked: bool,
    label: String,
    chosen: bool,
    us: Option<f64>,
}

fn main() {
    let quick = std::env::var("WGSL_DIFF_BENCH_QUICK").is_ok();
    let runs = if quick { 2 } else { 10 };
    let only = std::env::var("WGSL_DIFF_SWEEP_ONLY").unwrap_or_default();
    let problems: Vec<Problem> = problems(quick)
        .into_iter()
        .filter(|p| p.name.starts_with(&only))
        .collect();
    let mut timings: Vec<Timing> = Vec::new();
    let mut adapter = String::new();
    let mut compute_units = 0;
    let started = Instant::now();
    // Every timing is written as it is taken, so a call that runs out of time keeps them.
    let out_dir = std::env::var_os("WGSL_DIFF_SWEEP_OUT").map(std::path::PathBuf::from);
    let mut tsv = out_dir.as_ref().map(|dir| {
        std::fs::create_dir_all(dir).unwrap();
        let mut f = std::fs::File::create(dir.join("sweep.tsv")).unwrap();
        writeln!(f, "problem\tchecks\tvariant\tchosen\tus\tGFLOP/s").unwrap();
        f
    });
    for unchecked in [false, true] {
        // The tiled class whatever the adapter: on a CPU adapter this checks the sweep, not speed.
        let mut gpu = Gpu::new(&AdapterChoice::Default)
            .expect("a GPU adapter")
            .with_kernel_class(KernelClass::Tiled)
            .with_unchecked_kernels(unchecked);
        if adapter.is_empty() {
            eprintln!("{}", gpu.describe());
            adapter = gpu.info.name.clone();
            compute_units = gpu.plan_target().compute_units;
        }
        for (i, problem) in problems.iter().enumerate() {
            let ops = Operands::new(&gpu, &problem.shape);
            for tiling in variants(&problem.shape, compute_units) {
                gpu = gpu.with_tiling(tiling);
                let label = problem.shape.planned(&gpu.plan_target()).label();
                let us = match time(&gpu, &ops, runs) {
                    Ok(us) => Some(us),
                    Err(e) => {
                        eprintln!("{} {label}: {e}", problem.name);
                        None
                    }
                };
                let timing = Timing {
                    problem: i,
                    unchecked,
                    label,
                    chosen: tiling.is_none(),
                    us,
                };
                if let Some(f) = tsv.as_mut() {
                    writeln!(f, "{}", tsv_row(problem, &timing)).unwrap();
                }
                timings.push(timing);
            }
            eprintln!(
                "[{:.0} s] {} ({}checked) done",
                started.elapsed().as_secs_f64(),
                problem.name,
                if unchecked { "un" } else { "" }
            );
        }
    }
    let table = report(&adapter, compute_units, &problems, &timings);
    println!("{table}");
    if let Some(dir) = out_dir {
        std::fs::write(dir.join("sweep.md"), &table).unwrap();
    }
}

fn checks(unchecked: bool) -> &'static str {
    match unchecked {
        true => "unchecked",
        false => "checked",
    }
}

/// One line of sweep.tsv.
fn tsv_row(p: &Problem, t: &Timing) -> String {
    let (us, rate) = match t.us {
        Some(us) => (
            format!("{us:.2}"),
            format!("{:.1}", p.shape.flop() / us / 1e3),
        ),
        None => ("error".into(), "-".into()),
    };
    format!(
        "{}\t{}\t{}\t{}\t{us}\t{rate}",
        p.name,
        checks(t.unchecked),
        t.label,
        t.chosen
    )
}

/// The winners' table (markdown).
fn report(adapter: &str, compute_units: usize, problems: &[Problem], timings: &[Timing]) -> String {
    let mut md = format!(
        "# Tiled GEMM sweep on {adapter} ({compute_units} compute units assumed, aiming at {} \
         workgroups)\n\nµs per run; GFLOP/s of the winner. `chosen`: the tiling \
         gpu::choose_tiling picks (checked build).\n\n| problem | × | chosen | chosen µs | winner | \
         winner µs | GFLOP/s | best checked µs | best unchecked µs |\n|---|---|---|---|---|---|---|---|---|\n",
        WORKGROUPS_PER_CU * compute_units
    );
    let mut totals = std::collections::BTreeMap::<String, (f64, f64)>::new();
    for (i, p) in problems.iter().enumerate() {
        let mine: Vec<&Timing> = timings.iter().filter(|t| t.problem == i).collect();
        let best = |filter: &dyn Fn(&Timing) -> bool| {
            mine.iter()
                .filter(|t| filter(t) && t.us.is_some())
                .min_by(|a, b| a.us.partial_cmp(&b.us).unwrap())
                .copied()
        };
        let chosen = best(&|t| t.chosen && !t.unchecked);
        let winner = best(&|_| true);
        let us = |t: Option<&Timing>| {
            t.and_then(|t| t.us)
                .map_or("-".into(), |us| format!("{us:.1}"))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.count,
            chosen.map_or("-".into(), |t| t.label.clone()),
            us(chosen),
            winner.map_or("-".into(), |t| format!(
                "{} {}",
                t.label,
                checks(t.unchecked)
            )),
            us(winner),
            winner
                .and_then(|t| t.us)
                .map_or("-".into(), |us| format!("{:.1}", p.shape.flop() / us / 1e3)),
            us(best(&|t| !t.unchecked)),
            us(best(&|t| t.unchecked)),
        );
        // Per model and batch: the convolutions' time per forward, chosen against the winners.
        if let Some(model) = &p.model {
            let (c, w) = (
                chosen.and_then(|t| t.us).unwrap_or(0.0),
                winner.and_then(|t| t.us).unwrap_or(0.0),
            );
            let total = totals.entry(model.clone()).or_default();
            total.0 += p.count as f64 * c;
            total.1 += p.count as f64 * w;
        }
    }
    for (model, (chosen, winners)) in totals {
        let _ = writeln!(
            md,
            "\n{model}: the convolutions of one forward take {:.0} µs as chosen, {:.0} µs with \
             each shape's winner.",
            chosen, winners
        );
    }
    md
}
