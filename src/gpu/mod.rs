//! The GPU engine: one device, a buffer pool, a pipeline cache and one open command encoder.
//!
//! Every op records its dispatches into the open encoder; nothing reaches the GPU until
//! [`Gpu::flush`] (one submit per sampling step) or a read-back, which flushes first. Tensors
//! stay in GPU memory; only [`Gpu::read`] brings data back. While a [`Profile`] is recorded
//! ([`Gpu::start_profile`]) every dispatch is also timed and attributed to its kernel and to the
//! [`Gpu::scope`] the model code opened.

mod kernel;
mod profile;
mod tensor;
mod tiling;

pub(crate) use kernel::kernel_params;
#[cfg(test)]
pub(crate) use kernel::wgsl;
pub use kernel::{
    checked_u32, shaders, Kernel, KernelParams, Shader, F16_WEIGHTS, LINEAR_WORKGROUP,
    UNCHECKED_SHADERS,
};
pub use profile::{Profile, ProfileMemory, Row, Scope, Step, StepRow, NO_TIMESTAMPS, UNSCOPED};
pub use tensor::{DType, MemoryStats, Shape, Tensor};
pub use tiling::{
    choose_tiling, compute_units, GemmTiling, PlanTarget, FALLBACK_COMPUTE_UNITS, SPLITS, TILE_K,
    TILE_SHAPES, WORKGROUPS_PER_CU,
};

use crate::error::{Error, Result};
use kernel::{ParamArena, PipelineCache};
use profile::Profiler;
use std::sync::{Arc, Mutex};
use tensor::BufferPool;

/// Which adapter to open: by index in [`Gpu::adapters`] order, or the first whose name contains a string.
#[derive(Clone, Debug, Default)]
pub enum AdapterChoice {
    #[default]
    Default,
    Index(usize),
    Name(String),
}

impl std::str::FromStr for AdapterChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s.parse::<usize>() {
            Ok(i) => AdapterChoice::Index(i),
            Err(_) => AdapterChoice::Name(s.to_string()),
        })
    }
}

/// Optional device features, detected on the adapter rather than assumed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Capabilities {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
}

/// Which family of kernel variants the ops dispatch, chosen per device class as ggml does: what
/// is fast on a GPU is slow on a CPU rasteriser and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelClass {
    /// Workgroup-memory tiles shared through barriers: GPUs.
    Tiled,
    /// Register blocks read straight from storage, no workgroup memory or barriers: CPU adapters
    /// (lavapipe runs a workgroup as SIMD lanes of one thread, where a barrier is a coroutine
    /// switch; rows every lane needs are loaded once per subgroup, [`shared_row_lanes`]).
    Blocked,
}

impl KernelClass {
    /// Environment variable that forces a class (`tiled` or `blocked`), e.g. to run the GPU
    /// variants on lavapipe.
    pub const ENV: &'static str = "WGSL_DIFF_KERNELS";

    fn for_adapter(info: &wgpu::AdapterInfo) -> Result<KernelClass> {
        match std::env::var(Self::ENV).ok().as_deref() {
            None | Some("") => Ok(if info.device_type == wgpu::DeviceType::Cpu {
                KernelClass::Blocked
            } else {
                KernelClass::Tiled
            }),
            Some("tiled") => Ok(KernelClass::Tiled),
            Some("blocked") => Ok(KernelClass::Blocked),
            Some(other) => Err(Error::Invalid(format!(
                "{}={other:?}: expected \"tiled\" or \"blocked\"",
                Self::ENV
            ))),
        }
    }
}

/// Environment variable that, set to `1`, builds the tiled class's GEMM kernel families
/// (conv2d, its input gradient, matmul: [`kernel::UNCHECKED_SHADERS`]) with
/// `ShaderRuntimeChecks::unchecked()`: no clamped workgroup-array indices, no loop-bounding
/// counters, no wrapped divisions, no clamped storage indices. Their indices are in range by
/// construction (tiles sized by the overrides, storage reads behind the shaders' own bounds
/// tests, divisors from nonzero shapes), which the test suite checks by passing with and without
/// it. Off by default until a GPU measures what it gains.
pub const UNCHECKED_ENV: &str = "WGSL_DIFF_UNCHECKED";

/// Environment variable that, set to `1`, makes the blocked kernels load every weight row in
/// each invocation rather than across the subgroup ([`shared_row_lanes`]): for measuring what
/// the sharing gains.
pub const PRIVATE_ROWS_ENV: &str = "WGSL_DIFF_PRIVATE_ROWS";

