//! GPU-resident f32 tensors (and f16 weights, see [`DType`]) whose buffers return to a pool
//! when the last handle drops.
//!
//! Reusing a pooled buffer inside the same open encoder is safe: dispatches execute in the
//! order they were recorded, so a later writer runs after every earlier reader. Uploads never
//! take pooled buffers (a queued `write_buffer` would run before already-recorded dispatches).

use super::Gpu;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub type Shape = Vec<usize>;

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// How much larger than a request a free buffer may be and still serve it. Reusing a larger
/// buffer keeps what the device holds near the live set when sizes differ from layer to layer
/// (the up path's concatenations, attention's sequences); the cap bounds what one tensor can
/// waste.
const REUSE_SLACK: u64 = 2;

/// Free buffers by byte size, each with the trim epoch in which it was freed, and the bytes
/// that live tensors hold. A request takes the smallest free buffer that fits it (up to
/// [`REUSE_SLACK`] times its size): a tensor dropped after its last use hands its buffer to
/// the next op, so a forward holds about its largest live set.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<BTreeMap<u64, Vec<(wgpu::Buffer, u64)>>>,
    epoch: AtomicU64,
    live: AtomicU64,
    peak: AtomicU64,
    peak_held: AtomicU64,
    created: AtomicU64,
    requested: AtomicU64,
    pooled: AtomicU64,
}

/// GPU memory held through the pool, in bytes. Live and held bytes count whole buffers, which
/// may be larger than the tensors in them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Held by live tensors now.
    pub live: u64,
    /// The most held by live tensors at once since the last [`Gpu::reset_peak_memory`].
    pub peak: u64,
    /// The most held by the pool at once (live and free buffers: what the device holds for
    /// tensors) since the last [`Gpu::reset_peak_memory`].
    pub peak_held: u64,
    /// Every buffer created so far, live or pooled.
    pub created: u64,
    /// Every tensor made so far (its own bytes), from a pooled buffer or a new one.
    pub requested: u64,
    /// Held by free buffers in the pool now.
    pub pooled: u64,
}

impl BufferPool {
    /// The smallest free buffer of at least `size` bytes and at most [`REUSE_SLACK`] times that.
    fn take(&self, size: u64) -> Option<wgpu::Buffer> {
        let mut free = self.free.lock().unwrap();
        let (_, list) = free
            .range_mut(size..=size.saturating_mul(REUSE_SLACK))
            .find(|(_, list)| !list.is_empty())?;
        let (buffer, _) = list.pop()?;
        self.pooled.fetch_sub(buffer.size(), Ordering::Relaxed);
        Some(buffer)
    }
    fn give(&self, buffer: wgpu::Buffer) {
        self.live.fetch_sub(buffer.size(), Ordering::Relaxed);
        self.pooled.fetch_add(buffer.size(), Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::Relaxed);
        let mut free = self.free.lock().unwrap();
        free.entry(buffer.size()).or_default().push((buffer, epoch));
    }
    fn create(&self, bytes: u64) {
        self.created.fetch_add(bytes, Ordering::Relaxed);
    }
    /// A tensor of `requested` bytes now lives in a buffer of `bytes`.
    fn hold(&self, bytes: u64, requested: u64) {
        self.requested.fetch_add(requested, Ordering::Relaxed);
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
        let held = live + self.pooled.load(Ordering::Relaxed);
        self.peak_held.fetch_max(held, Ordering::Relaxed);
    }
    /// Frees the buffers that stayed free since the last trim (`all`: every free buffer), and
    /// starts a new epoch.
    fn trim(&self, all: bool) {
        let mut free = self.free.lock().unwrap();
        let now = self.epoch.fetch_add(1, Ordering::Relaxed);
        let mut released = 0;
        for list in free.values_mut() {
            list.retain(|(buffer, freed)| {
                let keep = !all && *freed >= now;
                if !keep {
                    released += buffer.size();
                }
                keep
            });
        }
        free.retain(|_, list| !list.is_empty());
        self.pooled.fetch_sub(released, Ordering::Relaxed);
    }
    pub(crate) fn stats(&self) -> MemoryStats {
        MemoryStats {
            live: self.live.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
            peak_held: self.peak_held.load(Ordering::Relaxed),
            created: self.created.load(Ordering::Relaxed),
            requested: self.requested.load(Ordering::Relaxed),
            pooled: self.pooled.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn reset_peak(&self) {
        let live = self.live.load(Ordering::Relaxed);
        self.peak.store(live, Ordering::Relaxed);
        let held = live + self.pooled.load(Ordering::Relaxed);
        self.peak_held.store(held, Ordering::Relaxed);
    }
}

struct Storage {
    buffer: Option<wgpu::Buffer>,
    pool: Arc<BufferPool>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.give(b);
        }
    }
}

