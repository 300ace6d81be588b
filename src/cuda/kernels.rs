//! The kernel registry: the single source of truth for every CUDA kernel variant (ARCHITECTURE.md, "Kernel
//! registry"). Each [`Variant`] entry carries its symbol, its launch rule (grid, block, dynamic shared memory, and
//! which shapes it accepts) and its fallback; the backend, the simulator, the tests, the benches and `cliprt
//! profile` all loop over [`OPS`]. Adding a variant is the kernel in `kernels/<module>.cu` plus one entry here
//! (docs/adding-a-kernel-variant.md).
//!
//! Constants the host and the kernels share ([`SHARED`]: epilogue codes, tile geometry, limits) are defined here
//! once and emitted as `#define`s ahead of every module's source, for NVRTC and the simulator alike.
//!
//! Variants follow `<op>_<dtype>_v<N>`. Each op has a default; `CLIPRT_KERNEL_<OP>=vN` (e.g.
//! `CLIPRT_KERNEL_GEMM=v1`) picks another for experiments, and an unknown value is an error, not a silent default.

use crate::backend::{Activation, AttnShape, Epilogue, GemmShape};
use crate::error::{Error, Result};

mod sources {
    include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));
}

/// k step of the pipelined GEMMs (GP_BK).
const GP_BK: usize = 32;
/// Shared-memory row stride of a pipelined GEMM tile in halves: 8 halves of padding break ldmatrix bank conflicts.
const GP_LDS: usize = GP_BK + 8;
/// gemm_f16_v2: 128×128 block tile, 3 stages in flight, 8 warps.
const G2_TILE: usize = 128;
const G2_STAGES: usize = 3;
const G2_THREADS: usize = 256;
/// gemm_f16_v3: 64×64 block tile, 4 stages, 4 warps (small M).
const G3_TILE: usize = 64;
const G3_STAGES: usize = 4;
const G3_THREADS: usize = 128;
/// gemm_f16_v1: 64×64 block tile, 4 warps.
const G1_TILE: usize = 64;
const G1_THREADS: usize = 128;

/// Dynamic shared memory of a pipelined GEMM: STAGES × (x tile + w tile) rows of GP_LDS halves.
const fn pipelined_smem(tile: usize, stages: usize) -> usize {
    stages * (tile + tile) * GP_LDS * 2
}

/// The largest head dimension attention_f16_v1 handles (4 dimensions per lane), and every variant's limit.
pub const MAX_HEAD_DIM: usize = 128;
/// Queries per block of attention_f16_v1 (a warp each, 8 warps).
const A1_QUERIES: usize = 8;
/// Queries per block of attention_f16_v2 and _v3 (16 per warp, 4 warps).
const A2_QUERIES: usize = 64;
/// The largest k of the CUDA top-k kernels (their shared-memory sort holds 2·k pairs); the CPU goes to 4096.
pub const MAX_GPU_K: usize = 2048;
/// Shared memory the top-k kernel declares statically (its candidate buffer: TK_SORT pairs), in bytes.
pub const TOPK_STATIC_SMEM: usize = 4096 * 8 + 16;
/// Rows per block of the row-wise kernels (a warp per row, 8 warps).
const ROWS_PER_BLOCK: usize = 8;

/// The epilogue codes the GEMM kernels read (EPI_* in the kernels).
pub fn epilogue_code(ep: Epilogue) -> i32 {
    match ep {
        Epilogue::Store => 0,
        Epilogue::Accumulate => 1,
        Epilogue::Activation(Activation::QuickGelu) => 2,
        Epilogue::Activation(Activation::Gelu) => 3,
        Epilogue::Activation(Activation::GeluTanh) => 4,
    }
}

