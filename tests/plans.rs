//! Kernel launch plans, table-driven per kernel class: which variant each problem shape gets
//! and its workgroup grid (`ops::plan_conv2d`, `ops::plan_matmul`). The variants themselves
//! are held to f64 references in kernels.rs and kernel_properties.rs on both classes; these
//! tables pin which of them a shape reaches, with no GPU needed.

use wgsl_diff::gpu::KernelClass::{self, Blocked, Tiled};
use wgsl_diff::gpu::{choose_tiling, compute_units, GemmTiling, PlanTarget};
use wgsl_diff::ops::{
    plan_conv2d, plan_matmul, ConvLaunch, ConvProblem, ConvVariant, MatmulLaunch, MatmulProblem,
};

/// The plan target of `class` on an H200 (132 SMs): the tiled class aims at 264 workgroups.
fn h200(class: KernelClass) -> PlanTarget {
    PlanTarget::new(class, compute_units("NVIDIA H200"))
}

/// A tiling of `TILE_SHAPES`' form.
fn tiling(tile_m: u32, tile_n: u32, block: u32, splits: u32) -> GemmTiling {
    GemmTiling {
        tile_m,
        tile_n,
        block,
        splits,
    }
}

/// A 3×3 (or `kw`-wide) convolution of `c_in` → `c_out` channels on `h`×`w`, stride and padding
/// as given, at batch `b`.
fn conv(
    b: usize,
    c_in: usize,
    c_out: usize,
    w: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> ConvProblem {
    let w_out = (w + 2 * pad - kw) / stride + 1;
    ConvProblem {
        batch: b,
        c_in,
        w,
        c_out,
        h_out: w_out,
        w_out,
        kh: kw,
        kw,
        stride,
        pad_y: pad,
        pad_x: pad,
    }
}

#[test]
fn conv2d_plans_per_class() {
    use ConvVariant::*;
    let table: &[(
        wgsl_diff::gpu::KernelClass,
        ConvProblem,
        ConvVariant,
        [usize; 3],
    )] = &[
        // GPU class (H200): the largest tile reaching 264 workgroups; B8 128→128 at 32² has
        // 8192 pixels: 64 × 32 tiles, 128 × 2.
        (
            KernelClass::Tiled,
            conv(8, 128, 128, 32, 3, 1, 1),
            Tiled(tiling(64, 32, 4, 1)),
            [256, 2, 1],
        ),
        // At batch 1 no tile reaches it: 32 × 32 tiles (32 × 4 of them) split K (9 · 128 = 72 K
        // tiles) in 3, slices of 24 K tiles.
        (
            KernelClass::Tiled,
            conv(1, 128, 128, 32, 3, 1, 1),
            Tiled(tiling(32, 32, 4, 3)),
            [32, 4, 3],
        ),
        // 3 output channels take 32-row tiles; K = 9 · 16 (3 channels padded) is 9 K tiles,
        // split at most in 2 (slices of at least 4 K tiles).
        (
            KernelClass::Tiled,
            conv(1, 3, 3, 32, 3, 1, 1),
            Tiled(tiling(32, 32, 4, 2)),
            [32, 1, 2],
        ),
        // Slices of at least 4 K tiles: 18 K tiles (32 channels) split at most 4 ways.
        (
            KernelClass::Tiled,
            conv(2, 32, 33, 9, 3, 2, 1),
            Tiled(tiling(32, 32, 4, 4)),
            [2, 2, 4],
        ),
        // CPU class: rows of whole 16-pixel blocks take row16, 32 channels where they divide
        // C_out.
        (
            Blocked,
            conv(8, 128, 128, 32, 3, 1, 1),
            Row16 {
                wide: true,
                share_rows: false,
            },
            [32, 4, 1],
        ),
        (
            Blocked,
            conv(1, 48, 48, 16, 3, 1, 1),
            Row16 {
                wide: false,
                share_rows: false,
            },
            [1, 3, 1],
        ),
        // Aligned rows of 8: 8-pixel blocks, 32 channels where they divide C_out.
        (
            Blocked,
            conv(2, 4, 64, 8, 3, 1, 1),
            Blocked {
                aligned: true,
                wide: true,
            },
            [1, 2, 1],
        ),
        (
            Blocked,
            conv(2, 4, 48, 8, 3, 1, 1),
            Blocked {
                aligned: true,
                wide: false,
            },
            [1, 3, 1],
        ),
        // Unaligned: odd widths, strides, and windows wider than the vec4 path reads.
        (
            Blocked,
            conv(1, 4, 16, 7, 3, 1, 1),
            Blocked {
                aligned: false,
                wide: false,
            },
            [1, 1, 1],
        ),
        (
            Blocked,
            conv(3, 4, 32, 16, 3, 2, 1),
            Blocked {
                aligned: false,
                wide: true,
            },
            [2, 1, 1],
        ),
        (
            Blocked,
            conv(1, 4, 16, 64, 7, 1, 1),
            Blocked {
                aligned: false,
                wide: false,
            },
            [30, 1, 1],
        ),
        (
            Blocked,
            conv(4, 8, 16, 64, 1, 1, 0),
            Row16 {
                wide: false,
                share_rows: false,
            },
            [64, 1, 1],
        ),
    ];
    for (class, problem, variant, workgroups) in table {
        assert_eq!(
            plan_conv2d(&h200(*class), problem),
            ConvLaunch {
                variant: *variant,
                workgroups: *workgroups,
                lanes: 1,
            },
            "{class:?} {problem:?}"
        );
    }
}

#[test]
fn matmul_plans_per_class() {
    let p = |batch, m, n, k, trans_b| MatmulProblem {
        batch,
        m,
        n,
        k,
        trans_b,
    };
    let tiled = |entry, workgroups, tiling, vec4| MatmulLaunch {
        entry,
        workgroups,
        tiling: Some(tiling),
        vec4,
        lanes: 1,
    };
    let blocked = |entry, workgroups| MatmulLaunch {
        entry,
        workgroups,
        tiling: None,
        vec4: false,
        lanes: 1,
    };
    let table = [
        // GPU class (H200): SGEMM 1024³ in 64 × 32 tiles (512 ≥ 264), vec4 staging when each
        // operand's contiguous axis is a multiple of 4.
        (
            Tiled,
            p(1, 1024, 1024, 1024, true),
            tiled("matmul", [32, 16, 1], tiling(64, 32, 4, 1), true),
        ),
        (
            Tiled,
            p(1, 1024, 1024, 1024, false),
            tiled("matmul", [32, 16, 1], tiling(64, 32, 4, 1), true),
        ),
        // 4096³: 128 × 128 tiles reach 1024 workgroups.
        (
            Tiled,
            p(1, 4096, 4096, 4096, false),
            tiled("matmul", [32, 32, 1], tiling(128, 128, 8, 1), true),
        ),
        // Small and odd: 32 × 32 tiles, K = 6 is one K tile (no split), scalar staging.
        (
            Tiled,
            p(3, 65, 10, 6, true),
            tiled("matmul", [1, 3, 3], tiling(32, 32, 4, 1), false),
        ),
        // A deep, narrow product splits K: 2 tiles × batch 2, 64 K tiles → 16 slices of 4.
        (
            Tiled,
            p(2, 32, 64, 1024, false),
            tiled("matmul_partial", [2, 1, 32], tiling(32, 32, 4, 16), true),
        ),
        // CPU class: 16 rows × (4 vec4 or 8 scalar columns) per invocation, 16 per workgroup.
        (
            Blocked,
            p(1, 1024, 1024, 1024, false),
            blocked("matmul_blocked_vec4", [4, 64, 1]),
        ),
        (
            Blocked,
            p(2, 17, 12, 8, false),
            blocked("matmul_blocked_vec4", [1, 2, 2]),
        ),
        (
            Blocked,
            p(1, 64, 300, 8, true),
            blocked("matmul_blocked", [3, 4, 1]),
        ),
        (
            Blocked,
            p(1, 64, 258, 8, false),
            blocked("matmul_blocked", [3, 4, 1]),
        ),
    ];
    for (class, problem, launch) in table {
        assert_eq!(
            plan_matmul(&h200(class), &problem),
            launch,
            "{class:?} {problem:?}"
        );
    }
}

/// On an adapter whose subgroups share the blocked kernels' weight rows (lavapipe: 4, 8 or 16
/// lanes by its vector width), the blocked plans keep their variants and grids and take the
/// entry points that share rows, and at 8 lanes a 3 × 3 row16 convolution padded by 1 shares its
/// input rows too; the tiled class's plans ignore the lanes.
#[test]
fn blocked_plans_share_rows_across_the_lanes() {
    for lanes in [4, 8, 16] {
        let shared = |class| PlanTarget {
            lanes,
            ..h200(class)
        };
        let convs = [
            conv(8, 128, 128, 32, 3, 1, 1),
            conv(2, 4, 64, 8, 3, 1, 1),
            conv(3, 4, 32, 16, 3, 2, 1),
        ];
        for problem in convs {
            let own = plan_conv2d(&h200(Blocked), &problem);
            let variant = match own.variant {
                ConvVariant::Row16 { wide, .. } => ConvVariant::Row16 {
                    wide,
                    share_rows: lanes == 8,
                },
                other => other,
            };
            let want = ConvLaunch {
                variant,
                lanes,
                ..own
            };
            assert_eq!(plan_conv2d(&shared(Blocked), &problem), want);
            let tiled = plan_conv2d(&h200(Tiled), &problem);
            assert_eq!(plan_conv2d(&shared(Tiled), &problem), tiled);
        }
        let products = [
            (
                MatmulProblem {
                    batch: 1,
                    m: 1024,
                    n: 1024,
                    k: 1024,
                    trans_b: false,
                },
                "matmul_blocked_vec4_lanes",
            ),
            (
                MatmulProblem {
                    batch: 1,
                    m: 64,
                    n: 300,
                    k: 8,
                    trans_b: true,
                },
                "matmul_blocked_lanes",
            ),
        ];
        for (problem, entry) in products {
            let own = plan_matmul(&h200(Blocked), &problem);
            let want = MatmulLaunch {
                entry,
                lanes,
                ..own
            };
            assert_eq!(plan_matmul(&shared(Blocked), &problem), want);
            let tiled = plan_matmul(&h200(Tiled), &problem);
            assert_eq!(plan_matmul(&shared(Tiled), &problem), tiled);
        }
    }
}

/// The tiled class's choice per adapter: a forced tiling wins; an adapter not in the table is
/// taken for 32 compute units (64 workgroups aimed at), a smaller chip splits less.
#[test]
fn tiling_follows_the_adapter() {
    assert_eq!(compute_units("NVIDIA GeForce RTX 4090"), 128);
    assert_eq!(compute_units("NVIDIA H100 PCIe"), 114);
    assert_eq!(compute_units("Some future GPU"), 32);
    // B1 128→128 at 32²: 72 K tiles; 1024 pixels.
    let (m, n, k) = (128, 1024, 9 * 128);
    assert_eq!(choose_tiling(132, 1, m, n, k), tiling(32, 32, 4, 3));
    assert_eq!(choose_tiling(32, 1, m, n, k), tiling(64, 32, 4, 1));
    let forced = tiling(128, 128, 8, 2);
    let target = PlanTarget {
        forced_tiling: Some(forced),
        ..h200(Tiled)
    };
    assert_eq!(target.tiling(1, m, n, k), forced);
    // Forced splits are clamped to the K tiles there are: 2 K tiles, at most 2 slices.
    assert_eq!(tiling(32, 32, 4, 8).k_slices(20), (16, 2));
    assert_eq!(tiling(32, 32, 4, 3).k_slices(72 * 16), (24 * 16, 3));
}

#[test]
fn conv2d_input_gradient_plans_per_class() {
    use wgsl_diff::ops::{plan_conv2d_input_grad as plan, ConvGradProblem, ConvGradVariant::*};
    // (class, batch, c_in, side, c_out, kernel, padding, stride, extra bottom/right padding).
    let table = [
        // CPU class: a forward convolution with the flipped weight, of dy spread out when strided.
        (Blocked, 1, 64, 8, 64, 3, 1, 1, 0, FlippedConv),
        (Blocked, 1, 64, 8, 64, 3, 1, 2, 0, FlippedConvOfSpread),
        (Blocked, 1, 64, 8, 64, 3, 0, 1, 1, FlippedConvOfSpread),
        (Blocked, 1, 8, 8, 8, 1, 0, 1, 0, FlippedConv),
        // Padding as large as the kernel leaves the tiled gradient, in square 4 × 4 tiles.
        (Blocked, 1, 8, 8, 8, 1, 1, 1, 0, Tiled(tiling(32, 32, 4, 1))),
        (
            Blocked,
            1,
            40,
            8,
            8,
            1,
            1,
            1,
            0,
            Tiled(tiling(64, 64, 4, 1)),
        ),
        // GPU class (H200): the chooser's tiling of C_in × B·H·W × C_out·KH·KW; at B 1, 32²,
        // 128 → 128 the same split as the forward's (72 K tiles in 3 slices).
        (
            KernelClass::Tiled,
            1,
            128,
            32,
            128,
            3,
            1,
            1,
            0,
            Tiled(tiling(32, 32, 4, 3)),
        ),
        (
            KernelClass::Tiled,
            8,
            128,
            32,
            128,
            3,
            1,
            1,
            0,
            Tiled(tiling(64, 32, 4, 1)),
        ),
    ];
    for (class, batch, c_in, side, c_out, kernel, pad, stride, extra, want) in table {
        let problem = ConvGradProblem {
            batch,
            c_in,
            h: side,
            w: side,
            c_out,
            kh: kernel,
            kw: kernel,
            pad,
            stride,
            pad_bottom_right: extra,
        };
        assert_eq!(plan(&h200(class), &problem), want, "{class:?} {problem:?}");
    }
}
