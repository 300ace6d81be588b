//! Intel AMX (Advanced Matrix Extensions): bf16 GEMMs and attention products on the tile unit.
//!
//! - [`detect`]: CPUID and the Linux permission for the tile state.
//! - [`tiles`]: the tile-ops layer, with the real instructions ([`tiles::Native`]) and an emulator that follows the
//!   Intel SDM ([`tiles::Emulator`]), so the whole AMX path runs and is tested on every machine.
//! - [`mod@gemm`]: the register-blocked GEMM with weights packed once at load and fused epilogues.
//! - [`attention`]: one attention head with Q·Kᵀ and P·V on tiles.
//!
//! AMX-BF16 does 1024 FLOP per cycle per core (one 16 × 16 × 32 `tdpbf16ps` every 16 cycles), 16× an AVX-512 f32
//! core; `cpu::engine` says when the AMX engine is chosen.

pub mod attention;
pub mod detect;
pub mod gemm;
pub mod tiles;

use crate::backend::{AttnShape, Epilogue};
use crate::cpu::Isa;
pub use detect::{support, AmxSupport};
pub use gemm::PackedB;

/// Which implementation of the tile instructions runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileMode {
    /// The CPU's AMX unit.
    Native,
    /// [`tiles::Emulator`]: correct everywhere, slow (for tests and for checking a machine without AMX).
    Emulated,
}

/// `out[m, n] (+)= a[m, k] · Wᵀ` with epilogue `ep` (see [`gemm::gemm`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    mode: TileMode,
    isa: Isa,
    a: &[f32],
    m: usize,
    k: usize,
    w: &PackedB,
    bias: Option<&[f32]>,
    out: &mut [f32],
    ep: Epilogue,
) {
    match mode {
        TileMode::Native => {
            assert!(
                support().bf16_usable(),
                "AMX selected on a machine where it is unusable"
            );
            gemm::gemm::<tiles::Native>(isa, a, m, k, w, bias, out, ep)
        }
        TileMode::Emulated => gemm::gemm::<tiles::Emulator>(isa, a, m, k, w, bias, out, ep),
    }
}

/// The MLP with its residual, hidden activations handed to fc2 in bf16 (see [`gemm::mlp`]).
#[allow(clippy::too_many_arguments)]
pub fn mlp(
    mode: TileMode,
    isa: Isa,
    input: &[f32],
    m: usize,
    fc1: (&PackedB, Option<&[f32]>),
    act: crate::backend::Activation,
    fc2: (&PackedB, Option<&[f32]>),
    x: &mut [f32],
) {
    match mode {
        TileMode::Native => {
            assert!(
                support().bf16_usable(),
                "AMX selected on a machine where it is unusable"
            );
            gemm::mlp::<tiles::Native>(isa, input, m, fc1, act, fc2, x)
        }
        TileMode::Emulated => gemm::mlp::<tiles::Emulator>(isa, input, m, fc1, act, fc2, x),
    }
}

/// One attention head on tiles (see [`attention::head`]).
///
/// # Safety
/// As [`attention::head`].
pub(crate) unsafe fn attention_head(
    mode: TileMode,
    isa: Isa,
    out: *mut f32,
    head: &[f32],
    s: AttnShape,
    valid: usize,
) {
    match mode {
        TileMode::Native => attention::head::<tiles::Native>(isa, out, head, s, valid),
        TileMode::Emulated => attention::head::<tiles::Emulator>(isa, out, head, s, valid),
    }
}