/// Every constant shared with kernels/*.cu, emitted as `#define NAME value` ahead of each module.
pub const SHARED: &[(&str, usize)] = &[
    ("EPI_STORE", 0),
    ("EPI_ACCUMULATE", 1),
    ("EPI_QUICK_GELU", 2),
    ("EPI_GELU", 3),
    ("EPI_GELU_TANH", 4),
    ("GP_BK", GP_BK),
    ("GP_LDS", GP_LDS),
    ("G1_TILE", G1_TILE),
    ("G1_THREADS", G1_THREADS),
    ("G2_TILE", G2_TILE),
    ("G2_STAGES", G2_STAGES),
    ("G2_THREADS", G2_THREADS),
    ("G2_SMEM", pipelined_smem(G2_TILE, G2_STAGES)),
    ("G3_TILE", G3_TILE),
    ("G3_STAGES", G3_STAGES),
    ("G3_THREADS", G3_THREADS),
    ("G3_SMEM", pipelined_smem(G3_TILE, G3_STAGES)),
    ("A1_MAX_HD", MAX_HEAD_DIM),
    ("A1_QUERIES", A1_QUERIES),
    ("A2_Q", A2_QUERIES),
    ("TK_MAX_K", MAX_GPU_K),
    ("ROWS_PER_BLOCK", ROWS_PER_BLOCK),
];

/// What one launch computes: the input of a launch rule.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// A GEMM; `aligned` when K % 8 == 0 and both operands are 16-byte aligned (16-byte cp.async chunks).
    Gemm {
        s: GemmShape,
        aligned: bool,
    },
    Attention(AttnShape),
    /// A row-wise op over `rows` rows.
    Rows {
        rows: usize,
    },
    /// An elementwise op over `total` values.
    Elements {
        total: usize,
    },
    /// One output per warp (the scaled cosine logits).
    Outputs {
        total: usize,
    },
    /// The top-k scan: one block per (query, gallery slice), the query of `dim` in dynamic shared memory.
    TopK {
        queries: usize,
        slices: usize,
        dim: usize,
    },
    /// The top-k merge: one block per query.
    PerQuery {
        queries: usize,
    },
}

/// A launch geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: u32,
    /// Dynamic shared memory in bytes.
    pub smem: u32,
}

/// What the device grants, for the rules that depend on it.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The most shared memory one block may opt in to.
    pub max_shared: usize,
}

/// A launch rule: the geometry for `work`, or `None` where the variant cannot take the shape (its fallback runs).
pub type Rule = fn(&Work, &Limits) -> Option<Launch>;

/// Dynamic shared memory a variant must be allowed above the default 48 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmemOptIn {
    None,
    Bytes(usize),
    /// Whatever the device grants (the launch rule checks each launch against it).
    DeviceMax,
}

/// One implementation of an op.
#[derive(Debug)]
pub struct Variant {
    pub name: &'static str,
    pub symbol: &'static str,
    pub about: &'static str,
    pub launch: Rule,
    /// The variant (of the same op) that runs where `launch` refuses a shape; `None` where nothing else can.
    pub fallback: Option<&'static str>,
    pub smem_opt_in: SmemOptIn,
}

/// An op: the `kernels/<module>.cu` that holds its variants, and the default one. Every variant of an op takes the
/// same parameter list.
#[derive(Debug)]
pub struct Op {
    pub name: &'static str,
    pub module: &'static str,
    pub variants: &'static [Variant],
    pub default: &'static str,
}

fn blocks(n: usize, per: usize) -> Option<u32> {
    u32::try_from(n.div_ceil(per).max(1)).ok()
}

fn grid_2d(x: usize, y: usize) -> Option<(u32, u32, u32)> {
    Some((u32::try_from(x).ok()?, u32::try_from(y).ok()?, 1))
}

fn gemm_tiled(
    w: &Work,
    tile: usize,
    threads: usize,
    smem: usize,
    needs_aligned: bool,
) -> Option<Launch> {
    let Work::Gemm { s, aligned } = *w else {
        return None;
    };
    if needs_aligned && !aligned {
        return None;
    }
    Some(Launch {
        grid: grid_2d(s.n.div_ceil(tile), s.m.div_ceil(tile))?,
        block: threads as u32,
        smem: smem as u32,
    })
}

