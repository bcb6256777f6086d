//! Shaders, the pipeline cache and the dispatch path every op goes through.
//!
//! Binding convention for every kernel: `@binding(0)` is a uniform block of 4-byte scalars
//! (the kernel's `Params`), then one read-only storage buffer per input, then one read-write
//! storage buffer per output, all in `@group(0)`.

use super::{Gpu, Tensor};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A WGSL source file from `shaders/`.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($ident:ident, $file:literal) => {
        pub const $ident: Shader = Shader {
            name: $file,
            source: include_str!(concat!("../../shaders/", $file, ".wgsl")),
        };
    };
}

/// The kernel families.
pub mod shaders {
    use super::Shader;
    shader!(MATMUL, "matmul");
    shader!(CONV2D, "conv2d");
    shader!(GROUP_NORM, "group_norm");
    shader!(ELEMENTWISE, "elementwise");
    shader!(RESAMPLE, "resample");
    shader!(EMBEDDING, "embedding");
    shader!(ATTENTION, "attention");
    shader!(RNG, "rng");
    shader!(SAMPLER, "sampler");
    shader!(UNCERTAINTY, "uncertainty");

    pub const ALL: &[&Shader] = &[
        &MATMUL,
        &CONV2D,
        &GROUP_NORM,
        &ELEMENTWISE,
        &RESAMPLE,
        &EMBEDDING,
        &ATTENTION,
        &RNG,
        &SAMPLER,
        &UNCERTAINTY,
    ];
}

/// One specialisation of an entry point: the pipeline-cache key.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
    /// WGSL `override` constants; values are integers or bools (as 0/1).
    pub constants: Vec<(&'static str, u32)>,
}

impl Kernel {
    pub fn new(shader: &'static Shader, entry: &'static str) -> Kernel {
        Kernel {
            shader,
            entry,
            constants: Vec::new(),
        }
    }
    pub fn with(mut self, name: &'static str, value: u32) -> Kernel {
        self.constants.push((name, value));
        self
    }
}

/// A kernel's uniform parameters, written field by field in the WGSL struct's order.
#[derive(Default, Clone, Debug)]
pub struct Params(Vec<u32>);

impl Params {
    pub fn new() -> Params {
        Params::default()
    }
    pub fn u(mut self, v: usize) -> Params {
        self.0
            .push(u32::try_from(v).expect("kernel parameter exceeds u32"));
        self
    }
    pub fn f(mut self, v: f32) -> Params {
        self.0.push(v.to_bits());
        self
    }
}

/// One slot per dispatch, each a whole uniform-offset alignment; backing chunks are reused.
pub(crate) struct ParamArena {
    align: u64,
    staged: Vec<u8>,
    chunks: Vec<wgpu::Buffer>,
}

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
    fn push(&mut self, device: &wgpu::Device, params: &Params) -> (wgpu::Buffer, u64) {
        assert!(
            params.0.len() * 4 <= self.align as usize,
            "too many kernel parameters"
        );
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
        self.staged
            .extend_from_slice(bytemuck::cast_slice(&params.0));
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

type PipelineKey = (
    &'static str,
    &'static str,
    Vec<(&'static str, u32)>,
    usize,
    usize,
);

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
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
        let key = (k.shader.name, k.entry, k.constants.clone(), inputs, outputs);
        if let Some(p) = self.pipelines.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let module = self
            .pipelines
            .modules
            .lock()
            .unwrap()
            .entry(k.shader.name)
            .or_insert_with(|| {
                self.device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(k.shader.name),
                        source: wgpu::ShaderSource::Wgsl(k.shader.source.into()),
                    })
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

    /// Records one dispatch of `kernel` into the open encoder.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &Params,
        inputs: &[&Tensor],
        outputs: &[&Tensor],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            return Err(Error::Invalid(format!(
                "{}::{} needs {workgroups:?} workgroups, over this device's {max} per dimension; \
                 use a smaller batch or resolution",
                kernel.shader.name, kernel.entry
            )));
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        let cached = self.pipeline(kernel, inputs.len(), outputs.len());
        self.with_encoder(|encoder, arena| {
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
                timestamp_writes: None,
            });
            pass.set_pipeline(&cached.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        });
        Ok(())
    }

    /// Workgroup counts covering `n` invocations of a 1-D kernel with `wg` threads per group,
    /// folded into y when x would exceed the per-dimension limit. Kernels recover the linear
    /// index as `gid.x + gid.y * num_workgroups.x * wg`.
    pub fn grid_1d(&self, n: usize, wg: u32) -> [u32; 3] {
        let groups = n.div_ceil(wg as usize) as u64;
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            let y = groups.div_ceil(max);
            [groups.div_ceil(y) as u32, y as u32, 1]
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every shader parses and validates with naga, so a typo fails here with naga's message
    /// rather than as a device error at first dispatch.
    #[test]
    fn all_shaders_validate() {
        for shader in super::shaders::ALL {
            let module = naga::front::wgsl::parse_str(shader.source)
                .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
        }
    }
}
