//! The weight loader against hostile files: strict configs that name the offending key, headers
//! with repeated names, paths that are not files — and a seeded mutation loop over the fixture
//! files in which no mutant may panic, and none that loads may produce a NaN or ±Inf that the
//! run does not flag.
//!
//! The long run: `cargo test --release --test loader -- --ignored --nocapture` (10,000 mutants).

mod common;

use common::weights_file::{header_and_data, WeightsFile};
use common::{fixture, tmp_dir};
use serde_json::{json, Value};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use wgsl_diff::gpu::Gpu;
use wgsl_diff::models::evaluation::classifier::FashionClassifier;
use wgsl_diff::models::{Identity, UNet2DModel, WeightFile};
use wgsl_diff::noise::NoisePlan;
use wgsl_diff::sampling::{
    ClassChoice, ClassLabels, NoiseSchedule, Run, SamplerChoice, SamplerKind, ScheduleConfig,
    Scheduler,
};
use wgsl_diff::splitmix::SplitMix64;

const GRAY: &str = "unet_tiny_gray.safetensors";

/// Loads `path` as far as `sample` would: schedule, sampler, network.
fn load(gpu: &Gpu, path: &Path) -> wgsl_diff::Result<(UNet2DModel, Scheduler)> {
    let file = WeightFile::open(path)?;
    let schedule = ScheduleConfig::from_weights(&file)?;
    let choice = SamplerChoice {
        kind: SamplerKind::Ddim,
        steps: Some(2),
        eta: 0.0,
        spacing: None,
        steps_offset: None,
        clip: true,
    };
    let scheduler = Scheduler::new(
        choice.resolve(&schedule),
        NoiseSchedule::from_config(&schedule)?,
    )?;
    Ok((UNet2DModel::load(gpu, &file)?, scheduler))
}

/// The error of loading the gray fixture with one key of its `entry` JSON set (None: removed).
fn load_with(entry: &str, key: &str, value: Option<Value>) -> Option<String> {
    let mut file = WeightsFile::read(&fixture(GRAY));
    file.edit_meta_json(entry, key, value);
    let path = tmp_dir(&format!("strict-{entry}-{key}")).join("model.safetensors");
    file.write(&path);
    load(common::gpu(), &path).err().map(|e| e.to_string())
}

/// A network whose output is not one ε per input channel loads (its forward and backward are
/// tested against PyTorch) but cannot sample.
#[test]
fn a_model_without_one_eps_per_channel_cannot_sample() {
    use wgsl_diff::models::EpsModel;
    let odd = common::fixture_model("unet_tiny_odd.safetensors");
    let err = odd.sample_shape().unwrap_err().to_string();
    assert!(err.contains("out_channels 3 ≠ in_channels 2"), "{err}");
}

