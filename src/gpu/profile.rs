//! Where a run's GPU time, commands and memory go (`wgsl-diff sample --profile`).
//!
//! While a [`Profiler`] is attached ([`Gpu::start_profile`]) every dispatch is recorded with its
//! kernel (`shader::entry`), the scope stack the model code pushed ([`Gpu::scope`], named after
//! the diffusers / guided-diffusion modules, e.g. `down_blocks.0` → `resnets.1`) and the open
//! sampling step ([`Gpu::profile_step`]). Where the adapter has timestamp queries each compute
//! pass (one per dispatch) writes a timestamp at its beginning and end, and every submit waits
//! for and reads back its timestamps; elsewhere the profile holds the counts only and says so.
//! Without a profiler nothing of this runs: a dispatch pays one `Option` check.
//!
//! GPU time is kept in integer nanoseconds per dispatch, so every aggregate (by family, kernel,
//! block, module, step) sums exactly to the total.

use super::{Gpu, MemoryStats};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

/// Queries per query set: a beginning and an end per compute pass.
const QUERIES_PER_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES;
/// Name of the aggregate of dispatches recorded outside every scope.
pub const UNSCOPED: &str = "(unscoped)";
/// What the profile says on an adapter without timestamp queries.
pub const NO_TIMESTAMPS: &str = "this adapter has no timestamp queries \
    (wgpu::Features::TIMESTAMP_QUERY): the profile counts dispatches, submits and bytes but \
    shows no GPU time";

/// Interned names: dispatches refer to kernels and scopes by index.
#[derive(Default)]
struct Names {
    index: HashMap<String, usize>,
    names: Vec<String>,
}

impl Names {
    fn id(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }
}

struct Dispatch {
    kernel: usize,
    /// The whole scope path, e.g. `down_blocks.0.resnets.1`.
    module: usize,
    /// Its outermost scope, e.g. `down_blocks.0`.
    block: usize,
    step: Option<usize>,
    ns: Option<u64>,
}

/// The query sets the open encoder's passes write into, reused from submit to submit.
struct Timestamps {
    sets: Vec<wgpu::QuerySet>,
    resolve: Vec<wgpu::Buffer>,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
    /// Dispatch indices whose passes the open encoder times, in query order.
    pending: Vec<usize>,
}

/// A step while it is open: the counters it started from.
struct OpenStep {
    label: String,
    dispatches: usize,
    copies: usize,
    submits: usize,
    memory: MemoryStats,
}

/// Recording state, held by the [`Gpu`] while profiling.
pub(crate) struct Profiler {
    timestamps: Option<Timestamps>,
    kernels: Names,
    scopes: Names,
    stack: Vec<String>,
    /// Interned (module, block) of the current stack.
    here: (usize, usize),
    dispatches: Vec<Dispatch>,
    copies: usize,
    submits: usize,
    steps: Vec<StepRow>,
    step: Option<OpenStep>,
    notices: Vec<String>,
    started: Instant,
    memory_at_start: MemoryStats,
}

/// Dispatches and GPU time of one aggregate (a kernel family, a kernel, a block, a module).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub dispatches: usize,
    /// None without timestamp queries.
    pub gpu_ns: Option<u64>,
}

/// What one sampling step recorded.
#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    pub label: String,
    pub dispatches: usize,
    /// Buffer copies and clears (not timed).
    pub copies: usize,
    pub submits: usize,
    /// Bytes of tensors made during the step (pooled or new).
    pub bytes_requested: u64,
    /// Bytes of GPU buffers created during the step (the pool had none to reuse).
    pub bytes_created: u64,
    pub gpu_ns: Option<u64>,
}

/// GPU memory over the profile, in bytes (tensors only: the pool's accounting).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProfileMemory {
    /// The most held by live tensors at once while profiling.
    pub peak_live: u64,
    /// The most held by the pool at once (live and free buffers) while profiling.
    pub peak_held: u64,
    /// Held by live tensors at the end.
    pub live: u64,
    /// Held by every buffer the pool owns at the end, live or free: what the device holds.
    pub held: u64,
    /// Buffers created while profiling.
    pub created: u64,
    /// Tensors made while profiling.
    pub requested: u64,
}

