//! One attention head with both products on AMX tiles: `S = Q·Kᵀ` and `O = P·V`, the softmax between them in f32.
//!
//! Q and P become bf16 A operands (rows padded to 32, k to 32); K and V are packed as B operands per head (K with
//! the keys as columns, V with the head dims as columns and the keys as the reduction). The probabilities P lose
//! their low bits to bf16 (relative error ≤ 2⁻⁹ each), the same rounding every bf16 attention (oneDNN, PyTorch
//! `sdpa` in bf16) applies; the scores and the softmax stay f32.

use std::cell::RefCell;

use super::gemm::{run_blocks, Dest, PackedA, PackedB, BLOCK};
use super::tiles::{TileConfig, Tiles};
use crate::backend::AttnShape;
use crate::cpu::matmul::TileStore;
use crate::cpu::{simd, Isa};

/// Per-thread operands of one head, grown once to the largest head seen.
#[derive(Default)]
struct HeadScratch {
    q: PackedA,
    p: PackedA,
    k: PackedB,
    v: PackedB,
    scores: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<HeadScratch> = RefCell::new(HeadScratch::default());
}

/// One head: `head` starts at this head's q columns of the batch item's first `[q | k | v]` row; `out` at the head's
/// first output column. Rows are `3·width` apart in `head` and `width` apart in `out`. The queries see the first
/// `valid` keys (see `AttnShape::keys`).
///
/// # Safety
/// `out` must be valid for `seq` rows of stride `s.width()` covering `s.head_dim` columns, and `head` must hold
/// every row this head reads (checked by the backend's shape validation); `T = Native` only where AMX is usable.
pub(crate) unsafe fn head<T: Tiles + Default>(
    isa: Isa,
    out: *mut f32,
    head: &[f32],
    s: AttnShape,
    valid: usize,
) {
    let (d, hd, seq) = (s.width(), s.head_dim, s.seq);
    let run = |sc: &mut HeadScratch| {
        let row = |i: usize| &head[i * 3 * d..];
        // Sequential fills: this runs inside a rayon task, and P is converted while the tiles are configured.
        sc.q.fill(seq, hd, false, |i| &row(i)[..hd]);
        sc.k.repack_rows(seq, hd, |j| &row(j)[d..d + hd]);
        sc.v.repack_cols(hd, seq, |j| &row(j)[2 * d..2 * d + hd]);
        let lds = seq.next_multiple_of(BLOCK);
        sc.scores.resize(seq * lds, 0.0);
        let mut t = T::default();
        t.configure(&TileConfig::full());
        let row_blocks = 0..seq.div_ceil(BLOCK);
        run_blocks(
            &mut t,
            isa,
            &sc.q,
            seq,
            &sc.k,
            row_blocks.clone(),
            0..seq.div_ceil(BLOCK),
            Dest::Rows {
                ptr: sc.scores.as_mut_ptr(),
                ld: lds,
            },
            TileStore::PLAIN,
        );
        let scale = 1.0 / (hd as f32).sqrt();
        for (i, r) in sc.scores.chunks_exact_mut(lds).enumerate() {
            let keys = s.keys(i, valid);
            simd::softmax(isa, &mut r[..seq], keys, scale);
        }
        let scores = &sc.scores;
        sc.p.fill(seq, seq, false, |i| &scores[i * lds..i * lds + seq]);
        run_blocks(
            &mut t,
            isa,
            &sc.p,
            seq,
            &sc.v,
            row_blocks,
            0..hd.div_ceil(BLOCK),
            Dest::Rows { ptr: out, ld: d },
            TileStore::PLAIN,
        );
        t.release();
    };
    crate::cpu::with_thread_scratch(&SCRATCH, run);
}
