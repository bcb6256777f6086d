//! What the parser fuzz harness (`tests/fuzz`) found, each input kept as a regression (issue 26):
//! every one was accepted, read wrong, panicked or could hang before its fix. No GPU.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgsl-diff-findings-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn error<T: std::fmt::Debug>(r: wgsl_diff::Result<T>, what: &str) -> String {
    r.expect_err(what).to_string()
}

/// A `.npy` file whose header is `header` (padded as numpy pads it) over `payload`.
fn npy(header: &str, payload: &[u8]) -> Vec<u8> {
    let mut header = header.to_string();
    let unpadded = 10 + header.len() + 1;
    header += &" ".repeat(unpadded.next_multiple_of(64) - unpadded);
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(payload);
    out
}

/// `.npy` headers are read as numpy reads them: `fortran_order` other than True or False, and
/// keys numpy does not define, were accepted (the first as C order) by a reader that searched
/// the text for its three keys; other spellings numpy writes or reads are accepted.
#[test]
fn npy_headers_are_read_as_numpy_reads_them() {
    let d = dir("npy");
    let path = d.join("a.npy");
    let payload = [0u8; 8];
    for (header, expected) in [
        (
            "{'descr': '<f4', 'fortran_order': 1, 'shape': (2,), }",
            "neither True nor False",
        ),
        (
            "{'descr': '<f4', 'fortran_order': None, 'shape': (2,), }",
            "neither True nor False",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 0, }",
            "unknown header key 'extra'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2), }",
            "not a tuple",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (02,), }",
            "not a tuple",
        ),
    ] {
        std::fs::write(&path, npy(header, &payload)).unwrap();
        let err = error(wgsl_diff::npy::read(&path), header);
        assert!(err.contains(expected), "{header}: {err}");
    }
    let same = "{\"shape\" :(2 ,),\"fortran_order\":False,\"descr\":\"<f4\"}";
    std::fs::write(&path, npy(same, &payload)).unwrap();
    assert_eq!(
        wgsl_diff::npy::read(&path).unwrap(),
        (vec![2], vec![0.0, 0.0])
    );
}

/// A zip with a stored `.npy` member per (name, bytes), as numpy's `np.savez` writes them.
fn zip(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        let fields = |v: &mut Vec<u8>| {
            v.extend([0, 0, 0, 0, 0, 0]);
            v.extend(crc.sum().to_le_bytes());
            v.extend((data.len() as u32).to_le_bytes());
            v.extend((data.len() as u32).to_le_bytes());
            v.extend((name.len() as u16).to_le_bytes());
            v.extend([0, 0]);
        };
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0]);
        fields(&mut out);
        out.extend(name.as_bytes());
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0]);
        fields(&mut central);
        central.extend([0; 10]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd.to_le_bytes());
    out.extend([0, 0]);
    out
}

/// Two members of one name in a `.npz` (`mu.npy` and `mu`): the reader kept the last one
/// silently; which one pytorch-fid meant cannot be known.
#[test]
fn npz_members_of_one_name_are_refused() {
    let d = dir("npz");
    let one = |v: f64| {
        npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
            &v.to_le_bytes(),
        )
    };
    let path = d.join("twice.npz");
    std::fs::write(&path, zip(&[("mu.npy", one(1.0)), ("mu", one(2.0))])).unwrap();
    let err = error(wgsl_diff::npz::read(&path), "two members named mu");
    assert!(err.contains("two members are named mu"), "{err}");
    std::fs::write(&path, zip(&[("mu.npy", one(1.0)), ("nu", one(2.0))])).unwrap();
    assert_eq!(wgsl_diff::npz::read(&path).unwrap().len(), 2);
}

/// FID statistics with covariances near 1e300 gave a finite, wrong distance of a Gaussian to
/// itself (8.7e299: the product overflowed to NaN eigenvalues, clamped to 0); it is now ≈ 0.
#[test]
fn huge_covariances_give_a_distance_of_zero_to_themselves() {
    use nalgebra::{DMatrix, DVector};
    use wgsl_diff::metrics::{frechet_distance, FeatureGaussian};
    let sigma = DMatrix::from_row_slice(2, 2, &[2e299, 1e299, 1e299, 3e299]);
    let g = FeatureGaussian::from_moments(DVector::from_vec(vec![0.5, -0.5]), sigma);
    let fd = frechet_distance(&g, &g).unwrap();
    assert!(fd.abs() <= 1e-9 * g.covariance.trace(), "{fd}");
}

