//! Multi-head self-attention for CLIP's short sequences (50–257 vision tokens, ≤ 77 text), one rayon task per
//! (image or text, head).
//!
//! Per head: `S = Q·Kᵀ` (S is at most 257 × 257 floats, 264 KB: it stays in L2), a SIMD softmax per row with the
//! 1/√d scale and the causal mask folded in, then `O = P·V` written straight into the head's columns of the output.
//! On AVX-512 both products run the GEMM micro-kernel: Kᵀ is packed into panels of `NR` (48) columns, V is read
//! in place (masked loads make any head dim work: 64, 80, 104). The AMX engines run both products on tiles
//! (`amx::attention`); the AVX2 and scalar tiers use the `gemm` crate.

use std::cell::RefCell;

use rayon::prelude::*;

use super::isa::Isa;
use super::matmul::{sgemm, NR};
use super::simd;
use super::MatrixEngine;
use crate::backend::AttnShape;

thread_local! {
    /// Per-thread scores (and packed Kᵀ) scratch, grown once to the largest head seen.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch buffer of `len` floats (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread through work stealing: use a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only its own head's columns of the output rows.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the `Send` wrapper rather than its raw-pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[b·seq + i, h·hd..(h+1)·hd] = softmax(q_i·Kᵀ/√hd [causal]) · V` for every (b, h); `qkv` rows are `[q | k | v]`.
/// With `key_lens`, item b's queries see only its first `key_lens[b]` keys. Lengths are checked by the caller
/// (backend::attention, backend::attention_masked).
pub fn attention(
    engine: MatrixEngine,
    out: &mut [f32],
    qkv: &[f32],
    s: AttnShape,
    key_lens: Option<&[u32]>,
) {
    let isa = engine.isa();
    let (d, seq) = (s.width(), s.seq);
    assert!(qkv.len() >= s.batch * seq * 3 * d && out.len() >= s.batch * seq * d);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let avx512 = cfg!(target_arch = "x86_64") && isa == Isa::Avx512 && isa.available();
    (0..s.batch * s.heads).into_par_iter().for_each(|bh| {
        let (b, h) = (bh / s.heads, bh % s.heads);
        let head = &qkv[b * seq * 3 * d + h * s.head_dim..];
        let valid = key_lens.map_or(seq, |k| (k[b] as usize).clamp(1, seq));
        if let Some(mode) = engine.tiles() {
            // SAFETY: as below; the engine is AMX only where its tiles can run.
            unsafe {
                super::amx::attention_head(
                    mode,
                    isa,
                    out_ptr.get().add(b * seq * d + h * s.head_dim),
                    head,
                    s,
                    valid,
                )
            }
        } else if avx512 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F checked above; the asserts bound every row this head touches.
            unsafe {
                head_avx512(
                    out_ptr.get().add(b * seq * d + h * s.head_dim),
                    head,
                    s,
                    valid,
                )
            }
        } else {
            head_fallback(isa, out_ptr.get(), b, h, head, s, valid)
        }
    });
}

/// One head on AVX-512. `head` starts at this head's q columns of the batch item's first row; `out` at its output.
#[cfg(target_arch = "x86_64")]
unsafe fn head_avx512(out: *mut f32, head: &[f32], s: AttnShape, valid: usize) {
    use super::matmul::{avx512::rows_times_panel, TileStore};
    let (d, hd, seq) = (s.width(), s.head_dim, s.seq);
    let panels = seq.div_ceil(NR);
    let lds = panels * NR;
    let plain = TileStore::PLAIN;
    with_scratch(panels * hd * NR + seq * lds, |buf| {
        let (kt, scores) = buf.split_at_mut(panels * hd * NR);
        // Kᵀ in panels: kt[p][c][j] = k[NR·p + j][c], zero past the sequence.
        kt[(panels - 1) * hd * NR..].fill(0.0);
        for j in 0..seq {
            let krow = &head[j * 3 * d + d..][..hd];
            let base = (j / NR) * hd * NR + j % NR;
            for (c, &v) in krow.iter().enumerate() {
                kt[base + c * NR] = v;
            }
        }
        for p in 0..panels {
            let cols = NR.min(seq - p * NR);
            rows_times_panel(
                seq,
                hd,
                head.as_ptr(),
                3 * d,
                kt.as_ptr().add(p * hd * NR),
                NR,
                scores.as_mut_ptr().add(p * NR),
                lds,
                cols,
                plain,
            );
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (i, row) in scores.chunks_exact_mut(lds).enumerate() {
            let keys = s.keys(i, valid);
            simd::softmax(Isa::Avx512, &mut row[..seq], keys, scale);
        }
        let v = head.as_ptr().add(2 * d);
        for p in 0..hd.div_ceil(NR) {
            let cols = NR.min(hd - p * NR);
            rows_times_panel(
                seq,
                seq,
                scores.as_ptr(),
                lds,
                v.add(p * NR),
                3 * d,
                out.add(p * NR),
                d,
                cols,
                plain,
            );
        }
    })
}

/// One head on the other tiers: the products through the `gemm` crate, the softmax on the chosen tier.
fn head_fallback(
    isa: Isa,
    out: *mut f32,
    b: usize,
    h: usize,
    head: &[f32],
    s: AttnShape,
    valid: usize,
) {
    let (d, hd, seq) = (s.width(), s.head_dim, s.seq);
    with_scratch(seq * seq + seq * hd, |buf| {
        let (scores, o) = buf.split_at_mut(seq * seq);
        // scores[i, j] = Σ_c q[i, c] · k[j, c]: rhs is Kᵀ, read with swapped strides.
        sgemm(
            seq,
            seq,
            hd,
            scores,
            seq,
            false,
            head,
            3 * d,
            1,
            &head[d..],
            1,
            3 * d,
            gemm::Parallelism::None,
        );
        let scale = 1.0 / (hd as f32).sqrt();
        for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
            let keys = s.keys(i, valid);
            simd::softmax(isa, row, keys, scale);
        }
        sgemm(
            seq,
            hd,
            seq,
            o,
            hd,
            false,
            scores,
            seq,
            1,
            &head[2 * d..],
            3 * d,
            1,
            gemm::Parallelism::None,
        );
        for (i, row) in o.chunks_exact(hd).enumerate() {
            // SAFETY: row (b·seq + i) of out exists (asserted by the caller); this task owns columns h·hd..(h+1)·hd.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), out.add((b * seq + i) * d + h * hd), hd)
            };
        }
    })
}
