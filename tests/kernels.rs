//! Every kernel against its f64 reference on awkward shapes (sizes 1, odd, off-tile, batch > 1).

mod common;

use common::{
    assert_close, attention_gpus, attention_path, gemm_gpu, gemm_gpus, gpu, read, read_from,
    reference as r, tiled_variants, to_f64, upload, upload_to, Rng, CONV_CASES,
};
use wgsl_diff::gpu::{AdapterChoice, Gpu, KernelClass};
use wgsl_diff::ops::{self, Conv2dArgs};

#[test]
fn adapter_is_vulkan_when_requested() {
    let g = gpu();
    eprintln!("{}", g.describe());
    if std::env::var("WGPU_BACKEND").is_ok_and(|b| b.eq_ignore_ascii_case("vulkan")) {
        assert_eq!(g.info.backend, wgpu::Backend::Vulkan);
    }
}

/// lavapipe runs a subgroup as its SIMD lanes, 32 bits each ("llvmpipe (LLVM 15.0.6, 256 bits)":
/// 8), and the blocked kernels share their weight rows across all of them (4, 8 or 16 divide
/// the blocks' 16 rows); other counts are refused.
#[test]
fn lavapipe_lanes_are_its_simd_width() {
    let g = gpu();
    let Some(bits) = llvmpipe_bits(g) else {
        return;
    };
    if g.kernel_class() == KernelClass::Blocked {
        assert_eq!(g.lanes() * 32, bits, "{}", g.describe());
    }
    let again = || Gpu::new(&AdapterChoice::Default).expect("the adapter opens again");
    assert!(again().with_lanes(3).is_err());
    assert_eq!(again().with_lanes(1).unwrap().lanes(), 1);
}

/// The vector width in an llvmpipe adapter's name, `None` for other adapters.
fn llvmpipe_bits(g: &Gpu) -> Option<u32> {
    let rest = g.info.name.strip_prefix("llvmpipe")?;
    let (head, _) = rest.split_once(" bits")?;
    head.rsplit(' ').next()?.parse().ok()
}

/// The tests of the kernels that share rows across a subgroup, run again by
/// [`gemm_kernels_at_every_llvmpipe_width`] at lavapipe's other widths.
const LANE_TESTS: [&str; 4] = [
    "lavapipe_lanes_are_its_simd_width",
    "conv2d_matches_reference",
    "conv2d_fused_residual_and_no_bias",
    "matmul_and_linear_match_reference",
];

/// `LANE_TESTS` in a child of this test binary at each llvmpipe vector width other than the
/// host's (LP_NATIVE_VECTOR_WIDTH 128, 256, 512: subgroups of 4, 8 and 16 lanes), so the row
/// sharing meets the f64 references at every subgroup size lavapipe has, on any host.
#[test]
fn gemm_kernels_at_every_llvmpipe_width() {
    const WIDTH: &str = "LP_NATIVE_VECTOR_WIDTH";
    let g = gpu();
    let Some(own) = llvmpipe_bits(g) else {
        return;
    };
    if std::env::var_os(WIDTH).is_some() {
        return; // a child, or a run at a chosen width
    }
    for bits in [128, 256, 512].into_iter().filter(|&b| b != own) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "--test-threads", "1"])
            .args(LANE_TESTS)
            .env(WIDTH, bits.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("{} passed", LANE_TESTS.len())),
            "at {bits} bits:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The cases of `CONV_CASES` each tiled variant (tile shape, split-K, checks: `tiled_variants`)
/// also meets: stride 2 with 67 output channels (off the vec4 padding and every tile), 70 output
/// channels, a 5×5 kernel, stride 2 with extra bottom/right padding, a 1×1 kernel, 64 output
/// channels, 70 input channels (K tiles walking channels within each tap) and a 1×1 kernel on 33.
const VARIANT_CASES: [usize; 8] = [2, 4, 5, 6, 9, 11, 13, 14];

