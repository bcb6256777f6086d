//! Radix select against a CPU sort, bit for bit: the order statistics on both GPU paths, the
//! interpolated quantile in torch's f32 arithmetic, and torch.quantile's own output (fixture).

mod common;

use common::{fixture, gpu, read, read_safetensors, reference as r, upload};
use wgsl_diff::ops::{self, SelectPath};
use wgsl_diff::splitmix::SplitMix64;
use wgsl_diff::Error;

const PATHS: [SelectPath; 2] = [SelectPath::OneWorkgroup, SelectPath::Chunked];

/// Kinds of rows that stress the keys, the histograms and the interpolation.
#[derive(Clone, Copy, Debug)]
enum Family {
    /// Uniform in [−1, 1) times a power of two per row.
    Uniform,
    /// Five distinct values, −0 and +0 among them: long runs of equal keys.
    Ties,
    /// One value repeated.
    AllEqual,
    /// ±0 with a few ±1.
    Zeros,
    /// Subnormals of both signs, some zeros and the smallest normals.
    Subnormal,
    /// ±Inf mixed into uniform values.
    Infinite,
    /// Any non-NaN bit pattern: every exponent, subnormals, ±Inf.
    Bits,
}

const FAMILIES: [Family; 7] = [
    Family::Uniform,
    Family::Ties,
    Family::AllEqual,
    Family::Zeros,
    Family::Subnormal,
    Family::Infinite,
    Family::Bits,
];

struct Gen(SplitMix64);

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen(SplitMix64::new(seed))
    }
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
    fn uniform(&mut self) -> f32 {
        self.0.symmetric() as f32
    }
    fn not_nan_bits(&mut self) -> f32 {
        loop {
            let v = f32::from_bits(self.0.next_u64() as u32);
            if !v.is_nan() {
                return v;
            }
        }
    }
    fn value(&mut self, family: Family, scale: f32) -> f32 {
        match family {
            Family::Uniform => self.uniform() * scale,
            Family::Ties => [-2.0, -0.0, 0.0, 1.0, 3.5][self.below(5)],
            Family::AllEqual => scale,
            Family::Zeros => [-0.0, 0.0, 0.0, -0.0, 1.0, -1.0][self.below(6)],
            Family::Subnormal => match self.below(4) {
                0 => f32::MIN_POSITIVE,
                1 => -0.0,
                _ => f32::from_bits((self.0.next_u64() as u32) & 0x807f_ffff),
            },
            Family::Infinite => match self.below(6) {
                0 => f32::INFINITY,
                1 => f32::NEG_INFINITY,
                _ => self.uniform(),
            },
            Family::Bits => self.not_nan_bits(),
        }
    }
    /// `rows` rows of `len` values; each row has its own scale.
    fn rows(&mut self, family: Family, rows: usize, len: usize) -> Vec<f32> {
        let mut data = Vec::with_capacity(rows * len);
        for _ in 0..rows {
            let scale = 2f32.powi(self.below(40) as i32 - 20);
            data.extend((0..len).map(|_| self.value(family, scale)));
        }
        data
    }
}

/// (rows, len): one element, two, odd and non-power-of-two lengths, a length just past a
/// chunk of the multi-workgroup path, many short rows, and the size of a CIFAR image.
const SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (3, 2),
    (2, 7),
    (4, 255),
    (3, 257),
    (2, 1000),
    (256, 5),
    (2, 3 * 32 * 32),
    (1, 8192 + 77),
];

fn same_bits(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
}

/// Asserts bit equality (any NaN equals any NaN) element by element.
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            same_bits(g, w),
            "{what}: element {i} is {g:e} ({:#010x}), want {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// The ranks worth checking in a row of `len`: both ends, the middle, a random one.
fn ranks(gen: &mut Gen, len: usize) -> Vec<usize> {
    let mut ks = vec![0, len - 1, len / 2, gen.below(len)];
    ks.dedup();
    ks
}

