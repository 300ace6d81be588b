//! Compiling the kernel modules: NVRTC to CUBIN for a device (through the on-disk cache), and the compile check
//! that needs no GPU (`cliprt kernels --check`): every module for each arch with the ptxas report, and the rule
//! that a kernel passes only with no spill and no stack frame.

use std::time::Instant;

use super::cache;
use super::kernels::{self, module_source};
use super::nvrtc::Nvrtc;
use crate::error::{Error, Result};

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

/// Compiles every kernel module for `arch` with the ptxas report (no GPU needed).
pub fn check(arch: &str) -> Vec<Result<ModuleReport>> {
    kernels::modules().map(|m| check_module(m, arch)).collect()
}

/// Why a compiled kernel fails the check, if it does: any spill, or a stack frame (a register array indexed at run
/// time lives in local memory too, spills or not).
pub fn check_failure(k: &KernelReport, arch: &str) -> Option<String> {
    if k.spill_stores > 0 || k.spill_loads > 0 {
        return Some(format!("{} ({arch}) spills registers", k.symbol));
    }
    if k.stack_bytes > 0 {
        return Some(format!(
            "{} ({arch}) uses {} bytes of stack",
            k.symbol, k.stack_bytes
        ));
    }
    None
}

/// Why a module report fails the check: a module that compiled to no kernel, or a failing kernel.
pub fn module_failures(r: &ModuleReport) -> Vec<String> {
    let mut out: Vec<String> = r
        .kernels
        .iter()
        .filter_map(|k| check_failure(k, &r.arch))
        .collect();
    if r.kernels.is_empty() {
        out.push(format!(
            "{}.cu ({}): ptxas reported no kernel",
            r.module, r.arch
        ));
    }
    out
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
}
