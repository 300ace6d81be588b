//! The CPU's matrix engine: which unit runs the GEMMs and attention products, chosen once per machine.
//!
//! | engine | GEMM | when |
//! |---|---|---|
//! | `amx-bf16` | AMX tiles, `tdpbf16ps` | bf16 asked, CPUID has AMX-TILE + AMX-BF16, Linux granted the tile state |
//! | `avx512-bf16` | `vdpbf16ps` micro-kernel | bf16 asked, no AMX, AVX512_BF16 measured ≥ 1.3× the f32 FMA rate |
//! | `avx512-f32` | f32 FMA micro-kernel | f32 asked, or bf16 does not pay off on this core |
//! | `avx512-i16` | 8 × 48 fixed-point `vpdpwssd` micro-kernel (`matmul::avx512_i16`) | i16 asked, AVX512_VNNI, `vpdpwssd` ≥ 1.3× the f32 FMA rate |
//! | `avx2` | 6 × 16 f32 FMA micro-kernel (`matmul::avx2`) | no AVX-512 (or the tier forced) |
//! | `avx2-i16` | 6 × 16 fixed-point `vpmaddwd` micro-kernel (`matmul::avx2_i16`) | i16 asked, `vpmaddwd` ≥ 1.3× the widest FMA rate |
//! | `scalar` | the `gemm` crate, scalar row ops | forced (`CLIPRT_CPU_ISA=scalar`) |
//! | `amx-bf16-emu` | the AMX kernels on the tile emulator | only when asked (tests, `CLIPRT_CPU_ENGINE`) |
//!
//! Why measure `vdpbf16ps`: on Zen 5 one `vdpbf16ps` does twice the work of one FMA at the same rate (measured
//! 2.0×), so bf16 doubles the GEMM peak; on the Intel Xeon of the CPU-engines issue the `vdpbf16ps` path ran the
//! whole ViT-B/32 tower at 0.74× the f32 speed, i.e. it is no faster than f32 there once the conversions are paid.
//! Rather than a table of CPU models, a 2 ms measurement per process decides, and the bench prints the reason.
//!
//! `CLIPRT_CPU_ENGINE=<name>` forces an engine (its precision comes with it); an engine the CPU lacks is an error.

use std::sync::OnceLock;

use super::amx::{self, TileMode};
use super::peak::{self, Unit};
use super::{Isa, Precision};
use crate::error::{Error, Result};

/// A CPU matrix engine. Ordered slowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatrixEngine {
    Scalar,
    Avx2,
    Avx2I16,
    Avx512F32,
    Avx512I16,
    Avx512Bf16,
    /// The AMX kernels on [`amx::tiles::Emulator`]: for tests and for checking the AMX path without AMX.
    AmxBf16Emulated,
    AmxBf16,
}

/// `vdpbf16ps` must beat the f32 FMAs by this much to be chosen: below it, converting activations to bf16 costs
/// more than the faster products save (the ViT-B/32 tower is ≈ 1.7× faster at a measured 2.0× rate on Zen 5).
const BF16_MIN_SPEEDUP: f64 = 1.3;