#[test]
fn order_statistics_are_the_sorted_elements_on_both_paths() {
    let mut gen = Gen::new(1);
    for family in FAMILIES {
        for (rows, len) in SHAPES {
            let data = gen.rows(family, rows, len);
            let x = upload(&data, &[rows, len]);
            for k in ranks(&mut gen, len) {
                let want: Vec<f32> = data
                    .chunks(len)
                    .flat_map(|row| {
                        let (a, b) = r::order_statistics_f32(row, k);
                        [a, b]
                    })
                    .collect();
                for path in PATHS {
                    let got = read(&ops::order_statistics(gpu(), &x, k, path).unwrap());
                    assert_bits(
                        &format!("{family:?} {rows}x{len} k={k} {path:?}"),
                        &got,
                        &want,
                    );
                }
            }
        }
    }
}

const LEVELS: [f64; 7] = [0.0, 1.0, 0.95, 0.5, 1.0 / 3.0, 0.25, 0.999];

#[test]
fn quantiles_match_torch_arithmetic_on_both_paths() {
    let mut gen = Gen::new(2);
    for family in FAMILIES {
        for (rows, len) in SHAPES {
            let data = gen.rows(family, rows, len);
            let x = upload(&data, &[rows, len]);
            for p in LEVELS {
                let want: Vec<f32> = data
                    .chunks(len)
                    .map(|row| r::quantile_f32(row, p))
                    .collect();
                for path in PATHS {
                    let got = read(&ops::quantile_per_sample_with(gpu(), &x, p, path).unwrap());
                    assert_bits(
                        &format!("{family:?} {rows}x{len} p={p} {path:?}"),
                        &got,
                        &want,
                    );
                }
            }
        }
    }
}

/// Rows of two values make the quantile lerp(min, max, f32(p)) itself, so thousands of pairs
/// test the shader's integer fma against a correctly rounded one: random bit patterns (every
/// exponent gap, subnormals, overflow to ±Inf), near neighbours (cancellation, ties of the
/// rounding) and subnormal pairs, on both of torch's lerp branches and at w = 0.5.
#[test]
fn interpolation_is_torch_lerp_with_one_rounding() {
    let mut gen = Gen::new(3);
    let pairs = 4096;
    let mut data = Vec::with_capacity(2 * pairs);
    for i in 0..pairs {
        let a = gen.not_nan_bits();
        let b = match i % 4 {
            0 => gen.not_nan_bits(),
            1 => f32::from_bits(a.to_bits().wrapping_add(gen.below(64) as u32)),
            2 => f32::from_bits(a.to_bits() ^ (1 << gen.below(31))),
            _ => f32::from_bits(gen.0.next_u64() as u32 & 0x807f_ffff),
        };
        data.extend([a, if b.is_nan() { a } else { b }]);
    }
    let x = upload(&data, &[pairs, 2]);
    for p in [0.3, 0.5, 0.7, 1e-4, 0.9999, 0.1, 0.8125] {
        let want: Vec<f32> = data.chunks(2).map(|row| r::quantile_f32(row, p)).collect();
        let got = read(&ops::quantile_per_sample(gpu(), &x, p).unwrap());
        assert_bits(&format!("pairs p={p}"), &got, &want);
    }
}

/// A row past 2^20 elements takes the multi-workgroup path (many chunks per row).
#[test]
fn long_rows_over_a_million_values() {
    let mut gen = Gen::new(4);
    let len = (1 << 20) + 37;
    // Ties at a coarse grid around a continuous body, as an uncertainty map can have.
    let data: Vec<f32> = (0..2 * len)
        .map(|i| {
            let v = gen.uniform().abs();
            if i % 5 == 0 {
                (v * 16.0).round() / 16.0
            } else {
                v
            }
        })
        .collect();
    let x = upload(&data, &[2, len]);
    for p in [0.95, 0.5] {
        let want: Vec<f32> = data
            .chunks(len)
            .map(|row| r::quantile_f32(row, p))
            .collect();
        let got = read(&ops::quantile_per_sample(gpu(), &x, p).unwrap());
        assert_bits(&format!("2x{len} p={p}"), &got, &want);
    }
    let k = len - 12345;
    let want: Vec<f32> = data
        .chunks(len)
        .flat_map(|row| {
            let (a, b) = r::order_statistics_f32(row, k);
            [a, b]
        })
        .collect();
    let got = read(&ops::order_statistics(gpu(), &x, k, SelectPath::Auto).unwrap());
    assert_bits(&format!("2x{len} k={k}"), &got, &want);
}

