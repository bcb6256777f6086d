//! Reading wgsl-diff weight files: one safetensors file (written by `tools/convert.py`) whose
//! tensor names are the PyTorch module tree's and whose metadata carries the architecture.
//!
//! Models ask a [`VarBuilder`] for each parameter with the shape their config implies; every
//! missing, misshapen or unsupported tensor is collected, and [`VarBuilder::finish`] reports
//! all of them (and any tensor the model never asked for) in one error.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::splitmix::SplitMix64;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const FORMAT: &str = "wgsl-diff";
pub const FORMAT_VERSION: &str = "1";

/// Problems after which a model stops asking a file for tensors and reports them.
pub const MAX_PROBLEMS: usize = 64;

/// A weight file held in memory (memory-mapped) with its metadata parsed.
pub struct WeightFile {
    path: PathBuf,
    /// Shared by the views of one checkpoint ([`Self::renamed`]): the file is mapped once.
    mmap: Arc<memmap2::Mmap>,
    pub metadata: HashMap<String, String>,
    /// For a view of a checkpoint whose names are not the model's (a Stable Diffusion single
    /// file): the tensors it shows, by the model's name. None: every tensor, under its own.
    aliases: Option<BTreeMap<String, Alias>>,
    /// Conv and linear weights go to the GPU as f16 (see [`VarBuilder::get_weight`]).
    f16_weights: bool,
    /// The model built from this file stores its activations as f16 (see `load_eps_model`).
    f16_activations: bool,
    /// The (height, width) the model built from this file samples at, in place of its
    /// config's square `sample_size` (see `load_eps_model`).
    sample_size: Option<(usize, usize)>,
}

impl WeightFile {
    /// Maps the file and checks its safetensors header: valid offsets, and no tensor or
    /// metadata key named twice (the safetensors crate would keep one of them silently).
    pub fn open(path: &Path) -> Result<WeightFile> {
        let cannot_open = |e: &dyn std::fmt::Display| {
            Error::Weights(format!("cannot open {}: {e}", path.display()))
        };
        let kind = std::fs::metadata(path).map_err(|e| cannot_open(&e))?;
        if !kind.is_file() {
            return Err(cannot_open(&"it is a folder or device, not a weight file"));
        }
        let file = std::fs::File::open(path).map_err(|e| cannot_open(&e))?;
        // SAFETY: the file is opened read-only; concurrent truncation by another process is
        // outside what this tool can defend against, as with any memory-mapped reader.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::Weights(format!("cannot map {}: {e}", path.display())))?;
        let invalid = |e: safetensors::SafeTensorError| {
            Error::Weights(format!(
                "{} is not a valid safetensors file (corrupt or truncated?): {e}",
                path.display()
            ))
        };
        let (header_len, header) = SafeTensors::read_metadata(&mmap).map_err(invalid)?;
        // Also validates every tensor's offsets against the file length.
        SafeTensors::deserialize(&mmap).map_err(invalid)?;
        crate::json::check_unique_keys(&mmap[8..8 + header_len]).map_err(|e| {
            Error::Weights(format!(
                "{}: invalid safetensors header: {e}",
                path.display()
            ))
        })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(WeightFile {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            metadata,
            aliases: None,
            f16_weights: false,
            f16_activations: false,
            sample_size: None,
        })
    }

    /// Stores the conv and linear weights of the model built from this file as f16 on the GPU
    /// (half their memory; the kernels still accumulate in f32). Biases, norms, embeddings and
    /// activations stay f32. The error this costs is stated in docs/precision.md ("f16 weights").
    pub fn with_f16_weights(mut self, on: bool) -> WeightFile {
        self.f16_weights = on;
        self
    }

    /// Builds the model from this file with its activations stored as f16 between kernels
    /// (`UNet2DModel::with_f16_activations`; diffusers UNets only). The error this costs is
    /// stated in docs/precision.md ("f16 activations").
    pub fn with_f16_activations(mut self, on: bool) -> WeightFile {
        self.f16_activations = on;
        self
    }

    /// Builds the model from this file to sample at (height, width) in its own space (a latent
    /// model's latent size); fully convolutional text-to-image UNets only.
    pub fn with_sample_size(mut self, size: Option<(usize, usize)>) -> WeightFile {
        self.sample_size = size;
        self
    }

    /// What [`Self::with_sample_size`] asked for.
    pub fn sample_size(&self) -> Option<(usize, usize)> {
        self.sample_size
    }