/// Both kernel classes on every case, and each tiled variant on [`VARIANT_CASES`].
#[test]
fn conv2d_matches_reference() {
    let mut rng = Rng::new(1);
    for (i, (b, ci, h, w, co, k, stride, pad, extra)) in CONV_CASES.into_iter().enumerate() {
        let x = rng.vec(b * ci * h * w);
        let wt = rng.vec(co * ci * k * k);
        let bias = rng.vec(co);
        let (want, ho, wo) = r::conv2d(
            &to_f64(&x),
            (b, ci, h, w),
            &to_f64(&wt),
            (co, k, k),
            Some(&to_f64(&bias)),
            stride,
            pad,
            extra,
        );
        let args = Conv2dArgs {
            stride,
            padding: pad,
            pad_bottom_right: extra,
            ..Default::default()
        };
        let variants = match VARIANT_CASES.contains(&i) {
            true => tiled_variants(),
            false => &[],
        };
        for g in gemm_gpus().into_iter().chain(variants) {
            let (x, wt, bias) = (
                upload_to(g, &x, &[b, ci, h, w]),
                upload_to(g, &wt, &[co, ci, k, k]),
                upload_to(g, &bias, &[co]),
            );
            let y = ops::conv2d(g, &x, &wt, Some(&bias), args).unwrap();
            assert_eq!(y.shape(), [b, co, ho, wo]);
            // The layout made once at load gives the same result as the per-call one, and
            // gives the weight back as stored.
            let prepared = ops::ConvWeight::new(g, wt.clone()).unwrap();
            let y_p = ops::conv2d_prepared(g, &x, &prepared, Some(&bias), args).unwrap();
            assert_eq!(read_from(g, &y_p), read_from(g, &y));
            assert_eq!(read_from(g, &prepared.oihw(g).unwrap()), read_from(g, &wt));
            assert_close(
                &format!(
                    "conv2d {} {:?}",
                    gemm_gpu(g),
                    (b, ci, h, w, co, k, stride, pad, extra)
                ),
                &read_from(g, &y),
                &want,
                1e-5,
                1e-4,
            );
        }
    }
}

/// The fused epilogue (residual, scale, and ReLU on every other device) on both classes and in
/// each tiled variant, so split-K's reduce carries it.
#[test]
fn conv2d_fused_residual_and_no_bias() {
    let mut rng = Rng::new(2);
    let (b, ci, h, w, co) = (2, 6, 5, 9, 7);
    let x = rng.vec(b * ci * h * w);
    let wt = rng.vec(co * ci * 9);
    let res = rng.vec(b * co * h * w);
    let (conv, _, _) = r::conv2d(
        &to_f64(&x),
        (b, ci, h, w),
        &to_f64(&wt),
        (co, 3, 3),
        None,
        1,
        1,
        0,
    );
    let fused: Vec<f64> = conv
        .iter()
        .zip(&res)
        .map(|(c, r)| (c + *r as f64) * 0.5)
        .collect();
    for (i, g) in gemm_gpus().into_iter().chain(tiled_variants()).enumerate() {
        let relu = i % 2 == 1;
        let residual = upload_to(g, &res, &[b, co, h, w]);
        let args = Conv2dArgs {
            padding: 1,
            residual: Some(&residual),
            out_scale: 0.5,
            relu,
            ..Default::default()
        };
        let y = ops::conv2d(
            g,
            &upload_to(g, &x, &[b, ci, h, w]),
            &upload_to(g, &wt, &[co, ci, 3, 3]),
            None,
            args,
        )
        .unwrap();
        let want: Vec<f64> = fused
            .iter()
            .map(|&v| if relu { v.max(0.0) } else { v })
            .collect();
        let what = format!("conv2d residual {} relu {relu}", gemm_gpu(g));
        assert_close(&what, &read_from(g, &y), &want, 1e-5, 1e-4);
    }
}

#[test]
fn conv2d_rejects_bad_shapes() {
    let x = upload(&[0.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4]);
    let w = upload(&[0.0; 5 * 2 * 9], &[5, 2, 3, 3]);
    let err = ops::conv2d(gpu(), &x, &w, None, Conv2dArgs::padded(1)).unwrap_err();
    assert!(err.to_string().contains("input channels"), "{err}");
}

