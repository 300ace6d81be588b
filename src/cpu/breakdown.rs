//! Where a CPU forward's time goes (`cliprt bench --breakdown`). While a recording runs, every GEMM, fused MLP,
//! attention and LayerNorm of the CPU backend adds its elapsed time and its FLOPs to its class; the rest of the
//! forward (residual adds, embeddings, pooling, scheduling) is what the classes leave over. The counters are
//! process-wide: a forward running beside a recording is counted in it too, so the bench records alone.
//!
//! Off, an op pays one relaxed atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// The op classes a recording tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    /// GEMMs (and fused MLPs) whose products are bf16: the `vdpbf16ps` and AMX kernels.
    GemmBf16,
    /// GEMMs with split bf16 products on AMX tiles (three per product, `amx::gemm::Split`): the layers an AMX
    /// engine keeps at f32-grade precision (ARCHITECTURE §7.13).
    GemmBf16x3,
    /// GEMMs whose products are 16-bit fixed point: the `avx2-i16` kernel.
    GemmI16,
    /// GEMMs with f32 products: every GEMM of an f32 engine, and the layers a bf16 engine keeps in f32
    /// (ARCHITECTURE §7.13).
    GemmF32,
    /// Both attention products, the softmax and the Kᵀ packing, per head.
    Attention,
    LayerNorm,
}

const CLASSES: usize = 6;

impl OpClass {
    pub const ALL: [OpClass; CLASSES] = [
        OpClass::GemmBf16,
        OpClass::GemmBf16x3,
        OpClass::GemmI16,
        OpClass::GemmF32,
        OpClass::Attention,
        OpClass::LayerNorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpClass::GemmBf16 => "gemm bf16",
            OpClass::GemmBf16x3 => "gemm bf16x3",
            OpClass::GemmI16 => "gemm i16",
            OpClass::GemmF32 => "gemm f32",
            OpClass::Attention => "attention",
            OpClass::LayerNorm => "layernorm",
        }
    }
}

static RECORDING: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; CLASSES] = [const { AtomicU64::new(0) }; CLASSES];
static FLOPS: [AtomicU64; CLASSES] = [const { AtomicU64::new(0) }; CLASSES];

/// Runs `f`; while a recording runs, adds its elapsed time and `flops` to `class`.
#[inline]
pub(crate) fn timed<R>(class: OpClass, flops: f64, f: impl FnOnce() -> R) -> R {
    timed_counting(class, || (f(), flops))
}

/// [`timed`] for an op that says the FLOPs it ran (`f` returns them beside its output).
#[inline]
pub(crate) fn timed_counting<R>(class: OpClass, f: impl FnOnce() -> (R, f64)) -> R {
    if !RECORDING.load(Relaxed) {
        return f().0;
    }
    let start = Instant::now();
    let (out, flops) = f();
    let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    NANOS[class as usize].fetch_add(nanos, Relaxed);
    FLOPS[class as usize].fetch_add(flops as u64, Relaxed);
    out
}

/// What the ops of one recording added up to, per class (indexed as [`OpClass::ALL`]). Seconds are summed over
/// the threads that called the ops: when a batch runs as several concurrent parts (`Backend::batch_parts`), each
/// part's ops count on their own thread.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpTimes {
    pub seconds: [f64; CLASSES],
    pub flops: [f64; CLASSES],
}

impl OpTimes {
    pub fn seconds(&self, class: OpClass) -> f64 {
        self.seconds[class as usize]
    }
    pub fn flops(&self, class: OpClass) -> f64 {
        self.flops[class as usize]
    }
}

/// Runs `f` with the counters zeroed and recording on, and returns what its ops added. Recordings do not overlap
/// (a second one waits).
pub fn record<R>(f: impl FnOnce() -> R) -> (R, OpTimes) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _only = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for c in NANOS.iter().chain(&FLOPS) {
        c.store(0, Relaxed);
    }
    RECORDING.store(true, Relaxed);
    // Turned off even when `f` unwinds.
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            RECORDING.store(false, Relaxed);
        }
    }
    let off = Off;
    let out = f();
    drop(off);
    let times = OpTimes {
        seconds: std::array::from_fn(|i| NANOS[i].load(Relaxed) as f64 * 1e-9),
        flops: std::array::from_fn(|i| FLOPS[i].load(Relaxed) as f64),
    };
    (out, times)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Other tests of this process may run CPU ops during the recording (the counters are process-wide), so the
    /// recorded values are lower bounds here.
    #[test]
    fn recorded_ops_add_up_and_recording_stops() {
        timed(OpClass::GemmF32, 1e15, || ());
        let ((), t) = record(|| {
            timed(OpClass::GemmBf16, 100.0, || {
                std::thread::sleep(std::time::Duration::from_millis(2))
            });
            timed(OpClass::GemmBf16, 20.0, || ());
        });
        assert!(t.flops(OpClass::GemmBf16) >= 120.0);
        assert!(t.seconds(OpClass::GemmBf16) >= 0.002);
        // The op before the recording was not counted (no test runs 1e15 FLOPs).
        assert!(t.flops(OpClass::GemmF32) < 1e15);
        assert!(!RECORDING.load(Relaxed));
    }
}
