//! Each CPU engine's peak rate, measured: the denominators of `cliprt bench`'s `peak_fraction`, and the
//! measurement behind the choice between bf16 dot products and f32 FMAs (see `engine`).
//!
//! Every loop runs independent chains (more than latency × pipes on any current x86), so it measures the
//! throughput of the unit, not the latency of one chain.

use std::time::Instant;

use super::Isa;

/// An arithmetic unit whose peak can be measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// f32 FMAs on a vector tier (`vfmadd231ps`; scalar `mul_add` for the scalar tier).
    Fma(Isa),
    /// `vdpbf16ps zmm` (AVX512_BF16): 16 lanes × 2 bf16 products summed into f32.
    Dpbf16,
    /// `tdpbf16ps` on the AMX tile unit: 16 × 16 × 32 bf16 products summed into f32.
    AmxBf16,
    /// `vpmaddwd ymm` + `vpaddd ymm` (AVX2): 8 lanes × 2 i16 products summed into i32, the `avx2-i16` engine's
    /// inner step; each product and its sum count as 2 operations, as an FMA's do.
    MaddI16,
    /// `vpdpwssd zmm` (AVX512_VNNI): 16 lanes × 2 i16 products summed into i32, the `avx512-i16` engine's inner
    /// step; counted as `vdpbf16ps` is.
    Dpwssd,
}

impl Unit {
    /// Whether this machine runs the unit.
    pub fn available(self) -> bool {
        match self {
            Unit::Fma(isa) => isa.available(),
            Unit::Dpbf16 => super::isa::has_avx512_bf16(),
            Unit::AmxBf16 => super::amx::support().bf16_usable(),
            Unit::MaddI16 => Isa::Avx2.available(),
            Unit::Dpwssd => super::isa::has_avx512_vnni(),
        }
    }
}

/// The unit's peak GFLOP/s on `threads` threads: each thread runs the loop `RUNS` times, all threads at once so
/// the all-core clock applies; each thread keeps its best run and the rates add up; of `ROUNDS` such rounds the
/// best sum is kept. NaN when the unit is missing.
pub fn peak_gflops(threads: usize, unit: Unit) -> f64 {
    if !unit.available() {
        return f64::NAN;
    }
    (0..ROUNDS)
        .map(|_| all_threads_once(threads, unit))
        .fold(0.0, f64::max)
}

/// Rounds of the all-thread measurement. A round can read a single core's worth for the whole machine (seen in
/// session 15 on the 2-core Zen 3 VM: 167–178 against the 307–329 G-operations/s of other processes), as if the host
/// ran both virtual CPUs on one physical core. Three rounds outlast short disturbances; a longer one still reads
/// low, which is why the bench prints the peak it measured and `--peak-gflops` overrides it.
const ROUNDS: usize = 3;

fn all_threads_once(threads: usize, unit: Unit) -> f64 {
    // One run: 10⁷ × 20 instructions, ≈ 25 ms for `vdpbf16ps` on a 4 GHz Zen 5 (AMX: 1024 FLOP/cycle, fewer).
    let iters = match unit {
        Unit::AmxBf16 => 500_000,
        _ => 10_000_000,
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| s.spawn(move || (0..RUNS).map(|_| rate(unit, iters)).fold(0.0, f64::max)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(0.0))
            .sum::<f64>()
            / 1e9
    })
}

/// Runs per thread, the best kept. On a shared virtual machine a run can lose a few milliseconds to another guest
/// (three runs read 810–1060 GFLOP/s of `vdpbf16ps` on the same 2-core Zen 5 box): the peak is what the core does
/// when it is not interrupted, and a low denominator would overstate every `peak_fraction`. Twelve runs read
/// within ±2 % of each other; three rounds of six spread the same time budget, and a little more, over ≈ 0.4 s.
const RUNS: usize = 6;

/// FLOP/s of one run of `iters` loop iterations on the calling thread.
pub fn rate(unit: Unit, iters: usize) -> f64 {
    let t = Instant::now();
    let flops = run(unit, iters);
    flops / t.elapsed().as_secs_f64()
}

