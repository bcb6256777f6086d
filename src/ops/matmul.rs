//! Batched matrix products and PyTorch `Linear` layers (matmul.wgsl).

use super::{dims, ensure};
use crate::error::{Error, Result};
use crate::gpu::{
    checked_u32, kernel_params, shaders, DType, GemmTiling, Gpu, Kernel, KernelClass, PlanTarget,
    Tensor, F16_WEIGHTS, TILE_K,
};

kernel_params! {
    pub(super) struct MatmulParams for MATMUL::Params {
        m: u32,
        n: u32,
        k: u32,
        batch_stride_a: u32,
        batch_stride_b: u32,
        batch_stride_c: u32,
        k_chunk: u32,
        splits: u32,
        batch: u32,
    }
}
/// matmul.wgsl's `BLOCK_ROWS` and `BLOCK_COLS`: the block of C one invocation of
/// `matmul_blocked` computes (the rows: [`crate::gpu::BLOCKED_ROWS`], which row sharing divides).
pub(super) const BLOCK_ROWS: usize = crate::gpu::BLOCKED_ROWS as usize;
pub(super) const BLOCK_COLS: usize = 8;
/// matmul.wgsl's `VEC4_COLS`: columns of C one invocation of `matmul_blocked_vec4` computes.
pub(super) const VEC4_COLS: usize = 16;
/// matmul.wgsl's `BLOCKED_WG`: invocations per workgroup of `matmul_blocked`.
pub(super) const BLOCKED_WG: usize = crate::gpu::BLOCKED_ROWS as usize;

/// Loop iterations one pass of matmul.wgsl's K loop costs against
/// [`Gpu::max_loop_iterations`]: the pass itself and `accumulate`'s 16 K steps + 1 (llvmpipe
/// counts the pass that finds every lane done); Mesa unrolls the constant 4-trip loops.
/// Measured on lavapipe: K = 58240 (3640 passes · 18 = 65520) right, K = 58256 wrong.
const ITERATIONS_PER_K_PASS: usize = 1 + (TILE_K + 1);

/// Refuses a K whose loop would overrun the device's loop budget (llvmpipe would silently
/// truncate it). No model in this crate comes near: their deepest products are a few thousand.
fn check_depth(gpu: &Gpu, k: usize) -> Result<()> {
    let Some(budget) = gpu.max_loop_iterations() else {
        return Ok(());
    };
    let max_k = match gpu.kernel_class() {
        KernelClass::Tiled => budget / ITERATIONS_PER_K_PASS * TILE_K,
        // One iteration per k: the block inside is straight-line code.
        KernelClass::Blocked => budget,
    };
    if k > max_k {
        return Err(Error::Invalid(format!(
            "matmul: inner dimension {k} exceeds {max_k}, the most this device ({}) runs in one \
             invocation's loop (its driver ends loops after {budget} counted iterations, with \
             a margin)",
            gpu.info.name
        )));
    }
    Ok(())
}

/// A matrix product as the planner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulProblem {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_b: bool,
}

/// A planned launch: the matmul.wgsl entry point, its workgroup grid, and for the tiled class
/// its tiling (split-K's first pass when split; its reduce covers C one element per invocation)
/// and whether it stages vec4s (`VEC4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulLaunch {
    pub entry: &'static str,
    pub workgroups: [usize; 3],
    pub tiling: Option<GemmTiling>,
    pub vec4: bool,
    /// Subgroup lanes the blocked entry shares A's rows across (its `_lanes` form, in
    /// matmul_lanes.wgsl); 1 otherwise.
    pub lanes: u32,
}

