//! Shaders, the pipeline cache and the dispatch path every op goes through.
//!
//! Binding convention for every kernel: `@binding(0)` is a uniform block of 4-byte scalars
//! (the kernel's `Params`), then one read-only storage buffer per input, then one read-write
//! storage buffer per output, all in `@group(0)`.

use super::{DType, Gpu, Tensor};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A WGSL source file from `shaders/`.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    /// The kernel family it belongs to: its own name, or for a module that adds entry points to
    /// a family's file (`conv2d_lanes`), that file's. Profiles count dispatches per family, and
    /// a kernel's parameter struct is its family's.
    pub family: &'static str,
    pub source: &'static str,
}

impl Shader {
    /// The module's source: the activation type header ([`ACT_F32`], or [`ACT_F16`] for the
    /// half variant), then the file.
    pub fn module_source(&self, half: bool) -> String {
        let header = if half { ACT_F16 } else { ACT_F32 };
        format!("{header}{}", self.source)
    }
}

macro_rules! shader {
    ($ident:ident, $file:literal) => {
        pub const $ident: Shader = Shader {
            name: $file,
            family: $file,
            source: include_str!(concat!(env!("OUT_DIR"), "/shaders/", $file, ".wgsl")),
        };
    };
    // WGSL has no includes: each listed snippet (`shaders/prelude.wgsl`'s pure helpers, a
    // GEMM core two families share) is appended to the module, in order; WGSL allows functions
    // to call ones declared later. Appended, not prepended: with shared overrides declared
    // before the file's own, naga 30's override processing panicked.
    ($ident:ident, $file:literal, with [$($shared:literal),+]) => {
        shader!($ident, $file, family $file, with [$($shared),+]);
    };
    ($ident:ident, $file:literal, family $family:literal, with [$($shared:literal),+]) => {
        pub const $ident: Shader = Shader {
            name: $file,
            family: $family,
            source: concat!(
                include_str!(concat!(env!("OUT_DIR"), "/shaders/", $file, ".wgsl")),
                $(include_str!(concat!(env!("OUT_DIR"), "/shaders/", $shared, ".wgsl"))),+
            ),
        };
    };
}

/// The kernel families.
pub mod shaders {
    use super::Shader;
    shader!(MATMUL, "matmul", with["tiled_gemm", "lanes_off"]);
    shader!(CONV2D, "conv2d", with["tiled_gemm", "lanes_off"]);
    // The blocked entry points that share weight rows across a subgroup: only for devices with
    // subgroups (a module using them is invalid elsewhere), each with its family's file.
    shader!(MATMUL_LANES, "matmul_lanes", family "matmul",
        with["matmul", "tiled_gemm", "lanes_subgroup"]);
    shader!(CONV2D_LANES, "conv2d_lanes", family "conv2d",
        with["conv2d", "tiled_gemm", "lanes_subgroup"]);
    shader!(GROUP_NORM, "group_norm", with ["group_norm_planes", "prelude"]);
    shader!(ELEMENTWISE, "elementwise", with["prelude"]);
    shader!(RESAMPLE, "resample");
    shader!(EMBEDDING, "embedding");
    shader!(ATTENTION, "attention");
    shader!(RNG, "rng");
    shader!(SAMPLER, "sampler");
    shader!(UNCERTAINTY, "uncertainty");
    shader!(GUIDANCE, "guidance");
    // Input gradients (the UNet's vector-Jacobian product).
    shader!(CONV2D_GRAD, "conv2d_grad", with["tiled_gemm"]);
    shader!(GROUP_NORM_GRAD, "group_norm_grad", with ["group_norm_planes", "prelude"]);
    shader!(ATTENTION_GRAD, "attention_grad");
    shader!(ELEMENTWISE_GRAD, "elementwise_grad", with["prelude"]);
    shader!(SELECT, "select");
    shader!(NOISE_SCALE, "noise_scale");
    shader!(POOL, "pool");
    shader!(RESIZE, "resize");
    shader!(FINITE, "finite");
    shader!(SOFTMAX, "softmax");