    /// The same tensors with `metadata` in place of the file's own: a diffusers folder read in
    /// place carries its configs beside the weights (`models::pipeline`).
    pub fn with_metadata(mut self, metadata: HashMap<String, String>) -> WeightFile {
        self.metadata = metadata;
        self
    }

    /// A view of the same mapped file with `metadata`, showing only the tensors of `aliases`
    /// under their keys (`models::single_file`: one network of a checkpoint, in diffusers'
    /// names). No tensor data is copied.
    pub(crate) fn renamed(
        &self,
        aliases: BTreeMap<String, Alias>,
        metadata: HashMap<String, String>,
    ) -> WeightFile {
        WeightFile {
            path: self.path.clone(),
            mmap: self.mmap.clone(),
            metadata,
            aliases: Some(aliases),
            f16_weights: self.f16_weights,
            f16_activations: self.f16_activations,
            sample_size: self.sample_size,
        }
    }

    /// The names of the file's tensors (a view's: the names it shows them under).
    pub fn tensor_names(&self) -> Vec<String> {
        match &self.aliases {
            Some(aliases) => aliases.keys().cloned().collect(),
            None => self.tensors().names().into_iter().cloned().collect(),
        }
    }

    /// Every tensor the file stores, under its stored name, with its stored shape (a view's
    /// aliases aside).
    pub(crate) fn stored_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors()
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect()
    }

    /// The tensor a model asks for as `name`: stored under it, or under its alias's key and
    /// shown in the alias's shape.
    fn tensor<'t>(&self, tensors: &SafeTensors<'t>, name: &str) -> Option<TensorView<'t>> {
        let Some(aliases) = &self.aliases else {
            return tensors.tensor(name).ok();
        };
        let alias = aliases.get(name)?;
        let view = tensors.tensor(&alias.key).ok()?;
        match &alias.shape {
            Some(shape) => TensorView::new(view.dtype(), shape.clone(), view.data()).ok(),
            None => Some(view),
        }
    }

    /// Whether [`Self::with_f16_activations`] was asked for.
    pub fn f16_activations(&self) -> bool {
        self.f16_activations
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata value `key`, or an error naming the file and key.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata.get(key).map(String::as_str).ok_or_else(|| {
            Error::Weights(format!(
                "{} has no `{key}` metadata: convert the checkpoint with tools/convert.py",
                self.path.display()
            ))
        })
    }

    /// Checks the format marker and the architecture name.
    pub fn expect_arch(&self, arch: &str) -> Result<()> {
        let format = self.meta("format")?;
        let version = self.meta("format_version")?;
        if format != FORMAT || version != FORMAT_VERSION {
            return Err(Error::Weights(format!(
                "{}: format {format:?} version {version:?}, expected {FORMAT:?} version {FORMAT_VERSION:?}",
                self.path.display()
            )));
        }
        let found = self.meta("arch")?;
        if found != arch {
            return Err(Error::Weights(format!(
                "{} holds a {found:?} model, not a {arch:?}",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.mmap).expect("validated in open")
    }

    /// The model's `config` metadata, parsed by [`parse_config`] (the offending key named).
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        parse_config(self.meta("config")?).map_err(|e| e.at(self.path(), "config"))
    }

    /// Builds the root [`VarBuilder`] for constructing a model on `gpu`.
    pub fn var_builder<'a>(&'a self, gpu: &'a Gpu) -> VarBuilder<'a> {
        VarBuilder::with_source(
            gpu,
            Source::File {
                file: self,
                tensors: self.tensors(),
            },
        )
    }
}

/// Parses a config held as JSON text in a weight file's metadata ([`crate::json`]: a key given
/// twice is refused). serde names unknown keys itself but gives only a position for a value of
/// the wrong type, so the key is
/// then found by parsing each key on its own (for configs whose keys all have defaults).
pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(
    json: &str,
) -> std::result::Result<T, ConfigError> {
    crate::json::from_str(json).map_err(|e| ConfigError {
        key: culprit::<T>(json),
        message: e.to_string(),
    })
}

/// Why a config did not parse, and the key that broke it when one key alone does.
#[derive(Debug)]
pub(crate) struct ConfigError {
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(f, "`{key}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl ConfigError {
    /// [`Error::Config`] for `section` of the weight file at `file`.
    pub fn at(self, file: &Path, section: &'static str) -> Error {
        Error::Config {
            file: file.to_path_buf(),
            section,
            key: self.key,
            message: self.message,
        }
    }
}

/// The first key of a JSON object that `T` refuses on its own.
fn culprit<T: serde::de::DeserializeOwned>(json: &str) -> Option<String> {
    let serde_json::Value::Object(object) = serde_json::from_str(json).ok()? else {
        return None;
    };
    object
        .into_iter()
        .find(|(key, value)| {
            let alone = serde_json::Map::from_iter([(key.clone(), value.clone())]);
            serde_json::from_value::<T>(serde_json::Value::Object(alone)).is_err()
        })
        .map(|(key, _)| key)
}

/// Where parameters come from.
enum Source<'a> {
    File {
        file: &'a WeightFile,
        tensors: SafeTensors<'a>,
    },
    /// Seeded uniform values scaled by 1/√fan-in: a model of the right architecture for
    /// benchmarks, without a checkpoint.
    Random { rng: RefCell<SplitMix64> },
}

struct Shared<'a> {
    gpu: &'a Gpu,
    source: Source<'a>,
    /// Elements of the file's largest tensor: no stand-in is made larger.
    largest: usize,
    problems: RefCell<Vec<String>>,
    used: RefCell<BTreeSet<String>>,
}

