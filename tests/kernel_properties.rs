//! Every kernel family against its f64 reference on shapes drawn at random, so coverage is not
//! only the hand-picked shapes of tests/kernels.rs (whose tolerances these reuse). The draws
//! are seeded: a failure names its family, case and seed, and `KERNEL_PROPERTIES_SEED=<u64>`
//! draws a different set. Shapes stay small so lavapipe runs each family in seconds.

mod common;

use common::{
    assert_close, gemm_gpu, gemm_gpus, gpu, read, read_from, reference as r, to_f64, upload,
    upload_to, Rng,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use wgsl_diff::ops::{self, Conv2dArgs, NoiseKey, StepCoeffs, UncertaintyMode};
use wgsl_diff::splitmix::SplitMix64;

/// Random shape parameters (the data comes from a separate [`Rng`] stream).
struct Draw(SplitMix64);

impl Draw {
    /// Uniform in lo..=hi.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.0.next_u64() % (hi - lo + 1) as u64) as usize
    }
    fn coin(&mut self) -> bool {
        self.0.next_u64() & 1 == 1
    }
    fn one_of<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.int(0, options.len() - 1)]
    }
}

/// Runs `cases` draws of `family`, each seeded from the base seed, the family and its index.
fn for_random_shapes(family: &str, cases: usize, mut case: impl FnMut(&mut Draw, &mut Rng)) {
    let base = std::env::var("KERNEL_PROPERTIES_SEED")
        .map(|s| {
            s.parse::<u64>()
                .expect("KERNEL_PROPERTIES_SEED must be a u64")
        })
        .unwrap_or(0x6b65_726e_656c);
    let family_hash = family.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    for i in 0..cases {
        let seed = base ^ family_hash.wrapping_add(i as u64);
        eprintln!("{family} case {i}: seed {seed:#x}");
        let mut draw = Draw(SplitMix64::new(seed));
        let mut data = Rng::new(!seed);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(&mut draw, &mut data))) {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "{family} case {i} (seed {seed:#x}, base KERNEL_PROPERTIES_SEED={base}) failed: {msg}"
            );
        }
    }
}

#[test]
fn conv2d_on_random_shapes() {
    for_random_shapes("conv2d", 14, |d, rng| {
        let k = d.one_of(&[1, 3, 3, 5]);
        let (stride, pad, extra) = (d.int(1, 2), d.int(0, k / 2), d.int(0, 1));
        let (b, ci) = (d.int(1, 3), d.int(1, 9));
        // C_out on both sides of 32 takes both tile widths.
        let co = if d.coin() {
            d.int(1, 32)
        } else {
            d.int(33, 70)
        };
        let min_hw = k.saturating_sub(2 * pad + extra).max(1);
        let (h, w) = (d.int(min_hw, 12), d.int(min_hw, 12));
        let (has_bias, has_residual) = (d.coin(), d.coin());
        let shape = (
            b,
            ci,
            h,
            w,
            co,
            k,
            stride,
            pad,
            extra,
            has_bias,
            has_residual,
        );

        let x = rng.vec(b * ci * h * w);
        let wt = rng.vec(co * ci * k * k);
        let bias = rng.vec(co);
        let bias64 = to_f64(&bias);
        let (mut want, ho, wo) = r::conv2d(
            &to_f64(&x),
            (b, ci, h, w),
            &to_f64(&wt),
            (co, k, k),
            has_bias.then_some(&bias64[..]),
            stride,
            pad,
            extra,
        );
        let res = rng.vec(b * co * ho * wo);
        let out_scale = 0.75;
        if has_residual {
            for (v, r) in want.iter_mut().zip(&res) {
                *v = (*v + *r as f64) * out_scale as f64;
            }
        }
        for g in gemm_gpus() {
            let residual = upload_to(g, &res, &[b, co, ho, wo]);
            let args = Conv2dArgs {
                stride,
                padding: pad,
                pad_bottom_right: extra,
                residual: has_residual.then_some(&residual),
                out_scale,
                ..Default::default()
            };
            let y = ops::conv2d(
                g,
                &upload_to(g, &x, &[b, ci, h, w]),
                &upload_to(g, &wt, &[co, ci, k, k]),
                has_bias.then(|| upload_to(g, &bias, &[co])).as_ref(),
                args,
            )
            .unwrap();
            let what = format!("conv2d {} {shape:?}", gemm_gpu(g));
            assert_eq!(y.shape(), [b, co, ho, wo], "{what}");
            assert_close(&what, &read_from(g, &y), &want, 1e-5, 1e-4);
        }
    });
}