impl MatrixEngine {
    pub const ALL: [MatrixEngine; 8] = [
        MatrixEngine::Scalar,
        MatrixEngine::Avx2,
        MatrixEngine::Avx2I16,
        MatrixEngine::Avx512F32,
        MatrixEngine::Avx512I16,
        MatrixEngine::Avx512Bf16,
        MatrixEngine::AmxBf16Emulated,
        MatrixEngine::AmxBf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MatrixEngine::Scalar => "scalar",
            MatrixEngine::Avx2 => "avx2",
            MatrixEngine::Avx2I16 => "avx2-i16",
            MatrixEngine::Avx512F32 => "avx512-f32",
            MatrixEngine::Avx512I16 => "avx512-i16",
            MatrixEngine::Avx512Bf16 => "avx512-bf16",
            MatrixEngine::AmxBf16Emulated => "amx-bf16-emu",
            MatrixEngine::AmxBf16 => "amx-bf16",
        }
    }

    /// The arithmetic of the products.
    pub fn precision(self) -> Precision {
        match self {
            MatrixEngine::Avx512Bf16 | MatrixEngine::AmxBf16 | MatrixEngine::AmxBf16Emulated => {
                Precision::Bf16
            }
            MatrixEngine::Avx2I16 | MatrixEngine::Avx512I16 => Precision::I16,
            _ => Precision::F32,
        }
    }

    /// The engine of this one's vector tier with f32 products: itself for the f32 engines. Weights packed for it
    /// run beside this engine's (`PackedLinear::run` follows the packed layout).
    pub fn f32_engine(self) -> MatrixEngine {
        match self.isa() {
            Isa::Avx512 => MatrixEngine::Avx512F32,
            Isa::Avx2 => MatrixEngine::Avx2,
            Isa::Scalar => MatrixEngine::Scalar,
        }
    }

    /// Whether this engine runs the layers kept at f32 precision (`Backend::linear_f32`, ARCHITECTURE §7.13)
    /// itself, as split products (`amx::gemm::Split`: three tile products per product, f32-grade): the AMX
    /// engines, whose tiles do them at a third of the bf16 rate, ≈ 1.4× the f32 vector kernel on the Xeon of
    /// BENCHMARKS.md's session 22 at the text tower's shapes.
    pub fn splits_f32_layers(self) -> bool {
        self.tiles().is_some()
    }

    /// The engine of the layers whose products must not be rounded to bf16 (ARCHITECTURE §7.13): on the bf16
    /// engines `avx512-i16` where it runs and pays (a grid ≈ 8× finer than bf16's at the `vdpbf16ps` rate), else
    /// the f32 twin; the i16 engines run them themselves; the f32 engines are their own.
    pub fn precise_engine(self) -> MatrixEngine {
        match self {
            MatrixEngine::Avx2I16 | MatrixEngine::Avx512I16 => self,
            MatrixEngine::Avx512Bf16 | MatrixEngine::AmxBf16 | MatrixEngine::AmxBf16Emulated
                if vnni_pays() =>
            {
                MatrixEngine::Avx512I16
            }
            _ => self.f32_engine(),
        }
    }

    /// The SIMD tier of the row-wise ops (LayerNorm, softmax, epilogues) that run beside the engine.
    pub fn isa(self) -> Isa {
        match self {
            MatrixEngine::Scalar => Isa::Scalar,
            MatrixEngine::Avx2 | MatrixEngine::Avx2I16 => Isa::Avx2,
            MatrixEngine::AmxBf16Emulated => Isa::best(),
            _ => Isa::Avx512,
        }
    }

    /// Which tile implementation runs, for the AMX engines.
    pub fn tiles(self) -> Option<TileMode> {
        match self {
            MatrixEngine::AmxBf16 => Some(TileMode::Native),
            MatrixEngine::AmxBf16Emulated => Some(TileMode::Emulated),
            _ => None,
        }
    }

    /// Whether this machine runs the engine (the emulator runs everywhere).
    pub fn available(self) -> bool {
        match self {
            MatrixEngine::Scalar | MatrixEngine::AmxBf16Emulated => true,
            MatrixEngine::Avx2 | MatrixEngine::Avx2I16 => Isa::Avx2.available(),
            MatrixEngine::Avx512F32 => Isa::Avx512.available(),
            MatrixEngine::Avx512I16 => Isa::Avx512.available() && Unit::Dpwssd.available(),
            MatrixEngine::Avx512Bf16 => Isa::Avx512.available() && Unit::Dpbf16.available(),
            MatrixEngine::AmxBf16 => Isa::Avx512.available() && amx::support().bf16_usable(),
        }
    }

    /// Every engine this machine runs, slowest first (the emulator included).
    pub fn available_engines() -> Vec<MatrixEngine> {
        MatrixEngine::ALL
            .into_iter()
            .filter(|e| e.available())
            .collect()
    }

    /// The unit whose measured peak `cliprt bench` reports against (none for the emulator).
    pub fn peak_unit(self) -> Option<Unit> {
        match self {
            MatrixEngine::Scalar => Some(Unit::Fma(Isa::Scalar)),
            MatrixEngine::Avx2 => Some(Unit::Fma(Isa::Avx2)),
            MatrixEngine::Avx2I16 => Some(Unit::MaddI16),
            MatrixEngine::Avx512F32 => Some(Unit::Fma(Isa::Avx512)),
            MatrixEngine::Avx512I16 => Some(Unit::Dpwssd),
            MatrixEngine::Avx512Bf16 => Some(Unit::Dpbf16),
            MatrixEngine::AmxBf16 => Some(Unit::AmxBf16),
            MatrixEngine::AmxBf16Emulated => None,
        }
    }

    /// The engine named by `CLIPRT_CPU_ENGINE`, if set.
    pub fn from_env() -> Result<Option<MatrixEngine>> {
        match std::env::var("CLIPRT_CPU_ENGINE") {
            Ok(v) if !v.is_empty() => {
                let e: MatrixEngine = v.parse()?;
                if !e.available() {
                    return Err(Error::InvalidArgument(format!(
                        "CLIPRT_CPU_ENGINE={v}, but this CPU cannot run {v}"
                    )));
                }
                Ok(Some(e))
            }
            _ => Ok(None),
        }
    }
}

