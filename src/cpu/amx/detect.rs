//! Whether this CPU has AMX and whether Linux lets this process use it.
//!
//! CPUID leaf 7 (sub-leaf 0) EDX says what the core implements: bit 22 AMX-BF16, bit 24 AMX-TILE, bit 25 AMX-INT8.
//! The tile data (8 KB of XSAVE state, component 18 "XTILEDATA") is not handed to a process by default: Linux ≥ 5.16
//! grants it after `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, and a tile instruction without that
//! permission kills the process with SIGILL. So AMX counts as usable only when CPUID reports it **and** the request
//! was granted; the request is made once per process (the permission covers every thread).

use std::sync::OnceLock;

/// What CPUID says about AMX, and what the OS said when asked for the tile state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmxSupport {
    pub tile: bool,
    pub bf16: bool,
    pub int8: bool,
    /// `Ok` when Linux granted the tile state to this process; otherwise why AMX cannot run here.
    pub permission: Result<(), String>,
}

impl AmxSupport {
    /// Whether the bf16 tile path can run natively.
    pub fn bf16_usable(&self) -> bool {
        self.tile && self.bf16 && self.permission.is_ok()
    }

    /// One line for `cliprt info`: the features found and the permission outcome.
    pub fn describe(&self) -> String {
        if !self.tile {
            return "none (CPUID reports no AMX-TILE)".into();
        }
        let mut parts = vec!["amx-tile"];
        if self.bf16 {
            parts.push("amx-bf16");
        }
        if self.int8 {
            parts.push("amx-int8");
        }
        let state = match &self.permission {
            Ok(()) => "tile state granted by the OS".to_string(),
            Err(why) => format!("unusable: {why}"),
        };
        format!("{} ({state})", parts.join(" "))
    }
}

/// Detected once; the permission request is made on the first call.
pub fn support() -> &'static AmxSupport {
    static SUPPORT: OnceLock<AmxSupport> = OnceLock::new();
    SUPPORT.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> AmxSupport {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is valid whenever the max leaf (leaf 0 EAX) reaches 7.
    #[allow(unused_unsafe)] // __cpuid_count is safe from Rust 1.94 on, unsafe before.
    let edx = unsafe {
        if __cpuid_count(0, 0).eax >= 7 {
            __cpuid_count(7, 0).edx
        } else {
            0
        }
    };
    let (bf16, tile, int8) = (edx >> 22 & 1 == 1, edx >> 24 & 1 == 1, edx >> 25 & 1 == 1);
    let permission = if tile {
        request_tile_state()
    } else {
        Err("no AMX on this CPU".into())
    };
    AmxSupport {
        tile,
        bf16,
        int8,
        permission,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> AmxSupport {
    AmxSupport {
        tile: false,
        bf16: false,
        int8: false,
        permission: Err("AMX exists only on x86_64".into()),
    }
}

/// Asks Linux for the AMX tile data state and checks that it was granted.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> Result<(), String> {
    // From arch/x86/include/uapi/asm/prctl.h and the XSAVE component numbering of the SDM (vol. 1, 13.1).
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these codes only reads/writes the u64 we pass; an older kernel answers EINVAL.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) refused: {err} (Linux ≥ 5.16 is needed)"
        ));
    }
    let mut granted: u64 = 0;
    // SAFETY: as above; the kernel writes one u64 through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_XCOMP_PERM,
            &mut granted as *mut u64,
        )
    };
    if rc != 0 || granted >> XFEATURE_XTILEDATA & 1 == 0 {
        return Err(format!(
            "the kernel did not grant the tile state (permitted XSAVE mask {granted:#x})"
        ));
    }
    Ok(())
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_state() -> Result<(), String> {
    Err("requesting the AMX tile state is implemented for Linux only".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_is_consistent() {
        let s = support();
        // Usable implies every prerequisite; a CPU without AMX-TILE never reports a granted state.
        if s.bf16_usable() {
            assert!(s.tile && s.bf16 && s.permission.is_ok());
        }
        if !s.tile {
            assert!(s.permission.is_err());
        }
        assert!(!s.describe().is_empty());
    }
}