#[test]
fn matmul_and_linear_match_reference() {
    let mut rng = Rng::new(3);
    // K % 4 = 0 takes the vec4 paths (tiled: both operands along their contiguous axis, so N %
    // 4 = 0 too for a plain product; blocked: plain products with N % 4 = 0), odd K the scalar
    // ones. Every other case also runs in each tiled variant (`tiled_variants`): K of 36 and 100
    // split in 3 uneven slices, bias through split-K's reduce.
    for (i, (batch, m, k, n)) in [
        (1, 1, 1, 1),
        (2, 7, 13, 5),
        (3, 65, 33, 70),
        (3, 65, 36, 70),
        (1, 3, 4, 2),
        (1, 130, 68, 132),
        (1, 130, 17, 64),
        (2, 33, 100, 40),
        (1, 70, 128, 66),
        (2, 37, 64, 45),
        // K, N multiples of 4: the blocked class's linear from a transposed weight.
        (2, 9, 12, 20),
    ]
    .into_iter()
    .enumerate()
    {
        let a = rng.vec(batch * m * k);
        let b = rng.vec(k * n);
        let want_mm = r::matmul(&to_f64(&a), &to_f64(&b), batch, m, k, n, false, None);
        let wt = rng.vec(n * k);
        let bias = rng.vec(n);
        let want_linear = r::matmul(
            &to_f64(&a),
            &to_f64(&wt),
            batch,
            m,
            k,
            n,
            true,
            Some(&to_f64(&bias)),
        );
        let variants = if i % 2 == 1 { tiled_variants() } else { &[] };
        for g in gemm_gpus().into_iter().chain(variants) {
            let what = |op| format!("{op} {} {:?}", gemm_gpu(g), (batch, m, k, n));
            let a_gpu = upload_to(g, &a, &[batch, m, k]);
            let y = ops::matmul(g, &a_gpu, &upload_to(g, &b, &[k, n])).unwrap();
            assert_close(&what("matmul"), &read_from(g, &y), &want_mm, 1e-5, 1e-4);
            let y = ops::linear(
                g,
                &a_gpu,
                &upload_to(g, &wt, &[n, k]),
                Some(&upload_to(g, &bias, &[n])),
            )
            .unwrap();
            assert_eq!(y.shape(), [batch, m, n]);
            assert_close(&what("linear"), &read_from(g, &y), &want_linear, 1e-5, 1e-4);
            // The layout a layer holds (Wᵀ where the device's product is faster with it), and
            // the input gradient through it.
            let prepared = ops::LinearWeight::new(g, upload_to(g, &wt, &[n, k])).unwrap();
            let bias = upload_to(g, &bias, &[n]);
            let y = ops::linear_prepared(g, &a_gpu, &prepared, Some(&bias)).unwrap();
            let what_p = what("linear_prepared");
            assert_close(&what_p, &read_from(g, &y), &want_linear, 1e-5, 1e-4);
            let dy = read_from(g, &y);
            let want_dx = r::matmul(&to_f64(&dy), &to_f64(&wt), batch, m, n, k, false, None);
            let dy = upload_to(g, &dy, &[batch, m, n]);
            let dx = ops::linear_input_grad_prepared(g, &dy, &prepared).unwrap();
            let what_dx = what("linear_input_grad_prepared");
            assert_close(&what_dx, &read_from(g, &dx), &want_dx, 1e-5, 1e-4);
        }
    }
}

#[test]
fn group_norm_matches_reference() {
    let mut rng = Rng::new(4);
    // The 64×64×8-channel case spans several statistics workgroups per group; planes of
    // H·W % 4 = 0 are normalised four elements per invocation (apply4), the others one.
    for (b, c, h, w, groups, silu) in [
        (1, 1, 1, 1, 1, false),
        (2, 6, 5, 3, 3, true),
        (3, 8, 64, 64, 2, false),
        (2, 32, 7, 9, 32, true),
        (2, 12, 2, 6, 4, true),
    ] {
        common::check_group_norm(&mut rng, (b, c, h, w, groups, silu));
    }
}

