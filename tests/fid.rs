//! FID natively: the kernels FID's Inception adds (non-square and asymmetrically padded
//! convolutions with a fused ReLU, the pooling variants, bilinear resizing) against f64
//! references and PyTorch; the whole network on random weights against pytorch-fid's module
//! (tools/fixtures/fid.py); the Fréchet distance against pytorch-fid's scipy computation;
//! statistics files; `wgsl-diff fid` end to end and on bad input.

mod common;

use common::reference as r;
use common::{assert_clean_failure, assert_close, fixture, gpu, read, to_f64, upload, Rng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use wgsl_diff::evaluation::fid;
use wgsl_diff::images::{self, Image8};
use wgsl_diff::metrics;
use wgsl_diff::models::evaluation::inception::{FidInception, FEATURES};
use wgsl_diff::ops::{self, Conv2dArgs, Pool2dArgs, PoolMode};

type Fixture = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn inception_fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| common::read_safetensors(&fixture("fid_inception.safetensors")))
}

fn tensor(name: &str) -> (Vec<usize>, Vec<f32>) {
    inception_fixture()
        .get(name)
        .unwrap_or_else(|| panic!("fixture tensor {name}"))
        .clone()
}

#[test]
fn conv2d_non_square_kernels_asymmetric_padding_and_relu_match_reference() {
    let mut rng = Rng::new(16);
    // (b, c_in, h, w, c_out, (kh, kw), stride, (pad_h, pad_w), relu): Inception's 1×7/7×1 and
    // 1×3/3×1 with padding along the long axis only, 5×5, stride-2 reductions on odd sides,
    // and the 7-tap kernels on maps smaller than the kernel (Mixed_6 at a 75² input is 3×3).
    let cases = [
        (2, 5, 9, 11, 7, (1, 7), 1, (0, 3), true),
        (1, 6, 10, 7, 9, (7, 1), 1, (3, 0), true),
        (2, 4, 3, 3, 5, (1, 7), 1, (0, 3), false),
        (1, 3, 3, 3, 6, (7, 1), 1, (3, 0), true),
        (1, 8, 6, 5, 33, (1, 3), 1, (0, 1), true),
        (2, 8, 5, 6, 70, (3, 1), 1, (1, 0), true),
        (1, 3, 15, 13, 32, (3, 3), 2, (0, 0), true),
        (2, 7, 9, 9, 65, (5, 5), 1, (2, 2), true),
        (1, 3, 8, 9, 4, (2, 5), 2, (1, 2), false),
    ];
    for (b, ci, h, w, co, (kh, kw), stride, (ph, pw), relu) in cases {
        let x = rng.vec(b * ci * h * w);
        let wt = rng.vec(co * ci * kh * kw);
        let bias = rng.vec(co);
        let (ho, wo) = (
            (h + 2 * ph - kh) / stride + 1,
            (w + 2 * pw - kw) / stride + 1,
        );
        let geometry = ((b, ci, h, w), (co, kh, kw), stride, (ph, pw));
        let mut want = r::conv2d_hw(
            &to_f64(&x),
            &to_f64(&wt),
            Some(&to_f64(&bias)),
            geometry,
            (ho, wo),
        );
        if relu {
            want.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        let args = Conv2dArgs {
            stride,
            padding: ph,
            padding_w: Some(pw),
            relu,
            ..Default::default()
        };
        let y = ops::conv2d(
            gpu(),
            &upload(&x, &[b, ci, h, w]),
            &upload(&wt, &[co, ci, kh, kw]),
            Some(&upload(&bias, &[co])),
            args,
        )
        .unwrap();
        assert_eq!(y.shape(), [b, co, ho, wo]);
        let what = format!(
            "conv2d {:?}",
            (b, ci, h, w, co, (kh, kw), stride, (ph, pw), relu)
        );
        assert_close(&what, &read(&y), &want, 1e-5, 1e-4);
    }
}

fn pool(
    x: &[f32],
    shape: [usize; 4],
    (k, stride, padding): (usize, usize, usize),
    mode: PoolMode,
) -> (Vec<usize>, Vec<f32>) {
    let y = ops::pool2d(
        gpu(),
        &upload(x, &shape),
        Pool2dArgs {
            kernel: k,
            stride,
            padding,
            mode,
        },
    )
    .unwrap();
    (y.shape().to_vec(), read(&y))
}

#[test]
fn pooling_variants_match_reference() {
    let mut rng = Rng::new(17);
    let modes = [
        (PoolMode::Max, None),
        (PoolMode::Avg, Some(true)),
        (PoolMode::AvgValid, Some(false)),
    ];
    for (b, c, h, w) in [(2, 3, 9, 8), (1, 5, 3, 3), (1, 2, 17, 17), (3, 1, 4, 7)] {
        let x = rng.vec(b * c * h * w);
        for geometry in [(3, 2, 0), (3, 1, 1), (2, 1, 1), (3, 3, 1)] {
            for (mode, avg) in modes {
                let (want, ho, wo) = r::pool2d(&to_f64(&x), (b * c, h, w), geometry, avg);
                let (shape, got) = pool(&x, [b, c, h, w], geometry, mode);
                assert_eq!(shape, [b, c, ho, wo]);
                assert_close(
                    &format!("pool2d {mode:?} {geometry:?} on {:?}", (b, c, h, w)),
                    &got,
                    &want,
                    1e-6,
                    1e-6,
                );
            }
        }
    }
    let x = rng.vec(2 * 3 * 5 * 7);
    let y = ops::global_avg_pool(gpu(), &upload(&x, &[2, 3, 5, 7])).unwrap();
    let want: Vec<f64> = x
        .chunks(35)
        .map(|p| p.iter().map(|&v| v as f64).sum::<f64>() / 35.0)
        .collect();
    assert_eq!(y.shape(), [2, 3]);
    assert_close("global_avg_pool", &read(&y), &want, 1e-6, 1e-6);
}

#[test]
fn pooling_variants_match_pytorch() {
    let (shape, x) = tensor("pool.input");
    let shape: [usize; 4] = shape.try_into().unwrap();
    for (name, geometry, mode) in [
        ("max_k3_s2", (3, 2, 0), PoolMode::Max),
        ("max_k3_s1_p1", (3, 1, 1), PoolMode::Max),
        ("avg_k3_s1_p1", (3, 1, 1), PoolMode::Avg),
        ("avg_valid_k3_s1_p1", (3, 1, 1), PoolMode::AvgValid),
    ] {
        let (want_shape, want) = tensor(&format!("pool.{name}"));
        let (got_shape, got) = pool(&x, shape, geometry, mode);
        assert_eq!(got_shape, want_shape, "{name}");
        assert_close(name, &got, &to_f64(&want), 1e-6, 1e-6);
    }
    let y = ops::global_avg_pool(gpu(), &upload(&x, &shape)).unwrap();
    assert_close(
        "adaptive_avg_pool2d",
        &read(&y),
        &to_f64(&tensor("pool.global_avg").1),
        1e-6,
        1e-6,
    );
}

#[test]
fn bilinear_resize_matches_reference_and_pytorch() {
    // PyTorch's own F.interpolate on up, down, mixed and one-row cases.
    for i in 0..4 {
        let (shape, x) = tensor(&format!("resize.{i}.input"));
        let (want_shape, want) = tensor(&format!("resize.{i}.output"));
        let y =
            ops::resize_bilinear(gpu(), &upload(&x, &shape), want_shape[2], want_shape[3]).unwrap();
        assert_eq!(y.shape(), want_shape);
        assert_close(
            &format!("resize vs torch {shape:?} → {want_shape:?}"),
            &read(&y),
            &to_f64(&want),
            1e-6,
            1e-6,
        );
    }
    // The reference (checked against PyTorch above by the same cases) on FID's own resizes.
    let mut rng = Rng::new(18);
    for ((h, w), (ho, wo)) in [
        ((28, 28), (299, 299)),
        ((32, 32), (299, 299)),
        ((64, 48), (299, 299)),
        ((512, 300), (299, 299)),
        ((7, 5), (5, 7)),
    ] {
        let x: Vec<f32> = rng.vec(3 * h * w);
        let want = r::resize_bilinear(&to_f64(&x), (3, h, w), (ho, wo));
        let y = ops::resize_bilinear(gpu(), &upload(&x, &[1, 3, h, w]), ho, wo).unwrap();
        assert_close(
            &format!("resize {h}x{w} → {ho}x{wo}"),
            &read(&y),
            &want,
            1e-6,
            1e-5,
        );
    }
    assert!(ops::resize_bilinear(gpu(), &upload(&[0.0; 4], &[1, 1, 2, 2]), 0, 3).is_err());
}

/// The random network's features of a fixture input (in [0, 1]) through pytorch-fid's input
/// path, against pytorch-fid's float64 module with the same weights.
fn check_network(name: &str) {
    let net = FidInception::random(gpu(), 16).unwrap();
    let (shape, x) = tensor(&format!("{name}.input"));
    let (want_shape, want) = tensor(&format!("{name}.features"));
    let input = if name == "net75" {
        // pytorch-fid's resize bypassed: only the scaling to [−1, 1].
        ops::affine(gpu(), &upload(&x, &shape), 2.0, -1.0).unwrap()
    } else {
        fid::inception_input(gpu(), &upload(&x, &shape)).unwrap()
    };
    let got = read(&net.forward(gpu(), &input).unwrap());
    assert_eq!(want_shape, [shape[0], FEATURES]);
    // Relative to the features' scale: ReLU leaves many exactly 0.
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    assert_close(
        &format!("{name} features"),
        &got,
        &to_f64(&want),
        1e-4 * scale,
        1e-4,
    );
}

#[test]
fn random_fid_inception_matches_pytorch_fid_at_75() {
    check_network("net75");
}

/// The full 299×299 path, resize included (≈ 20 s on lavapipe with 2 cores).
#[test]
fn random_fid_inception_matches_pytorch_fid_at_299() {
    check_network("net299");
}

#[test]
fn frechet_distance_matches_pytorch_fid() {
    let expected: HashMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(fixture("fid_frechet.json")).unwrap())
            .unwrap();
    for case in ["full", "singular"] {
        let stats = |which: &str| {
            fid::read_statistics(&fixture(&format!("fid_stats_{case}_{which}.npz"))).unwrap()
        };
        let got = metrics::frechet_distance(&stats("a"), &stats("b")).unwrap();
        let want = expected[case];
        let rel = (got - want).abs() / want;
        eprintln!("{case}: ours {got}, pytorch-fid {want}, relative difference {rel:.2e}");
        assert!(
            rel <= 1e-6,
            "{case}: {got} vs pytorch-fid {want} ({rel:.2e})"
        );
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgsl-diff-fid-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn statistics_files_round_trip_and_bad_shapes_are_refused() {
    let dir = temp_dir("stats");
    let original = fid::read_statistics(&fixture("fid_stats_full_a.npz")).unwrap();
    let path = dir.join("copy.npz");
    fid::write_statistics(&path, &original).unwrap();
    let copy = fid::read_statistics(&path).unwrap();
    assert_eq!(copy.mean, original.mean);
    assert_eq!(copy.covariance, original.covariance);
    let bad = dir.join("bad.npz");
    let write = |arrays: &[(&str, &[usize], &[f64])]| wgsl_diff::npz::write(&bad, arrays).unwrap();
    let refused = |expected: &str| {
        let err = fid::read_statistics(&bad).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected:?} not in {err}");
    };
    write(&[("mu", &[3], &[0.0; 3]), ("sigma", &[3, 2], &[0.0; 6])]);
    refused("sigma has shape [3, 2], expected [3, 3]");
    write(&[("mu", &[2, 2], &[0.0; 4]), ("sigma", &[2, 2], &[0.0; 4])]);
    refused("mu has shape [2, 2]");
    write(&[("mu", &[2], &[0.0; 2])]);
    refused("no `sigma` array");
    write(&[("mu", &[1], &[f64::NAN]), ("sigma", &[1, 1], &[1.0])]);
    refused("non-finite");
}

fn wgsl_diff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgsl-diff"))
        .args(args)
        .output()
        .expect("run wgsl-diff")
}

