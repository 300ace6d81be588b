//! `cliprt kernels`: the variant registry, and the NVRTC compile check of every kernel (no GPU needed).

use clap::Args;
use cliprt::{Error, Result};

#[derive(Args)]
pub struct KernelsArgs {
    #[arg(long)]
    list: bool,
    #[arg(long)]
    check: bool,
    /// Comma-separated targets for --check.
    #[arg(long, default_value = "sm_80,sm_90", value_delimiter = ',')]
    arch: Vec<String>,
}

#[cfg(feature = "cuda")]
pub fn run(a: KernelsArgs) -> Result<()> {
    use cliprt::cuda::kernels;
    let (list, check, archs) = (a.list, a.check, &a.arch);
    if !list && !check {
        return Err(Error::InvalidArgument("give --list and/or --check".into()));
    }
    if list {
        println!(
            "{:<14} {:<14} {:<8} {:<24} about",
            "op", "module", "variant", "symbol"
        );
        for op in kernels::OPS {
            for v in op.variants {
                let mark = if v.name == op.default { "*" } else { " " };
                println!(
                    "{:<14} {:<14} {:<8} {:<24} {}",
                    op.name,
                    format!("{}.cu", op.module),
                    format!("{}{mark}", v.name),
                    v.symbol,
                    v.about
                );
            }
        }
        println!("(* default; override with CLIPRT_KERNEL_<OP>=vN, e.g. CLIPRT_KERNEL_GEMM=v1)");
    }
    if !check {
        return Ok(());
    }
    if archs.is_empty() {
        return Err(Error::InvalidArgument("--arch lists no target".into()));
    }
    let (v, path) = cliprt::cuda::nvrtc_info()?;
    println!("NVRTC {}.{} ({path})", v.0, v.1);
    println!(
        "{:<12} {:<7} {:<24} {:>5} {:>9} {:>6} {:>12} {:>11}",
        "module", "arch", "kernel", "regs", "smem B", "stack", "spill st/ld", "compile ms"
    );
    let mut failures = Vec::new();
    for arch in archs {
        for report in cliprt::cuda::check(arch) {
            let r = match report {
                Ok(r) => r,
                Err(e) => {
                    println!("{e}");
                    let what = match &e {
                        Error::KernelCompile { kernel, .. } => format!("{kernel} did not compile"),
                        other => other.to_string(),
                    };
                    failures.push(what);
                    continue;
                }
            };
            failures.extend(cliprt::cuda::module_failures(&r));
            for k in &r.kernels {
                println!(
                    "{:<12} {:<7} {:<24} {:>5} {:>9} {:>6} {:>12} {:>11.1}",
                    r.module,
                    r.arch,
                    k.symbol,
                    k.registers,
                    k.smem_bytes,
                    k.stack_bytes,
                    format!("{}/{}", k.spill_stores, k.spill_loads),
                    r.compile_ms
                );
            }
        }
    }
    if failures.is_empty() {
        println!(
            "ok: every kernel compiled for {} with no spills and no stack",
            archs.join(", ")
        );
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "kernel check failed: {}",
            failures.join("; ")
        )))
    }
}

#[cfg(not(feature = "cuda"))]
pub fn run(_: KernelsArgs) -> Result<()> {
    Err(Error::cuda_not_built())
}