/// How a tensor's elements are stored: IEEE half values for F16, element `i` in the low 16 bits
/// of 32-bit word `i / 2` when `i` is even. F16 holds weights, which the kernels taking an f16
/// weight read (conv2d, matmul's B operand), or activations, which the half variants of the
/// forward's kernels read and write (`Kernel::half`); everything else reads f32, which
/// [`Gpu::dispatch`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
}

/// A dense row-major (NCHW for images) tensor in GPU memory. Cloning shares the buffer.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Shape,
    dtype: DType,
}

/// Buffer sizes are rounded so vec4 loads past the logical end stay inside the buffer.
fn padded_bytes(numel: usize, dtype: DType) -> u64 {
    ((numel.max(1) * dtype.size()) as u64).div_ceil(16) * 16
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dtype {
            DType::F32 => write!(f, "Tensor{:?}", self.shape),
            DType::F16 => write!(f, "Tensor{:?} f16", self.shape),
        }
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The bytes its elements take (an f16 tensor's last odd element rounds up to 4 bytes, so
    /// copies stay whole words).
    pub fn byte_len(&self) -> u64 {
        ((self.numel() * self.dtype.size()) as u64).div_ceil(4) * 4
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.storage
            .buffer
            .as_ref()
            .expect("live tensor has a buffer")
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    /// Refuses an f16 tensor where `op` reads or writes f32 values.
    pub fn ensure_f32(&self, op: &'static str) -> Result<()> {
        crate::error::ensure(self.dtype == DType::F32, op, || {
            format!("{self:?} is f16; this op takes f32 tensors only")
        })
    }
    /// The same buffer seen with another shape of equal element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        crate::error::ensure(n == self.numel(), "reshape", || {
            format!(
                "{:?} has {} elements, {shape:?} has {n}",
                self.shape,
                self.numel()
            )
        })?;
        Ok(Tensor {
            storage: self.storage.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }
}

impl Gpu {
    fn check_size(&self, shape: &[usize], dtype: DType) -> Result<u64> {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::Invalid(format!("tensor shape {shape:?} overflows")))?;
        let bytes = padded_bytes(numel, dtype);
        if bytes > self.max_tensor_bytes() {
            return Err(Error::TooLarge {
                what: format!("a tensor of shape {shape:?}"),
                bytes,
                limit: self.max_tensor_bytes(),
            });
        }
        Ok(bytes)
    }

    fn wrap(&self, buffer: wgpu::Buffer, shape: &[usize], dtype: DType, requested: u64) -> Tensor {
        self.pool.hold(buffer.size(), requested);
        Tensor {
            storage: Arc::new(Storage {
                buffer: Some(buffer),
                pool: self.pool.clone(),
            }),
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// GPU memory held through the pool.
    pub fn memory(&self) -> MemoryStats {
        self.pool.stats()
    }

    /// Starts a new peak measurement from what is live (and held) now.
    pub fn reset_peak_memory(&self) {
        self.pool.reset_peak()
    }

    /// Releases the pooled buffers that no tensor took since the previous call: called once
    /// per sampling step, it keeps what every step reuses and lets go of what a run no longer
    /// needs (an earlier phase's sizes, a last smaller batch, guidance's copies after its
    /// steps).
    pub fn trim_idle_memory(&self) {
        self.pool.trim(false)
    }

    /// Releases every pooled buffer (live tensors keep theirs).
    pub fn release_free_memory(&self) {
        self.pool.trim(true)
    }

    /// An uninitialised f32 tensor, reusing a pooled buffer when one of the right size is free.
    pub fn empty(&self, shape: &[usize]) -> Result<Tensor> {
        self.empty_typed(shape, DType::F32)
    }

    /// An uninitialised tensor of `dtype` (f16: activations for the half kernel variants).
    pub fn empty_typed(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = self.check_size(shape, dtype)?;
        let buffer = self.pool.take(bytes).unwrap_or_else(|| {
            self.pool.create(bytes);
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: USAGE,
                mapped_at_creation: false,
            })
        });
        Ok(self.wrap(buffer, shape, dtype, bytes))
    }

    /// A new tensor holding `data` (a fresh buffer, filled at creation, so ordering is trivially right).
    pub fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload_typed(shape, DType::F32, data.len(), bytemuck::cast_slice(data))
    }

    /// A new f16 tensor holding `data` as is (for weights read by the kernels that take f16).
    pub fn upload_f16(&self, shape: &[usize], data: &[half::f16]) -> Result<Tensor> {
        self.upload_typed(shape, DType::F16, data.len(), bytemuck::cast_slice(data))
    }

    fn upload_typed(
        &self,
        shape: &[usize],
        dtype: DType,
        len: usize,
        raw: &[u8],
    ) -> Result<Tensor> {
        let bytes = self.check_size(shape, dtype)?;
        crate::error::ensure(len == shape.iter().product::<usize>(), "upload", || {
            format!("{len} values for shape {shape:?}")
        })?;
        self.pool.create(bytes);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: USAGE,
            mapped_at_creation: true,
        });
        let mut padded = raw.to_vec();
        padded.resize(bytes as usize, 0);
        buffer
            .slice(..)
            .get_mapped_range_mut()
            .map_err(|e| Error::Device(format!("mapping an upload buffer: {e:?}")))?
            .copy_from_slice(&padded);
        buffer.unmap();
        Ok(self.wrap(buffer, shape, dtype, bytes))
    }

    /// A zero-filled tensor (cleared inside the open encoder, so it is ordered with other work).
    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let t = self.empty(shape)?;
        self.with_encoder(|enc| enc.clear_buffer(t.buffer(), 0, None));
        Ok(t)
    }

    /// Copies `src` into a new tensor (recorded, not immediate).
    pub fn copy(&self, src: &Tensor) -> Result<Tensor> {
        src.ensure_f32("copy")?;
        let dst = self.empty(src.shape())?;
        self.with_encoder(|enc| {
            enc.copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, src.byte_len())
        });
        Ok(dst)
    }

    /// Copies all of `src` into `dst` starting at byte `offset` (recorded, not immediate).
    pub fn copy_into(&self, src: &Tensor, dst: &Tensor, offset: u64) -> Result<()> {
        src.ensure_f32("copy_into")?;
        dst.ensure_f32("copy_into")?;
        crate::error::ensure(
            offset + src.byte_len() <= dst.byte_len() && offset.is_multiple_of(4),
            "copy_into",
            || {
                format!(
                    "{:?} does not fit in {:?} at byte {offset}",
                    src.shape(),
                    dst.shape()
                )
            },
        )?;
        self.with_encoder(|enc| {
            enc.copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), offset, src.byte_len())
        });
        Ok(())
    }

    /// Fills `dst` from `src` starting at byte `offset` of `src` (recorded, not immediate).
    pub fn copy_range(&self, src: &Tensor, offset: u64, dst: &Tensor) -> Result<()> {
        src.ensure_f32("copy_range")?;
        dst.ensure_f32("copy_range")?;
        crate::error::ensure(
            offset + dst.byte_len() <= src.byte_len() && offset.is_multiple_of(4),
            "copy_range",
            || {
                format!(
                    "{:?} does not hold {:?} at byte {offset}",
                    src.shape(),
                    dst.shape()
                )
            },
        )?;
        self.with_encoder(|enc| {
            enc.copy_buffer_to_buffer(src.buffer(), offset, dst.buffer(), 0, dst.byte_len())
        });
        Ok(())
    }
}