    pub const ALL: &[&Shader] = &[
        &MATMUL,
        &CONV2D,
        &MATMUL_LANES,
        &CONV2D_LANES,
        &GROUP_NORM,
        &ELEMENTWISE,
        &RESAMPLE,
        &EMBEDDING,
        &ATTENTION,
        &RNG,
        &SAMPLER,
        &UNCERTAINTY,
        &GUIDANCE,
        &CONV2D_GRAD,
        &GROUP_NORM_GRAD,
        &ATTENTION_GRAD,
        &ELEMENTWISE_GRAD,
        &SELECT,
        &NOISE_SCALE,
        &POOL,
        &RESIZE,
        &FINITE,
        &SOFTMAX,
    ];
}

/// One specialisation of an entry point: the pipeline-cache key.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
    /// WGSL `override` constants; values are integers or bools (as 0/1).
    pub constants: Vec<(&'static str, u32)>,
    /// Built with `act` = f16 ([`ACT_F16`]): its activation bindings hold f16.
    pub half: bool,
}

/// What every shader module starts with: the storage type `act` (and `act4`) of activations,
/// f32 here. Shaders read activations widened to f32 and compute in f32.
pub const ACT_F32: &str = "alias act = f32;\nalias act4 = vec4<f32>;\n";

/// The same for a kernel's half variant ([`Kernel::half`]): activations stored as f16, which
/// needs the device's `SHADER_F16`.
pub const ACT_F16: &str = "enable f16;\nalias act = f16;\nalias act4 = vec4<f16>;\n";

impl Kernel {
    pub fn new(shader: &'static Shader, entry: &'static str) -> Kernel {
        Kernel {
            shader,
            entry,
            constants: Vec::new(),
            half: false,
        }
    }
    /// The variant whose activation bindings are f16 where `on` (f16 activations).
    pub fn half(mut self, on: bool) -> Kernel {
        self.half = on;
        self
    }
    pub fn with(mut self, name: &'static str, value: u32) -> Kernel {
        self.constants.push((name, value));
        self
    }
    /// Sets a WGSL `bool` override.
    pub fn flag(self, name: &'static str, on: bool) -> Kernel {
        self.with(name, on as u32)
    }
}

/// Environment variable that, set to `0`, builds the shaders without naga's loop-bounding
/// counters (an extra counter and exit test per loop iteration, which may also keep a driver from
/// unrolling). A diagnostic for measuring their cost on a GPU: on lavapipe it changed neither
/// the blocked nor the tiled bench conv.
pub const LOOP_BOUNDING_ENV: &str = "WGSL_DIFF_LOOP_BOUNDING";

/// The kernel families built without naga's runtime checks where [`super::UNCHECKED_ENV`] asks,
/// on a device of the tiled class (whose entry points in them are the tiled GEMMs, the split-K
/// reduces and the weight staging); the register-blocked kernels keep their checks (conv2d_blocked
/// may read weights past the last tap for rows it does not store, which a check clamps).
pub const UNCHECKED_SHADERS: [&str; 3] = ["conv2d", "conv2d_grad", "matmul"];

/// The bool `override` of conv2d.wgsl and matmul.wgsl that makes them read their weight
/// operand as packed f16 pairs (set by the op from the weight's [`DType`]).
pub const F16_WEIGHTS: &str = "F16_WEIGHTS";

/// Threads per workgroup of every kernel launched over a [`Gpu::grid_1d`]: the `WG` constant of
/// those shaders (checked against them by `ops`' tests).
pub const LINEAR_WORKGROUP: usize = 256;

/// A kernel's uniform block: a `#[repr(C)]` mirror of the WGSL struct at `@binding(0)`, declared
/// with `kernel_params!`, which also records the layout so a test can compare it with the
/// shader's.
///
/// Every field is a 4-byte scalar, so the C layout (consecutive offsets, no padding) is the
/// WGSL uniform layout; the 16-byte rounding of uniform structs does not matter because each
/// dispatch binds a whole 256-byte parameter slot.
pub trait KernelParams: bytemuck::Pod {
    /// The shader and WGSL struct this type mirrors.
    const SHADER: &'static Shader;
    const STRUCT: &'static str;
    /// Each field in order: (name, WGSL scalar type, byte offset).
    const FIELDS: &'static [(&'static str, &'static str, usize)];
}