/// A misspelled, unknown, wrongly typed or out-of-range key is refused, naming the key; the
/// harmless keys diffusers adds are accepted.
#[test]
fn strict_configs_name_the_offending_key() {
    let refused: &[(&str, &str, Value)] = &[
        ("config", "flip_sin_to_cs", json!(true)),
        ("config", "downsample_pading", json!(1)),
        ("config", "attention_head_dims", json!(8)),
        ("config", "norm_eps", json!(0)),
        ("config", "norm_eps", json!(-1e-5)),
        ("config", "freq_shift", json!(1e30)),
        ("config", "freq_shift", json!(8)),
        ("config", "mid_block_scale_factor", json!(0)),
        ("config", "mid_block_scale_factor", json!(1e30)),
        ("config", "block_out_channels", json!([16, 0])),
        ("config", "block_out_channels", json!([16, 1e6])),
        ("config", "attention_head_dim", json!(0)),
        ("config", "layers_per_block", json!(1_000_000)),
        ("config", "layers_per_block", json!(1e6)),
        ("config", "sample_size", json!(9)),
        ("config", "sample_size", json!(-8)),
        ("config", "norm_num_groups", json!(5)),
        ("config", "num_class_embeds", json!(0)),
        ("config", "dropout", json!(1.5)),
        ("config", "time_embedding_dim", json!(64)),
        ("config", "mid_block_type", Value::Null),
        ("config", "_class_name", json!("UNet2DConditionModel")),
        ("config", "act_fn", json!("gelu")),
        ("scheduler", "beta_end", json!(1.0)),
        ("scheduler", "beta_start", json!(-0.1)),
        ("scheduler", "num_train_timesteps", json!(10_000_000_000u64)),
        ("scheduler", "num_train_timesteps", json!(1e10)),
        ("scheduler", "clip_sample_range", json!(0)),
        ("scheduler", "thresholding", json!(true)),
        ("scheduler", "variance_type", json!("fixed_medium")),
        ("scheduler", "prediction_type", json!("v_prediction")),
        ("scheduler", "timestep_spacing", json!("sometimes")),
        ("scheduler", "steps_offset", json!(5000)),
        ("scheduler", "beta_schedul", json!("linear")),
        ("scheduler", "trained_betas", json!([0.1, 0.2])),
    ];
    for (entry, key, value) in refused {
        let err = load_with(entry, key, Some(value.clone()));
        let err = err.unwrap_or_else(|| panic!("{entry}.{key} = {value}: accepted"));
        assert!(err.contains(key), "{entry}.{key} = {value}: {err}");
    }
    let accepted: &[(&str, &str, Value)] = &[
        ("config", "_class_name", json!("UNet2DModel")),
        ("config", "_diffusers_version", json!("0.30.0")),
        ("config", "dropout", json!(0.1)),
        ("config", "num_train_timesteps", json!(1000)),
        ("scheduler", "_class_name", json!("DDIMScheduler")),
        ("scheduler", "set_alpha_to_one", json!(false)),
        ("scheduler", "variance_type", json!("fixed_small_log")),
        ("scheduler", "timestep_spacing", json!("trailing")),
    ];
    for (entry, key, value) in accepted {
        let err = load_with(entry, key, Some(value.clone()));
        assert!(err.is_none(), "{entry}.{key} = {value}: {err:?}");
    }
}

