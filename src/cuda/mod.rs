//! The CUDA backend: fp16 storage, f32 accumulation, cliprt's own kernels (kernels/*.cu) compiled at run time by
//! NVRTC to CUBIN for the device's exact arch and cached on disk.
//!
//! Everything CUDA is loaded dynamically (cudarc `dynamic-loading`, NVRTC by hand in `nvrtc.rs`), so the binary
//! builds and starts anywhere. Missing driver, no device, or no NVRTC: [`Error::DeviceUnavailable`] with the
//! reason, never a panic (cudarc panics on a missing library, so the driver is probed before cudarc touches it),
//! and the CPU backend keeps working in the same process.
//!
//! Buffers hold f16 on the device; [`Backend::upload`](crate::backend::Backend::upload)/[`Backend::download`](crate::backend::Backend::download) convert at the boundary (round to
//! nearest even). Weights are converted and uploaded once, when the model is prepared.

mod backend;
mod cache;
mod compile;
mod device;
pub mod kernels;
pub(crate) mod memory;
mod nvrtc;
pub mod profile;
pub(crate) mod runtime;
pub mod sim;

use cudarc::driver::DriverError;

use crate::error::Error;

pub use backend::{backend_for, CudaBackend, IMAGE_CHUNK};
pub use compile::{
    check, check_failure, check_module, module_failures, parse_ptxas, KernelReport, ModuleReport,
};
pub use device::{
    device_count, nvrtc_info, peak_bandwidth_gbs, peak_fp16_gflops, probe, status, DeviceInfo,
};
pub use kernels::OPS;
pub use memory::{CudaBuf, CudaLinear, Mem};
pub use runtime::Graph;

impl From<DriverError> for Error {
    fn from(e: DriverError) -> Self {
        Error::Cuda(e.to_string())
    }
}