#[test]
fn matmul_and_linear_on_random_shapes() {
    for_random_shapes("matmul", 14, |d, rng| {
        let (batch, m, n) = (d.int(1, 3), d.int(1, 80), d.int(1, 80));
        // Half the draws have K % 4 == 0: the vec4 paths (tiled: a transposed B; blocked: a
        // plain B with N % 4 == 0, a quarter of those).
        let k = if d.coin() {
            4 * d.int(1, 25)
        } else {
            d.int(1, 100)
        };
        let b_batched = d.coin();
        let shape = (batch, m, k, n, b_batched);

        let a = rng.vec(batch * m * k);
        let a64 = to_f64(&a);
        let b = rng.vec(if b_batched { batch } else { 1 } * k * n);
        let b64 = to_f64(&b);
        let want_mm: Vec<f64> = (0..batch)
            .flat_map(|z| {
                let bz = if b_batched {
                    &b64[z * k * n..][..k * n]
                } else {
                    &b64[..]
                };
                r::matmul(&a64[z * m * k..][..m * k], bz, 1, m, k, n, false, None)
            })
            .collect();
        let b_shape: &[usize] = if b_batched { &[batch, k, n] } else { &[k, n] };
        let wt = rng.vec(n * k);
        let bias = d.coin().then(|| rng.vec(n));
        let bias64 = bias.as_deref().map(to_f64);
        let want_linear = r::matmul(&a64, &to_f64(&wt), batch, m, k, n, true, bias64.as_deref());
        for g in gemm_gpus() {
            let what = |op| format!("{op} {} {shape:?}", gemm_gpu(g));
            let a_gpu = upload_to(g, &a, &[batch, m, k]);
            let y = ops::matmul(g, &a_gpu, &upload_to(g, &b, b_shape)).unwrap();
            assert_close(&what("matmul"), &read_from(g, &y), &want_mm, 1e-5, 1e-4);
            let bias_gpu = bias.as_ref().map(|v| upload_to(g, v, &[n]));
            let y = ops::linear(g, &a_gpu, &upload_to(g, &wt, &[n, k]), bias_gpu.as_ref()).unwrap();
            assert_eq!(y.shape(), [batch, m, n]);
            assert_close(&what("linear"), &read_from(g, &y), &want_linear, 1e-5, 1e-4);
        }
    });
}

#[test]
fn group_norm_on_random_shapes() {
    for_random_shapes("group_norm", 12, |d, rng| {
        let (b, groups) = (d.int(1, 3), d.int(1, 8));
        let c = groups * d.int(1, 4);
        // A quarter of the draws are large enough to split a group over several workgroups.
        let (h, w) = if d.int(0, 3) == 0 {
            (d.int(40, 64), d.int(40, 64))
        } else {
            (d.int(1, 20), d.int(1, 20))
        };
        let silu = d.coin();
        common::check_group_norm(rng, (b, c, h, w, groups, silu));
    });
}

#[test]
fn attention_on_random_shapes() {
    for_random_shapes("attention", 12, |d, rng| {
        let (b, n, heads) = (d.int(1, 2), d.int(1, 80), d.int(1, 4));
        // Head dims within one 64-wide chunk and across several.
        let head_dim = if d.coin() {
            d.int(1, 64)
        } else {
            d.int(65, 200)
        };
        let c = heads * head_dim;
        let shape = (b, n, c, heads);

        let (q, k, v) = (rng.vec(b * n * c), rng.vec(b * n * c), rng.vec(b * n * c));
        let scale = 1.0 / (head_dim as f64).sqrt();
        let want = r::attention(&to_f64(&q), &to_f64(&k), &to_f64(&v), b, n, c, heads, scale);
        let s = [b, n, c];
        let (q, k, v) = (upload(&q, &s), upload(&k, &s), upload(&v, &s));
        let y = ops::attention(gpu(), &q, &k, &v, heads, scale as f32).unwrap();
        assert_close(
            &format!("attention {shape:?}"),
            &read(&y),
            &want,
            1e-5,
            1e-4,
        );
    });
}