/// The classifier's config is as strict.
#[test]
fn the_classifier_config_is_strict() {
    let shipped = Path::new(wgsl_diff::evaluation::DEFAULT_CLASSIFIER);
    for (key, value) in [
        ("hiden", json!(128)),
        ("padding_value", json!(5.0)),
        ("channels", json!([])),
        ("input_size", json!(30)),
        ("classes", json!(0)),
    ] {
        let mut file = WeightsFile::read(shipped);
        file.edit_meta_json("config", key, Some(value.clone()));
        let path = tmp_dir(&format!("classifier-{key}")).join("c.safetensors");
        file.write(&path);
        let err = WeightFile::open(&path)
            .and_then(|f| FashionClassifier::load(common::gpu(), &f))
            .err()
            .unwrap_or_else(|| panic!("{key} = {value}: accepted"));
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

/// A header naming one tensor (or metadata key) twice is refused — the safetensors crate alone
/// keeps one of them silently — and a folder given as a model is named as such.
#[test]
fn repeated_header_names_and_folders_are_refused() {
    let file = WeightsFile::read(&fixture(GRAY));
    let header = serde_json::to_string(&file.header).unwrap();
    let name = file.tensor_names()[0].clone();
    let entry = serde_json::to_string(&file.header[&name]).unwrap();
    let dir = tmp_dir("repeated");
    let cases = [
        (
            "tensor",
            header.replacen('{', &format!("{{{}:{entry},", json!(name)), 1),
        ),
        (
            "metadata",
            header.replacen(
                "\"__metadata__\":{",
                "\"__metadata__\":{\"config\":\"{}\",",
                1,
            ),
        ),
    ];
    for (what, text) in cases {
        let path = dir.join(format!("{what}.safetensors"));
        std::fs::write(&path, header_and_data(&text, &file.data)).unwrap();
        let err = WeightFile::open(&path).err().expect("refused").to_string();
        assert!(err.contains("appears twice"), "{what}: {err}");
    }
    let err = WeightFile::open(&dir).err().expect("a folder").to_string();
    assert!(err.contains("folder"), "{err}");
}

/// What became of one mutant.
#[derive(Debug, Default)]
struct Tally {
    mutants: usize,
    refused: usize,
    sampled_finite: usize,
    flagged: usize,
    other_errors: usize,
    panics: Vec<String>,
    silent: Vec<String>,
}

/// A seeded index below `n`.
fn pick(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// One seeded mutation of a weight file: (what was done, the mutant's bytes).
fn mutate(rng: &mut SplitMix64, original: &WeightsFile) -> (String, Vec<u8>) {
    let mut file = original.clone();
    match pick(rng, 8) {
        // A corrupted data byte: most often NaN, Inf or a huge finite weight.
        0 | 1 => {
            let at = pick(rng, file.data.len());
            let bit = 1u8 << pick(rng, 8);
            file.data[at] ^= bit;
            (format!("data byte {at} ^= {bit:#x}"), file.to_bytes())
        }
        2 => {
            let what = set_special_weight(rng, &mut file);
            (what, file.to_bytes())
        }
        3 | 4 => {
            let what = edit_config(rng, &mut file);
            (what, file.to_bytes())
        }
        // A byte of the header text changed: names, shapes, offsets, dtypes, numbers.
        5 | 6 => {
            let mut bytes = file.to_bytes();
            let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let at = 8 + pick(rng, header_len);
            let byte = b"0123456789.-e\",:{}[]xF1 "[pick(rng, 24)];
            bytes[at] = byte;
            (format!("header byte {at} = {:?}", byte as char), bytes)
        }
        _ => {
            let mut bytes = file.to_bytes();
            let what = resize(rng, &mut bytes);
            (what, bytes)
        }
    }
}

/// One weight set to a special value: NaN, ±Inf, a huge finite value, a subnormal, 0.
fn set_special_weight(rng: &mut SplitMix64, file: &mut WeightsFile) -> String {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        -3e38,
        3e38,
        1e30,
        65504.0,
        1e-45,
        0.0,
    ];
    let names = file.tensor_names();
    let name = &names[pick(rng, names.len())];
    let len = file.tensor_bytes(name).len() / 4;
    let (i, v) = (pick(rng, len), specials[pick(rng, specials.len())]);
    file.set_f32(name, i, v);
    format!("{name}[{i}] = {v}")
}

/// A config or scheduler value replaced by a hostile one, or its key misspelled.
fn edit_config(rng: &mut SplitMix64, file: &mut WeightsFile) -> String {
    let entry = ["config", "scheduler"][pick(rng, 2)];
    let json = file.meta_json(entry);
    let keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
    let key = keys[pick(rng, keys.len())].clone();
    let values = [
        json!(0),
        json!(-1),
        json!(1),
        json!(2),
        json!(3),
        json!(7),
        json!(0.5),
        json!(1e10),
        json!(1e30),
        json!(-1e30),
        json!(1e300),
        json!(4294967296u64),
        json!(u64::MAX),
        json!(true),
        Value::Null,
        json!("x"),
        json!([]),
        json!([0]),
        json!([1e6]),
        json!([16, 16, 16]),
        json!({}),
    ];
    if pick(rng, 4) == 0 {
        let mut misspelt = key.clone();
        misspelt.remove(pick(rng, misspelt.len()));
        let v = json[&key].clone();
        file.edit_meta_json(entry, &key, None);
        file.edit_meta_json(entry, &misspelt, Some(v));
        format!("{entry}: {key} → {misspelt}")
    } else {
        let v = values[pick(rng, values.len())].clone();
        file.edit_meta_json(entry, &key, Some(v.clone()));
        format!("{entry}.{key} = {v}")
    }
}

/// The file truncated, extended, or its header length changed.
fn resize(rng: &mut SplitMix64, bytes: &mut Vec<u8>) -> String {
    match pick(rng, 3) {
        0 => {
            let len = pick(rng, bytes.len());
            bytes.truncate(len);
            format!("truncated to {len}")
        }
        1 => {
            bytes.extend(std::iter::repeat_n(0u8, 1 + pick(rng, 64)));
            "extended".to_string()
        }
        _ => {
            let shift = pick(rng, 64);
            let len = rng.next_u64() >> shift;
            bytes[..8].copy_from_slice(&len.to_le_bytes());
            format!("header length {len}")
        }
    }
}

/// Loads and samples one mutant: refused, sampled finite, flagged non-finite, or (the failure
/// this test exists for) sampled with a NaN or ±Inf in an image that no flag reports.
fn try_mutant(gpu: &Gpu, path: &Path, what: &str, tally: &mut Tally) {
    let (model, scheduler) = match load(gpu, path) {
        Ok(loaded) => loaded,
        Err(_) => {
            tally.refused += 1;
            return;
        }
    };
    let noise = NoisePlan::new(0);
    let cycle = model.num_classes().map(|_| ClassChoice::Cycle);
    let labels = match ClassLabels::new(model.num_classes(), cycle) {
        Ok(labels) => labels,
        Err(_) => {
            tally.other_errors += 1;
            return;
        }
    };
    let run = Run {
        gpu,
        model: &model,
        scheduler: &scheduler,
        noise: &noise,
        labels,
        init_noise: None,
        decoder: &Identity,
        prompt: None,
    };
    match run.sample(0, 2, &mut (), |_| {}) {
        Err(_) => tally.other_errors += 1,
        Ok(batch) => {
            let silent = (0..batch.len()).any(|k| {
                batch.non_finite[k].is_none() && batch.image(k).iter().any(|v| !v.is_finite())
            });
            if silent {
                tally.silent.push(what.to_string());
            } else if batch.non_finite.iter().any(Option::is_some) {
                tally.flagged += 1;
            } else {
                tally.sampled_finite += 1;
            }
        }
    }
}

/// Runs `count` seeded mutants of the small UNet fixtures and returns what became of them.
fn fuzz(count: usize, seed: u64) -> Tally {
    let originals: Vec<WeightsFile> =
        ["unet_tiny_gray", "unet_tiny_class", "unet_tiny_scale_shift"]
            .iter()
            .map(|n| WeightsFile::read(&fixture(&format!("{n}.safetensors"))))
            .collect();
    let path = tmp_dir(&format!("fuzz-{seed}")).join("mutant.safetensors");
    let mut rng = SplitMix64::new(seed);
    let mut tally = Tally::default();
    let mut gpu = None;
    for i in 0..count {
        // A fresh device now and then: each load uploads new buffers, which the pool keeps.
        if i % 250 == 0 {
            drop(gpu.take());
            gpu = Some(Gpu::new(&Default::default()).expect("a GPU adapter"));
        }
        let gpu = gpu.as_ref().unwrap();
        let (what, bytes) = mutate(&mut rng, &originals[i % originals.len()]);
        std::fs::write(&path, &bytes).unwrap();
        tally.mutants += 1;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut local = Tally::default();
            try_mutant(gpu, &path, &what, &mut local);
            local
        }));
        match outcome {
            Ok(local) => {
                tally.refused += local.refused;
                tally.sampled_finite += local.sampled_finite;
                tally.flagged += local.flagged;
                tally.other_errors += local.other_errors;
                tally.silent.extend(local.silent);
            }
            Err(_) => tally.panics.push(format!("mutant {i}: {what}")),
        }
    }
    eprintln!("{tally:#?}");
    tally
}

fn assert_clean(tally: &Tally) {
    assert!(tally.panics.is_empty(), "panics: {:#?}", tally.panics);
    assert!(
        tally.silent.is_empty(),
        "silent non-finite outputs: {:#?}",
        tally.silent
    );
    assert!(
        tally.refused > 0 && tally.sampled_finite > 0,
        "the mutants span both outcomes"
    );
}

#[test]
fn loader_fuzz_300_mutants() {
    assert_clean(&fuzz(300, 14));
}

/// `cargo test --release --test loader -- --ignored --nocapture loader_fuzz_10000_mutants`
#[test]
#[ignore = "long: 10,000 mutants (minutes on a software GPU)"]
fn loader_fuzz_10000_mutants() {
    let tally = fuzz(10_000, 2025);
    assert_clean(&tally);
    assert!(tally.flagged > 0, "some mutants overflow and are flagged");
}
