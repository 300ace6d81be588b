//! Which x86 vector instruction set the CPU backend runs, detected once at run time.
//!
//! `CLIPRT_CPU_ISA=scalar|avx2|avx512` forces a lower tier (tests run every tier the CPU has); asking for a tier the
//! CPU lacks is an error, never a silent downgrade.

use crate::error::{Error, Result};

/// A SIMD tier. Ordered: a higher tier is faster where available.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, one lane: the twin every vector tier is tested against.
    Scalar,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512F, 16 lanes with masked edges.
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the tier.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best tier this CPU has.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|i| i.available())
            .unwrap_or(Isa::Scalar)
    }

    /// Every tier this CPU can run, lowest first.
    pub fn available_tiers() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }

    /// The tier from `CLIPRT_CPU_ISA`, or the best one when it is unset.
    pub fn from_env() -> Result<Isa> {
        match std::env::var("CLIPRT_CPU_ISA") {
            Ok(v) if !v.is_empty() => {
                let isa: Isa = v.parse()?;
                if !isa.available() {
                    return Err(Error::InvalidArgument(format!(
                        "CLIPRT_CPU_ISA={v}, but this CPU lacks {v}"
                    )));
                }
                Ok(isa)
            }
            _ => Ok(Isa::best()),
        }
    }
}

impl std::str::FromStr for Isa {
    type Err = Error;
    fn from_str(s: &str) -> Result<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| {
            Error::InvalidArgument(format!("unknown CPU ISA {s:?}: scalar, avx2 or avx512"))
        })
    }
}

/// Whether the CPU has AVX512_BF16 (`vdpbf16ps`), which the bf16 GEMM needs.
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 with VNNI (`vpdpwssd`), which the `avx512-i16` GEMM needs.
pub fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The CPU's model name from /proc/cpuinfo (Linux), e.g. "AMD EPYC 9B45"; `None` elsewhere.
pub fn cpu_model_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}