/// The one place a matrix product's kernel variant and grid are chosen, from the device's plan
/// target and the problem's shape alone.
pub fn plan_matmul(target: &PlanTarget, p: &MatmulProblem) -> MatmulLaunch {
    let MatmulProblem {
        batch,
        m,
        n,
        k,
        trans_b,
    } = *p;
    // The blocked entry, or its form sharing A's rows across the subgroup.
    let blocked = |entry, shared_entry, cols| MatmulLaunch {
        entry: if target.lanes > 1 {
            shared_entry
        } else {
            entry
        },
        workgroups: [n.div_ceil(cols * BLOCKED_WG), m.div_ceil(BLOCK_ROWS), batch],
        tiling: None,
        vec4: false,
        lanes: target.lanes,
    };
    match target.class {
        KernelClass::Tiled => {
            let tiling = target.tiling(batch, m, n, k);
            let [x, y] = tiling.tiles(m, n);
            let (_, splits) = tiling.k_slices(k);
            MatmulLaunch {
                entry: if splits == 1 {
                    "matmul"
                } else {
                    "matmul_partial"
                },
                workgroups: [x, y, batch * splits],
                tiling: Some(GemmTiling {
                    splits: splits as u32,
                    ..tiling
                }),
                // Both operands along their contiguous axis in whole vec4s.
                vec4: k % 4 == 0 && (trans_b || n % 4 == 0),
                lanes: 1,
            }
        }
        KernelClass::Blocked if !trans_b && k % 4 == 0 && n % 4 == 0 => blocked(
            "matmul_blocked_vec4",
            "matmul_blocked_vec4_lanes",
            VEC4_COLS,
        ),
        KernelClass::Blocked => blocked("matmul_blocked", "matmul_blocked_lanes", BLOCK_COLS),
    }
}

/// C = A · op(B) (+ bias) over a batch: A (batch, M, K); B (N, K) when `trans_b` else (K, N),
/// optionally with a leading batch dimension of its own (else shared by all batch items). B may
/// be f16 (a weight, or an f16 activation; [`DType::F16`]); A f16 activations make C f16 too (the
/// half variant); the products accumulate in f32 either way.
pub(super) fn matmul_impl(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    trans_b: bool,
) -> Result<Tensor> {
    const OP: &str = "matmul";
    let [batch, m, k] = dims::<3>(a, OP, "A")?;
    bias.map_or(Ok(()), |t| t.ensure_f32(OP))?;
    let (b_batched, rows, cols) = match b.shape() {
        &[r, c] => (false, r, c),
        &[bb, r, c] => {
            ensure(bb == batch, OP, || {
                format!("B batch {bb} != A batch {batch}")
            })?;
            (true, r, c)
        }
        s => {
            return Err(super::shape_err(
                OP,
                format!("B must have rank 2 or 3, got {s:?}"),
            ))
        }
    };
    let (n, kb) = if trans_b { (rows, cols) } else { (cols, rows) };
    ensure(kb == k, OP, || {
        format!(
            "inner dimensions differ: A {:?}, B {:?} (trans_b={trans_b})",
            a.shape(),
            b.shape()
        )
    })?;
    if let Some(bias) = bias {
        ensure(bias.shape() == [n], OP, || {
            format!("bias {:?} must be [{n}]", bias.shape())
        })?;
    }
    check_depth(gpu, k)?;
    let launch = plan_matmul(
        &gpu.plan_target(),
        &MatmulProblem {
            batch,
            m,
            n,
            k,
            trans_b,
        },
    );
    let shader = match launch.lanes {
        1 => &shaders::MATMUL,
        _ => &shaders::MATMUL_LANES,
    };
    let mut kernel = Kernel::new(shader, launch.entry)
        .flag("TRANS_B", trans_b)
        .flag("HAS_BIAS", bias.is_some())
        .flag(F16_WEIGHTS, b.dtype() == DType::F16)
        .half(a.dtype() == DType::F16);
    if let Some(t) = launch.tiling {
        kernel = kernel
            .with("TILE_M", t.tile_m)
            .with("TILE_N", t.tile_n)
            .with("BLOCK", t.block)
            .flag("VEC4", launch.vec4);
    }
    if launch.lanes > 1 {
        kernel = kernel.with("LANES", launch.lanes);
    }
    let (k_chunk, splits) = launch.tiling.map_or((k, 1), |t| t.k_slices(k));
    let u = |what, v| checked_u32(OP, what, v);
    let params = MatmulParams {
        m: u("m", m)?,
        n: u("n", n)?,
        k: u("k", k)?,
        batch_stride_a: u("batch_stride_a", m * k)?,
        batch_stride_b: u("batch_stride_b", if b_batched { n * k } else { 0 })?,
        batch_stride_c: u("batch_stride_c", m * n)?,
        k_chunk: u("k_chunk", k_chunk)?,
        splits: u("splits", splits)?,
        batch: u("batch", batch)?,
    };
    let out = gpu.empty_typed(&[batch, m, n], a.dtype())?;
    let bias = bias.unwrap_or(b);
    if splits == 1 {
        gpu.dispatch(&kernel, &params, &[a, b, bias], &[&out], launch.workgroups)?;
        return Ok(out);
    }
    // Split-K: the slices' f32 sums, then their sum (+ bias).
    let sums = gpu.empty(&[batch * splits, m, n])?;
    gpu.dispatch(&kernel, &params, &[a, b, bias], &[&sums], launch.workgroups)?;
    let reduce = Kernel {
        entry: "matmul_reduce",
        ..kernel
    };
    let grid = gpu.grid_1d(out.numel());
    gpu.dispatch(&reduce, &params, &[&sums, b, bias], &[&out], grid)?;
    Ok(out)
}

