//! The kernel sources (kernels/*.cu, embedded by build.rs), the variant registry, NVRTC compilation with the
//! on-disk cache, and the compile check that needs no GPU (`cliprt kernels --check`).
//!
//! Variants follow `<op>_<dtype>_v<N>`. Each op has a default; `CLIPRT_KERNEL_<OP>=vN` (e.g.
//! `CLIPRT_KERNEL_GEMM=v1`) picks another for experiments, and an unknown value is an error, not a silent default.

use std::time::Instant;

use super::cache;
use super::nvrtc::Nvrtc;
use crate::error::{Error, Result};

mod sources {
    include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));
}

/// One implementation of an op.
#[derive(Debug)]
pub struct Variant {
    pub name: &'static str,
    pub symbol: &'static str,
    pub about: &'static str,
}

/// An op: the `kernels/<module>.cu` that holds its variants, and the default one.
#[derive(Debug)]
pub struct Op {
    pub name: &'static str,
    pub module: &'static str,
    pub variants: &'static [Variant],
    pub default: &'static str,
}

const fn v1(symbol: &'static str, about: &'static str) -> Variant {
    Variant {
        name: "v1",
        symbol,
        about,
    }
}

/// Every op the CUDA backend launches.
pub const OPS: &[Op] = &[
    Op {
        name: "gemm",
        module: "gemm",
        variants: &[
            v1(
                "gemm_f16_v1",
                "64x64x32 tile, 4 warps, mma.sync m16n8k16 + ldmatrix, cp.async, fused bias/act/residual",
            ),
            Variant {
                name: "v2",
                symbol: "gemm_f16_v2",
                about: "128x128x32 tile, 8 warps of 64x32, 3-stage cp.async pipeline (K % 8 == 0, else v1)",
            },
            Variant {
                name: "v3",
                symbol: "gemm_f16_v3",
                about: "64x64x32 tile, 4 warps, 4-stage cp.async pipeline, for small M (K % 8 == 0, else v1)",
            },
        ],
        default: "v1",
    },
    Op {
        name: "attention",
        module: "attention",
        variants: &[
            v1(
                "attention_f16_v1",
                "warp per query, 32-key smem tiles, online softmax in f32, head_dim <= 128",
            ),
            Variant {
                name: "v2",
                symbol: "attention_f16_v2",
                about: "tensor cores, FlashAttention-2 style: 64 queries per block, 32-key blocks (hd % 8 == 0)",
            },
            Variant {
                name: "v3",
                symbol: "attention_f16_v3",
                about: "v2's math with K and V resident in shared memory, loaded once by cp.async (else v2)",
            },
        ],
        default: "v1",
    },
    Op {
        name: "layernorm",
        module: "layernorm",
        variants: &[v1("layernorm_f16_v1", "warp per row, two-pass f32 statistics")],
        default: "v1",
    },
    Op {
        name: "im2col",
        module: "embed",
        variants: &[v1("im2col_f16_v1", "thread per element")],
        default: "v1",
    },
    Op {
        name: "vision_embed",
        module: "embed",
        variants: &[v1("vision_embed_f16_v1", "class token + position add, thread per element")],
        default: "v1",
    },
    Op {
        name: "text_embed",
        module: "embed",
        variants: &[v1("text_embed_f16_v1", "token + position lookup, thread per element")],
        default: "v1",
    },
    Op {
        name: "gather_rows",
        module: "embed",
        variants: &[v1("gather_rows_f16_v1", "thread per element")],
        default: "v1",
    },
    Op {
        name: "topk",
        module: "topk",
        variants: &[v1(
            "topk_f32_v1",
            "block per (query, slice), warp per row, smem candidate buffer + bitonic sort, k <= 2048",
        )],
        default: "v1",
    },
    Op {
        name: "topk_merge",
        module: "topk",
        variants: &[v1("topk_merge_f32_v1", "block per query: the slices' candidates -> top-k")],
        default: "v1",
    },
    Op {
        name: "scaled_cosine",
        module: "similarity",
        variants: &[v1("scaled_cosine_f32_v1", "warp per output, norms fused")],
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
        self.variants
            .iter()
            .find(|v| v.name == want)
            .ok_or_else(|| {
                let names: Vec<&str> = self.variants.iter().map(|v| v.name).collect();
                Error::InvalidArgument(format!(
                    "{}={want}: no such variant of {} (have {})",
                    self.env_var(),
                    self.name,
                    names.join(", ")
                ))
            })
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

/// Names of the kernel modules (kernels/*.cu without the extension), sorted.
pub fn modules() -> impl Iterator<Item = &'static str> {
    sources::MODULES.iter().map(|(n, _)| *n)
}

/// The full source NVRTC compiles for `module`: common.cuh, then the file (with a #line so errors name it).
pub fn module_source(module: &str) -> Option<String> {
    let (_, src) = sources::MODULES.iter().find(|(n, _)| *n == module)?;
    Some(format!(
        "{}\n#line 1 \"{module}.cu\"\n{src}",
        sources::COMMON
    ))
}

/// The CUBIN of `module` for `arch`, from the disk cache or freshly compiled (and then cached).
pub fn cubin(module: &str, arch: &str) -> Result<Vec<u8>> {
    let nvrtc = Nvrtc::get()?;
    let source = module_source(module)
        .ok_or_else(|| Error::InvalidArgument(format!("no kernel module {module:?}")))?;
    let entry = cache::dir().map(|d| cache::Entry::new(d, module, &source, arch, nvrtc.version()));
    if let Some(cubin) = entry.as_ref().and_then(cache::Entry::read) {
        return Ok(cubin);
    }
    let compiled = nvrtc.compile(module, &source, arch, &[])?;
    if let Some(e) = &entry {
        e.write(&compiled.cubin);
    }
    Ok(compiled.cubin)
}

/// What ptxas reported for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelReport {
    pub symbol: String,
    pub registers: u32,
    pub smem_bytes: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// One module compiled for one arch.
#[derive(Debug)]
pub struct ModuleReport {
    pub module: String,
    pub arch: String,
    pub compile_ms: f64,
    pub cubin_bytes: usize,
    pub kernels: Vec<KernelReport>,
}

/// Compiles `module` for `arch` with the ptxas report on (never from the cache) and parses the report.
pub fn check_module(module: &str, arch: &str) -> Result<ModuleReport> {
    let nvrtc = Nvrtc::get()?;
    let source = module_source(module)
        .ok_or_else(|| Error::InvalidArgument(format!("no kernel module {module:?}")))?;
    let t = Instant::now();
    let compiled = nvrtc.compile(module, &source, arch, &["--ptxas-options=-v"])?;
    Ok(ModuleReport {
        module: module.to_string(),
        arch: arch.to_string(),
        compile_ms: t.elapsed().as_secs_f64() * 1e3,
        cubin_bytes: compiled.cubin.len(),
        kernels: parse_ptxas(&compiled.log),
    })
}

/// Parses `ptxas -v` output: one report per "Compiling entry function" block.
pub fn parse_ptxas(log: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let symbol = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelReport {
                symbol,
                ..Default::default()
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_bytes = number_before(line, "bytes stack frame");
            k.spill_stores = number_before(line, "bytes spill stores");
            k.spill_loads = number_before(line, "bytes spill loads");
        } else if line.contains("registers") {
            k.registers = number_before(line, "registers");
            k.smem_bytes = number_before(line, "bytes smem");
        }
    }
    out
}

/// The integer just before `label` in `line` (0 when absent).
fn number_before(line: &str, label: &str) -> u32 {
    line.split(label)
        .next()
        .filter(|head| head.len() < line.len())
        .and_then(|head| {
            head.split(|c: char| !c.is_ascii_digit())
                .rfind(|s| !s.is_empty())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report_is_parsed() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'gemm_f16_v1' for 'sm_90'\n\
            ptxas info    : Function properties for gemm_f16_v1\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 90 registers, used 1 barriers, 10240 bytes smem, 400 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'k2' for 'sm_90'\n\
            ptxas info    : Function properties for k2\n\
            \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 16 registers, 380 bytes cmem[0]\n";
        let r = parse_ptxas(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelReport {
                symbol: "gemm_f16_v1".into(),
                registers: 90,
                smem_bytes: 10240,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert_eq!(
            (r[1].registers, r[1].smem_bytes, r[1].spill_stores),
            (16, 0, 0)
        );
    }

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
            }
        }
    }
}