/// Hands out parameters by dotted path, mirroring PyTorch's module names.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    shared: std::rc::Rc<Shared<'a>>,
    prefix: String,
}

impl<'a> VarBuilder<'a> {
    fn with_source(gpu: &'a Gpu, source: Source<'a>) -> VarBuilder<'a> {
        let largest = match &source {
            Source::File { tensors, .. } => tensors
                .tensors()
                .iter()
                .map(|(_, view)| view.shape().iter().product::<usize>())
                .max()
                .unwrap_or(0),
            Source::Random { .. } => usize::MAX,
        };
        VarBuilder {
            shared: std::rc::Rc::new(Shared {
                gpu,
                source,
                largest,
                problems: RefCell::new(Vec::new()),
                used: RefCell::new(BTreeSet::new()),
            }),
            prefix: String::new(),
        }
    }

    /// A builder that makes up seeded random parameters of whatever shape is asked for.
    pub fn random(gpu: &'a Gpu, seed: u64) -> VarBuilder<'a> {
        VarBuilder::with_source(
            gpu,
            Source::Random {
                rng: RefCell::new(SplitMix64::new(seed)),
            },
        )
    }

    /// The builder for a child module (`pp("down_blocks").pp(0)` → `down_blocks.0.`).
    pub fn pp(&self, name: impl std::fmt::Display) -> VarBuilder<'a> {
        VarBuilder {
            shared: self.shared.clone(),
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    pub fn gpu(&self) -> &'a Gpu {
        self.shared.gpu
    }

    /// The parameter `name` with the given shape, as f32 on the GPU. On a mismatch the problem
    /// is recorded and a stand-in returned, so one pass finds every mismatch — up to
    /// [`MAX_PROBLEMS`], or until a stand-in would be larger than any tensor the file holds (a
    /// config far from its file must not allocate for minutes before saying so).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let data = self.get_host(name, shape)?;
        self.shared.gpu.upload(shape, &data)
    }

    /// A conv or linear weight: as f16 on the GPU when the file was opened
    /// [`with_f16_weights`](WeightFile::with_f16_weights) (an f16 file's values uploaded as
    /// stored, with no f32 round trip; an f32 file's rounded to nearest), else as
    /// [`get`](Self::get) does.
    pub fn get_weight(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let gpu = self.shared.gpu;
        let Source::File { file, tensors } = &self.shared.source else {
            return self.get(name, shape);
        };
        if !file.f16_weights {
            return self.get(name, shape);
        }
        let full = format!("{}{name}", self.prefix);
        let data: Vec<half::f16> = match file.tensor(tensors, &full) {
            Some(view) if view.dtype() == Dtype::F16 && view.shape() == shape => {
                self.shared.used.borrow_mut().insert(full.clone());
                bytemuck::pod_collect_to_vec(view.data())
            }
            // Anything else (f32, bf16, or a problem get_host records) goes through f32.
            _ => self
                .get_host(name, shape)?
                .into_iter()
                .map(half::f16::from_f32)
                .collect(),
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Weights(format!(
                "`{full}` element {i} is not a finite f16 value (outside f16's range of ±65504?); \
                 load this file without f16 weights"
            )));
        }
        gpu.upload_f16(shape, &data)
    }

    /// The parameter `name` as f32 values on the CPU, for a model that rearranges it before
    /// uploading (splitting or permuting rows). Mismatches are recorded as in [`get`](Self::get),
    /// with zeros standing in.
    pub fn get_host(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        self.shared.used.borrow_mut().insert(full.clone());
        let data = match &self.shared.source {
            Source::File { file, tensors } => read_tensor(file, tensors, &full, shape),
            Source::Random { rng } => Ok(random_tensor(rng, shape)),
        };
        let problem = match data {
            Ok(data) => return Ok(data),
            Err(problem) => problem,
        };
        self.shared.problems.borrow_mut().push(problem);
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let stand_in = numel.filter(|&n| n <= self.shared.largest);
        match stand_in {
            Some(n) if self.shared.problems.borrow().len() < MAX_PROBLEMS => Ok(vec![0.0; n]),
            _ => Err(self.mismatch(self.problems(true))),
        }
    }

    /// Succeeds only if every requested tensor was found with the right shape and the file
    /// holds nothing the model did not ask for.
    pub fn finish(self) -> Result<()> {
        let problems = self.problems(false);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(self.mismatch(problems))
        }
    }

    /// Marks every tensor under `prefix` (`encoder.` for a VAE that only decodes) as used: a
    /// part of the checkpoint this model does not run, not a tensor it failed to ask for.
    pub fn skip(&self, prefix: &str) {
        if let Source::File { file, .. } = &self.shared.source {
            let full = format!("{}{prefix}", self.prefix);
            let mut used = self.shared.used.borrow_mut();
            for name in file.tensor_names() {
                if name.starts_with(&full) {
                    used.insert(name);
                }
            }
        }
    }

    /// Every problem found so far and, once the model is built, every tensor it did not ask
    /// for. `stopped`: building gave up early, so unasked tensors say nothing.
    fn problems(&self, stopped: bool) -> Vec<String> {
        let s = &self.shared;
        let Source::File { file, .. } = &s.source else {
            return Vec::new();
        };
        let mut problems = s.problems.borrow().clone();
        if stopped {
            problems.push("(stopped here: the file is far from what its config describes)".into());
            return problems;
        }
        let used = s.used.borrow();
        let mut unexpected: Vec<String> = file
            .tensor_names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect();
        unexpected.sort();
        problems.extend(
            unexpected
                .into_iter()
                .map(|n| format!("unexpected tensor `{n}` (not part of this architecture)")),
        );
        problems
    }

    fn mismatch(&self, problems: Vec<String>) -> Error {
        let path = match &self.shared.source {
            Source::File { file, .. } => file.path.display().to_string(),
            Source::Random { .. } => "random weights".into(),
        };
        Error::Weights(format!(
            "{path} does not match its config ({} problems):\n  {}",
            problems.len(),
            problems.join("\n  ")
        ))
    }
}