/// A finished profile: the report `--profile` prints and saves as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub adapter: String,
    /// Whether GPU times were measured (timestamp queries).
    pub timestamps: bool,
    /// Anything the reader must know: missing timestamps, timestamps lost.
    pub notices: Vec<String>,
    pub wall_seconds: f64,
    pub total: Row,
    pub submits: usize,
    pub copies: usize,
    pub memory: ProfileMemory,
    /// By shader file (`conv2d`, `group_norm`, ...), most GPU time (or dispatches) first.
    pub by_family: Vec<Row>,
    /// By `shader::entry`.
    pub by_kernel: Vec<Row>,
    /// By outermost scope (`down_blocks.0`, `mid_block`, `input_blocks.3`, `scheduler`, ...).
    pub by_block: Vec<Row>,
    /// By whole scope path (`down_blocks.0.resnets.1`).
    pub by_module: Vec<Row>,
    pub steps: Vec<StepRow>,
}

impl Profiler {
    pub(crate) fn new(gpu: &Gpu, memory: MemoryStats) -> Profiler {
        let timestamps = gpu.caps.timestamps.then(|| Timestamps {
            sets: Vec::new(),
            resolve: Vec::new(),
            period_ns: gpu.queue.get_timestamp_period() as f64,
            pending: Vec::new(),
        });
        let mut scopes = Names::default();
        let unscoped = scopes.id(UNSCOPED);
        Profiler {
            notices: match timestamps {
                Some(_) => Vec::new(),
                None => vec![NO_TIMESTAMPS.to_string()],
            },
            timestamps,
            kernels: Names::default(),
            scopes,
            stack: Vec::new(),
            here: (unscoped, unscoped),
            dispatches: Vec::new(),
            copies: 0,
            submits: 0,
            steps: Vec::new(),
            step: None,
            started: Instant::now(),
            memory_at_start: memory,
        }
    }

    pub(crate) fn push(&mut self, name: String) {
        self.stack.push(name);
        self.locate();
    }

    pub(crate) fn pop(&mut self) {
        self.stack.pop();
        self.locate();
    }

    fn locate(&mut self) {
        self.here = match self.stack.first() {
            None => {
                let unscoped = self.scopes.id(UNSCOPED);
                (unscoped, unscoped)
            }
            Some(block) => {
                let block = self.scopes.id(block);
                (self.scopes.id(&self.stack.join(".")), block)
            }
        };
    }