/// Element-wise arithmetic on one random NCHW shape; tolerances as in tests/kernels.rs.
fn check_arithmetic(d: &mut Draw, rng: &mut Rng, [b, c, h, w]: [usize; 4]) {
    let g = gpu();
    let shape = [b, c, h, w];
    let close = |what: &str, got: &wgsl_diff::gpu::Tensor, want: &[f64]| {
        assert_close(&format!("{what} {shape:?}"), &read(got), want, 1e-6, 1e-5)
    };
    let (xa, xb) = (rng.vec(b * c * h * w), rng.vec(b * c * h * w));
    let (fa, fb) = (to_f64(&xa), to_f64(&xb));
    let (a, bt) = (upload(&xa, &shape), upload(&xb, &shape));
    let (alpha, beta) = (rng.uniform(), rng.uniform());
    let (al, be) = (alpha as f64, beta as f64);

    let want: Vec<f64> = fa.iter().map(|&x| r::silu(x)).collect();
    close("silu", &ops::silu(g, &a).unwrap(), &want);
    let want: Vec<f64> = fa.iter().map(|x| al * x + be).collect();
    close("affine", &ops::affine(g, &a, alpha, beta).unwrap(), &want);
    let want: Vec<f64> = fa.iter().zip(&fb).map(|(x, y)| al * x + be * y).collect();
    close(
        "lincomb",
        &ops::lincomb(g, alpha, &a, beta, &bt).unwrap(),
        &want,
    );
    let want: Vec<f64> = fa.iter().zip(&fb).map(|(x, y)| x * y).collect();
    close("mul", &ops::mul(g, &a, &bt).unwrap(), &want);

    let copies = d.int(1, 3);
    let many = rng.vec(copies * fa.len());
    let want: Vec<f64> = (0..many.len())
        .map(|i| al * fa[i % fa.len()] + be * many[i] as f64)
        .collect();
    let many = upload(&many, &[copies * b, c, h, w]);
    close(
        "broadcast_lincomb",
        &ops::broadcast_lincomb(g, alpha, &a, beta, &many).unwrap(),
        &want,
    );

    let v_shape = if d.coin() { vec![b, c] } else { vec![c] };
    let v = rng.vec(v_shape.iter().product());
    let at = |i: usize| v[(i / (h * w)) % v.len()] as f64;
    let vt = upload(&v, &v_shape);
    let want: Vec<f64> = fa.iter().enumerate().map(|(i, x)| x + at(i)).collect();
    close(
        "add_channel_vec",
        &ops::add_channel_vec(g, &a, &vt).unwrap(),
        &want,
    );
    let want: Vec<f64> = fa.iter().enumerate().map(|(i, x)| x * at(i)).collect();
    close(
        "mul_channel_vec",
        &ops::mul_channel_vec(g, &a, &vt).unwrap(),
        &want,
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
    let emb = upload(&emb, &[b, 2 * c]);
    close(
        "scale_shift",
        &ops::scale_shift(g, &a, &emb).unwrap(),
        &want,
    );
}

/// Layout kernels on one random NCHW shape: exact, as in tests/kernels.rs.
fn check_layout(d: &mut Draw, rng: &mut Rng, [b, c, h, w]: [usize; 4]) {
    let g = gpu();
    let parts: Vec<(usize, Vec<f32>)> = (0..d.int(1, 3))
        .map(|_| {
            let ci = d.int(1, 4);
            (ci, rng.vec(b * ci * h * w))
        })
        .collect();
    let tensors: Vec<_> = parts
        .iter()
        .map(|(ci, x)| upload(x, &[b, *ci, h, w]))
        .collect();
    let refs: Vec<_> = tensors.iter().collect();
    let want: Vec<f32> = (0..b)
        .flat_map(|n| {
            parts
                .iter()
                .flat_map(move |(ci, x)| x[n * ci * h * w..][..ci * h * w].iter().copied())
        })
        .collect();
    let got = read(&ops::concat_channels(g, &refs).unwrap());
    assert_eq!(got, want, "concat_channels {:?}", (b, h, w));

    let x = rng.vec(b * c * h * w);
    let t = read(&ops::transpose_last2(g, &upload(&x, &[b * c, h, w])).unwrap());
    for (p, i, j) in
        (0..b * c).flat_map(|p| (0..h).flat_map(move |i| (0..w).map(move |j| (p, i, j))))
    {
        assert_eq!(
            t[(p * w + j) * h + i],
            x[(p * h + i) * w + j],
            "transpose {:?}",
            (b * c, h, w)
        );
    }

    let xt = upload(&x, &[b, c, h, w]);
    let up = read(&ops::upsample_nearest2x(g, &xt).unwrap());
    let want: Vec<f32> = (0..b * c * 4 * h * w)
        .map(|i| {
            let (plane, y, xx) = (i / (4 * h * w), (i / (2 * w)) % (2 * h), i % (2 * w));
            x[(plane * h + y / 2) * w + xx / 2]
        })
        .collect();
    assert_eq!(up, want, "upsample_nearest2x {:?}", (b, c, h, w));

    if h >= 2 && w >= 2 {
        let (ho, wo) = (h / 2, w / 2);
        let want: Vec<f64> = (0..b * c * ho * wo)
            .map(|i| {
                let (plane, y, xx) = (i / (ho * wo), (i / wo) % ho, i % wo);
                let at =
                    |dy: usize, dx: usize| x[(plane * h + 2 * y + dy) * w + 2 * xx + dx] as f64;
                (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0
            })
            .collect();
        let pooled = read(&ops::avg_pool2x(g, &xt).unwrap());
        assert_close(
            &format!("avg_pool2x {:?}", (b, c, h, w)),
            &pooled,
            &want,
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn elementwise_and_layout_ops_on_random_shapes() {
    for_random_shapes("elementwise", 12, |d, rng| {
        let shape = [d.int(1, 4), d.int(1, 9), d.int(1, 11), d.int(1, 11)];
        check_arithmetic(d, rng, shape);
        check_layout(d, rng, shape);
    });
}

#[test]
fn timestep_embedding_on_random_shapes() {
    for_random_shapes("timestep_embedding", 10, |d, rng| {
        let shift = d.one_of(&[0.0, 1.0]);
        // The frequencies divide by dim/2 − shift, so a shift of 1 needs dim ≥ 4.
        let dim = d.int(if shift == 0.0 { 2 } else { 4 }, 130);
        let (b, flip) = (d.int(1, 6), d.coin());
        let t: Vec<f32> = (0..b)
            .map(|_| ((rng.uniform() + 1.0) * 500.0).floor())
            .collect();
        let want = r::timestep_embedding(&to_f64(&t), dim, flip, shift);
        let freqs = ops::timestep_frequencies(gpu(), dim, shift as f32).unwrap();
        let y = ops::timestep_embedding(gpu(), &upload(&t, &[b]), &freqs, dim, flip).unwrap();
        // As in tests/kernels.rs: the f32 argument's own rounding at t ≈ 1000 is ~6e-5.
        let what = format!("timestep_embedding {:?}", (b, dim, flip, shift));
        assert_close(&what, &read(&y), &want, 2e-4, 0.0);
    });
}

#[test]
fn rng_on_random_shapes() {
    for_random_shapes("normal", 10, |d, _| {
        let shape: Vec<usize> = (0..d.int(1, 4)).map(|_| d.int(1, 7)).collect();
        let copies = d.int(1, 3);
        let first = d.int(0, 1 << 30);
        let key = NoiseKey {
            seed: d.0.next_u64(),
            tag: d.0.next_u64() >> 1,
        };
        let row_len: usize = shape[1..].iter().product();
        let want: Vec<f64> = (0..copies as u64)
            .flat_map(|m| {
                (0..shape[0]).flat_map(move |s| {
                    r::normal_row(key.seed, key.tag + (m << 32), (first + s) as u32, row_len)
                })
            })
            .collect();
        let y = ops::normal_copies(gpu(), &shape, copies, key, first).unwrap();
        let what = format!("normal {:?}", (&shape, copies, first, key));
        assert_close(&what, &read(&y), &want, 2e-5, 1e-5);
    });
}

#[test]
fn sampler_step_on_random_shapes() {
    for_random_shapes("sampler_step", 10, |d, rng| {
        let n = d.int(1, 2000);
        let (has_prev, has_noise, clip) = (d.coin(), d.coin(), d.coin());
        let mut coef = || rng.uniform() as f64;
        let k = StepCoeffs {
            p: coef(),
            q: coef(),
            clip: clip.then_some(0.5),
            a: coef(),
            b: coef(),
            d: coef(),
            e: if has_prev { coef() } else { 0.0 },
            c: if has_noise { coef() } else { 0.0 },
        };
        let [x, eps, prev, z] = [(); 4].map(|_| rng.vec(n));
        let (mut want_next, mut want_x0) = (Vec::new(), Vec::new());
        for i in 0..n {
            let raw = k.p * x[i] as f64 + k.q * eps[i] as f64;
            let x0 = k.clip.map_or(raw, |r| raw.clamp(-r, r));
            want_x0.push(x0);
            want_next.push(
                k.a * x0
                    + k.b * eps[i] as f64
                    + k.d * x[i] as f64
                    + k.e * prev[i] as f64
                    + k.c * z[i] as f64,
            );
        }
        let t = |v: &[f32]| upload(v, &[n]);
        let (prev, z) = (has_prev.then(|| t(&prev)), has_noise.then(|| t(&z)));
        let (next, x0) =
            ops::sampler_step(gpu(), &k, &t(&x), &t(&eps), prev.as_ref(), z.as_ref()).unwrap();
        let what = format!("sampler_step {:?}", (n, has_prev, has_noise, clip));
        assert_close(&format!("{what} x0"), &read(&x0), &want_x0, 1e-6, 1e-5);
        assert_close(
            &format!("{what} x_next"),
            &read(&next),
            &want_next,
            1e-6,
            1e-5,
        );
    });
}

#[test]
fn stein_map_on_random_shapes() {
    for_random_shapes("stein_map", 10, |d, rng| {
        let (b, len, m) = (d.int(1, 4), d.int(1, 300), d.int(2, 6));
        let (copies, noise) = (rng.vec(m * b * len), rng.vec(m * b * len));
        let (shift, scale) = (rng.vec(len), rng.vec(len));
        let rho = 0.5 + d.int(0, 100) as f64;
        let x = r::SteinInputs {
            copies: &copies,
            noise: &noise,
            m,
            shift: &shift,
            scale: &scale,
            rho,
        };
        let (c, n) = (
            upload(&copies, &[m * b, len]),
            upload(&noise, &[m * b, len]),
        );
        let (sh, sc) = (upload(&shift, &[len]), upload(&scale, &[len]));
        for mode in [
            UncertaintyMode::Typicality,
            UncertaintyMode::PosteriorVariance,
            UncertaintyMode::Residual,
        ] {
            let want = r::stein_map(&x, mode);
            let what = format!("stein_map {:?}", (b, len, m, mode));
            let map = ops::stein_map(gpu(), &c, &n, (&sh, &sc), m, mode, rho).unwrap();
            assert_eq!(map.shape(), &[b, len], "{what}");
            let top = want.iter().fold(1f64, |a, v| a.max(v.abs()));
            assert_close(&what, &read(&map), &want, 1e-5 * top, 1e-5);
        }
    });
}

#[test]
fn uncertainty_map_on_random_shapes() {
    for_random_shapes("uncertainty_map", 10, |d, rng| {
        let (b, len, m) = (d.int(1, 4), d.int(1, 300), d.int(2, 6));
        let (eps, copies) = (rng.vec(b * len), rng.vec(m * b * len));
        let (e, c) = (upload(&eps, &[b, len]), upload(&copies, &[m * b, len]));
        for mode in [
            UncertaintyMode::Centred,
            UncertaintyMode::Variance,
            UncertaintyMode::VarianceBiased,
        ] {
            let want = r::uncertainty_map(&eps, &copies, m, mode);
            let what = format!("uncertainty_map {:?}", (b, len, m, mode));
            let map = ops::uncertainty_map(gpu(), &e, &c, mode).unwrap();
            let got = read(&map);
            assert_close(&what, &got, &want, 1e-6, 1e-5);
            let sums: Vec<f64> = got
                .chunks(len)
                .map(|r| r.iter().map(|&v| v as f64).sum())
                .collect();
            let got_sums = read(&ops::sum_per_sample(gpu(), &map).unwrap());
            assert_close(&format!("{what} sums"), &got_sums, &sums, 1e-6, 1e-6);
        }
    });
}
