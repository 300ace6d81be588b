//! Where a model runs: the device names users give (`cpu`, `reference`, `cuda`, `cuda:N`, `cuda-sim`). The engine
//! (src/engine.rs) turns one into a backend.

use crate::error::{Error, Result};

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU, all cores (the rayon pool), on its best matrix engine for the precision.
    #[default]
    Cpu,
    /// The scalar f64-accumulating oracle: slow, for checking results.
    Reference,
    /// CUDA GPU `n`: fp16 storage, f32 accumulation, cliprt's own kernels. Without a usable GPU, driver or NVRTC
    /// (or in a build without the `cuda` feature) opening gives [`Error::DeviceUnavailable`].
    Cuda(usize),
    /// The CUDA backend on the CPU simulator: the same kernels and launches as [`Device::Cuda`], executed by
    /// host threads under AddressSanitizer. For checking the GPU path without a GPU; very slow, tiny models only.
    /// Needs a C++20 compiler (`CXX`, default `c++`).
    CudaSim,
}

impl std::str::FromStr for Device {
    type Err = Error;
    /// Parses `cpu`, `reference`, `cuda`, `cuda:N` or `cuda-sim`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "reference" => Ok(Device::Reference),
            "cuda" => Ok(Device::Cuda(0)),
            "cuda-sim" => Ok(Device::CudaSim),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown device {s:?} (cpu, reference, cuda, cuda:N, cuda-sim)"
                    ))
                }),
        }
    }
}
