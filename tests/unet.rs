//! UNet2DModel against PyTorch/diffusers fixtures (tools/fixtures/unet_schedulers.py), and the weight
//! loader's handling of bad files.

mod common;

use common::{assert_close, fixture, gpu, read, read_safetensors as read_tensors, to_f64};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use wgsl_diff::models::{UNet2DModel, WeightFile};

/// Runs the model on the fixture's inputs and compares with PyTorch's float64 output.
fn check_against_pytorch(weights: &Path, io: &Path) {
    let g = gpu();
    let model = UNet2DModel::load(g, &WeightFile::open(weights).unwrap()).unwrap();
    let io = read_tensors(io);
    let (shape, sample) = &io["sample"];
    let x = g.upload(shape, sample).unwrap();
    let (t_shape, t) = &io["timestep"];
    let timesteps = g.upload(t_shape, t).unwrap();
    let labels = io.get("class_labels").map(|(s, d)| g.upload(s, d).unwrap());
    let eps = model.forward(g, &x, &timesteps, labels.as_ref()).unwrap();
    let (out_shape, want) = &io["output"];
    assert_eq!(eps.shape(), out_shape.as_slice());
    assert_close(
        &format!("{} vs PyTorch", weights.display()),
        &read(&eps),
        &to_f64(want),
        1e-4,
        0.0,
    );
}

#[test]
fn tiny_rgb_unet_matches_pytorch() {
    check_against_pytorch(
        &fixture("unet_tiny_rgb.safetensors"),
        &fixture("unet_tiny_rgb_io.safetensors"),
    );
}

#[test]
fn tiny_gray_unet_matches_pytorch() {
    check_against_pytorch(
        &fixture("unet_tiny_gray.safetensors"),
        &fixture("unet_tiny_gray_io.safetensors"),
    );
}

#[test]
fn class_conditional_unet_matches_pytorch() {
    check_against_pytorch(
        &fixture("unet_tiny_class.safetensors"),
        &fixture("unet_tiny_class_io.safetensors"),
    );
}

#[test]
fn scale_shift_unet_matches_pytorch() {
    check_against_pytorch(
        &fixture("unet_tiny_scale_shift.safetensors"),
        &fixture("unet_tiny_scale_shift_io.safetensors"),
    );
}

#[test]
fn odd_channels_unet_matches_pytorch() {
    check_against_pytorch(
        &fixture("unet_tiny_odd.safetensors"),
        &fixture("unet_tiny_odd_io.safetensors"),
    );
}

/// The full google/ddpm-cifar10-32 architecture with random weights (~143 MB fixture, not
/// committed: `python -m tools.fixtures.unet_schedulers --full-cifar` writes it).
#[test]
#[ignore]
fn full_cifar10_architecture_matches_pytorch() {
    check_against_pytorch(
        &fixture("large/ddpm_cifar10_arch.safetensors"),
        &fixture("large/ddpm_cifar10_arch_io.safetensors"),
    );
}