fn gemm_v1(w: &Work, _: &Limits) -> Option<Launch> {
    gemm_tiled(w, G1_TILE, G1_THREADS, 0, false)
}
fn gemm_v2(w: &Work, _: &Limits) -> Option<Launch> {
    gemm_tiled(
        w,
        G2_TILE,
        G2_THREADS,
        pipelined_smem(G2_TILE, G2_STAGES),
        true,
    )
}
fn gemm_v3(w: &Work, _: &Limits) -> Option<Launch> {
    gemm_tiled(
        w,
        G3_TILE,
        G3_THREADS,
        pipelined_smem(G3_TILE, G3_STAGES),
        true,
    )
}

fn attention_grid(a: &AttnShape, queries_per_block: usize) -> Option<(u32, u32, u32)> {
    Some((
        blocks(a.seq, queries_per_block)?,
        u32::try_from(a.heads).ok()?,
        u32::try_from(a.batch).ok()?,
    ))
}

fn attention_v1(w: &Work, _: &Limits) -> Option<Launch> {
    let Work::Attention(a) = w else { return None };
    (a.head_dim <= MAX_HEAD_DIM).then_some(())?;
    Some(Launch {
        grid: attention_grid(a, A1_QUERIES)?,
        block: (A1_QUERIES * 32) as u32,
        smem: 0,
    })
}

/// v2 and v3 copy 16-byte (8-half) chunks of each head: head dims that are a multiple of 8 (all of CLIP's).
fn attention_v2(w: &Work, _: &Limits) -> Option<Launch> {
    let Work::Attention(a) = w else { return None };
    (a.head_dim.is_multiple_of(8) && a.head_dim <= MAX_HEAD_DIM).then_some(())?;
    Some(Launch {
        grid: attention_grid(a, A2_QUERIES)?,
        block: 128,
        smem: 0,
    })
}

/// Dynamic shared memory of attention_f16_v3 for `seq` tokens at head dim `hd`: Q [64] and K, V [seq rounded up to
/// 32] rows of the padded head dim (the kernel's template dispatch: 64, 80, 112, 128) + 8 halves.
fn attention_v3_smem(seq: usize, hd: usize) -> usize {
    let d = match hd {
        0..=64 => 64,
        65..=80 => 80,
        81..=112 => 112,
        _ => 128,
    };
    (A2_QUERIES + 2 * seq.div_ceil(32) * 32) * (d + 8) * 2
}

/// v2's math with K and V resident: only where they fit the device's shared memory.
fn attention_v3(w: &Work, l: &Limits) -> Option<Launch> {
    let Work::Attention(a) = w else { return None };
    let smem = attention_v3_smem(a.seq, a.head_dim);
    (smem <= l.max_shared).then_some(())?;
    Some(Launch {
        smem: smem as u32,
        ..attention_v2(w, l)?
    })
}

fn row_wise(w: &Work, _: &Limits) -> Option<Launch> {
    let Work::Rows { rows } = *w else { return None };
    Some(Launch {
        grid: (blocks(rows, ROWS_PER_BLOCK)?, 1, 1),
        block: (ROWS_PER_BLOCK * 32) as u32,
        smem: 0,
    })
}

