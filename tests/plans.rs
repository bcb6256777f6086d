//! Kernel launch plans, table-driven per kernel class: which variant each problem shape gets
//! and its workgroup grid (`ops::plan_conv2d`, `ops::plan_matmul`). The variants themselves
//! are held to f64 references in kernels.rs and kernel_properties.rs on both classes; these
//! tables pin which of them a shape reaches, with no GPU needed.

use wgsl_diff::gpu::KernelClass::{Blocked, Tiled};
use wgsl_diff::ops::{
    plan_conv2d, plan_matmul, ConvLaunch, ConvProblem, ConvVariant, MatmulLaunch, MatmulProblem,
};

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
        kw,
        stride,
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
        // GPU class: 32-wide tiles for at most 32 output channels, 64 otherwise; pixels × channels.
        (
            Tiled,
            conv(8, 128, 128, 32, 3, 1, 1),
            Tiled { tile: 64 },
            [128, 2, 1],
        ),
        (
            Tiled,
            conv(1, 3, 32, 32, 3, 1, 1),
            Tiled { tile: 32 },
            [32, 1, 1],
        ),
        (
            Tiled,
            conv(2, 16, 33, 9, 3, 2, 1),
            Tiled { tile: 64 },
            [1, 1, 1],
        ),
        // CPU class: rows of whole 16-pixel blocks take row16.
        (Blocked, conv(8, 128, 128, 32, 3, 1, 1), Row16, [32, 8, 1]),
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
        (Blocked, conv(4, 8, 16, 64, 1, 1, 0), Row16, [64, 1, 1]),
    ];
    for (class, problem, variant, workgroups) in table {
        assert_eq!(
            plan_conv2d(*class, problem),
            ConvLaunch {
                variant: *variant,
                workgroups: *workgroups
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
    let table = [
        // GPU class: vec4 loads when both operands run along K (B transposed, K % 4 = 0).
        (
            Tiled,
            p(1, 1024, 1024, 1024, true),
            "matmul_vec4",
            [16, 16, 1],
        ),
        (Tiled, p(1, 1024, 1024, 1024, false), "matmul", [16, 16, 1]),
        (Tiled, p(3, 65, 10, 6, true), "matmul", [1, 2, 3]),
        // CPU class: 16 rows × (4 vec4 or 8 scalar columns) per invocation, 16 per workgroup.
        (
            Blocked,
            p(1, 1024, 1024, 1024, false),
            "matmul_blocked_vec4",
            [4, 64, 1],
        ),
        (
            Blocked,
            p(2, 17, 12, 8, false),
            "matmul_blocked_vec4",
            [1, 2, 2],
        ),
        (Blocked, p(1, 64, 300, 8, true), "matmul_blocked", [3, 4, 1]),
        (
            Blocked,
            p(1, 64, 258, 8, false),
            "matmul_blocked",
            [3, 4, 1],
        ),
    ];
    for (class, problem, entry, workgroups) in table {
        assert_eq!(
            plan_matmul(class, &problem),
            MatmulLaunch { entry, workgroups },
            "{class:?} {problem:?}"
        );
    }
}

#[test]
fn conv2d_input_gradient_plans_per_class() {
    use wgsl_diff::ops::{plan_conv2d_input_grad as plan, ConvGradVariant::*};
    // (class, c_in, kernel, padding, stride, extra bottom/right padding) → variant.
    let table = [
        // CPU class: a forward convolution with the flipped weight, of dy spread out when strided.
        (Blocked, 64, (3, 3), 1, 1, 0, FlippedConv),
        (Blocked, 64, (3, 3), 1, 2, 0, FlippedConvOfSpread),
        (Blocked, 64, (3, 3), 0, 1, 1, FlippedConvOfSpread),
        (Blocked, 8, (1, 1), 0, 1, 0, FlippedConv),
        // Padding as large as the kernel leaves the tiled gradient.
        (Blocked, 8, (1, 1), 1, 1, 0, Tiled { tile: 32 }),
        // GPU class: the tiled gradient, 32-wide tiles for at most 32 input channels.
        (Tiled, 32, (3, 3), 1, 1, 0, Tiled { tile: 32 }),
        (Tiled, 33, (3, 3), 1, 2, 0, Tiled { tile: 64 }),
    ];
    for (class, c_in, kernel, pad, stride, extra, want) in table {
        assert_eq!(
            plan(class, c_in, kernel, pad, stride, extra),
            want,
            "{class:?} c_in {c_in} kernel {kernel:?} pad {pad} stride {stride} extra {extra}"
        );
    }
}
