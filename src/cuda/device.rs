//! The CUDA driver side: probing devices (never panicking where the driver is missing), describing them, and the
//! data-sheet peaks the bench and profile divide by.

use std::sync::Arc;

use cudarc::driver::{CudaContext, DriverError};

use super::nvrtc;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    /// The NVRTC target the kernels are compiled for, e.g. `sm_90`.
    pub arch: String,
    pub memory_bytes: usize,
    /// The most shared memory one block may opt in to (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).
    pub max_shared_per_block: usize,
}

/// Runs a cudarc call that may panic (a symbol the installed driver lacks) and turns both failure kinds into
/// [`Error::DeviceUnavailable`].
fn guarded<T>(what: &str, f: impl FnOnce() -> std::result::Result<T, DriverError>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::DeviceUnavailable(format!("{what}: {e}"))),
        Err(_) => Err(Error::DeviceUnavailable(format!(
            "{what}: the CUDA driver library could not be used (too old for this build?)"
        ))),
    }
}

/// Number of CUDA devices, or why there are none usable.
pub fn device_count() -> Result<usize> {
    // SAFETY: only tries to dlopen the driver library under its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::DeviceUnavailable(
            "no CUDA driver: libcuda.so not found (no NVIDIA driver on this machine)".into(),
        ));
    }
    let n = guarded("CUDA driver", CudaContext::device_count)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

pub(super) fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::DeviceUnavailable(format!(
            "cuda:{ordinal}: this machine has {count} CUDA device(s)"
        )));
    }
    guarded(&format!("cuda:{ordinal}"), || CudaContext::new(ordinal))
}

/// Describes device `ordinal` without loading kernels (for `cliprt info`).
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    let ctx = context(ordinal)?;
    describe(&ctx, ordinal)
}

pub(super) fn describe(ctx: &Arc<CudaContext>, ordinal: usize) -> Result<DeviceInfo> {
    let (major, minor) = ctx.compute_capability()?;
    Ok(DeviceInfo {
        ordinal,
        name: ctx.name()?,
        compute_capability: (major, minor),
        arch: format!("sm_{major}{minor}"),
        memory_bytes: ctx.mem_get_info()?.1,
        max_shared_per_block: ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )? as usize,
    })
}

/// Dense fp16 tensor-core peak (f32 accumulate) of the GPUs we know, from the vendors' data sheets.
pub fn peak_fp16_gflops(name: &str) -> Option<f64> {
    const PEAKS: &[(&str, f64)] = &[
        ("H200", 989_000.0),
        ("H100 PCIe", 756_000.0),
        ("H100", 989_000.0),
        ("A100", 312_000.0),
        ("L40S", 362_000.0),
        ("A10G", 70_000.0),
        ("L4", 121_000.0),
    ];
    PEAKS
        .iter()
        .find(|(n, _)| name.contains(n))
        .map(|&(_, p)| p)
}

/// DRAM bandwidth in GB/s of the GPUs we know (data sheets), for memory-bound kernels' %peak.
pub fn peak_bandwidth_gbs(name: &str) -> Option<f64> {
    const PEAKS: &[(&str, f64)] = &[
        ("H200", 4_800.0),
        ("H100 PCIe", 2_000.0),
        ("H100", 3_350.0),
        ("A100", 2_039.0),
        ("L40S", 864.0),
        ("A10G", 600.0),
        ("L4", 300.0),
    ];
    PEAKS
        .iter()
        .find(|(n, _)| name.contains(n))
        .map(|&(_, p)| p)
}

/// NVRTC's version and where it was loaded from, or why it is unavailable.
pub fn nvrtc_info() -> Result<((i32, i32), String)> {
    let n = nvrtc::Nvrtc::get()?;
    Ok((n.version(), n.path().to_string()))
}

/// One line for `cliprt info`: device `ordinal` and the NVRTC in use, or why CUDA is unavailable.
pub fn status(ordinal: usize) -> Result<String> {
    let info = probe(ordinal)?;
    let (v, path) = nvrtc_info()?;
    Ok(format!(
        "cuda:{ordinal} {} (compute {}.{}, {}, {:.1} GiB); NVRTC {}.{} from {path}",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.arch,
        info.memory_bytes as f64 / (1u64 << 30) as f64,
        v.0,
        v.1
    ))
}
