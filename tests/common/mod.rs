//! Shared test support: the GPU under test, seeded random data and f64 reference kernels.
#![allow(dead_code)]

pub mod attention_case;
pub mod page;
pub mod reference;
pub mod weights_file;

use std::sync::OnceLock;
use wgsl_diff::gpu::{AdapterChoice, Gpu, KernelClass, Tensor};

/// The adapter chosen by `WGPU_BACKEND` (CI: vulkan → lavapipe). No adapter is a test failure.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = Gpu::new(&AdapterChoice::Default).unwrap_or_else(|e| {
            panic!("tests need a GPU adapter (install mesa-vulkan-drivers): {e}")
        });
        if std::env::var("WGPU_BACKEND").is_ok_and(|b| b.eq_ignore_ascii_case("vulkan")) {
            assert_eq!(
                gpu.info.backend,
                wgpu::Backend::Vulkan,
                "WGPU_BACKEND=vulkan but got {:?}",
                gpu.info
            );
        }
        gpu
    })
}

/// The adapter under test twice: with the kernel class it picks ([`gpu`]) and with the other one
/// forced, so both variants of a kernel family (GPU tiles, CPU register blocks) meet the same
/// references on whatever adapter runs the tests.
pub fn gpus() -> [&'static Gpu; 2] {
    static OTHER: OnceLock<Gpu> = OnceLock::new();
    let own = gpu();
    let other = OTHER.get_or_init(|| {
        let class = match own.kernel_class() {
            KernelClass::Tiled => KernelClass::Blocked,
            KernelClass::Blocked => KernelClass::Tiled,
        };
        Gpu::new(&AdapterChoice::Default)
            .expect("the adapter opens twice")
            .with_kernel_class(class)
    });
    [own, other]
}

/// [`gpus`], and where the adapter's blocked kernels share their weight rows across a subgroup
/// (`Gpu::lanes`), the blocked class once more with every invocation loading its own rows (as on
/// a device without subgroups): the convolution and product tests hold both to one reference.
pub fn gemm_gpus() -> Vec<&'static Gpu> {
    static PRIVATE_ROWS: OnceLock<Option<Gpu>> = OnceLock::new();
    let private = PRIVATE_ROWS.get_or_init(|| {
        let blocked = gpus()
            .into_iter()
            .find(|g| g.kernel_class() == KernelClass::Blocked)?;
        (blocked.lanes() > 1).then(|| {
            Gpu::new(&AdapterChoice::Default)
                .expect("the adapter opens again")
                .with_kernel_class(KernelClass::Blocked)
                .with_lanes(1)
                .expect("one lane is always allowed")
        })
    });
    gpus().into_iter().chain(private.as_ref()).collect()
}

/// How a test names a device of [`gemm_gpus`].
pub fn gemm_gpu(g: &Gpu) -> String {
    match g.kernel_class() {
        KernelClass::Tiled => format!("Tiled {}", tiled_variant(g)),
        KernelClass::Blocked => format!("Blocked, {} lanes", g.lanes()),
    }
}

/// The adapter under test with the tiled (GPU) class forced in each tiling the chooser may pick
/// and the device sweep times (`gpu::TILE_SHAPES`), each whole and with K split 3 ways (uneven
/// slices), the split ones built without naga's runtime checks (`Gpu::with_unchecked_kernels`):
/// every variant meets the same references on whatever adapter runs the tests.
pub fn tiled_variants() -> &'static [Gpu] {
    static VARIANTS: OnceLock<Vec<Gpu>> = OnceLock::new();
    VARIANTS.get_or_init(|| {
        let mut variants = Vec::new();
        for shape in wgsl_diff::gpu::TILE_SHAPES {
            for splits in [1, 3] {
                let tiling = wgsl_diff::gpu::GemmTiling {
                    splits,
                    ..wgsl_diff::gpu::GemmTiling::shape(shape)
                };
                let g = Gpu::new(&AdapterChoice::Default)
                    .expect("the adapter opens again")
                    .with_kernel_class(KernelClass::Tiled)
                    .with_tiling(Some(tiling));
                variants.push(match splits {
                    1 => g,
                    _ => g.with_unchecked_kernels(true),
                });
            }
        }
        variants
    })
}

/// How a test names a device of [`tiled_variants`].
pub fn tiled_variant(g: &Gpu) -> String {
    let tiling = g.plan_target().forced_tiling.map(|t| t.label());
    let checks = match g.unchecked_kernels() {
        true => "unchecked",
        false => "checked",
    };
    format!("{} {checks}", tiling.unwrap_or_default())
}

/// The adapter under test three ways for attention: both kernel classes (which run it as
/// matmul, softmax, matmul where the scores fit) and the fused flash-style kernels forced
/// ([`Gpu::with_fused_attention`]), so each path meets the same references.
pub fn attention_gpus() -> [&'static Gpu; 3] {
    static FUSED: OnceLock<Gpu> = OnceLock::new();
    let [own, other] = gpus();
    let fused = FUSED.get_or_init(|| {
        Gpu::new(&AdapterChoice::Default)
            .expect("the adapter opens again")
            .with_kernel_class(own.kernel_class())
            .with_fused_attention()
    });
    [own, other, fused]
}