/// The rows of a blocked kernel's register block and the invocations of its workgroup
/// (conv2d.wgsl's and matmul.wgsl's `BLOCK_ROWS` and `BLOCKED_WG`, which the ops' constants take
/// from here and the shaders are checked against): a subgroup that shares rows must divide both.
pub const BLOCKED_ROWS: u32 = 16;

/// The subgroup lanes across which the blocked kernels load the weight rows all their lanes
/// use (lanes_subgroup.wgsl): the subgroup size where the device has subgroups of one fixed size
/// that divides [`BLOCKED_ROWS`] (lavapipe: its SIMD width, 8 lanes of f32 on AVX2, 16 on
/// AVX-512), else 1. lavapipe loads from storage inside a loop one lane and one component at a
/// time, even where the address is the same on every lane, so a row loaded once per subgroup and
/// shuffled to the others costs 1 / lanes of a row loaded by each.
pub fn shared_row_lanes(caps: &Capabilities, info: &wgpu::AdapterInfo) -> u32 {
    let size = info.subgroup_min_size;
    match caps.subgroups && size == info.subgroup_max_size && size > 1 {
        true if BLOCKED_ROWS.is_multiple_of(size) => size,
        _ => 1,
    }
}

/// Environment variable that, set to `1`, makes every device attend through the fused kernels
/// ([`Gpu::with_fused_attention`]), so benches can set the two paths side by side.
pub const FUSED_ATTENTION_ENV: &str = "WGSL_DIFF_FUSED_ATTENTION";

/// An on/off environment variable ([`FUSED_ATTENTION_ENV`], [`UNCHECKED_ENV`]): `1` on, `0` or
/// unset off; anything else is an error, as a misspelt [`KernelClass::ENV`] is.
fn flag_from_env(name: &str) -> Result<bool> {
    match std::env::var(name).ok().as_deref() {
        None | Some("") | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(Error::Invalid(format!(
            "{name}={other:?}: expected \"1\" or \"0\""
        ))),
    }
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub caps: Capabilities,
    kernel_class: KernelClass,
    /// Compute units by the adapter's name ([`compute_units`]): what the tiled class sizes its
    /// grids for.
    compute_units: usize,
    /// A GEMM tiling every tiled-class product and convolution takes ([`Gpu::with_tiling`]).
    forced_tiling: Option<GemmTiling>,
    /// Build the tiled class's GEMM families without naga's runtime checks ([`UNCHECKED_ENV`]).
    unchecked: bool,
    /// Attention through attention.wgsl's fused kernel even where the products path fits
    /// ([`Gpu::with_fused_attention`]).
    fused_attention: bool,
    /// The subgroup lanes the blocked kernels load their shared rows across
    /// ([`shared_row_lanes`]; 1: each invocation loads its own).
    lanes: u32,
    pool: Arc<BufferPool>,
    pipelines: PipelineCache,
    state: Mutex<Recording>,
}

/// The command encoder being recorded and the uniform parameters its dispatches use.
struct Recording {
    encoder: Option<wgpu::CommandEncoder>,
    params: ParamArena,
    dispatches: usize,
    submissions: usize,
    /// Set while a profile is recorded ([`Gpu::start_profile`]).
    profiler: Option<Profiler>,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

impl Gpu {
    /// Every adapter the instance sees (honours `WGPU_BACKEND`).
    pub fn adapters() -> Vec<wgpu::Adapter> {
        pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
    }