    /// Records one dispatch; returns where its pass writes its two timestamps, if timed.
    pub(crate) fn dispatch(
        &mut self,
        device: &wgpu::Device,
        shader: &str,
        entry: &str,
    ) -> Option<(wgpu::QuerySet, u32)> {
        let kernel = self.kernels.id(&format!("{shader}::{entry}"));
        let index = self.dispatches.len();
        self.dispatches.push(Dispatch {
            kernel,
            module: self.here.0,
            block: self.here.1,
            step: self.step.as_ref().map(|_| self.steps.len()),
            ns: None,
        });
        let ts = self.timestamps.as_mut()?;
        let query = 2 * ts.pending.len() as u32;
        let set = (query / QUERIES_PER_SET) as usize;
        if set == ts.sets.len() {
            ts.sets
                .push(device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERIES_PER_SET,
                }));
            ts.resolve
                .push(device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile-resolve"),
                    size: QUERIES_PER_SET as u64 * wgpu::QUERY_SIZE as u64,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }));
        }
        ts.pending.push(index);
        Some((ts.sets[set].clone(), query % QUERIES_PER_SET))
    }

    /// A buffer copy or clear.
    pub(crate) fn copy(&mut self) {
        self.copies += 1;
    }

    /// Resolves the open encoder's timestamps into a buffer the CPU can map after the submit.
    pub(crate) fn resolve(
        &mut self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
    ) -> Option<wgpu::Buffer> {
        let ts = self.timestamps.as_mut()?;
        let queries = 2 * ts.pending.len() as u32;
        if queries == 0 {
            return None;
        }
        let size = queries as u64 * wgpu::QUERY_SIZE as u64;
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile-read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut first = 0;
        for (set, resolve) in ts.sets.iter().zip(&ts.resolve) {
            let used = (queries - first).min(QUERIES_PER_SET);
            if used == 0 {
                break;
            }
            let bytes = used as u64 * wgpu::QUERY_SIZE as u64;
            encoder.resolve_query_set(set, 0..used, resolve, 0);
            let at = first as u64 * wgpu::QUERY_SIZE as u64;
            encoder.copy_buffer_to_buffer(resolve, 0, &staging, at, bytes);
            first += used;
        }
        Some(staging)
    }

    /// After a submit: waits for its timestamps (when `staging` holds them) and keeps them.
    pub(crate) fn submitted(&mut self, device: &wgpu::Device, staging: Option<wgpu::Buffer>) {
        self.submits += 1;
        let Some(staging) = staging else { return };
        let Some(ts) = self.timestamps.as_mut() else {
            return;
        };
        let pending = std::mem::take(&mut ts.pending);
        match read_ticks(device, &staging) {
            Ok(ticks) => {
                for (pair, &index) in ticks.chunks_exact(2).zip(&pending) {
                    // A pass that ends "before" it begins (a clock domain change) counts 0.
                    let ns = pair[1].saturating_sub(pair[0]) as f64 * ts.period_ns;
                    self.dispatches[index].ns = Some(ns.round() as u64);
                }
            }
            Err(e) => self
                .notices
                .push(format!("the timestamps of one submit were lost: {e}")),
        }
    }

    pub(crate) fn begin_step(&mut self, label: String, memory: MemoryStats) {
        self.end_step(memory);
        self.step = Some(OpenStep {
            label,
            dispatches: self.dispatches.len(),
            copies: self.copies,
            submits: self.submits,
            memory,
        });
    }

    pub(crate) fn end_step(&mut self, memory: MemoryStats) {
        let Some(open) = self.step.take() else { return };
        self.steps.push(StepRow {
            label: open.label,
            dispatches: self.dispatches.len() - open.dispatches,
            copies: self.copies - open.copies,
            submits: self.submits - open.submits,
            bytes_requested: memory.requested - open.memory.requested,
            bytes_created: memory.created - open.memory.created,
            gpu_ns: None,
        });
    }

    /// The report, after the last submit's timestamps are in.
    pub(crate) fn finish(mut self, adapter: &str, memory: MemoryStats) -> Profile {
        self.end_step(memory);
        let timed = self.timestamps.is_some();
        let rows = |key: &dyn Fn(&Dispatch) -> Option<usize>, names: &[String]| {
            let mut rows: Vec<Row> = names
                .iter()
                .map(|n| Row {
                    name: n.clone(),
                    dispatches: 0,
                    gpu_ns: timed.then_some(0),
                })
                .collect();
            for d in &self.dispatches {
                if let Some(k) = key(d) {
                    add(&mut rows[k], d);
                }
            }
            rows.retain(|r| r.dispatches > 0);
            rows.sort_by(|a, b| {
                (b.gpu_ns, b.dispatches)
                    .cmp(&(a.gpu_ns, a.dispatches))
                    .then_with(|| a.name.cmp(&b.name))
            });
            rows
        };
        let by_kernel = rows(&|d| Some(d.kernel), &self.kernels.names);
        let by_block = rows(&|d| Some(d.block), &self.scopes.names);
        let by_module = rows(&|d| Some(d.module), &self.scopes.names);
        let mut families = Names::default();
        let family: Vec<usize> = self
            .kernels
            .names
            .iter()
            .map(|k| families.id(k.split("::").next().unwrap_or(k)))
            .collect();
        let by_family = rows(&|d| Some(family[d.kernel]), &families.names);
        let mut total = Row {
            name: "total".into(),
            dispatches: 0,
            gpu_ns: timed.then_some(0),
        };
        self.dispatches.iter().for_each(|d| add(&mut total, d));
        let mut steps = std::mem::take(&mut self.steps);
        for (i, step) in steps.iter_mut().enumerate() {
            let mut row = Row {
                name: String::new(),
                dispatches: 0,
                gpu_ns: timed.then_some(0),
            };
            for d in self.dispatches.iter().filter(|d| d.step == Some(i)) {
                add(&mut row, d);
            }
            step.gpu_ns = row.gpu_ns;
        }
        let start = self.memory_at_start;
        Profile {
            adapter: adapter.to_string(),
            timestamps: timed,
            notices: self.notices,
            wall_seconds: self.started.elapsed().as_secs_f64(),
            total,
            submits: self.submits,
            copies: self.copies,
            memory: ProfileMemory {
                peak_live: memory.peak,
                peak_held: memory.peak_held,
                live: memory.live,
                held: memory.live + memory.pooled,
                created: memory.created - start.created,
                requested: memory.requested - start.requested,
            },
            by_family,
            by_kernel,
            by_block,
            by_module,
            steps,
        }
    }
}