/// How a test names a device of [`attention_gpus`].
pub fn attention_path(g: &Gpu) -> String {
    match g.fused_attention() {
        true => "fused".into(),
        false => format!(
            "{:?} class (products where the scores fit)",
            g.kernel_class()
        ),
    }
}

/// Seeded test data from the crate's SplitMix64.
pub struct Rng(wgsl_diff::splitmix::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(wgsl_diff::splitmix::SplitMix64::new(seed))
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.symmetric() as f32
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

pub fn upload(data: &[f32], shape: &[usize]) -> Tensor {
    gpu().upload(shape, data).expect("upload")
}

pub fn read(t: &Tensor) -> Vec<f32> {
    gpu().read(t).expect("read back")
}

/// [`upload`] and [`read`] on a given device (one of [`gpus`]).
pub fn upload_to(g: &Gpu, data: &[f32], shape: &[usize]) -> Tensor {
    g.upload(shape, data).expect("upload")
}

pub fn read_from(g: &Gpu, t: &Tensor) -> Vec<f32> {
    g.read(t).expect("read back")
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts |got − want| ≤ atol + rtol·|want| everywhere, reporting the worst errors.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut max_abs = 0f64;
    let mut max_rel = 0f64;
    let mut worst = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        max_abs = max_abs.max(err);
        max_rel = max_rel.max(err / w.abs().max(1e-12));
        let within = err <= atol + rtol * w.abs();
        if !within && worst.is_none() {
            worst = Some((i, g, w));
        }
    }
    if let Some((i, g, w)) = worst {
        panic!("{what}: element {i} is {g}, want {w}; max abs err {max_abs:.3e}, max rel err {max_rel:.3e} (atol {atol:.0e}, rtol {rtol:.0e})");
    }
    eprintln!("{what}: max abs err {max_abs:.3e}, max rel err {max_rel:.3e}");
}

/// Every f32 tensor of a safetensors fixture by name: (shape, data).
pub fn read_safetensors(
    path: &std::path::Path,
) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            (
                name,
                (
                    view.shape().to_vec(),
                    bytemuck::pod_collect_to_vec(view.data()),
                ),
            )
        })
        .collect()
}

/// A UNet from a weight file under tests/fixtures.
pub fn fixture_model(name: &str) -> wgsl_diff::models::UNet2DModel {
    let file = wgsl_diff::models::WeightFile::open(&fixture(name)).unwrap();
    wgsl_diff::models::UNet2DModel::load(gpu(), &file).unwrap()
}

/// diffusers' DDIM defaults with `steps` steps over the default linear schedule.
pub fn ddim(steps: usize) -> wgsl_diff::sampling::Scheduler {
    use wgsl_diff::sampling::{NoiseSchedule, SamplerConfig, ScheduleConfig, Scheduler};
    let schedule = NoiseSchedule::from_config(&ScheduleConfig::default()).unwrap();
    Scheduler::new(SamplerConfig::ddim(steps), schedule).unwrap()
}

/// A file under tests/fixtures.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Asserts that a finished command failed cleanly: a non-zero exit, no panic, and `expected` in
/// its standard error. `what` names the command in the failure message.
pub fn assert_clean_failure(out: &std::process::Output, what: &str, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded");
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert!(
        stderr.contains(expected),
        "{what}: expected {expected:?} in: {stderr}"
    );
}

/// A fresh, empty folder under the system temporary folder, named for this test process and
/// `name` (use a distinct name per test: tests run in parallel).
pub fn tmp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wgsl-diff-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// ops::group_norm (± fused SiLU, ε 1e-5) on random data of `shape` = (b, c, h, w, groups,
/// silu) against the f64 reference, with the kernel tests' tolerances.
pub fn check_group_norm(rng: &mut Rng, shape: (usize, usize, usize, usize, usize, bool)) {
    let (b, c, h, w, groups, silu) = shape;
    let x: Vec<f32> = rng
        .vec(b * c * h * w)
        .iter()
        .map(|v| v * 3.0 + 1.5)
        .collect();
    let (gamma, beta) = (rng.vec(c), rng.vec(c));
    let (g64, b64) = (to_f64(&gamma), to_f64(&beta));
    let want = reference::group_norm(&to_f64(&x), b, c, h * w, groups, 1e-5, &g64, &b64, silu);
    // Both kernel classes (their statistics workgroups differ in width).
    for g in gpus() {
        let y = wgsl_diff::ops::group_norm(
            g,
            &upload_to(g, &x, &[b, c, h, w]),
            groups,
            1e-5,
            &upload_to(g, &gamma, &[c]),
            &upload_to(g, &beta, &[c]),
            silu,
        )
        .unwrap();
        assert_close(
            &format!("group_norm {:?} {shape:?}", g.kernel_class()),
            &read_from(g, &y),
            &want,
            1e-5,
            1e-4,
        );
    }
}