impl std::str::FromStr for MatrixEngine {
    type Err = Error;
    fn from_str(s: &str) -> Result<MatrixEngine> {
        MatrixEngine::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = MatrixEngine::ALL.iter().map(|e| e.name()).collect();
                Error::InvalidArgument(format!(
                    "unknown CPU engine {s:?}: one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// An engine and why it was chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub engine: MatrixEngine,
    pub reason: String,
}

/// `vdpbf16ps` throughput over f32 FMA throughput on one core, measured once per process (≈ 10 ms); `None` without
/// AVX512_BF16.
pub fn bf16_speedup() -> Option<f64> {
    static SPEEDUP: OnceLock<Option<f64>> = OnceLock::new();
    *SPEEDUP.get_or_init(|| {
        if !(Unit::Dpbf16.available() && Unit::Fma(Isa::Avx512).available()) {
            return None;
        }
        Some(rate_ratio(
            Unit::Dpbf16,
            Unit::Fma(Isa::Avx512),
            BF16_MIN_SPEEDUP,
        ))
    })
}

/// `num`'s throughput over `den`'s on this thread, each its best sample: blocks of 150 rounds of the two units back
/// to back (≈ 35 µs each, ≈ 10 ms a block), a further block while the ratio stays under `enough`, at most 4. A
/// busy neighbour only ever slows a unit, so the best samples are the units' own rates; but on a shared 2-vCPU
/// Zen 3 (session 16) one unit was slowed through whole windows: 15 rounds read `vpmaddwd` / FMA anywhere from 1.40
/// to 1.61 and once under the 1.3 bar, 300 rounds (22 ms) once 1.47 among readings of 1.61–1.63.
fn rate_ratio(num: Unit, den: Unit, enough: f64) -> f64 {
    let (mut best_num, mut best_den) = (0f64, 0f64);
    for _ in 0..4 {
        for _ in 0..150 {
            best_num = best_num.max(peak::rate(num, 20_000));
            best_den = best_den.max(peak::rate(den, 20_000));
        }
        if best_num / best_den >= enough {
            break;
        }
    }
    best_num / best_den
}

/// The fastest engine for `precision` at vector tier `isa` or below, with the reason.
pub fn choose(isa: Isa, precision: Precision) -> Choice {
    let isa = Isa::ALL
        .into_iter()
        .rev()
        .find(|&i| i <= isa && i.available())
        .unwrap_or(Isa::Scalar);
    let vector = match isa {
        Isa::Scalar => MatrixEngine::Scalar,
        Isa::Avx2 => MatrixEngine::Avx2,
        Isa::Avx512 => MatrixEngine::Avx512F32,
    };
    let f32_choice = |reason: String| Choice {
        engine: vector,
        reason,
    };
    if precision == Precision::I16 {
        return choose_i16(isa, f32_choice);
    }
    if precision != Precision::Bf16 {
        let why = match precision {
            Precision::F16 => "f16 asked: the CPU has no f16 arithmetic worth using, f32 runs",
            _ => "f32 asked",
        };
        return f32_choice(format!("{why}; widest SIMD tier: {}", isa.name()));
    }
    if isa != Isa::Avx512 {
        return f32_choice(format!(
            "bf16 asked, but the bf16 engines need AVX-512 (tier {}): f32 runs",
            isa.name()
        ));
    }
    // Where the layers bf16 must not round run (ARCHITECTURE §7.13).
    let first = if vnni_pays() {
        "; the image tower's first layers on avx512-i16"
    } else {
        "; the image tower's first layers in f32"
    };
    let amx = amx::support();
    if amx.bf16_usable() {
        return Choice {
            engine: MatrixEngine::AmxBf16,
            reason: format!("bf16 asked; AMX-BF16 tiles usable (1024 FLOP/cycle/core){first}"),
        };
    }
    let no_amx = match &amx.permission {
        Err(why) if amx.tile => format!("AMX present but {why}"),
        _ => "no AMX".to_string(),
    };
    match bf16_speedup() {
        None => f32_choice(format!("bf16 asked; {no_amx}, no AVX512_BF16: f32 runs")),
        Some(x) if x >= BF16_MIN_SPEEDUP => Choice {
            engine: MatrixEngine::Avx512Bf16,
            reason: format!(
                "bf16 asked; {no_amx}; vdpbf16ps measured {x:.2}× the f32 FMA rate{first}"
            ),
        },
        Some(x) => f32_choice(format!(
            "bf16 asked; {no_amx}; vdpbf16ps measured only {x:.2}× the f32 FMA rate \
             (< {BF16_MIN_SPEEDUP}): f32 is faster here"
        )),
    }
}

/// The throughput of the i16 unit `unit` (`vpmaddwd` + `vpaddd`, or `vpdpwssd`) over the f32 FMA throughput of
/// tier `isa` (AVX2 or AVX-512), on one core, measured once per process and pair (≈ 10 ms); `None` where the CPU
/// lacks either.
pub fn i16_speedup(isa: Isa, unit: Unit) -> Option<f64> {
    static CELLS: [OnceLock<Option<f64>>; 4] = [const { OnceLock::new() }; 4];
    let fma = match isa {
        Isa::Avx512 => Unit::Fma(Isa::Avx512),
        _ => Unit::Fma(Isa::Avx2),
    };
    let cell = 2 * usize::from(isa == Isa::Avx512) + usize::from(unit == Unit::Dpwssd);
    *CELLS[cell].get_or_init(|| {
        (unit.available() && fma.available()).then(|| rate_ratio(unit, fma, I16_MIN_SPEEDUP))
    })
}

/// Whether `avx512-i16` runs here and its `vpdpwssd` beats the AVX-512 FMAs by [`I16_MIN_SPEEDUP`].
fn vnni_pays() -> bool {
    MatrixEngine::Avx512I16.available()
        && i16_speedup(Isa::Avx512, Unit::Dpwssd).is_some_and(|x| x >= I16_MIN_SPEEDUP)
}

/// The engine for i16: the first fixed-point kernel, widest first, whose products beat the f32 FMAs of tier `isa`
/// by [`I16_MIN_SPEEDUP`]: `avx512-i16` (`vpdpwssd`: 2.0× on Zen 4), then `avx2-i16` (`vpmaddwd`: 1.6× on Zen 3,
/// and 1.6× AVX-512's FMAs on Zen 4, which double-pumps them); f32 where none does.
fn choose_i16(isa: Isa, f32_choice: impl Fn(String) -> Choice) -> Choice {
    if isa < Isa::Avx2 {
        return f32_choice(format!(
            "i16 asked, but the i16 engines need AVX2 (tier {}): f32 runs",
            isa.name()
        ));
    }
    let kernels = [
        (MatrixEngine::Avx512I16, Unit::Dpwssd, "vpdpwssd"),
        (MatrixEngine::Avx2I16, Unit::MaddI16, "vpmaddwd"),
    ];
    let mut slow = Vec::new();
    for (engine, unit, name) in kernels {
        if engine.isa() > isa {
            continue;
        }
        match i16_speedup(isa, unit) {
            Some(x) if x >= I16_MIN_SPEEDUP => {
                return Choice {
                    engine,
                    reason: format!("i16 asked; {name} measured {x:.2}× the f32 FMA rate"),
                }
            }
            Some(x) => slow.push(format!("{name} {x:.2}×")),
            None => {}
        }
    }
    f32_choice(format!(
        "i16 asked; measured only {} the f32 FMA rate of tier {} (< {I16_MIN_SPEEDUP}): f32 is faster here",
        slow.join(", "),
        isa.name()
    ))
}

/// As [`BF16_MIN_SPEEDUP`], for i16: quantizing activations costs about what converting them to bf16 does.
const I16_MIN_SPEEDUP: f64 = 1.3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_precisions_match() {
        for e in MatrixEngine::ALL {
            assert_eq!(e.name().parse::<MatrixEngine>().unwrap(), e);
        }
        assert!("amx".parse::<MatrixEngine>().is_err());
        assert_eq!(MatrixEngine::AmxBf16Emulated.precision(), Precision::Bf16);
        assert!(MatrixEngine::AmxBf16Emulated.available());
    }

    #[test]
    fn choices_are_available_and_honour_the_precision() {
        for isa in Isa::ALL {
            for p in [
                Precision::F32,
                Precision::Bf16,
                Precision::F16,
                Precision::I16,
            ] {
                let c = choose(isa, p);
                assert!(c.engine.available(), "{c:?}");
                assert!(
                    c.engine.isa() <= isa.max(Isa::Scalar) || !isa.available(),
                    "{c:?}"
                );
                assert!(!c.reason.is_empty());
                if p == Precision::F32 || p == Precision::F16 {
                    assert_eq!(c.engine.precision(), Precision::F32);
                }
                assert!(
                    c.engine.precision() == p || c.engine.precision() == Precision::F32,
                    "{c:?} for {p:?}"
                );
                assert_ne!(
                    c.engine,
                    MatrixEngine::AmxBf16Emulated,
                    "the emulator is never chosen"
                );
            }
        }
    }
}