fn add(row: &mut Row, d: &Dispatch) {
    row.dispatches += 1;
    row.gpu_ns = match (row.gpu_ns, d.ns) {
        (Some(sum), Some(ns)) => Some(sum + ns),
        _ => None,
    };
}

fn read_ticks(device: &wgpu::Device, staging: &wgpu::Buffer) -> Result<Vec<u64>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| e.to_string())?;
    rx.recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let view = staging.get_mapped_range(..).map_err(|e| format!("{e:?}"))?;
    let ticks = bytemuck::cast_slice::<u8, u64>(&view).to_vec();
    drop(view);
    staging.unmap();
    Ok(ticks)
}

/// A scope pushed by [`Gpu::scope`], popped when this drops.
#[must_use = "a scope lasts as long as its guard"]
pub struct Scope<'a> {
    gpu: Option<&'a Gpu>,
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        if let Some(gpu) = self.gpu {
            gpu.with_profiler(|p| p.pop());
        }
    }
}

/// A sampling step opened by [`Gpu::profile_step`], closed when this drops.
#[must_use = "a step lasts as long as its guard"]
pub struct Step<'a> {
    gpu: Option<&'a Gpu>,
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        if let Some(gpu) = self.gpu {
            let memory = gpu.memory();
            gpu.with_profiler(|p| p.end_step(memory));
        }
    }
}

impl Gpu {
    /// Starts recording a [`Profile`] (replacing one being recorded); the peak of live tensor
    /// memory restarts from what is live now. Returns whether GPU times will be measured: false
    /// on an adapter without timestamp queries, whose profile has counts only.
    pub fn start_profile(&self) -> bool {
        self.flush();
        self.reset_peak_memory();
        let profiler = Profiler::new(self, self.memory());
        let timed = profiler.timestamps.is_some();
        self.state.lock().unwrap().profiler = Some(profiler);
        timed
    }

    /// Whether a profile is being recorded.
    pub fn profiling(&self) -> bool {
        self.state.lock().unwrap().profiler.is_some()
    }

    /// Submits what is pending, waits for it, and returns the profile recorded since
    /// [`Self::start_profile`] (None if none was started).
    pub fn finish_profile(&self) -> crate::error::Result<Option<Profile>> {
        self.sync()?;
        let profiler = self.state.lock().unwrap().profiler.take();
        Ok(profiler.map(|p| p.finish(&self.info.name, self.memory())))
    }

    /// Names the dispatches recorded until the guard drops (nested scopes join with `.`):
    /// model code pushes its module names, so a profile adds up time by block. Costs nothing
    /// when no profile is being recorded: `name` is not even formatted.
    pub fn scope(&self, name: impl std::fmt::Display) -> Scope<'_> {
        let on = self.with_profiler(|p| p.push(name.to_string())).is_some();
        Scope {
            gpu: on.then_some(self),
        }
    }

    /// Opens a sampling step (closing any open one) until the guard drops: the profile counts
    /// dispatches, submits and bytes per step.
    pub fn profile_step(&self, label: impl std::fmt::Display) -> Step<'_> {
        let memory = self.memory();
        let on = self
            .with_profiler(|p| p.begin_step(label.to_string(), memory))
            .is_some();
        Step {
            gpu: on.then_some(self),
        }
    }

    fn with_profiler<R>(&self, f: impl FnOnce(&mut Profiler) -> R) -> Option<R> {
        self.state.lock().unwrap().profiler.as_mut().map(f)
    }
}