/// Every file under `dir` (relative path, bytes), sorted.
pub fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A convolution's shape: (batch, c_in, h, w, c_out, k, stride, pad, extra bottom/right pad).
pub type ConvCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// The convolutions every conv2d kernel (forward, f16 weights, input gradient) is checked on,
/// on both kernel classes: sizes 1, odd and off-tile; C_out % 4 = 0 or not and % 32 = 0 (the
/// blocked kernel's transposed weights and 32-row blocks); part-filled pixel blocks; the
/// blocked aligned-row path (stride 1, W % 4 = 0) and its 16-pixel blocks (W % 16 = 0, with
/// W_out = W and W − 2); 1×1 and 5×5 taps; stride 2 with and without
/// extra bottom/right padding; odd weight counts (an f16 word half-filled).
pub const CONV_CASES: [ConvCase; 17] = [
    (1, 1, 1, 1, 1, 1, 1, 0, 0),
    (2, 3, 7, 5, 5, 3, 1, 1, 0),
    (3, 5, 9, 11, 67, 3, 2, 1, 0),
    (1, 17, 6, 6, 3, 1, 1, 0, 0),
    (2, 4, 8, 8, 70, 3, 1, 1, 0),
    (1, 2, 5, 7, 4, 5, 1, 2, 0),
    (2, 3, 8, 7, 5, 3, 2, 0, 1),
    (2, 5, 6, 12, 36, 3, 1, 1, 0),
    (1, 3, 4, 16, 20, 5, 1, 2, 0),
    (2, 6, 9, 8, 8, 1, 1, 0, 0),
    (1, 2, 7, 4, 4, 3, 1, 1, 1),
    (2, 5, 6, 12, 64, 3, 1, 1, 0),
    (1, 3, 5, 9, 32, 3, 2, 1, 0),
    (2, 70, 8, 7, 4, 3, 1, 1, 0),
    (1, 33, 8, 8, 70, 1, 1, 0, 0),
    (2, 5, 3, 32, 16, 3, 1, 1, 0),
    (1, 4, 5, 16, 8, 3, 1, 0, 0),
];

/// A convolution's output size (rows, columns).
pub fn conv_out_hw(case: ConvCase) -> (usize, usize) {
    let (_, _, h, w, _, k, stride, pad, extra) = case;
    let side = |s: usize| (s + 2 * pad + extra - k) / stride + 1;
    (side(h), side(w))
}

/// A convolution's output element count.
pub fn conv_out_len(case: ConvCase) -> usize {
    let (ho, wo) = conv_out_hw(case);
    case.0 * case.4 * ho * wo
}

/// A copy of fixture `name` whose `config` metadata has `from` replaced by `to` (the tensors
/// unchanged), written under the temporary folder as `out`: a file whose flags contradict its
/// tensors.
pub fn with_config_edit(name: &str, (from, to): (&str, &str), out: &str) -> std::path::PathBuf {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    assert!(meta["config"].contains(from), "{name}: no {from} to edit");
    let config = meta["config"].replace(from, to);
    meta.insert("config".into(), config);
    let path = tmp_dir("config-edit").join(out);
    std::fs::write(
        &path,
        safetensors::serialize(st.tensors(), &Some(meta)).unwrap(),
    )
    .unwrap();
    path
}

/// An uncertainty estimator's kept maps, one per step from step 0, against a fixture's
/// `maps/{name}/{step}` within 1e-4 of the largest value (and 1e-4 relative).
pub fn assert_step_maps(
    st: &std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
    name: &str,
    maps: &[(usize, wgsl_diff::gpu::Tensor)],
) {
    for (i, (step, map)) in maps.iter().enumerate() {
        assert_eq!(*step, i);
        let (_, want) = st[&format!("maps/{name}/{i}")].clone();
        let top = want.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
        let what = format!("{name} map, step {i}");
        assert_close(&what, &read(map), &to_f64(&want), 1e-4 * top, 1e-4);
    }
}

/// The final x of one batch of `model` sampled by `sched` from a fixture's initial noise
/// (`init`: shape and values) and `labels`, with `est` estimating at every step from the
/// fixture's re-noise draws (`replay`, one tensor per step) in place of the run's own.
pub fn sample_replaying_draws(
    g: &Gpu,
    model: &dyn wgsl_diff::models::EpsModel,
    sched: &wgsl_diff::sampling::Scheduler,
    (shape, init): (&[usize], &[f32]),
    labels: Option<&[usize]>,
    replay: Vec<Tensor>,
    est: &mut wgsl_diff::uncertainty::UncertaintyEstimator,
) -> Vec<f32> {
    use wgsl_diff::noise::{NoisePlan, NoisePurpose};
    use wgsl_diff::sampling::{sample_batch, BatchSpec};
    let spec = BatchSpec {
        first_index: 0,
        size: shape[0],
        labels,
        init_noise: Some(g.upload(shape, init).unwrap()),
    };
    let noise = NoisePlan::new(0).with_replay(NoisePurpose::Uncertainty, replay);
    let batch = sample_batch(g, model, sched, &noise, spec, &mut [est], |_| {}).unwrap();
    read_from(g, &batch.x)
}