#[test]
fn elementwise_ops_match_reference() {
    let g = gpu();
    let mut rng = Rng::new(5);
    let (b, c, h, w) = (3, 5, 7, 3);
    let n = b * c * h * w;
    let (xa, xb) = (rng.vec(n), rng.vec(n));
    let shape = [b, c, h, w];
    let (a, bt) = (upload(&xa, &shape), upload(&xb, &shape));
    let fa = to_f64(&xa);
    let fb = to_f64(&xb);

    let want: Vec<f64> = fa.iter().map(|&v| r::silu(v)).collect();
    assert_close("silu", &read(&ops::silu(g, &a).unwrap()), &want, 1e-6, 1e-5);
    let want: Vec<f64> = fa.iter().zip(&fb).map(|(x, y)| 0.3 * x - 1.7 * y).collect();
    assert_close(
        "lincomb",
        &read(&ops::lincomb(g, 0.3, &a, -1.7, &bt).unwrap()),
        &want,
        1e-6,
        1e-5,
    );
    let want: Vec<f64> = fa.iter().zip(&fb).map(|(x, y)| x * y).collect();
    assert_close(
        "mul",
        &read(&ops::mul(g, &a, &bt).unwrap()),
        &want,
        1e-6,
        1e-5,
    );
    let want: Vec<f64> = fa.iter().map(|x| 2.5 * x + 0.25).collect();
    assert_close(
        "affine",
        &read(&ops::affine(g, &a, 2.5, 0.25).unwrap()),
        &want,
        1e-6,
        1e-5,
    );

    let emb = rng.vec(b * 2 * c);
    let want: Vec<f64> = fa
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let (bb, cc) = (i / (c * h * w), (i / (h * w)) % c);
            x * (1.0 + emb[bb * 2 * c + cc] as f64) + emb[bb * 2 * c + c + cc] as f64
        })
        .collect();
    assert_close(
        "scale_shift",
        &read(&ops::scale_shift(g, &a, &upload(&emb, &[b, 2 * c])).unwrap()),
        &want,
        1e-6,
        1e-5,
    );
}