/// Rewrites the tiny fixture with `edit` applied to its tensors and metadata.
fn rewritten(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>, &mut HashMap<String, String>),
) -> PathBuf {
    let src = fixture("unet_tiny_gray.safetensors");
    let file = WeightFile::open(&src).unwrap();
    let mut meta = file.metadata.clone();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = read_tensors(&src)
        .into_iter()
        .map(|(n, (s, d))| (n, s, d))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors, &mut meta);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    s.clone(),
                    bytemuck::cast_slice(d),
                )
                .unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, &Some(meta)).unwrap();
    let path = std::env::temp_dir().join(format!(
        "wgsl-diff-{}-{name}.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load_error(path: &Path) -> String {
    match WeightFile::open(path).and_then(|f| UNet2DModel::load(gpu(), &f)) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_weight_files_give_clear_errors() {
    let tmp = std::env::temp_dir().join(format!("wgsl-diff-{}-bad", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let good = std::fs::read(fixture("unet_tiny_gray.safetensors")).unwrap();

    let missing = tmp.join("missing.safetensors");
    assert!(
        load_error(&missing).contains("cannot open"),
        "{}",
        load_error(&missing)
    );

    let truncated = tmp.join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    assert!(
        load_error(&truncated).contains("corrupt or truncated"),
        "{}",
        load_error(&truncated)
    );

    let corrupt = tmp.join("corrupt.safetensors");
    std::fs::write(
        &corrupt,
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
    )
    .unwrap();
    assert!(
        load_error(&corrupt).contains("corrupt or truncated"),
        "{}",
        load_error(&corrupt)
    );

    let wrong_shape = rewritten("wrong-shape", |t, _| {
        let conv_in = t
            .iter_mut()
            .find(|(n, _, _)| n == "conv_in.weight")
            .unwrap();
        conv_in.1 = vec![conv_in.1[0], 2, 3, 3];
        conv_in.2.resize(conv_in.1.iter().product(), 0.0);
        t.retain(|(n, _, _)| n != "conv_out.bias");
        t.push(("extra.weight".into(), vec![1], vec![0.0]));
    });
    let err = load_error(&wrong_shape);
    for needle in [
        "conv_in.weight",
        "missing tensor `conv_out.bias`",
        "unexpected tensor `extra.weight`",
        "3 problems",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }

    let wrong_arch = rewritten("wrong-arch", |_, m| {
        m.insert("arch".into(), "UNet2DConditionModel".into());
    });
    assert!(
        load_error(&wrong_arch).contains("not a \"UNet2DModel\""),
        "{}",
        load_error(&wrong_arch)
    );

    let wrong_config = rewritten("wrong-config", |_, m| {
        let cfg = m["config"].replace(
            "\"block_out_channels\":[16,32]",
            "\"block_out_channels\":[16,48]",
        );
        assert_ne!(cfg, m["config"], "fixture config layout changed");
        m.insert("config".into(), cfg);
    });
    assert!(
        load_error(&wrong_config).contains("does not match its config"),
        "{}",
        load_error(&wrong_config)
    );

    let unsupported = rewritten("unsupported", |_, m| {
        let cfg = m["config"].replace("\"DownBlock2D\"", "\"SkipDownBlock2D\"");
        m.insert("config".into(), cfg);
    });
    assert!(
        load_error(&unsupported).contains("SkipDownBlock2D"),
        "{}",
        load_error(&unsupported)
    );

    let no_meta = rewritten("no-meta", |_, m| m.clear());
    assert!(
        load_error(&no_meta).contains("tools/convert.py"),
        "{}",
        load_error(&no_meta)
    );
}

/// Half-precision checkpoints load (widened to f32) and give the f32 model's output up to
/// the rounding of the weights.
#[test]
fn f16_weights_load_and_match_f32() {
    let src = fixture("unet_tiny_gray.safetensors");
    let meta = WeightFile::open(&src).unwrap().metadata.clone();
    let halves: Vec<(String, Vec<usize>, Vec<half::f16>)> = read_tensors(&src)
        .into_iter()
        .map(|(n, (s, d))| (n, s, d.into_iter().map(half::f16::from_f32).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = halves
        .iter()
        .map(|(n, s, d)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F16,
                s.clone(),
                bytemuck::cast_slice(d),
            );
            (n.clone(), view.unwrap())
        })
        .collect();
    let path =
        std::env::temp_dir().join(format!("wgsl-diff-{}-f16.safetensors", std::process::id()));
    std::fs::write(&path, safetensors::serialize(views, &Some(meta)).unwrap()).unwrap();

    let g = gpu();
    let io = read_tensors(&fixture("unet_tiny_gray_io.safetensors"));
    let x = g.upload(&io["sample"].0, &io["sample"].1).unwrap();
    let t = g.upload(&io["timestep"].0, &io["timestep"].1).unwrap();
    let run = |p: &Path| {
        read(
            &UNet2DModel::load(g, &WeightFile::open(p).unwrap())
                .unwrap()
                .forward(g, &x, &t, None)
                .unwrap(),
        )
    };
    let (full, half_out) = (run(&src), run(&path));
    // f16 keeps 11 significant bits: weights are off by up to 2^-11 relative.
    assert_close(
        "f16 weights vs f32 weights",
        &half_out,
        &to_f64(&full),
        2e-2,
        2e-2,
    );
    assert_ne!(full, half_out, "the f16 file really holds rounded weights");
}