/// Batched matrix product A (batch, M, K) · B (K, N) or (batch, K, N).
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_impl(gpu, a, b, None, false)
}

/// PyTorch `Linear`: x (…, K) · Wᵀ + bias with W (N, K); leading dimensions are kept.
pub fn linear(gpu: &Gpu, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_impl(gpu, x, weight, bias, true)
}

/// A `Linear` weight W (N, K) held once, in the layout this device's product is fastest with:
/// as stored, or on the blocked class (f32, K and N multiples of 4) as Wᵀ (K, N), which the
/// vec4 product reads. Layers make it at load.
#[derive(Clone, Debug)]
pub struct LinearWeight {
    tensor: Tensor,
    transposed: bool,
}

impl LinearWeight {
    pub fn new(gpu: &Gpu, weight: Tensor) -> Result<LinearWeight> {
        let [n, k] = dims::<2>(&weight, "linear", "weight")?;
        let transposed = gpu.kernel_class() == KernelClass::Blocked
            && n % 4 == 0
            && k % 4 == 0
            && weight.dtype() == DType::F32;
        let tensor = match transposed {
            true => super::transpose_last2(gpu, &weight.reshape(&[1, n, k])?)?.reshape(&[k, n])?,
            false => weight,
        };
        Ok(LinearWeight { tensor, transposed })
    }
}

/// [`linear`] with the weight in the layout the device is fastest with.
pub fn linear_prepared(
    gpu: &Gpu,
    x: &Tensor,
    weight: &LinearWeight,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    linear_impl(gpu, x, &weight.tensor, bias, !weight.transposed)
}

fn linear_impl(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    trans_b: bool,
) -> Result<Tensor> {
    let shape = x.shape();
    ensure(!shape.is_empty(), "linear", || {
        "x must have rank ≥ 1".into()
    })?;
    let k = shape[shape.len() - 1];
    let rows = x.numel() / k.max(1);
    let y = matmul_impl(gpu, &x.reshape(&[1, rows, k])?, weight, bias, trans_b)?;
    let mut out_shape = shape.to_vec();
    *out_shape.last_mut().unwrap() = y.dim(2);
    y.reshape(&out_shape)
}

/// ∂⟨linear(x, weight, bias), dy⟩/∂x = dy · W for dy (…, N) and W (N, K): a plain product with
/// the weight as stored.
pub fn linear_input_grad(gpu: &Gpu, dy: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let [n, k] = dims::<2>(weight, "linear_input_grad", "weight")?;
    linear_input_grad_impl(gpu, dy, weight, (n, k), false)
}

/// [`linear_input_grad`] with the weight as a layer holds it (held as Wᵀ, the product reads it
/// transposed back).
pub fn linear_input_grad_prepared(gpu: &Gpu, dy: &Tensor, weight: &LinearWeight) -> Result<Tensor> {
    let t = &weight.tensor;
    let [rows, cols] = dims::<2>(t, "linear_input_grad", "weight")?;
    let (n, k) = if weight.transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    linear_input_grad_impl(gpu, dy, t, (n, k), weight.transposed)
}

fn linear_input_grad_impl(
    gpu: &Gpu,
    dy: &Tensor,
    weight: &Tensor,
    (n, k): (usize, usize),
    trans_b: bool,
) -> Result<Tensor> {
    const OP: &str = "linear_input_grad";
    let shape = dy.shape();
    ensure(shape.last() == Some(&n), OP, || {
        format!("dy {shape:?} must end in the weight's {n} outputs")
    })?;
    let rows = dy.numel() / n.max(1);
    let dx = matmul_impl(gpu, &dy.reshape(&[1, rows, n])?, weight, None, trans_b)?;
    let mut out_shape = shape.to_vec();
    *out_shape.last_mut().unwrap() = k;
    dx.reshape(&out_shape)
}