/// Per-channel vector ops, on planes of an odd size and of a multiple of 4 elements (the vec4
/// entry point).
#[test]
fn channel_ops_match_reference() {
    let g = gpu();
    let mut rng = Rng::new(51);
    for (b, c, h, w) in [(3, 5, 7, 3), (2, 3, 2, 6)] {
        let a_host = rng.vec(b * c * h * w);
        let (a, fa) = (upload(&a_host, &[b, c, h, w]), to_f64(&a_host));
        let v = rng.vec(b * c);
        let want: Vec<f64> = fa
            .iter()
            .enumerate()
            .map(|(i, x)| x + v[i / (h * w)] as f64)
            .collect();
        assert_close(
            "add_channel_vec (B,C)",
            &read(&ops::add_channel_vec(g, &a, &upload(&v, &[b, c])).unwrap()),
            &want,
            1e-6,
            1e-5,
        );
        let want: Vec<f64> = fa
            .iter()
            .enumerate()
            .map(|(i, x)| x * v[(i / (h * w)) % c] as f64)
            .collect();
        assert_close(
            "mul_channel_vec (C)",
            &read(&ops::mul_channel_vec(g, &a, &upload(&v[..c], &[c])).unwrap()),
            &want,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn layout_ops_are_exact() {
    let g = gpu();
    let mut rng = Rng::new(6);
    // Planes of 15 elements, and of 8 (the vec4 entry point).
    for (b, h, w) in [(2, 3, 5), (2, 2, 4)] {
        let (c1, c2) = (3, 4);
        let x1 = rng.vec(b * c1 * h * w);
        let x2 = rng.vec(b * c2 * h * w);
        let cat = read(
            &ops::concat_channels(
                g,
                &[&upload(&x1, &[b, c1, h, w]), &upload(&x2, &[b, c2, h, w])],
            )
            .unwrap(),
        );
        for n in 0..b {
            for c in 0..c1 + c2 {
                for p in 0..h * w {
                    let want = if c < c1 {
                        x1[(n * c1 + c) * h * w + p]
                    } else {
                        x2[(n * c2 + c - c1) * h * w + p]
                    };
                    assert_eq!(cat[(n * (c1 + c2) + c) * h * w + p], want);
                }
            }
        }
    }
    let (b, h, w) = (2, 3, 5);
    let (rows, cols) = (7, 3);
    let x = rng.vec(b * rows * cols);
    let t = read(&ops::transpose_last2(g, &upload(&x, &[b, rows, cols])).unwrap());
    for n in 0..b {
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(t[(n * cols + j) * rows + i], x[(n * rows + i) * cols + j]);
            }
        }
    }

    // An odd width, and an even one (four outputs per invocation).
    for (h, w) in [(h, w), (3, 4)] {
        let x = rng.vec(b * 2 * h * w);
        let up = read(&ops::upsample_nearest2x(g, &upload(&x, &[b, 2, h, w])).unwrap());
        for plane in 0..b * 2 {
            for y in 0..2 * h {
                for xx in 0..2 * w {
                    assert_eq!(
                        up[(plane * 2 * h + y) * 2 * w + xx],
                        x[(plane * h + y / 2) * w + xx / 2]
                    );
                }
            }
        }
    }

    let x = rng.vec(b * 2 * h * w);

    let pooled = read(&ops::avg_pool2x(g, &upload(&x, &[b, 2, h, w])).unwrap());
    let want: Vec<f64> = (0..b * 2)
        .flat_map(|plane| (0..h / 2).flat_map(move |y| (0..w / 2).map(move |xx| (plane, y, xx))))
        .map(|(plane, y, xx)| {
            let at = |dy: usize, dx: usize| x[(plane * h + 2 * y + dy) * w + 2 * xx + dx] as f64;
            (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0
        })
        .collect();
    assert_close("avg_pool2x", &pooled, &want, 1e-6, 1e-6);
}

#[test]
fn timestep_embedding_matches_diffusers_definition() {
    let t = [0.0f32, 1.0, 17.0, 999.0, 500.0];
    for (dim, flip, shift) in [(32, true, 0.0), (33, false, 1.0), (128, false, 1.0)] {
        let want = r::timestep_embedding(&to_f64(&t), dim, flip, shift);
        let freqs = ops::timestep_frequencies(gpu(), dim, shift as f32).unwrap();
        let y = ops::timestep_embedding(gpu(), &upload(&t, &[t.len()]), &freqs, dim, flip).unwrap();
        // sin/cos of arguments up to ~1000 in f32: the argument's own rounding is ~6e-5.
        assert_close(
            &format!("timestep_embedding dim={dim} flip={flip}"),
            &read(&y),
            &want,
            2e-4,
            0.0,
        );
        // Given the f32 argument diffusers computes (its f32 frequency times t), the kernel's
        // sin/cos are accurate to the rounding of that product (half an ulp: a compiler may fuse
        // it into the reduction unrounded) plus f32's own: a GPU's own sin/cos of an argument near
        // 1000 is not (NVIDIA's Vulkan driver lost ~1e-4 before the kernel reduced it to [−π, π]).
        let freqs = read(&freqs);
        let half = dim / 2;
        for (i, &f) in freqs.iter().enumerate() {
            let exact = (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp();
            // The f32 exponent (up to ln 10000 ≈ 9.2) carries three roundings (ln 10000, ×i, ÷),
            // each worth at most 2^-24·9.2 ≈ 5.5e-7 of it, which is the freq's relative error,
            // then exp's own 6e-8.
            assert!(
                (f as f64 - exact).abs() <= 1.8e-6 * exact,
                "freq {i}: {f} vs {exact}"
            );
        }
        let y = read(&y);
        for (b, &tb) in t.iter().enumerate() {
            for (i, &f) in freqs.iter().enumerate() {
                let arg = (tb * f) as f64;
                let half_ulp = if arg == 0.0 {
                    0.0
                } else {
                    (arg.abs().log2().floor() - 24.0).exp2()
                };
                let (sin, cos) = arg.sin_cos();
                let (first, second) = if flip { (cos, sin) } else { (sin, cos) };
                for (j, want) in [(i, first), (half + i, second)] {
                    let got = y[b * dim + j] as f64;
                    assert!(
                        (got - want).abs() <= half_ulp + 1e-6,
                        "dim {dim}, t {tb}, element {j}: {got} vs {want} of the f32 argument {arg}"
                    );
                }
            }
        }
    }
}

#[test]
fn embedding_lookup_gathers_rows() {
    let mut rng = Rng::new(7);
    let table = rng.vec(10 * 6);
    let ids = [3.0f32, 0.0, 9.0];
    let y = read(
        &ops::embedding_lookup(gpu(), &upload(&table, &[10, 6]), &upload(&ids, &[3])).unwrap(),
    );
    for (b, &id) in ids.iter().enumerate() {
        assert_eq!(
            &y[b * 6..b * 6 + 6],
            &table[id as usize * 6..id as usize * 6 + 6]
        );
    }
}

#[test]
fn attention_matches_reference() {
    let mut rng = Rng::new(8);
    // (batch, tokens, channels, heads): one key tile, ragged tiles, head dims over one 64-wide chunk.
    for (b, n, c, heads) in [
        (1, 1, 4, 1),
        (2, 37, 16, 2),
        (1, 70, 8, 1),
        (2, 19, 96, 1),
        (1, 33, 256, 1),
        (3, 64, 64, 8),
    ] {
        let (q, k, v) = (rng.vec(b * n * c), rng.vec(b * n * c), rng.vec(b * n * c));
        let scale = 1.0 / ((c / heads) as f64).sqrt();
        let want = r::attention(&to_f64(&q), &to_f64(&k), &to_f64(&v), b, n, c, heads, scale);
        let s = [b, n, c];
        for g in attention_gpus() {
            let y = ops::attention(
                g,
                &upload_to(g, &q, &s),
                &upload_to(g, &k, &s),
                &upload_to(g, &v, &s),
                heads,
                scale as f32,
            )
            .unwrap();
            assert_close(
                &format!("attention {} {:?}", attention_path(g), (b, n, c, heads)),
                &read_from(g, &y),
                &want,
                1e-5,
                1e-4,
            );
        }
    }
}

/// On both classes, attention whose scores exceed one tensor runs in groups of (item, head)
/// pairs that fit: the same output and log-sum-exp.
#[test]
fn attention_in_groups_matches_reference() {
    let mut rng = Rng::new(81);
    // (batch, tokens, channels, heads, score matrices the limit admits before 16-byte rounding):
    // groups of 2 + 2 and 2 + 1.
    let cases = [(2, 37, 16, 2, 3), (3, 20, 8, 1, 2)];
    for class in [KernelClass::Blocked, KernelClass::Tiled] {
        for &(b, n, c, heads, fit) in &cases {
            check_grouped_attention(&mut rng, class, (b, n, c, heads, fit));
        }
    }
}

/// One grouped case on `class`: the output and the log-sum-exp against the f64 references.
fn check_grouped_attention(
    rng: &mut Rng,
    class: KernelClass,
    (b, n, c, heads, fit): (usize, usize, usize, usize, usize),
) {
    let g = Gpu::new(&AdapterChoice::Default)
        .unwrap()
        .with_kernel_class(class)
        .with_max_tensor_bytes((fit * n * n * 4) as u64);
    let (q, k, v) = (rng.vec(b * n * c), rng.vec(b * n * c), rng.vec(b * n * c));
    let scale = 1.0 / ((c / heads) as f64).sqrt();
    let (q64, k64, v64) = (to_f64(&q), to_f64(&k), to_f64(&v));
    let want = r::attention(&q64, &k64, &v64, b, n, c, heads, scale);
    let want_lse = r::attention_lse(&q64, &k64, (b, n, c), heads, scale);
    let s = [b, n, c];
    let (out, lse) = ops::attention_saving(
        &g,
        &upload_to(&g, &q, &s),
        &upload_to(&g, &k, &s),
        &upload_to(&g, &v, &s),
        heads,
        scale as f32,
    )
    .unwrap();
    let what = |t| {
        format!(
            "grouped attention {t} {class:?} {:?}",
            (b, n, c, heads, fit)
        )
    };
    assert_close(&what("out"), &read_from(&g, &out), &want, 1e-5, 1e-4);
    assert_eq!(lse.shape(), [b, heads, n]);
    assert_close(&what("lse"), &read_from(&g, &lse), &want_lse, 1e-5, 1e-4);
}

#[test]
fn philox_reference_matches_random123_known_answers() {
    assert_eq!(
        r::philox4x32_10([0; 4], [0; 2]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        r::philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        r::philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn rng_matches_reference_and_is_batch_invariant() {
    let g = gpu();
    let key = ops::NoiseKey {
        seed: 0x1234_5678_9abc_def0,
        tag: (7 << 32) | 3,
    };
    let row_len = 3 * 5 * 7; // not a multiple of 4
    let all = read(&ops::normal(g, &[6, 3, 5, 7], key, 10).unwrap());
    let want: Vec<f64> = (10..16)
        .flat_map(|s| r::normal_row(key.seed, key.tag, s, row_len))
        .collect();
    assert_close("normal vs f64 Philox + Box-Muller", &all, &want, 2e-5, 1e-5);

    // Same seed and counter → same bits; rows drawn in another split → same values.
    assert_eq!(all, read(&ops::normal(g, &[6, 3, 5, 7], key, 10).unwrap()));
    let tail = read(&ops::normal(g, &[2, 3, 5, 7], key, 14).unwrap());
    assert_eq!(&all[4 * row_len..], &tail[..]);
    let other = read(
        &ops::normal(
            g,
            &[6, 3, 5, 7],
            ops::NoiseKey {
                tag: key.tag + 1,
                ..key
            },
            10,
        )
        .unwrap(),
    );
    assert_ne!(all, other);
}

#[test]
fn rng_statistics_are_standard_normal() {
    let n = 1 << 20;
    let z = read(&ops::normal(gpu(), &[4, n / 4], ops::NoiseKey { seed: 42, tag: 0 }, 0).unwrap());
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    let lag1 = z.windows(2).map(|w| w[0] as f64 * w[1] as f64).sum::<f64>() / (n - 1) as f64;
    let kurt = z.iter().map(|&v| (v as f64).powi(4)).sum::<f64>() / n as f64;
    // Standard errors at n = 2^20: mean 1e-3, variance 1.4e-3, lag-1 product 1e-3, 4th moment 9.4e-3.
    assert!(mean.abs() < 5e-3, "mean {mean}");
    assert!((var - 1.0).abs() < 7e-3, "variance {var}");
    assert!(lag1.abs() < 5e-3, "lag-1 correlation {lag1}");
    assert!((kurt - 3.0).abs() < 0.05, "fourth moment {kurt}");
    let within_1sd = z.iter().filter(|v| v.abs() < 1.0).count() as f64 / n as f64;
    assert!(
        (within_1sd - 0.682_689).abs() < 3e-3,
        "P(|z|<1) = {within_1sd}"
    );
}

#[test]
fn oversized_tensors_are_rejected_with_a_clear_error() {
    let g = gpu();
    let too_many = (g.max_tensor_bytes() / 4 + 1) as usize;
    let err = g.empty(&[too_many]).unwrap_err();
    assert!(
        err.to_string().contains("bytes per storage binding"),
        "{err}"
    );
}

#[test]
fn kernel_parameters_beyond_u32_are_errors_not_panics() {
    // `wgsl-diff sample --start-index 4294967296` reaches the noise kernel's row_start.
    let key = ops::NoiseKey { seed: 1, tag: 0 };
    let err = ops::normal(gpu(), &[1, 4], key, u32::MAX as usize + 1).unwrap_err();
    assert!(err.to_string().contains("first sample index"), "{err}");
    // The kernel adds each row to the first index in u32: a batch reaching past u32::MAX would
    // wrap to sample 0's noise.
    let err = ops::normal(gpu(), &[4, 4], key, u32::MAX as usize - 2).unwrap_err();
    assert!(err.to_string().contains("last sample index"), "{err}");
    assert!(ops::normal(gpu(), &[3, 4], key, u32::MAX as usize - 2).is_ok());
}

#[test]
fn a_step_is_one_encoder_and_buffers_are_reused() {
    // A device of its own: the shared one's encoder and pool are used by the tests running beside
    // this one, which flush and take buffers between these lines (seen on an 8-thread run).
    let g = &Gpu::new(&AdapterChoice::Default).unwrap();
    let x = g.upload(&[1, 1, 8, 8], &[1.0; 64]).unwrap();
    g.flush();
    let y = ops::silu(g, &x).unwrap();
    let z = ops::affine(g, &y, 2.0, 0.0).unwrap();
    assert_eq!(
        g.pending_dispatches(),
        2,
        "both ops recorded into the open encoder"
    );
    let z_buffer = z.buffer().clone();
    drop(z);
    let again = g.empty(&[1, 1, 8, 8]).unwrap();
    assert_eq!(
        again.buffer(),
        &z_buffer,
        "a freed buffer of the same size is reused"
    );
    drop(y);
    g.sync().unwrap();
}