impl Profile {
    /// Writes the profile as pretty-printed JSON (atomically: a reader never sees half a file).
    pub fn save(&self, path: &std::path::Path) -> crate::error::Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| crate::error::Error::Invalid(format!("profile as JSON: {e}")))?;
        crate::io::write_atomic(path, &json)
    }

    /// The profile as tables: totals, then by kernel family, block, module and kernel (the
    /// largest `top` of the last three), then per step and memory.
    pub fn table(&self, top: usize) -> String {
        let mut s = String::new();
        let steps = self.steps.len();
        let _ = writeln!(
            s,
            "profile on {}: {} dispatches, {} copies, {} submits in {:.2} s wall; GPU time {}",
            self.adapter,
            self.total.dispatches,
            self.copies,
            self.submits,
            self.wall_seconds,
            match self.total.gpu_ns {
                Some(ns) => format!("{:.1} ms (timestamp queries)", ns as f64 / 1e6),
                None => "not measured".into(),
            }
        );
        for notice in &self.notices {
            let _ = writeln!(s, "note: {notice}");
        }
        self.section(&mut s, "kernel family", &self.by_family, usize::MAX);
        self.section(&mut s, "block", &self.by_block, usize::MAX);
        self.section(&mut s, "module", &self.by_module, top);
        self.section(&mut s, "kernel", &self.by_kernel, top);
        if steps > 0 {
            let mean = |f: &dyn Fn(&StepRow) -> u64| {
                self.steps.iter().map(f).sum::<u64>() as f64 / steps as f64
            };
            let _ = writeln!(
                s,
                "\nper step (mean of {steps}): {:.1} dispatches, {:.1} copies, {:.2} submits, \
                 {:.2} MB of tensors made, {:.2} MB of buffers created{}",
                mean(&|r| r.dispatches as u64),
                mean(&|r| r.copies as u64),
                mean(&|r| r.submits as u64),
                mean(&|r| r.bytes_requested) / 1e6,
                mean(&|r| r.bytes_created) / 1e6,
                match self.steps.iter().map(|r| r.gpu_ns).sum::<Option<u64>>() {
                    Some(ns) => format!(", {:.1} ms GPU", ns as f64 / steps as f64 / 1e6),
                    None => String::new(),
                }
            );
        }
        let m = &self.memory;
        let _ = writeln!(
            s,
            "memory: peak of live tensors {:.2} MB, of buffers held {:.2} MB; held at the end \
             {:.2} MB ({:.2} MB live); {:.2} MB of buffers created and {:.2} MB of tensors made \
             while profiling",
            m.peak_live as f64 / 1e6,
            m.peak_held as f64 / 1e6,
            m.held as f64 / 1e6,
            m.live as f64 / 1e6,
            m.created as f64 / 1e6,
            m.requested as f64 / 1e6
        );
        s
    }

    fn section(&self, s: &mut String, what: &str, rows: &[Row], top: usize) {
        let total_ns = self.total.gpu_ns.unwrap_or(0).max(1) as f64;
        let _ = writeln!(
            s,
            "\n{:<44} {:>10} {:>11} {:>7} {:>11}",
            format!("by {what}"),
            "dispatches",
            "GPU ms",
            "share",
            "µs/dispatch"
        );
        for row in rows.iter().take(top) {
            let (ms, share, each) = match row.gpu_ns {
                Some(ns) => (
                    format!("{:.2}", ns as f64 / 1e6),
                    format!("{:.1}%", 100.0 * ns as f64 / total_ns),
                    format!("{:.1}", ns as f64 / 1e3 / row.dispatches as f64),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                s,
                "{:<44} {:>10} {:>11} {:>7} {:>11}",
                row.name, row.dispatches, ms, share, each
            );
        }
        if rows.len() > top {
            let _ = writeln!(s, "({} more)", rows.len() - top);
        }
    }
}
