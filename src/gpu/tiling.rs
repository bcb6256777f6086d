//! The tiled (GPU-class) GEMM's variants (tiled_gemm.wgsl, under conv2d and matmul) and the one
//! place one is chosen per problem shape and adapter.
//!
//! A workgroup computes a `tile_m` × `tile_n` tile of C with `block` × `block` outputs per
//! invocation; with split-K each of `splits` workgroup layers sums one slice of K and a second
//! pass adds the slices up through the op's epilogue. A small grid leaves most of a GPU idle (the
//! CIFAR-10 UNet's convolutions at batch 1 launch a handful of 64 × 64 tiles on a 132-SM chip),
//! so the choice aims at [`WORKGROUPS_PER_CU`] workgroups per compute unit: the largest tile that
//! reaches it, else the smallest tile with K split until it does.

/// Depth of K staged per pass (tiled_gemm.wgsl's `TILE_K`); split-K slices are multiples of it.
pub const TILE_K: usize = 16;

/// One tiled GEMM configuration: tiled_gemm.wgsl's `TILE_M`, `TILE_N` and `BLOCK`, and the
/// split-K factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmTiling {
    pub tile_m: u32,
    pub tile_n: u32,
    pub block: u32,
    pub splits: u32,
}

/// The tile shapes (rows, columns, outputs per invocation per axis), largest first. Each keeps
/// tiled_gemm.wgsl's staging exact: whole vec4 quads of A and whole rows of B per invocation
/// (tested below).
pub const TILE_SHAPES: [(u32, u32, u32); 6] = [
    (128, 128, 8),
    (64, 128, 8),
    (64, 64, 4),
    (64, 32, 4),
    (32, 64, 4),
    (32, 32, 4),
];

/// The split-K factors the sweep tries (the chooser takes any).
pub const SPLITS: [u32; 6] = [1, 2, 4, 8, 16, 32];

/// The most slices one product is split into.
const MAX_SPLITS: usize = 32;
/// K tiles each slice keeps at least, so a slice's staging is not all it does.
const MIN_K_TILES_PER_SPLIT: usize = 4;
/// The grid the chooser aims at, per compute unit.
pub const WORKGROUPS_PER_CU: usize = 2;
/// Compute units assumed where the adapter's name is not in [`compute_units`]' table.
pub const FALLBACK_COMPUTE_UNITS: usize = 32;

impl GemmTiling {
    /// A tile shape of [`TILE_SHAPES`] without split-K.
    pub fn shape((tile_m, tile_n, block): (u32, u32, u32)) -> GemmTiling {
        GemmTiling {
            tile_m,
            tile_n,
            block,
            splits: 1,
        }
    }

    /// Workgroups along (columns, rows) for an M × N product.
    pub fn tiles(&self, m: usize, n: usize) -> [usize; 2] {
        [
            n.div_ceil(self.tile_n as usize),
            m.div_ceil(self.tile_m as usize),
        ]
    }

    /// The K slice each workgroup layer sums (a multiple of [`TILE_K`]) and the number of
    /// non-empty slices, for a depth of `k`: `splits` clamped to the K tiles there are.
    pub fn k_slices(&self, k: usize) -> (usize, usize) {
        let k_tiles = k.div_ceil(TILE_K).max(1);
        let per = k_tiles.div_ceil((self.splits as usize).clamp(1, k_tiles));
        (per * TILE_K, k_tiles.div_ceil(per))
    }

    /// A short name for tables: `128x128/8` or `32x32/4 s8`.
    pub fn label(&self) -> String {
        let shape = format!("{}x{}/{}", self.tile_m, self.tile_n, self.block);
        match self.splits {
            1 => shape,
            s => format!("{shape} s{s}"),
        }
    }
}

/// Compute units (SMs) of the adapters we know by name, else [`FALLBACK_COMPUTE_UNITS`] (as ggml
/// does: Vulkan reports no SM count). More specific names come first.
pub fn compute_units(adapter_name: &str) -> usize {
    const TABLE: [(&str, usize); 16] = [
        ("H200", 132),
        ("H100 PCIe", 114),
        ("H100", 132),
        ("A100", 108),
        ("L40S", 142),
        ("L40", 142),
        ("L4", 58),
        ("A10G", 80),
        ("A10", 72),
        ("T4", 40),
        ("V100", 80),
        ("RTX 5090", 170),
        ("RTX 4090", 128),
        ("RTX 3090", 82),
        ("RTX 3080", 68),
        ("RTX 2060", 30),
    ];
    TABLE
        .iter()
        .find(|(name, _)| adapter_name.contains(name))
        .map_or(FALLBACK_COMPUTE_UNITS, |&(_, units)| units)
}