/// Runs the unit's loop; returns the FLOPs done. The caller checked `unit.available()`.
fn run(unit: Unit, iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    match unit {
        Unit::Fma(Isa::Avx512) => {
            // SAFETY: AVX-512F is present (available() checked); the asm touches only the registers it declares.
            unsafe { fma_avx512(iters) };
            return (iters * 20 * 16 * 2) as f64;
        }
        Unit::Fma(Isa::Avx2) => {
            // SAFETY: AVX2 and FMA are present; the asm touches only the registers it declares.
            unsafe { fma_avx2(iters) };
            return (iters * 12 * 8 * 2) as f64;
        }
        Unit::Dpbf16 => {
            // SAFETY: AVX512_BF16 is present; the asm touches only the registers it declares.
            unsafe { dpbf16_avx512(iters) };
            // 16 lanes × 2 products × 2 FLOP per instruction.
            return (iters * 20 * 16 * 2 * 2) as f64;
        }
        Unit::AmxBf16 => {
            use super::amx::tiles::{Native, TileConfig, Tiles};
            let mut t = Native;
            // SAFETY: AMX is usable (available() checked); the tiles hold zeros after configure.
            unsafe {
                t.configure(&TileConfig::full());
                for _ in 0..iters {
                    t.dpbf16ps::<0, 4, 6>();
                    t.dpbf16ps::<1, 4, 7>();
                    t.dpbf16ps::<2, 5, 6>();
                    t.dpbf16ps::<3, 5, 7>();
                }
                t.release();
            }
            return (iters * 4 * 16 * 16 * 32 * 2) as f64;
        }
        Unit::Dpwssd => {
            // SAFETY: AVX512_VNNI is present; the asm touches only the registers it declares.
            unsafe { dpwssd_avx512(iters) };
            return (iters * 20 * 16 * 2 * 2) as f64;
        }
        Unit::MaddI16 => {
            // SAFETY: AVX2 is present; the asm touches only the registers it declares.
            unsafe { madd_i16_avx2(iters) };
            // 8 lanes × 2 products × 2 operations per pair of instructions.
            return (iters * 8 * 8 * 2 * 2) as f64;
        }
        Unit::Fma(Isa::Scalar) => {}
    }
    let mut acc = [1.0f32; 16];
    for _ in 0..iters / 16 {
        for a in &mut acc {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    (iters / 16 * 16 * 2) as f64
}

// Written in asm: with intrinsics, LLVM spills some of the chains to the stack and the loop measures store
// forwarding instead of the units.
/// An asm loop of 20 independent `$op zmmN, zmm30, zmm31` chains per iteration (20 > latency × pipes on any
/// current x86), zmm30/31 zeroed first.
macro_rules! zmm_chains {
    ($iters:expr, $op:literal) => {
        std::arch::asm!(
            "vxorps xmm30, xmm30, xmm30",
            "vxorps xmm31, xmm31, xmm31",
            "2:",
            concat!($op, " zmm0, zmm30, zmm31"), concat!($op, " zmm1, zmm30, zmm31"),
            concat!($op, " zmm2, zmm30, zmm31"), concat!($op, " zmm3, zmm30, zmm31"),
            concat!($op, " zmm4, zmm30, zmm31"), concat!($op, " zmm5, zmm30, zmm31"),
            concat!($op, " zmm6, zmm30, zmm31"), concat!($op, " zmm7, zmm30, zmm31"),
            concat!($op, " zmm8, zmm30, zmm31"), concat!($op, " zmm9, zmm30, zmm31"),
            concat!($op, " zmm10, zmm30, zmm31"), concat!($op, " zmm11, zmm30, zmm31"),
            concat!($op, " zmm12, zmm30, zmm31"), concat!($op, " zmm13, zmm30, zmm31"),
            concat!($op, " zmm14, zmm30, zmm31"), concat!($op, " zmm15, zmm30, zmm31"),
            concat!($op, " zmm16, zmm30, zmm31"), concat!($op, " zmm17, zmm30, zmm31"),
            concat!($op, " zmm18, zmm30, zmm31"), concat!($op, " zmm19, zmm30, zmm31"),
            "dec {n}",
            "jnz 2b",
            n = inout(reg) $iters.max(1) => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
            out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _,
            out("zmm18") _, out("zmm19") _, out("zmm30") _, out("zmm31") _,
            options(nostack, nomem),
        )
    };
}

/// 20 independent `vfmadd231ps zmm` chains per iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize) {
    zmm_chains!(iters, "vfmadd231ps");
}

/// 20 independent `vdpbf16ps zmm` chains per iteration, the bf16 twin of [`fma_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dpbf16_avx512(iters: usize) {
    zmm_chains!(iters, "vdpbf16ps");
}