/// 256-thread blocks for grid-stride kernels over `total` elements (at most 2^20 blocks; each thread loops).
fn elementwise(w: &Work, _: &Limits) -> Option<Launch> {
    let Work::Elements { total } = *w else {
        return None;
    };
    Some(Launch {
        grid: (total.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block: 256,
        smem: 0,
    })
}

/// A warp per output, 8 per block.
fn warp_per_output(w: &Work, _: &Limits) -> Option<Launch> {
    let Work::Outputs { total } = *w else {
        return None;
    };
    Some(Launch {
        grid: (blocks(total, 8)?, 1, 1),
        block: 256,
        smem: 0,
    })
}

fn topk_scan(w: &Work, _: &Limits) -> Option<Launch> {
    let Work::TopK {
        queries,
        slices,
        dim,
    } = *w
    else {
        return None;
    };
    // The query sits in dynamic shared memory beside the static candidate buffer, within the default 48 KiB.
    (TOPK_STATIC_SMEM + 4 * dim <= 48 * 1024).then_some(())?;
    Some(Launch {
        grid: grid_2d(queries, slices)?,
        block: 256,
        smem: (4 * dim) as u32,
    })
}

fn per_query(w: &Work, _: &Limits) -> Option<Launch> {
    let Work::PerQuery { queries } = *w else {
        return None;
    };
    Some(Launch {
        grid: grid_2d(queries, 1)?,
        block: 256,
        smem: 0,
    })
}

/// A variant that takes every shape its op's rule accepts, with no shared memory opt-in.
const fn plain(symbol: &'static str, about: &'static str, launch: Rule) -> Variant {
    Variant {
        name: "v1",
        symbol,
        about,
        launch,
        fallback: None,
        smem_opt_in: SmemOptIn::None,
    }
}

/// Every op the CUDA backend launches.
pub const OPS: &[Op] = &[
    Op {
        name: "gemm",
        module: "gemm",
        variants: &[
            plain(
                "gemm_f16_v1",
                "64x64x32 tile, 4 warps, mma.sync m16n8k16 + ldmatrix, cp.async, fused bias/act/residual",
                gemm_v1,
            ),
            Variant {
                name: "v2",
                symbol: "gemm_f16_v2",
                about: "128x128x32 tile, 8 warps of 64x32, 3-stage cp.async pipeline (K % 8 == 0, else v1)",
                launch: gemm_v2,
                fallback: Some("v1"),
                smem_opt_in: SmemOptIn::Bytes(pipelined_smem(G2_TILE, G2_STAGES)),
            },
            Variant {
                name: "v3",
                symbol: "gemm_f16_v3",
                about: "64x64x32 tile, 4 warps, 4-stage cp.async pipeline, for small M (K % 8 == 0, else v1)",
                launch: gemm_v3,
                fallback: Some("v1"),
                smem_opt_in: SmemOptIn::None,
            },
        ],
        default: "v1",
    },
    Op {
        name: "attention",
        module: "attention",
        variants: &[
            plain(
                "attention_f16_v1",
                "warp per query, 32-key smem tiles, online softmax in f32, head_dim <= 128",
                attention_v1,
            ),
            Variant {
                name: "v2",
                symbol: "attention_f16_v2",
                about: "tensor cores, FlashAttention-2 style: 64 queries per block, 32-key blocks (hd % 8 == 0)",
                launch: attention_v2,
                fallback: Some("v1"),
                smem_opt_in: SmemOptIn::None,
            },
            Variant {
                name: "v3",
                symbol: "attention_f16_v3",
                about: "v2's math with K and V resident in shared memory, loaded once by cp.async (else v2)",
                launch: attention_v3,
                fallback: Some("v2"),
                smem_opt_in: SmemOptIn::DeviceMax,
            },
        ],
        default: "v1",
    },
    Op {
        name: "layernorm",
        module: "layernorm",
        variants: &[plain(
            "layernorm_f16_v1",
            "warp per row, two-pass f32 statistics",
            row_wise,
        )],
        default: "v1",
    },
    Op {
        name: "im2col",
        module: "embed",
        variants: &[plain("im2col_f16_v1", "thread per element", elementwise)],
        default: "v1",
    },
    Op {
        name: "vision_embed",
        module: "embed",
        variants: &[plain(
            "vision_embed_f16_v1",
            "class token + position add, thread per element",
            elementwise,
        )],
        default: "v1",
    },
    Op {
        name: "text_embed",
        module: "embed",
        variants: &[plain(
            "text_embed_f16_v1",
            "token + position lookup, thread per element",
            elementwise,
        )],
        default: "v1",
    },
    Op {
        name: "gather_rows",
        module: "embed",
        variants: &[plain("gather_rows_f16_v1", "thread per element", elementwise)],
        default: "v1",
    },
    Op {
        name: "topk",
        module: "topk",
        variants: &[plain(
            "topk_f32_v1",
            "block per (query, slice), warp per row, smem candidate buffer + bitonic sort, k <= 2048",
            topk_scan,
        )],
        default: "v1",
    },
    Op {
        name: "topk_merge",
        module: "topk",
        variants: &[plain(
            "topk_merge_f32_v1",
            "block per query: the slices' candidates -> top-k",
            per_query,
        )],
        default: "v1",
    },
    Op {
        name: "scaled_cosine",
        module: "similarity",
        variants: &[plain(
            "scaled_cosine_f32_v1",
            "warp per output, norms fused",
            warp_per_output,
        )],
        default: "v1",
    },
];

impl Op {
    /// The environment variable that overrides the default variant.
    pub fn env_var(&self) -> String {
        format!("CLIPRT_KERNEL_{}", self.name.to_uppercase())
    }

    /// The variant in force: the override if set (an unknown one is an error), else the default.
    pub fn selected(&self) -> Result<&'static Variant> {
        self.pick(std::env::var(self.env_var()).ok().as_deref())
    }

    /// The variant named `want` (the default when `None`); an unknown name is an error naming the choices.
    pub fn pick(&self, want: Option<&str>) -> Result<&'static Variant> {
        let want = want.unwrap_or(self.default);
        self.variant(want).ok_or_else(|| {
            let names: Vec<&str> = self.variants.iter().map(|v| v.name).collect();
            Error::InvalidArgument(format!(
                "{}={want}: no such variant of {} (have {})",
                self.env_var(),
                self.name,
                names.join(", ")
            ))
        })
    }

    fn variant(&self, name: &str) -> Option<&'static Variant> {
        // OPS is 'static, so its ops' variants are too.
        let op: &'static Op = OPS.iter().find(|o| o.name == self.name)?;
        op.variants.iter().find(|v| v.name == name)
    }

    /// The variants `start` may hand a shape to, in order: itself, its fallback, the fallback's fallback, ….
    pub fn chain(&self, start: &'static Variant) -> impl Iterator<Item = &'static Variant> + '_ {
        std::iter::successors(Some(start), move |v| {
            v.fallback.and_then(|f| self.variant(f))
        })
        .take(self.variants.len())
    }

    /// The variant that runs `work` when `start` is selected, and its launch: the first of [`Op::chain`] whose
    /// rule accepts the shape. An error where none does, or where the grid exceeds CUDA's limits.
    pub fn resolve(
        &self,
        start: &'static Variant,
        work: &Work,
        limits: &Limits,
    ) -> Result<(&'static Variant, Launch)> {
        let (v, l) = self
            .chain(start)
            .find_map(|v| (v.launch)(work, limits).map(|l| (v, l)))
            .ok_or_else(|| match work {
                Work::Attention(a) if a.head_dim > MAX_HEAD_DIM => {
                    Error::UnsupportedModel(format!(
                        "head dim {} (the CUDA attention kernels handle up to {MAX_HEAD_DIM})",
                        a.head_dim
                    ))
                }
                _ => Error::Shape(format!(
                    "{}: no {} variant takes {work:?}",
                    start.symbol, self.name
                )),
            })?;
        if l.grid.1 > 65_535 || l.grid.2 > 65_535 {
            return Err(Error::Shape(format!(
                "{}: {work:?} exceeds the grid limits",
                v.symbol
            )));
        }
        Ok((v, l))
    }
}