fn ok_stdout(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wgsl-diff failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn fid_command_compares_statistics_files_like_pytorch_fid() {
    let expected: HashMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(fixture("fid_frechet.json")).unwrap())
            .unwrap();
    let (a, b) = (
        fixture("fid_stats_full_a.npz"),
        fixture("fid_stats_full_b.npz"),
    );
    let json = temp_dir("json").join("fid.json");
    let out = wgsl_diff(&[
        "fid",
        "--real",
        a.to_str().unwrap(),
        "--fake",
        b.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = ok_stdout(&out);
    assert!(
        stdout.contains(&format!("FID: {:.6}", expected["full"])),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let got = report["fid"].as_f64().unwrap();
    assert!(
        (got - expected["full"]).abs() <= 1e-6 * expected["full"],
        "{got}"
    );
}

/// `count` w×h images of `channels` (1 gray, 3 RGB) as PNGs `name_i.png` in `dir`.
fn write_pngs(
    dir: &Path,
    name: &str,
    count: usize,
    (w, h): (usize, usize),
    channels: usize,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let pixels = (0..w * h * channels)
            .map(|_| ((rng.uniform() + 1.0) * 127.5) as u8)
            .collect();
        let img = Image8 {
            width: w,
            height: h,
            channels,
            pixels,
        };
        images::write_png(&dir.join(format!("{name}_{i:03}.png")), &img, &[]).unwrap();
    }
}

#[test]
fn fid_command_refuses_bad_input() {
    let dir = temp_dir("bad");
    let stats = fixture("fid_stats_full_a.npz");
    let stats = stats.to_str().unwrap();
    let folder = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // Mixed sizes: pytorch-fid cannot stack them into a batch either.
    let mixed = folder("mixed");
    write_pngs(&mixed, "a", 2, (28, 28), 1, 1);
    write_pngs(&mixed, "b", 1, (32, 32), 3, 2);
    // One image: no covariance.
    let single = folder("single");
    write_pngs(&single, "a", 1, (28, 28), 1, 3);
    let jpeg = folder("jpeg");
    write_pngs(&jpeg, "a", 2, (28, 28), 1, 4);
    std::fs::write(jpeg.join("photo.jpg"), b"not read").unwrap();
    let empty = folder("empty");
    let small = dir.join("small.npz");
    wgsl_diff::npz::write(
        &small,
        &[("mu", &[3], &[0.0; 3]), ("sigma", &[3, 3], &[0.0; 9])],
    )
    .unwrap();
    let shapes = dir.join("shapes.npz");
    wgsl_diff::npz::write(
        &shapes,
        &[("mu", &[4], &[0.0; 4]), ("sigma", &[3, 3], &[0.0; 9])],
    )
    .unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![path(&mixed), stats.into()], "images differ in size"),
        (
            vec![path(&single), stats.into()],
            "holds 1 image(s); a covariance needs at least 2",
        ),
        (vec![path(&empty), stats.into()], "holds 0 image(s)"),
        (vec![path(&jpeg), stats.into()], "photo.jpg is not a PNG"),
        (
            vec![path(&shapes), stats.into()],
            "sigma has shape [3, 3], expected [4, 4]",
        ),
        (
            vec![path(&small), stats.into()],
            "feature dimensions differ",
        ),
        (
            vec![path(&dir.join("missing")), stats.into()],
            "does not exist",
        ),
    ];
    for (sources, expected) in cases {
        let out = wgsl_diff(&["fid", "--real", &sources[0], "--fake", &sources[1]]);
        assert_clean_failure(&out, &format!("fid {sources:?}"), expected);
    }
    let out = wgsl_diff(&["fid", "--real", stats]);
    assert!(!out.status.success(), "--real without --fake");
}

#[test]
fn run_folders_use_their_samples_and_other_folders_every_png() {
    let dir = temp_dir("folders");
    // A run folder (or filtered/kept): samples, beside a heatmap and a grid of other sizes.
    write_pngs(&dir, "sample", 3, (28, 28), 1, 5);
    write_pngs(&dir, "heatmap", 1, (28, 28), 3, 6);
    write_pngs(&dir, "grid", 1, (90, 60), 1, 7);
    let (images, description) = wgsl_diff::image_sets::load_images(&dir).unwrap();
    assert_eq!(images.len(), 3, "{description}");
    // A plain folder: every PNG, grayscale and RGB mixed (both become RGB).
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    write_pngs(&plain, "a", 2, (28, 28), 1, 8);
    write_pngs(&plain, "b", 2, (28, 28), 3, 9);
    let (images, _) = wgsl_diff::image_sets::load_images(&plain).unwrap();
    assert_eq!(images.len(), 4);
}