/// Where a view's tensor is stored: its key in the file and, when the model sees another shape
/// of the same elements (a 1×1 conv read as a linear weight), that shape.
pub(crate) struct Alias {
    pub key: String,
    pub shape: Option<Vec<usize>>,
}

fn read_tensor(
    file: &WeightFile,
    tensors: &SafeTensors,
    full: &str,
    shape: &[usize],
) -> std::result::Result<Vec<f32>, String> {
    let view = file
        .tensor(tensors, full)
        .ok_or_else(|| format!("missing tensor `{full}` (expected shape {shape:?})"))?;
    if view.shape() != shape {
        return Err(format!(
            "`{full}` has shape {:?}, the config implies {shape:?}",
            view.shape()
        ));
    }
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(view.data())
            .into_iter()
            .map(f32::from)
            .collect(),
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(view.data())
            .into_iter()
            .map(f32::from)
            .collect(),
        other => {
            return Err(format!(
                "`{full}` has dtype {other:?}; only F32, F16 and BF16 are supported"
            ))
        }
    };
    // NaN and ±Inf are refused here. A finite value that overflows once multiplied (a weight
    // of 3e38) is caught where it does harm, by the sampling loop's per-step non-finite flags
    // (`sampling::NonFiniteFlags`) at the first step: no magnitude bound fits every network.
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(format!("`{full}` holds a non-finite value at element {i}"));
    }
    Ok(data)
}

fn random_tensor(rng: &RefCell<SplitMix64>, shape: &[usize]) -> Vec<f32> {
    let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
    let scale = if shape.len() > 1 {
        1.0 / (fan_in as f64).sqrt()
    } else {
        0.1
    };
    let mut rng = rng.borrow_mut();
    (0..shape.iter().product::<usize>())
        .map(|_| (rng.symmetric() * scale) as f32)
        .collect()
}