#[test]
fn a_row_with_nan_yields_nan_and_never_a_number() {
    let mut gen = Gen::new(5);
    let (rows, len) = (4, 300);
    let mut data = gen.rows(Family::Uniform, rows, len);
    data[len + 17] = f32::NAN; // sample 1
    data[3 * len] = -f32::NAN; // sample 3: a negative NaN sorts first by its key
    let x = upload(&data, &[rows, len]);
    for path in PATHS {
        for p in [0.0, 0.95, 1.0] {
            let got = read(&ops::quantile_per_sample_with(gpu(), &x, p, path).unwrap());
            let want: Vec<f32> = data
                .chunks(len)
                .map(|row| r::quantile_f32(row, p))
                .collect();
            assert!(
                got[1].is_nan() && got[3].is_nan(),
                "{path:?} p={p}: {got:?}"
            );
            assert_bits(&format!("nan rows {path:?} p={p}"), &got, &want);
        }
        let stats = read(&ops::order_statistics(gpu(), &x, 0, path).unwrap());
        assert!(stats[2..4].iter().chain(&stats[6..8]).all(|v| v.is_nan()));
        assert!(stats[..2].iter().chain(&stats[4..6]).all(|v| !v.is_nan()));
    }
    let err = ops::quantiles(gpu(), &x, 0.95).unwrap_err().to_string();
    assert!(
        err.contains("sample 1") && err.contains("contains NaN"),
        "{err}"
    );
    // torch's lerp of +Inf with itself is NaN as well, for another reason.
    let x = upload(&[1.0, f32::INFINITY], &[1, 2]);
    let err = ops::quantiles(gpu(), &x, 1.0).unwrap_err().to_string();
    assert!(
        err.contains("sample 0") && err.contains("interpolation"),
        "{err}"
    );
    let clean = upload(&data[..len], &[1, len]);
    let want = r::quantile_f32(&data[..len], 0.95);
    assert_bits(
        "quantiles",
        &ops::quantiles(gpu(), &clean, 0.95).unwrap(),
        &[want],
    );
}

#[test]
fn bad_levels_and_shapes_are_errors() {
    let x = upload(&[1.0, 2.0, 3.0], &[1, 3]);
    for p in [-0.01, 1.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = ops::quantile_per_sample(gpu(), &x, p).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "p = {p}: {e}");
        assert!(matches!(
            ops::quantiles(gpu(), &x, p),
            Err(Error::Invalid(_))
        ));
    }
    assert!(ops::order_statistics(gpu(), &x, 3, SelectPath::Auto).is_err());
    let scalar = upload(&[1.0], &[]);
    assert!(ops::quantile_per_sample(gpu(), &scalar, 0.5).is_err());
    let empty = gpu().zeros(&[2, 0]).unwrap();
    assert!(ops::quantile_per_sample(gpu(), &empty, 0.5).is_err());
}

/// torch.quantile's own output (tools/fixtures/quantile.py, float32 input): equal values
/// everywhere and equal bits wherever the result is not a zero (the sign of a zero may
/// differ, see ops::quantile_per_sample). The fixture includes rows where torch's fused lerp
/// and a separately rounded one disagree, and ranks whose fraction differs in f32 and f64.
#[test]
fn matches_torch_quantile_fixture() {
    let tensors = read_safetensors(&fixture("quantile_torch.safetensors"));
    let mut cases: Vec<&String> = tensors.keys().filter(|k| k.ends_with("/x")).collect();
    cases.sort();
    assert!(cases.len() >= 4, "fixture cases: {cases:?}");
    for case_x in cases {
        let case = case_x.trim_end_matches("/x");
        let (shape, data) = &tensors[case_x];
        let (_, levels) = &tensors[&format!("{case}/p")];
        let (_, want) = &tensors[&format!("{case}/q")];
        let x = upload(data, shape);
        for (j, &p) in levels.iter().enumerate() {
            let want = &want[j * shape[0]..(j + 1) * shape[0]];
            for path in PATHS {
                let got = read(&ops::quantile_per_sample_with(gpu(), &x, p as f64, path).unwrap());
                for (b, (&g, &w)) in got.iter().zip(want).enumerate() {
                    let ok = same_bits(g, w) || (g == 0.0 && w == 0.0);
                    assert!(ok, "{case} p={p} {path:?} sample {b}: {g:e}, torch {w:e}");
                }
            }
        }
    }
}
