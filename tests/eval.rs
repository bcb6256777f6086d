//! The Fashion-MNIST classifier against PyTorch (tools/train/train_classifier.py), and `wgsl-diff eval`
//! end to end on small image sets, including bad inputs.

mod common;

use common::{assert_close, gpu, read, to_f64, Rng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use wgsl_diff::evaluation::{self, EvalOptions, ImageRange, ImageSource, SetSpec};
use wgsl_diff::images::{self, Image8};
use wgsl_diff::models::evaluation::classifier::FashionClassifier;
use wgsl_diff::models::WeightFile;

const CLASSIFIER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/fashion_classifier.safetensors"
);
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/classifier_io.safetensors"
);

#[test]
fn classifier_matches_pytorch() {
    let fixture = common::read_safetensors(Path::new(FIXTURE));
    let tensor = |name: &str| fixture[name].clone();
    let (image_shape, images) = tensor("images");
    let model =
        FashionClassifier::load(gpu(), &WeightFile::open(Path::new(CLASSIFIER)).unwrap()).unwrap();
    let out = model
        .forward(gpu(), &gpu().upload(&image_shape, &images).unwrap())
        .unwrap();
    for (name, got) in [("features", &out.features), ("logits", &out.logits)] {
        let (shape, want) = tensor(name);
        assert_eq!(got.shape(), shape, "{name} shape");
        assert_close(name, &read(got), &to_f64(&want), 1e-4, 0.0);
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgsl-diff-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `count` seeded grayscale images: a bright rectangle of random size and place on a dark,
/// slightly noisy background, roughly garment-like in layout.
fn blobs(seed: u64, count: usize, side: usize) -> Vec<Image8> {
    let mut rng = Rng::new(seed);
    let mut unit = move || (rng.uniform() + 1.0) / 2.0;
    (0..count)
        .map(|_| {
            let (w, h) = (side / 3 + (unit() * side as f32 / 2.0) as usize, side / 2);
            let (x0, y0) = ((side - w) / 2, (side - h) / 2);
            let brightness = 120.0 + 120.0 * unit();
            let pixels = (0..side * side)
                .map(|i| {
                    let (y, x) = (i / side, i % side);
                    let inside = (x0..x0 + w).contains(&x) && (y0..y0 + h).contains(&y);
                    let base = if inside { brightness } else { 0.0 };
                    (base + 20.0 * unit()).min(255.0) as u8
                })
                .collect();
            Image8 {
                width: side,
                height: side,
                channels: 1,
                pixels,
            }
        })
        .collect()
}

fn write_png_folder(dir: &Path, images: &[Image8]) {
    for (i, img) in images.iter().enumerate() {
        images::write_png(&dir.join(format!("sample_{i:06}.png")), img, &[]).unwrap();
    }
}

/// An idx3 ubyte images file, gzip-compressed like the Fashion-MNIST distribution.
fn write_idx_gz(path: &Path, images: &[Image8]) {
    let (rows, cols) = (images[0].height as u32, images[0].width as u32);
    let mut raw = vec![0, 0, 8, 3];
    for v in [images.len() as u32, rows, cols] {
        raw.extend(v.to_be_bytes());
    }
    for img in images {
        raw.extend(&img.pixels);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

fn eval(args: &[&str]) -> Output {
    bin().arg("eval").args(args).output().unwrap()
}

fn eval_json(args: &[&str], json: &Path) -> serde_json::Value {
    let out = eval(&[args, &["--json", json.to_str().unwrap()]].concat());
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

#[test]
fn eval_compares_a_png_folder_with_an_idx_subset() {
    let dir = tmp("sets");
    let (pngs, idx) = (dir.join("samples"), dir.join("real-idx3-ubyte.gz"));
    std::fs::create_dir_all(&pngs).unwrap();
    write_png_folder(&pngs, &blobs(1, 32, 32));
    write_idx_gz(&idx, &blobs(2, 40, 28));
    let (pngs, idx) = (pngs.to_str().unwrap(), idx.to_str().unwrap());

    let report = eval_json(
        &[
            "--real",
            idx,
            "--real-range",
            "4..36",
            "--fake",
            pngs,
            "--batch",
            "12",
        ],
        &dir.join("fake.json"),
    );
    let distance = report["frechet_distance"].as_f64().unwrap();
    assert!(distance.is_finite() && distance > 0.0, "{report}");
    for (set, count) in [("real", 32), ("fake", 32)] {
        assert_eq!(report[set]["count"], count, "{report}");
        let confidence = report[set]["mean_confidence"].as_f64().unwrap();
        assert!(confidence > 0.1 && confidence <= 1.0, "{report}");
        let histogram = report[set]["predicted_classes"].as_array().unwrap();
        assert_eq!(
            histogram.iter().map(|n| n.as_u64().unwrap()).sum::<u64>(),
            32
        );
    }
    assert_eq!(report["class_names"].as_array().unwrap().len(), 10);

    let same = eval_json(
        &[
            "--real",
            idx,
            "--real-range",
            "0..32",
            "--fake",
            idx,
            "--fake-range",
            "0..32",
        ],
        &dir.join("same.json"),
    );
    let zero = same["frechet_distance"].as_f64().unwrap();
    assert!(zero.abs() < 1e-6 * distance, "FD(A, A) = {zero}");

    let noise = eval_json(&["--real", idx, "--fake", "noise"], &dir.join("noise.json"));
    assert_eq!(
        noise["fake"]["count"], 40,
        "noise matches the real set's size"
    );
    assert!(noise["frechet_distance"].as_f64().unwrap() > distance);
}

/// `evaluation::evaluate` in this process gives the report the CLI writes for the same sets.
#[test]
fn evaluate_as_a_library_call_matches_the_cli() {
    let dir = tmp("library");
    let (pngs, idx) = (dir.join("samples"), dir.join("real-idx3-ubyte.gz"));
    std::fs::create_dir_all(&pngs).unwrap();
    write_png_folder(&pngs, &blobs(1, 32, 32));
    write_idx_gz(&idx, &blobs(2, 40, 28));
    let set = |path: &Path, range: Option<std::ops::Range<usize>>| SetSpec {
        source: ImageSource::Path(path.to_path_buf()),
        range: range.map(|r| ImageRange::new(r).unwrap()),
    };
    let options = EvalOptions {
        real: set(&idx, Some(4..36)),
        fake: set(&pngs, None),
        classifier: PathBuf::from(evaluation::DEFAULT_CLASSIFIER),
        batch: 12,
        seed: 0,
    };
    let report = evaluation::evaluate(gpu(), &options).unwrap();
    let cli_json = dir.join("cli.json");
    eval_json(
        &[
            "--real",
            idx.to_str().unwrap(),
            "--real-range",
            "4..36",
            "--fake",
            pngs.to_str().unwrap(),
            "--batch",
            "12",
        ],
        &cli_json,
    );
    // Compared as text: serde_json's parser may be an ulp off the printed shortest float.
    assert_eq!(
        serde_json::to_string_pretty(&report.to_json()).unwrap(),
        std::fs::read_to_string(&cli_json).unwrap()
    );
    assert_eq!(report.undersized(), Some(32), "32 images, 128 features");

    let same = EvalOptions {
        fake: set(&idx, Some(4..36)),
        ..options.clone()
    };
    let zero = evaluation::evaluate(gpu(), &same).unwrap().frechet_distance;
    assert!(
        zero.abs() < 1e-6 * report.frechet_distance,
        "FD(A, A) = {zero}"
    );

    let missing = EvalOptions {
        fake: set(&dir.join("missing"), None),
        ..options
    };
    let error = evaluation::evaluate(gpu(), &missing)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("--fake: ") && error.ends_with("(it does not exist)"),
        "{error}"
    );
}

/// Runs eval expecting a clean failure whose message contains `expected`.
fn assert_fails(args: &[&str], expected: &str) {
    common::assert_clean_failure(&eval(args), &format!("{args:?}"), expected);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tmp("bad");
    let good = dir.join("good");
    std::fs::create_dir_all(&good).unwrap();
    write_png_folder(&good, &blobs(3, 4, 32));
    let good = good.to_str().unwrap();
    let folder = |name: &str, files: &[(&str, Vec<u8>)]| {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        for (file, bytes) in files {
            std::fs::write(path.join(file), bytes).unwrap();
        }
        path.to_str().unwrap().to_string()
    };
    let png = |img: &Image8| images::encode_png(img, &[]).unwrap();

    let missing = dir.join("missing");
    assert_fails(
        &["--real", good, "--fake", missing.to_str().unwrap()],
        "does not exist",
    );
    let no_pngs = folder("text", &[("notes.txt", b"hello".to_vec())]);
    assert_fails(
        &["--real", good, "--fake", &no_pngs],
        "holds no sample_*.png",
    );
    let not_png = folder("fake-png", &[("sample_000000.png", b"not a png".to_vec())]);
    assert_fails(&["--real", good, "--fake", &not_png], "cannot read");
    let small = folder("small", &[("sample_000000.png", png(&blobs(4, 1, 16)[0]))]);
    assert_fails(
        &["--real", good, "--fake", &small],
        "is 16x16; expected 32x32 or 28x28",
    );
    let rgb = Image8 {
        width: 32,
        height: 32,
        channels: 3,
        pixels: vec![0; 32 * 32 * 3],
    };
    let rgb = folder("rgb", &[("sample_000000.png", png(&rgb))]);
    assert_fails(&["--real", good, "--fake", &rgb], "is not grayscale");

    let not_idx = dir.join("labels.gz");
    std::fs::write(&not_idx, [0, 0, 8, 1, 0, 0, 0, 0]).unwrap();
    assert_fails(
        &["--real", not_idx.to_str().unwrap(), "--fake", good],
        "not an idx3",
    );
    assert_fails(
        &["--real", good, "--real-range", "2..9", "--fake", good],
        "goes past the end",
    );
    assert_fails(
        &["--real", good, "--real-range", "3..4", "--fake", good],
        "at least 2 feature vectors",
    );
    assert_fails(
        &["--real", good, "--fake", good, "--fake-range", "5..2"],
        "empty",
    );
    // Ranges and batches are bounded before anything is allocated: no capacity overflow, no
    // wrapped u32 sample index.
    assert_fails(
        &[
            "--real",
            "noise",
            "--real-range",
            "0..18446744073709551615",
            "--fake",
            good,
        ],
        "at most 1000000",
    );
    assert_fails(
        &[
            "--real",
            "noise",
            "--real-range",
            "4294967295..4294967297",
            "--fake",
            good,
        ],
        "last sample index",
    );
    assert_fails(
        &["--real", good, "--fake", good, "--batch", "0"],
        "--batch is 0",
    );
    assert_fails(
        &[
            "--real",
            good,
            "--fake",
            good,
            "--batch",
            "18446744073709551615",
        ],
        "--batch is 18446744073709551615",
    );
    let unet = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/unet_tiny_gray.safetensors"
    );
    assert_fails(
        &["--real", good, "--fake", good, "--classifier", unet],
        "not a \"FashionClassifier\"",
    );
}