/// The op named `name`.
pub fn op(name: &str) -> Option<&'static Op> {
    OPS.iter().find(|o| o.name == name)
}

/// The module (`kernels/<module>.cu`) that defines kernel `symbol`.
pub fn module_of(symbol: &str) -> Option<&'static str> {
    OPS.iter()
        .find(|o| o.variants.iter().any(|v| v.symbol == symbol))
        .map(|o| o.module)
}

/// The variant entry of kernel `symbol`.
pub fn variant_of(symbol: &str) -> Option<&'static Variant> {
    OPS.iter()
        .flat_map(|o| o.variants)
        .find(|v| v.symbol == symbol)
}

/// Names of the kernel modules (kernels/*.cu without the extension), sorted.
pub fn modules() -> impl Iterator<Item = &'static str> {
    sources::MODULES.iter().map(|(n, _)| *n)
}

/// The full source NVRTC (and the simulator) compiles for `module`: the [`SHARED`] constants, common.cuh, then
/// the file (with a #line so errors name it).
pub fn module_source(module: &str) -> Option<String> {
    let (_, src) = sources::MODULES.iter().find(|(n, _)| *n == module)?;
    let defines: String = SHARED
        .iter()
        .map(|(name, value)| format!("#define {name} {value}\n"))
        .collect();
    Some(format!(
        "// Generated from src/cuda/kernels.rs (SHARED).\n{defines}#line 1 \"common.cuh\"\n{}\n#line 1 \"{module}.cu\"\n{src}",
        sources::COMMON
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_existing_modules_and_defaults() {
        let mods: Vec<&str> = modules().collect();
        for op in OPS {
            assert!(mods.contains(&op.module), "{} has no module", op.name);
            assert!(op.variants.iter().any(|v| v.name == op.default));
            for v in op.variants {
                let src = module_source(op.module).unwrap();
                assert!(
                    src.contains(&format!("{}(", v.symbol)),
                    "{} not in {}.cu",
                    v.symbol,
                    op.module
                );
                if let Some(f) = v.fallback {
                    assert!(
                        op.variant(f).is_some(),
                        "{}: fallback {f} missing",
                        v.symbol
                    );
                }
            }
        }
    }

    #[test]
    fn fallbacks_follow_the_launch_rules() {
        let limits = Limits {
            max_shared: 227 * 1024,
        };
        let gemm = op("gemm").unwrap();
        let s = GemmShape { m: 3, n: 5, k: 7 };
        for v in gemm.variants {
            let (ran, l) = gemm
                .resolve(v, &Work::Gemm { s, aligned: false }, &limits)
                .unwrap();
            assert_eq!((ran.name, l.block, l.smem), ("v1", 128, 0), "{}", v.name);
        }
        let attn = op("attention").unwrap();
        let a = |seq, head_dim| {
            Work::Attention(AttnShape {
                batch: 1,
                seq,
                heads: 1,
                head_dim,
                causal: false,
            })
        };
        let v3 = attn.pick(Some("v3")).unwrap();
        assert_eq!(attn.resolve(v3, &a(50, 64), &limits).unwrap().0.name, "v3");
        assert_eq!(
            attn.resolve(v3, &a(400, 128), &limits).unwrap().0.name,
            "v2"
        );
        assert_eq!(attn.resolve(v3, &a(19, 36), &limits).unwrap().0.name, "v1");
        assert!(matches!(
            attn.resolve(v3, &a(19, 136), &limits),
            Err(Error::UnsupportedModel(_))
        ));
    }

    #[test]
    fn shared_constants_are_defined_once() {
        for (name, _) in SHARED {
            for (module, src) in sources::MODULES
                .iter()
                .chain(std::iter::once(&("common", sources::COMMON)))
            {
                assert!(
                    !src.contains(&format!("#define {name} ")),
                    "{module} redefines {name}, which src/cuda/kernels.rs generates"
                );
            }
        }
    }
}