/// Declares a kernel's parameter struct with its [`KernelParams`] impl:
/// `kernel_params! { struct ConvParams for CONV2D::Params { batch: u32, … } }` mirrors the
/// struct `Params` of `shaders::CONV2D`, with the WGSL field names, order and scalar types.
macro_rules! kernel_params {
    ($(#[$meta:meta])* $vis:vis struct $name:ident for $shader:ident :: $wgsl:ident {
        $($field:ident : $ty:ident),* $(,)?
    }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($field: $ty,)*
        }

        impl $crate::gpu::KernelParams for $name {
            const SHADER: &'static $crate::gpu::Shader = &$crate::gpu::shaders::$shader;
            const STRUCT: &'static str = stringify!($wgsl);
            const FIELDS: &'static [(&'static str, &'static str, usize)] =
                &[$((stringify!($field), stringify!($ty), ::std::mem::offset_of!($name, $field))),*];
        }
    };
}
pub(crate) use kernel_params;

/// `value` as a 32-bit kernel quantity (a parameter, override or workgroup count), or an error
/// naming it: WGSL indexes in u32, so a larger value cannot reach the shader.
pub fn checked_u32(op: &str, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::Invalid(format!(
            "{op}: {what} is {value}, but GPU kernels take at most {}",
            u32::MAX
        ))
    })
}

/// One slot per dispatch, each a whole uniform-offset alignment; backing chunks are reused.
pub(crate) struct ParamArena {
    align: u64,
    staged: Vec<u8>,
    chunks: Vec<wgpu::Buffer>,
}

/// Bytes bound per dispatch: at least any kernel's parameter struct.
const PARAM_SLOT: u64 = 256;
const CHUNK_SLOTS: u64 = 1024;

impl ParamArena {
    pub(crate) fn new(min_align: u32) -> ParamArena {
        ParamArena {
            align: PARAM_SLOT.max(min_align as u64),
            staged: Vec::new(),
            chunks: Vec::new(),
        }
    }

    fn chunk_bytes(&self) -> u64 {
        self.align * CHUNK_SLOTS
    }

    /// Stages `params` and returns the (chunk, offset) its binding must point at.
    fn push<P: KernelParams>(&mut self, device: &wgpu::Device, params: &P) -> (wgpu::Buffer, u64) {
        const { assert!(std::mem::size_of::<P>() as u64 <= PARAM_SLOT) };
        let start = self.staged.len() as u64;
        let chunk = (start / self.chunk_bytes()) as usize;
        if chunk == self.chunks.len() {
            self.chunks
                .push(device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: self.chunk_bytes(),
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }));
        }
        self.staged.extend_from_slice(bytemuck::bytes_of(params));
        self.staged.resize((start + self.align) as usize, 0);
        (self.chunks[chunk].clone(), start % self.chunk_bytes())
    }

    /// Queues the staged parameters; queue writes land before the next submit's commands.
    pub(crate) fn upload(&self, queue: &wgpu::Queue) {
        for (i, bytes) in self.staged.chunks(self.chunk_bytes() as usize).enumerate() {
            queue.write_buffer(&self.chunks[i], 0, bytes);
        }
    }

    pub(crate) fn reset(&mut self) {
        self.staged.clear();
    }
}