/// A threshold file's calibration record is refused when `calibrate` cannot have written it:
/// a percentile of 3, 2^63 samples, a timestep past any schedule, more timesteps than the file
/// has steps (each was accepted, the record trusted as it was).
#[test]
fn calibration_records_outside_what_calibrate_writes_are_refused() {
    use wgsl_diff::guidance::{CalibratedThreshold, Calibration, GuidanceRule};
    let d = dir("thresholds");
    let path = d.join("thr.npy");
    wgsl_diff::npy::write(&path, &[2, 1, 1, 1], &[0.5, 0.25]).unwrap();
    let valid = Calibration {
        rule: GuidanceRule::Posterior,
        copies: 3,
        percentile: 0.95,
        timesteps: vec![900, 400],
        model: "model.safetensors".into(),
        samples: 64,
        seed: 7,
    };
    let record = d.join("thr.npy.json");
    let load = |c: &Calibration| {
        std::fs::write(&record, serde_json::to_string(c).unwrap()).unwrap();
        CalibratedThreshold::load(&path, 2, [1, 1, 1])
    };
    assert_eq!(load(&valid).unwrap().calibration.as_ref(), Some(&valid));
    for (bad, expected) in [
        (
            Calibration {
                percentile: 3.0,
                ..valid.clone()
            },
            "percentile 3",
        ),
        (
            Calibration {
                samples: 1 << 63,
                ..valid.clone()
            },
            "samples",
        ),
        (
            Calibration {
                timesteps: vec![900, 100_000],
                ..valid.clone()
            },
            "timestep 100000",
        ),
        (
            Calibration {
                timesteps: vec![900, 400, 100],
                ..valid.clone()
            },
            "3 timesteps",
        ),
        (
            Calibration {
                rule: GuidanceRule::Gradient,
                copies: 1,
                ..valid.clone()
            },
            "M = 1",
        ),
    ] {
        let err = error(load(&bad), expected);
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

/// PNG text as a run folder reads it: compressed (zTXt) and international (iTXt) chunks, which
/// tools rewrite tEXt into, were ignored (the sample lost its score and class); a keyword given
/// twice kept the last; a PNG copied under another sample's name lent it its score; a step
/// given twice in the per-step scores kept the last.
#[test]
fn sample_png_text_is_read_whole_and_unambiguous() {
    let d = dir("png");
    let write = |chunks: &[(&str, &str, u8)]| {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 1, 1);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        for &(k, v, kind) in chunks {
            match kind {
                0 => enc.add_text_chunk(k.into(), v.into()),
                1 => enc.add_ztxt_chunk(k.into(), v.into()),
                _ => enc.add_itxt_chunk(k.into(), v.into()),
            }
            .unwrap();
        }
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[7]).unwrap();
        w.finish().unwrap();
        std::fs::write(d.join("sample_000004.png"), out).unwrap();
    };
    write(&[
        ("index", "4", 0),
        ("uncertainty_score", "2.5", 1),
        ("class", "3", 2),
    ]);
    let records = wgsl_diff::run_dir::collect(&d, &[4]).unwrap();
    assert_eq!((records[0].score, records[0].class), (Some(2.5), Some(3)));
    for (chunks, expected) in [
        (
            vec![
                ("uncertainty_score", "2.5", 0),
                ("uncertainty_score", "1.5", 1),
            ],
            "\"uncertainty_score\" appears twice",
        ),
        (vec![("index", "5", 0)], "holds sample 5, not 4"),
        (
            vec![("uncertainty_step_scores", "0:1.5,0:2.5", 0)],
            "bad uncertainty_step_scores",
        ),
    ] {
        write(&chunks);
        let err = error(wgsl_diff::run_dir::collect(&d, &[4]), expected);
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

/// A key given twice at any depth of a JSON input is refused: `run.json` with its seed twice
/// claimed the folder for whichever seed came last, `samples.json` and configs kept the last
/// value of a nested key.
#[test]
fn json_inputs_with_a_key_twice_are_refused() {
    let d = dir("json");
    let params = serde_json::json!({"seed": 0, "uncertainty": {"M": 5}});
    std::fs::write(
        d.join("run.json"),
        r#"{"seed": 1, "seed": 0, "uncertainty": {"M": 5}}"#,
    )
    .unwrap();
    let err = error(wgsl_diff::run_dir::shared::claim(&d, &params), "seed twice");
    assert!(err.contains("`seed` appears twice"), "{err}");
    std::fs::write(
        d.join("samples.json"),
        r#"{"parameters": {"uncertainty": {"M": 5, "M": 3}}, "samples": []}"#,
    )
    .unwrap();
    let err = error(wgsl_diff::run_dir::read_manifest(&d).map(|_| ()), "M twice");
    assert!(err.contains("`M` appears twice"), "{err}");
}

/// Scores survive `samples.json` exactly: serde_json's default float parser read some back one
/// unit in the last place off what it wrote (100.20056990691617 as ...616).
#[test]
fn manifest_scores_read_back_exactly() {
    let d = dir("round-trip");
    let score = 100.200_569_906_916_17_f64;
    let record = serde_json::json!({"index": 0, "file": "sample_000000.png", "score": score});
    let manifest = serde_json::json!({"parameters": {}, "samples": [record]});
    std::fs::write(d.join("samples.json"), manifest.to_string()).unwrap();
    let read = wgsl_diff::run_dir::read_manifest(&d).unwrap();
    assert_eq!(
        read.samples[0].score.map(f64::to_bits),
        Some(score.to_bits())
    );
}

/// An ADM config with a key `UNetModel` does not take (a misspelling) was accepted, the key
/// ignored and its default used.
#[test]
fn adm_configs_refuse_unknown_keys() {
    let config = r#"{"image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 3,
        "num_res_blocks": 1, "num_heads_upsampel": 2}"#;
    let err = serde_json::from_str::<wgsl_diff::models::AdmConfig>(config).unwrap_err();
    assert!(err.to_string().contains("num_heads_upsampel"), "{err}");
}

/// ADM sizes are bounded like every other model's: 65 levels passed validation (the level
/// factor `1 << 64` overflowed — to 1 in a release build, a panic with overflow checks, where
/// the harness found it) and in_channels 2^63 was taken.
#[test]
fn adm_configs_are_bounded() {
    let config = |extra: &str| {
        let text =
            format!(r#"{{"image_size": 16, "model_channels": 32, "num_res_blocks": 1, {extra}}}"#);
        let c: wgsl_diff::models::AdmConfig = serde_json::from_str(&text).unwrap();
        c.validate().map_err(|e| e.to_string())
    };
    let ok = config(r#""in_channels": 3, "out_channels": 3, "channel_mult": [1.0, 2.0]"#);
    assert!(ok.is_ok(), "{ok:?}");
    let levels = vec!["1.0"; 65].join(", ");
    let err = config(&format!(
        r#""in_channels": 3, "out_channels": 3, "channel_mult": [{levels}]"#
    ))
    .unwrap_err();
    assert!(err.contains("channel_mult levels is 65"), "{err}");
    let huge = 1u64 << 63;
    let err = config(&format!(
        r#""in_channels": {huge}, "out_channels": {huge}, "channel_mult": [1.0]"#
    ))
    .unwrap_err();
    assert!(err.contains("in_channels is 9223372036854775808"), "{err}");
}

fn idx(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for v in [count, rows, cols] {
        out.extend(v.to_be_bytes());
    }
    out.extend(pixels);
    out
}

/// idx files: images of no pixels (0 rows) panicked (`chunks(0)`) in `eval`'s and `fid`'s
/// reader, and a small gzip file inflated in full whatever its header promised (a bomb fills
/// the memory); it now stops one byte past the promise.
#[test]
fn idx_files_of_empty_images_or_inflating_past_their_header_are_refused() {
    let d = dir("idx");
    let path = d.join("images-idx3-ubyte");
    std::fs::write(&path, idx(2, 0, 5, &[])).unwrap();
    let err = error(wgsl_diff::image_sets::load_images(&path), "0 rows");
    assert!(err.contains("no pixels"), "{err}");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&idx(2, 1, 1, &[])).unwrap();
    gz.write_all(&vec![0u8; 64 << 20]).unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let err = error(wgsl_diff::image_sets::load_images(&path), "a bomb");
    assert!(err.contains("holds more than 2"), "{err}");
}

/// Runs `f` on a thread; None when it has not returned within 10 s (it hangs).
fn within_10_s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(10)).ok()
}

fn fifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// A FIFO where a run folder's `run.json` or a sample PNG should be was read until a writer
/// came (forever); both are refused at once as not regular files.
#[test]
fn folder_files_that_are_not_regular_files_are_refused_at_once() {
    let d = dir("fifo");
    fifo(&d.join("run.json"));
    let folder = d.clone();
    let claimed = within_10_s(move || {
        wgsl_diff::run_dir::shared::claim(&folder, &serde_json::json!({}))
            .map_err(|e| e.to_string())
    });
    let err = claimed.expect("claim hangs on a FIFO").unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    fifo(&d.join("sample_000000.png"));
    let folder = d.clone();
    let read = within_10_s(move || {
        wgsl_diff::run_dir::collect(&folder, &[0])
            .map(|r| r.len())
            .map_err(|e| e.to_string())
    });
    let err = read.expect("collect hangs on a FIFO").unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
}