/// 20 independent `vpdpwssd zmm` chains per iteration, the i16 twin of [`dpbf16_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd_avx512(iters: usize) {
    zmm_chains!(iters, "vpdpwssd");
}

/// 12 independent `vfmadd231ps ymm` chains per iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize) {
    std::arch::asm!(
        "vxorps ymm14, ymm14, ymm14",
        "vxorps ymm15, ymm15, ymm15",
        "2:",
        "vfmadd231ps ymm0, ymm14, ymm15", "vfmadd231ps ymm1, ymm14, ymm15",
        "vfmadd231ps ymm2, ymm14, ymm15", "vfmadd231ps ymm3, ymm14, ymm15",
        "vfmadd231ps ymm4, ymm14, ymm15", "vfmadd231ps ymm5, ymm14, ymm15",
        "vfmadd231ps ymm6, ymm14, ymm15", "vfmadd231ps ymm7, ymm14, ymm15",
        "vfmadd231ps ymm8, ymm14, ymm15", "vfmadd231ps ymm9, ymm14, ymm15",
        "vfmadd231ps ymm10, ymm14, ymm15", "vfmadd231ps ymm11, ymm14, ymm15",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iters.max(1) => _,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
        out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm14") _, out("ymm15") _,
        options(nostack, nomem),
    );
}

/// 8 independent `vpmaddwd` + `vpaddd` chains per iteration (the products go through ymm8–11, the sums into
/// ymm0–7).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn madd_i16_avx2(iters: usize) {
    std::arch::asm!(
        "vpxor ymm14, ymm14, ymm14",
        "vpxor ymm15, ymm15, ymm15",
        "2:",
        "vpmaddwd ymm8, ymm14, ymm15", "vpaddd ymm0, ymm0, ymm8",
        "vpmaddwd ymm9, ymm14, ymm15", "vpaddd ymm1, ymm1, ymm9",
        "vpmaddwd ymm10, ymm14, ymm15", "vpaddd ymm2, ymm2, ymm10",
        "vpmaddwd ymm11, ymm14, ymm15", "vpaddd ymm3, ymm3, ymm11",
        "vpmaddwd ymm8, ymm14, ymm15", "vpaddd ymm4, ymm4, ymm8",
        "vpmaddwd ymm9, ymm14, ymm15", "vpaddd ymm5, ymm5, ymm9",
        "vpmaddwd ymm10, ymm14, ymm15", "vpaddd ymm6, ymm6, ymm10",
        "vpmaddwd ymm11, ymm14, ymm15", "vpaddd ymm7, ymm7, ymm11",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iters.max(1) => _,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
        out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm14") _, out("ymm15") _,
        options(nostack, nomem),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_positive_where_the_unit_runs_and_nan_elsewhere() {
        for unit in [
            Unit::Fma(Isa::Scalar),
            Unit::Fma(Isa::Avx2),
            Unit::Fma(Isa::Avx512),
            Unit::MaddI16,
            Unit::Dpbf16,
            Unit::Dpwssd,
        ] {
            let p = peak_gflops(1, unit);
            if unit.available() {
                assert!(p.is_finite() && p > 0.0, "{unit:?}: {p}");
            } else {
                assert!(p.is_nan(), "{unit:?}: {p}");
            }
        }
    }
}