pub(crate) struct CachedPipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// (shader, entry, constants, inputs, outputs, half variant).
type PipelineKey = (
    &'static str,
    &'static str,
    Vec<(&'static str, u32)>,
    usize,
    usize,
    bool,
);

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(&'static str, bool), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<CachedPipeline>>>,
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl Gpu {
    fn pipeline(&self, k: &Kernel, inputs: usize, outputs: usize) -> Arc<CachedPipeline> {
        let key = (
            k.shader.name,
            k.entry,
            k.constants.clone(),
            inputs,
            outputs,
            k.half,
        );
        if let Some(p) = self.pipelines.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let module = self
            .pipelines
            .modules
            .lock()
            .unwrap()
            .entry((k.shader.name, k.half))
            .or_insert_with(|| {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(k.shader.name),
                    source: wgpu::ShaderSource::Wgsl(k.shader.module_source(k.half).into()),
                };
                let unchecked = self.unchecked
                    && self.kernel_class == super::KernelClass::Tiled
                    && UNCHECKED_SHADERS.contains(&k.shader.name);
                let unbounded = std::env::var(LOOP_BOUNDING_ENV).is_ok_and(|v| v == "0");
                match (unchecked, unbounded) {
                    // SAFETY: UNCHECKED_ENV's argument: these families' indices are in range
                    // by construction, which the suite checks by passing with them unchecked.
                    (true, _) => unsafe {
                        self.device.create_shader_module_trusted(
                            desc,
                            wgpu::ShaderRuntimeChecks::unchecked(),
                        )
                    },
                    // SAFETY: the one check dropped is naga's counter on every loop, which
                    // guards against loops that never end; every loop in shaders/ ends, its bound
                    // and step coming from shapes the ops check (the attention tiles' steps are
                    // clamped to at least 1).
                    (false, true) => unsafe {
                        let mut checks = wgpu::ShaderRuntimeChecks::checked();
                        checks.force_loop_bounding = false;
                        self.device.create_shader_module_trusted(desc, checks)
                    },
                    (false, false) => self.device.create_shader_module(desc),
                }
            })
            .clone();
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        entries.extend((0..inputs).map(|i| storage_entry(1 + i as u32, true)));
        entries.extend((0..outputs).map(|i| storage_entry((1 + inputs + i) as u32, false)));
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(k.entry),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(k.entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let constants: Vec<(&str, f64)> = k.constants.iter().map(|&(n, v)| (n, v as f64)).collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(k.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let cached = Arc::new(CachedPipeline { pipeline, layout });
        self.pipelines
            .pipelines
            .lock()
            .unwrap()
            .insert(key, cached.clone());
        cached
    }

    /// Records one dispatch of `kernel` into the open encoder; `params` is its uniform block.
    pub fn dispatch<P: KernelParams>(
        &self,
        kernel: &Kernel,
        params: &P,
        inputs: &[&Tensor],
        outputs: &[&Tensor],
        workgroups: [usize; 3],
    ) -> Result<()> {
        debug_assert_eq!(kernel.shader.family, P::SHADER.name, "{}", kernel.entry);
        let max = self.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max as usize) {
            return Err(Error::TooManyWorkgroups {
                kernel: format!("{}::{}", kernel.shader.name, kernel.entry),
                workgroups,
                max,
            });
        }
        if kernel.half && !self.caps.shader_f16 {
            return Err(Error::MissingFeature("SHADER_F16 (f16 activations)"));
        }
        // An f16 tensor goes only to a half variant (the op checks which bindings are
        // activations) or to a kernel specialised to read its weight operand as f16 (the op
        // checks which operand that is).
        let reads_f16 = kernel.half || kernel.constants.contains(&(F16_WEIGHTS, 1));
        if let Some(t) = inputs
            .iter()
            .find(|t| t.dtype() == DType::F16 && !reads_f16)
            .or(outputs
                .iter()
                .find(|t| t.dtype() == DType::F16 && !kernel.half))
        {
            return Err(Error::Invalid(format!(
                "{}::{} takes f32 tensors, got {t:?} (f16 weights are read by conv2d and matmul, f16 \
                 activations by the half variants of the forward's kernels)",
                kernel.shader.name, kernel.entry
            )));
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        let cached = self.pipeline(kernel, inputs.len(), outputs.len());
        self.record(|encoder, arena, profiler| {
            let timed =
                profiler.and_then(|p| p.dispatch(&self.device, kernel.shader.family, kernel.entry));
            let (chunk, offset) = arena.push(&self.device, params);
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &chunk,
                    offset,
                    size: wgpu::BufferSize::new(PARAM_SLOT),
                }),
            }];
            for (i, t) in inputs.iter().chain(outputs).enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: 1 + i as u32,
                    resource: t.buffer().as_entire_binding(),
                });
            }
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry),
                layout: &cached.layout,
                entries: &entries,
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.entry),
                timestamp_writes: timed.as_ref().map(|(query_set, first)| {
                    wgpu::ComputePassTimestampWrites {
                        query_set,
                        beginning_of_pass_write_index: Some(*first),
                        end_of_pass_write_index: Some(first + 1),
                    }
                }),
            });
            pass.set_pipeline(&cached.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            // Each count is at most `max`, a u32, so these casts are exact.
            pass.dispatch_workgroups(
                workgroups[0] as u32,
                workgroups[1] as u32,
                workgroups[2] as u32,
            );
        });
        Ok(())
    }

    /// Workgroup counts covering `n` invocations of a 1-D kernel with [`LINEAR_WORKGROUP`]
    /// threads per group, folded into y when x would exceed the per-dimension limit. Kernels
    /// recover the linear index as `gid.x + gid.y * num_workgroups.x * WG`.
    pub fn grid_1d(&self, n: usize) -> [usize; 3] {
        let groups = n.div_ceil(LINEAR_WORKGROUP);
        let max = self.limits.max_compute_workgroups_per_dimension as usize;
        if groups <= max {
            [groups, 1, 1]
        } else {
            let y = groups.div_ceil(max);
            [groups.div_ceil(y), y, 1]
        }
    }
}