    /// Opens the chosen adapter with all of its limits and the optional features it has.
    pub fn new(choice: &AdapterChoice) -> Result<Gpu> {
        let adapter = match choice {
            AdapterChoice::Default => {
                pollster::block_on(instance().request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                }))
                .map_err(|e| Error::NoAdapter(format!(": {e}")))?
            }
            AdapterChoice::Index(i) => Self::adapters()
                .into_iter()
                .nth(*i)
                .ok_or_else(|| Error::NoAdapter(format!(" at index {i} (see `wgsl-diff info`)")))?,
            AdapterChoice::Name(name) => {
                let needle = name.to_lowercase();
                Self::adapters()
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&needle))
                    .ok_or_else(|| {
                        Error::NoAdapter(format!(" named like {name:?} (see `wgsl-diff info`)"))
                    })?
            }
        };
        Self::from_adapter(adapter)
    }

    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let available = adapter.features();
        let wanted = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let features = available & wanted;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgsl-diff"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Device(e.to_string()))?;
        let caps = Capabilities {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        };
        let params = ParamArena::new(limits.min_uniform_buffer_offset_alignment);
        let kernel_class = KernelClass::for_adapter(&info)?;
        let compute_units = compute_units(&info.name);
        let lanes = match flag_from_env(PRIVATE_ROWS_ENV)? {
            true => 1,
            false => shared_row_lanes(&caps, &info),
        };
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            caps,
            kernel_class,
            compute_units,
            forced_tiling: None,
            unchecked: flag_from_env(UNCHECKED_ENV)?,
            fused_attention: flag_from_env(FUSED_ATTENTION_ENV)?,
            lanes,
            pool: Arc::new(BufferPool::default()),
            pipelines: PipelineCache::default(),
            state: Mutex::new(Recording {
                encoder: None,
                params,
                dispatches: 0,
                submissions: 0,
                profiler: None,
            }),
        })
    }

    /// The kernel variants this device's ops use.
    pub fn kernel_class(&self) -> KernelClass {
        self.kernel_class
    }

    /// This device with the other class's kernels forced (tests run both on one adapter).
    pub fn with_kernel_class(mut self, class: KernelClass) -> Gpu {
        self.kernel_class = class;
        self
    }

    /// What this device's launch plans depend on besides the problem.
    pub fn plan_target(&self) -> PlanTarget {
        PlanTarget {
            class: self.kernel_class,
            compute_units: self.compute_units,
            forced_tiling: self.forced_tiling,
            lanes: self.lanes,
        }
    }

    /// This device with the blocked kernels' rows shared across `lanes` lanes of a subgroup, or
    /// loaded by each invocation (`lanes` 1): tests run both. Other counts than 1 and the
    /// device's own ([`shared_row_lanes`]) are refused.
    pub fn with_lanes(mut self, lanes: u32) -> Result<Gpu> {
        let own = shared_row_lanes(&self.caps, &self.info);
        if lanes != 1 && lanes != own {
            return Err(Error::Invalid(format!(
                "{lanes} lanes: this device's blocked kernels share rows across {own}"
            )));
        }
        self.lanes = lanes;
        Ok(self)
    }

    /// The subgroup lanes the blocked kernels share their rows across (1: none).
    pub fn lanes(&self) -> u32 {
        self.lanes
    }

    /// This device with every tiled-class GEMM (convolutions, products) in `tiling` rather than
    /// the one [`choose_tiling`] picks (`None`: the chooser's again): tests check each variant,
    /// the sweep times each.
    pub fn with_tiling(mut self, tiling: Option<GemmTiling>) -> Gpu {
        self.forced_tiling = tiling;
        self
    }

    /// This device with the GEMM families built with or without naga's runtime checks (see
    /// [`UNCHECKED_ENV`]); the default comes from that variable.
    pub fn with_unchecked_kernels(mut self, on: bool) -> Gpu {
        self.unchecked = on;
        self
    }

    /// Whether the GEMM families are built without runtime checks.
    pub fn unchecked_kernels(&self) -> bool {
        self.unchecked
    }

    /// This device with attention (and its gradient) always through the fused flash-style
    /// kernels, which otherwise run only where one head's N × N scores exceed a tensor or the
    /// softmax's passes exceed a CPU adapter's loop budget: tests reach them on small shapes.
    pub fn with_fused_attention(mut self) -> Gpu {
        self.fused_attention = true;
        self
    }

    /// Whether [`Gpu::with_fused_attention`] was asked for.
    pub fn fused_attention(&self) -> bool {
        self.fused_attention
    }

    /// This device with tensors limited to `bytes` (at most the device's own limit), so that
    /// tests reach on small shapes the paths that split work at the limit.
    pub fn with_max_tensor_bytes(mut self, bytes: u64) -> Gpu {
        let l = &mut self.limits;
        l.max_storage_buffer_binding_size = l.max_storage_buffer_binding_size.min(bytes);
        l.max_buffer_size = l.max_buffer_size.min(bytes);
        self
    }

    /// The largest buffer one tensor may occupy: a storage binding must cover it whole.
    pub fn max_tensor_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// The most loop iterations one invocation may run in one loop nest, counting the iterations
    /// of every nested loop, or `None` where there is no such bound (real GPUs).
    ///
    /// Mesa's llvmpipe (lavapipe: CI's and every CPU user's Vulkan device) silently breaks out
    /// of a loop nest once 65535 iterations have been counted over the outermost loop and all
    /// loops inside it (gallivm's `LP_MAX_TGSI_LOOP_ITERATIONS`): the results are then wrong,
    /// with no error. Kernels whose loops grow with the input split their work so that their
    /// cost model stays under this budget; half the limit leaves room for what a model misses.
    /// Every CPU rasteriser gets it: splitting is cheap there, and a wrong answer is not.
    pub fn max_loop_iterations(&self) -> Option<usize> {
        const CPU_LOOP_BUDGET: usize = 32768;
        (self.info.device_type == wgpu::DeviceType::Cpu).then_some(CPU_LOOP_BUDGET)
    }

    /// Submits everything recorded so far as one command buffer.
    pub fn flush(&self) {
        let mut rec = self.state.lock().unwrap();
        let rec = &mut *rec;
        if let Some(mut encoder) = rec.encoder.take() {
            let timestamps = rec
                .profiler
                .as_mut()
                .and_then(|p| p.resolve(&self.device, &mut encoder));
            rec.params.upload(&self.queue);
            self.queue.submit([encoder.finish()]);
            rec.params.reset();
            rec.dispatches = 0;
            rec.submissions += 1;
            if let Some(p) = rec.profiler.as_mut() {
                p.submitted(&self.device, timestamps);
            }
        }
    }

    /// Flushes and blocks until the GPU has finished all submitted work.
    pub fn sync(&self) -> Result<()> {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::ReadBack(e.to_string()))
    }

    /// Command buffers submitted so far (for tests: one per sampling step).
    pub fn submissions(&self) -> usize {
        self.state.lock().unwrap().submissions
    }

    /// Number of dispatches recorded into the open encoder (for tests and benchmarks).
    pub fn pending_dispatches(&self) -> usize {
        self.state.lock().unwrap().dispatches
    }

    /// Records a copy or clear `f` into the open encoder, creating one if needed.
    fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        self.record(|encoder, _, profiler| {
            if let Some(p) = profiler {
                p.copy();
            }
            f(encoder)
        })
    }

    /// Records `f` into the open encoder, creating one if needed; `f` also gets the dispatch
    /// parameters and the profiler, if one is attached.
    fn record<R>(
        &self,
        f: impl FnOnce(&mut wgpu::CommandEncoder, &mut ParamArena, Option<&mut Profiler>) -> R,
    ) -> R {
        let mut rec = self.state.lock().unwrap();
        let rec = &mut *rec;
        let encoder = rec.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        });
        rec.dispatches += 1;
        f(encoder, &mut rec.params, rec.profiler.as_mut())
    }

    /// Copies a tensor's contents back to the CPU (flushing pending work first).
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        let mut out = self.read_many(&[t])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Copies several tensors back with one submit and one mapping: one read-back, however
    /// many tensors a finished batch hands over.
    pub fn read_many(&self, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        for t in tensors {
            t.ensure_f32("read")?;
        }
        let total: u64 = tensors.iter().map(|t| t.byte_len()).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|enc| {
            let mut offset = 0;
            for t in tensors {
                enc.copy_buffer_to_buffer(t.buffer(), 0, &staging, offset, t.byte_len());
                offset += t.byte_len();
            }
        });
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::ReadBack(e.to_string()))?;
        rx.recv()
            .map_err(|e| Error::ReadBack(e.to_string()))?
            .map_err(|e| Error::ReadBack(e.to_string()))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::ReadBack(format!("{e:?}")))?;
        let values = bytemuck::cast_slice::<u8, f32>(&view);
        let mut out = Vec::with_capacity(tensors.len());
        let mut start = 0;
        for t in tensors {
            out.push(values[start..start + t.numel()].to_vec());
            start += t.numel();
        }
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// A human-readable description of the adapter, its features and key limits.
    pub fn describe(&self) -> String {
        let l = &self.limits;
        format!(
            "{} ({:?}, {:?}, driver {} {}, {:?} kernels{})\n  features: shader-f16={} subgroups={} timestamps={}\n  \
             limits: max_storage_buffer_binding_size={} max_buffer_size={} \
             max_compute_workgroup_storage_size={} max_compute_invocations_per_workgroup={} \
             max_compute_workgroups_per_dimension={} subgroup_size={}..={}",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info,
            self.kernel_class,
            match (self.kernel_class, self.lanes) {
                (KernelClass::Blocked, lanes @ 2..) => format!(", rows shared across {lanes} lanes"),
                _ => String::new(),
            },
            self.caps.shader_f16,
            self.caps.subgroups,
            self.caps.timestamps,
            l.max_storage_buffer_binding_size,
            l.max_buffer_size,
            l.max_compute_workgroup_storage_size,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
            self.info.subgroup_min_size,
            self.info.subgroup_max_size,
        )
    }
}