/// The tiling of a `batch` × (M × N × K) product on an adapter with `compute_units` compute
/// units: the largest shape of [`TILE_SHAPES`] whose grid reaches [`WORKGROUPS_PER_CU`] per
/// unit, skipping shapes whose tile rows are more than half idle; else the smallest shape left,
/// with K split (slices of at least [`MIN_K_TILES_PER_SPLIT`] K tiles) toward that grid.
pub fn choose_tiling(
    compute_units: usize,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
) -> GemmTiling {
    let target = WORKGROUPS_PER_CU * compute_units;
    let fits = |&&(tile_m, _, _): &&(u32, u32, u32)| m > tile_m as usize / 2 || tile_m == 32;
    let grid = |t: &GemmTiling| {
        let [x, y] = t.tiles(m, n);
        x * y * batch
    };
    let mut smallest = GemmTiling::shape(TILE_SHAPES[TILE_SHAPES.len() - 1]);
    for shape in TILE_SHAPES.iter().filter(fits) {
        let tiling = GemmTiling::shape(*shape);
        if grid(&tiling) >= target {
            return tiling;
        }
        smallest = tiling;
    }
    let most = (k.div_ceil(TILE_K) / MIN_K_TILES_PER_SPLIT).clamp(1, MAX_SPLITS);
    let splits = target.div_ceil(grid(&smallest).max(1)).clamp(1, most);
    GemmTiling {
        splits: splits as u32,
        ..smallest
    }
}

/// What a launch plan depends on besides the problem: the kernel class; for the tiled class,
/// the adapter's compute units and any tiling forced on it (tests and the sweep force each
/// variant with [`super::Gpu::with_tiling`]); for the blocked class, the subgroup lanes its
/// kernels share their weight rows across ([`super::shared_row_lanes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanTarget {
    pub class: super::KernelClass,
    pub compute_units: usize,
    pub forced_tiling: Option<GemmTiling>,
    pub lanes: u32,
}

impl PlanTarget {
    /// The target of `class` on an adapter with `compute_units`, nothing forced, no subgroups.
    pub fn new(class: super::KernelClass, compute_units: usize) -> PlanTarget {
        PlanTarget {
            class,
            compute_units,
            forced_tiling: None,
            lanes: 1,
        }
    }

    /// The tiling of a `batch` × (M × N × K) product: the forced one, else [`choose_tiling`]'s.
    pub fn tiling(&self, batch: usize, m: usize, n: usize, k: usize) -> GemmTiling {
        self.forced_tiling
            .unwrap_or_else(|| choose_tiling(self.compute_units, batch, m, n, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tiled_gemm.wgsl's staging lanes divide evenly for every shape: each invocation stages
    /// whole vec4 quads of A (A_QUADS_EACH) and the same column of B on whole rows
    /// (B_ROWS_EACH, a multiple of 4 for matmul's vec4 B rows), and the 8 × 8 blocks' halves
    /// start on vec4s.
    #[test]
    fn every_tile_shape_stages_exactly() {
        for (m, n, block) in TILE_SHAPES {
            let (m, n, block) = (m as usize, n as usize, block as usize);
            let threads = (m / block) * (n / block);
            assert!(block == 4 || (block == 8 && m % 16 == 0 && n % 16 == 0));
            assert!(threads <= 256 && threads % n == 0 && threads % (m / 4) == 0);
            assert_eq!((TILE_K * m / 4) % threads, 0, "{m}x{n}/{block}: A quads");
            let b_rows = TILE_K * n / threads;
            assert!(
                b_rows * threads == TILE_K * n && b_rows.is_multiple_of(4),
                "{m}x{n}/{block}: B rows"
            );
        }
    }

    #[test]
    fn k_slices_cover_k_with_none_empty() {
        for k in [1, 15, 16, 17, 100, 1152] {
            for splits in SPLITS {
                let t = GemmTiling {
                    splits,
                    ..GemmTiling::shape(TILE_SHAPES[0])
                };
                let (chunk, slices) = t.k_slices(k);
                assert_eq!(chunk % TILE_K, 0);
                assert!(
                    chunk * slices >= k && chunk * (slices - 1) < k,
                    "{k} {splits}"
                );
                assert!(slices <= splits as usize);
            }
        }
    }
}