/// Test support: the shaders as naga parses them, to hold their host-side mirrors to them.
#[cfg(test)]
pub(crate) mod wgsl {
    use super::{KernelParams, Shader};

    /// The module as naga parses it (which resolves every expression's type), in the f32 or the
    /// half variant.
    pub(crate) fn parse_variant(shader: &Shader, half: bool) -> naga::Module {
        let source = shader.module_source(half);
        naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&source)))
    }

    fn parse(shader: &Shader) -> naga::Module {
        parse_variant(shader, false)
    }

    /// The value of the integer `const` (or `override` default) `name` that `shader` declares.
    pub(crate) fn constant(shader: &Shader, name: &str) -> u64 {
        let module = parse(shader);
        let named = |n: &Option<String>| n.as_deref() == Some(name);
        let init = module
            .constants
            .iter()
            .find(|(_, c)| named(&c.name))
            .map(|(_, c)| c.init)
            .or_else(|| {
                let (_, o) = module.overrides.iter().find(|(_, o)| named(&o.name))?;
                o.init
            })
            .unwrap_or_else(|| panic!("{} declares no constant {name}", shader.name));
        match module.global_expressions[init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => v.into(),
            naga::Expression::Literal(naga::Literal::AbstractInt(v)) => v as u64,
            ref e => panic!("{}::{name} is {e:?}, not an integer literal", shader.name),
        }
    }

    fn scalar(inner: &naga::TypeInner) -> String {
        use naga::{Scalar, TypeInner};
        match *inner {
            TypeInner::Scalar(Scalar::U32) => "u32".into(),
            TypeInner::Scalar(Scalar::F32) => "f32".into(),
            ref other => format!("{other:?}"),
        }
    }

    /// Asserts that `P` has the field names, scalar types, offsets and size of its WGSL struct.
    pub(crate) fn assert_params_mirror<P: KernelParams>() {
        let shader = P::SHADER;
        let module = parse(shader);
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match &ty.inner {
                naga::TypeInner::Struct { members, span }
                    if ty.name.as_deref() == Some(P::STRUCT) =>
                {
                    Some((members, *span))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{} declares no struct {}", shader.name, P::STRUCT));
        let wgsl: Vec<(String, String, usize)> = members
            .iter()
            .map(|m| {
                let name = m.name.clone().unwrap_or_default();
                (name, scalar(&module.types[m.ty].inner), m.offset as usize)
            })
            .collect();
        let host: Vec<(String, String, usize)> = P::FIELDS
            .iter()
            .map(|&(name, ty, offset)| (name.into(), ty.into(), offset))
            .collect();
        let what = format!(
            "{} vs {}::{}",
            std::any::type_name::<P>(),
            shader.name,
            P::STRUCT
        );
        assert_eq!(host, wgsl, "{what}: fields");
        assert_eq!(std::mem::size_of::<P>(), span as usize, "{what}: size");
    }
}

#[cfg(test)]
mod tests {
    /// Every shader parses and validates with naga, with f32 and with f16 activations, so a
    /// typo fails here with naga's message rather than as a device error at first dispatch.
    #[test]
    fn all_shaders_validate() {
        for shader in super::shaders::ALL {
            for half in [false, true] {
                let source = shader.module_source(half);
                let module = naga::front::wgsl::parse_str(&source)
                    .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&source)));
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::all(),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&source)));
            }
        }
    }
}
