//! The AMX bf16 GEMM: `C[m, n] (+)= A[m, k] · W[n, k]ᵀ (+ bias, activation)`, generic over [`Tiles`].
//!
//! - **Tiles.** Every tile is 16 rows × 64 bytes (one configuration, loaded once per job): an accumulator holds
//!   16 × 16 f32, an A tile 16 rows × 32 bf16 of k, a B tile 16 k-pairs × 16 columns × 2 bf16 (the VNNI pair
//!   layout `tdpbf16ps` reads).
//! - **Register blocking.** A 32 × 32 block of C lives in 4 accumulators (tmm0–3); each k step of 32 loads 2 A
//!   tiles (tmm4–5) and 2 B tiles (tmm6–7) and issues 4 `tdpbf16ps`, so each loaded tile feeds two products. With 8
//!   tile registers this 2 × 2 block is the largest that still leaves room for the operands.
//! - **Packing.** Weights are packed once at load ([`PackedB`]): per 16-column tile, its k steps back to back, each
//!   1 KB step a contiguous B tile (stride 64 B), zero past n and k. Columns are padded to 32 (a whole 2-tile panel;
//!   CLIP's widths are multiples of 32, so nothing is wasted there). A is converted to bf16 per call into a
//!   thread-local buffer, rows padded to 32 and k to 32 with zeros (the padding of k must be zero: it meets B's zero
//!   rows and must add nothing; padded rows are computed and never stored).
//! - **Epilogue.** Accumulators are stored to a 4 KB block on the stack, then each valid row gets C added (the
//!   residual), the bias and the activation before it is written: one pass over C, as in the f32 kernel; in
//!   AVX-512 on AMX hosts (two vectors a row), portably elsewhere (the emulator on other machines). A fused MLP's
//!   fc1 writes its block as bf16 pairs straight into fc2's A operand ([`mlp`]).
//! - **Threads.** A job is a group of ≤ `ROW_BLOCKS_PER_JOB` (4) row blocks × a group of panels, sized so the jobs
//!   split evenly over the threads. Inside a job, panels are the outer loop: a panel's B (32 columns × k) is read
//!   once per job and the job's A rows (≤ 128 × k bf16, 196 KB at k = 768) stay in L2 across panels.

use std::cell::RefCell;

use rayon::prelude::*;

use super::tiles::{TileConfig, Tiles};
use crate::backend::Epilogue;
use crate::cpu::matmul::{bf16_pair, row_to_bf16_pairs, TileStore};
use crate::cpu::{simd, Isa};

/// Rows of an A tile and of an accumulator.
pub const TILE_ROWS: usize = 16;
/// k elements per A tile row (64 bytes of bf16) = one k step.
pub const K_STEP: usize = 32;
/// f32 columns per accumulator (64 bytes).
pub const TILE_COLS: usize = 16;
/// Rows and columns of the 2 × 2 register block.
pub const BLOCK: usize = 32;
/// u32 (bf16 pairs) per packed B tile: 16 pair-rows × 16 columns.
const B_TILE_U32: usize = (K_STEP / 2) * TILE_COLS;
/// Most row blocks per job (128 rows).
const ROW_BLOCKS_PER_JOB: usize = 4;

/// The u32 of a bf16 pair, low element first.
#[inline(always)]
fn pair_bits(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | u32::from(hi) << 16
}

/// `dst[i] = bf16(src[i])`, rounded to nearest even (NaN stays NaN); 16 at a time where the CPU has AVX512_BF16.
fn bf16_row(src: &[f32], dst: &mut [u16]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa::has_avx512_bf16() {
        // SAFETY: AVX512_BF16 detected; the call reads and writes whole chunks of 16 inside both slices.
        done = unsafe { bf16_chunks_avx512(src, dst) };
    }
    for (d, &s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = half::bf16::from_f32(s).to_bits();
    }
}

/// Converts the whole chunks of 16 of [`bf16_row`]; returns how many values it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_chunks_avx512(src: &[f32], dst: &mut [u16]) -> usize {
    use std::arch::x86_64::*;
    let whole = src.len().min(dst.len()) / 16 * 16;
    for i in (0..whole).step_by(16) {
        let h: __m256i =
            std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i))));
        _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
    }
    whole
}

/// A matrix `W[n, k]` packed into B tiles (see the module docs), ready for the tile kernels.
#[derive(Clone, Debug, Default)]
pub struct PackedB {
    data: Vec<u32>,
    pub n: usize,
    pub k: usize,
    /// k steps of 32.
    pub ksteps: usize,
}

impl PackedB {
    /// Packs `W[n, k]` given by its rows: `row(j)` holds the k values of output column j (a weight in HF layout,
    /// or attention's K with the keys as columns).
    pub fn from_rows<'a>(n: usize, k: usize, row: impl Fn(usize) -> &'a [f32]) -> PackedB {
        let mut p = PackedB::default();
        p.repack_rows(n, k, row);
        p
    }

    /// Zeroed room for `W[n, k]`, reusing the allocation (attention repacks K and V per head).
    fn reset(&mut self, n: usize, k: usize) {
        let ksteps = k.div_ceil(K_STEP);
        let tiles = n.next_multiple_of(BLOCK) / TILE_COLS;
        self.data.clear();
        self.data.resize(tiles * ksteps * B_TILE_U32, 0);
        (self.n, self.k, self.ksteps) = (n, k, ksteps);
    }

    /// Where pair `pair` (k indices 2·pair, 2·pair + 1) of column `j` lives.
    #[inline(always)]
    fn at(&self, j: usize, pair: usize) -> usize {
        let tile = (j / TILE_COLS) * self.ksteps + pair / (K_STEP / 2);
        tile * B_TILE_U32 + (pair % (K_STEP / 2)) * TILE_COLS + j % TILE_COLS
    }

    /// [`PackedB::from_rows`] into this buffer: each row is converted to bf16 pairs in one vector pass, then the
    /// pairs are placed (one column of every B tile it spans).
    pub fn repack_rows<'a>(&mut self, n: usize, k: usize, row: impl Fn(usize) -> &'a [f32]) {
        self.reset(n, k);
        let mut pairs = vec![0u32; k.div_ceil(2)];
        for j in 0..n {
            row_to_bf16_pairs(&row(j)[..k], &mut pairs);
            for (pair, &v) in pairs.iter().enumerate() {
                let at = self.at(j, pair);
                self.data[at] = v;
            }
        }
    }

    /// Packs `W[n, k]` given by its columns: `col(t)` holds the n values of reduction index t (attention's V,
    /// keys along k): two of them make one pair-row of every B tile they span.
    pub fn repack_cols<'a>(&mut self, n: usize, k: usize, col: impl Fn(usize) -> &'a [f32]) {
        self.reset(n, k);
        let (mut lo, mut hi) = (vec![0u16; n], vec![0u16; n]);
        for pair in 0..k.div_ceil(2) {
            bf16_row(&col(2 * pair)[..n], &mut lo);
            if 2 * pair + 1 < k {
                bf16_row(&col(2 * pair + 1)[..n], &mut hi);
            } else {
                hi.fill(0);
            }
            for j in 0..n {
                let at = self.at(j, pair);
                self.data[at] = pair_bits(lo[j], hi[j]);
            }
        }
    }

    /// 32-column panels.
    fn panels(&self) -> usize {
        self.n.div_ceil(BLOCK)
    }

    /// The first B tile of panel `p` (its second tile follows `ksteps` tiles later).
    fn panel(&self, p: usize) -> *const u32 {
        self.data[2 * p * self.ksteps * B_TILE_U32..].as_ptr()
    }
}

/// `m` rows of bf16 A for the tile kernels: `[m padded to 32][ksteps · 16]` bf16 pairs, zero padded.
#[derive(Default)]
pub struct PackedA {
    data: Vec<u32>,
    /// Pairs per row (`ksteps · 16`).
    pairs: usize,
}

impl PackedA {
    /// Converts `m` rows of `k` values, row `i` read from `row(i)`, rounding to nearest even; on rayon's threads when
    /// `parallel`. A caller holding a loaded tile configuration must pass `false`: a rayon wait could run another
    /// task on this thread, whose `tilerelease` would wipe the caller's tiles.
    pub fn fill<'a>(
        &mut self,
        m: usize,
        k: usize,
        parallel: bool,
        row: impl Fn(usize) -> &'a [f32] + Sync,
    ) {
        let pairs = k.div_ceil(K_STEP) * (K_STEP / 2);
        let rows = m.next_multiple_of(BLOCK);
        self.pairs = pairs;
        self.data.resize(rows * pairs, 0);
        let convert = |i: usize, dst: &mut [u32]| {
            if i >= m {
                return dst.fill(0);
            }
            row_to_bf16_pairs(&row(i)[..k], dst);
            dst[k.div_ceil(2)..].fill(0);
        };
        // Large A (a GEMM's activations) converts in parallel; a few rows do not pay for the fork.
        if parallel && rows * pairs >= 1 << 16 {
            self.data
                .par_chunks_mut(pairs)
                .enumerate()
                .for_each(|(i, d)| convert(i, d));
        } else {
            self.data
                .chunks_mut(pairs)
                .enumerate()
                .for_each(|(i, d)| convert(i, d));
        }
    }

    /// Makes room for `m` rows of `k` values that a GEMM will store as bf16 pairs (a fused MLP's fc1,
    /// `TileStore::to_bf16`): the padding (rows past `m`, pairs past ⌈k/2⌉) is zeroed here, the rest is left to
    /// the stores.
    pub fn prepare(&mut self, m: usize, k: usize) {
        let pairs = k.div_ceil(K_STEP) * (K_STEP / 2);
        let rows = m.next_multiple_of(BLOCK);
        self.pairs = pairs;
        self.data.resize(rows * pairs, 0);
        let written = k.div_ceil(2);
        for (i, row) in self.data.chunks_mut(pairs).enumerate() {
            row[if i < m { written } else { 0 }..].fill(0);
        }
    }

    fn row(&self, i: usize) -> *const u32 {
        self.data[i * self.pairs..].as_ptr()
    }

    fn row_mut(&mut self, i: usize) -> *mut u32 {
        self.data[i * self.pairs..].as_mut_ptr()
    }
}

/// The single tile configuration of every kernel here.
static CONFIG: TileConfig = TileConfig::full();

/// One 32 × 32 block: `c[32][32] = A[a.., 32 rows] · B panel` over `ksteps` k steps (configuration loaded).
#[inline(always)]
unsafe fn block<T: Tiles>(
    t: &mut T,
    a: *const u32,
    lda_pairs: usize,
    b: *const u32,
    ksteps: usize,
    c: &mut [f32; BLOCK * BLOCK],
) {
    let lda = lda_pairs * 4;
    let b1 = b.add(ksteps * B_TILE_U32);
    t.zero::<0>();
    t.zero::<1>();
    t.zero::<2>();
    t.zero::<3>();
    for s in 0..ksteps {
        let a0 = a.add(s * K_STEP / 2) as *const u8;
        t.load::<4>(a0, lda);
        t.load::<5>(a0.add(TILE_ROWS * lda), lda);
        t.load::<6>(b.add(s * B_TILE_U32) as *const u8, 64);
        t.load::<7>(b1.add(s * B_TILE_U32) as *const u8, 64);
        t.dpbf16ps::<0, 4, 6>();
        t.dpbf16ps::<1, 4, 7>();
        t.dpbf16ps::<2, 5, 6>();
        t.dpbf16ps::<3, 5, 7>();
    }
    let c = c.as_mut_ptr();
    let ldc = BLOCK * 4;
    t.store::<0>(c as *mut u8, ldc);
    t.store::<1>(c.add(TILE_COLS) as *mut u8, ldc);
    t.store::<2>(c.add(TILE_ROWS * BLOCK) as *mut u8, ldc);
    t.store::<3>(c.add(TILE_ROWS * BLOCK + TILE_COLS) as *mut u8, ldc);
}

/// Writes the valid `rows × cols` of a computed block into C at `out` (row stride `ldo`) with the store rule `st`
/// (its bias pointer at the block's first column).
#[inline(always)]
unsafe fn store_block(
    isa: Isa,
    c: &[f32; BLOCK * BLOCK],
    out: *mut f32,
    ldo: usize,
    rows: usize,
    cols: usize,
    st: TileStore,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && crate::cpu::isa::has_avx512_bf16() {
        // Every AMX CPU has both; the emulator takes this path too wherever the host has them.
        return store_block_avx512(c, out, ldo, rows, cols, st);
    }
    let bias = (!st.bias.is_null()).then(|| std::slice::from_raw_parts(st.bias, cols));
    if st.to_bf16 {
        // C is bf16 pairs (`ldo` counted in pairs): bias and activation in f32, then rounded; an odd last column
        // pairs with a zero.
        let mut row = [0f32; BLOCK];
        for i in 0..rows {
            row[..cols].copy_from_slice(&c[i * BLOCK..][..cols]);
            if bias.is_some() || st.act.is_some() {
                simd::bias_act(isa, &mut row[..cols], bias, st.act);
            }
            let dst = (out as *mut u32).add(i * ldo);
            for (p, pair) in row[..cols].chunks(2).enumerate() {
                *dst.add(p) = bf16_pair(pair);
            }
        }
        return;
    }
    for i in 0..rows {
        let dst = std::slice::from_raw_parts_mut(out.add(i * ldo), cols);
        let src = &c[i * BLOCK..][..cols];
        if st.load_c {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        } else {
            dst.copy_from_slice(src);
        }
        if bias.is_some() || st.act.is_some() {
            simd::bias_act(isa, dst, bias, st.act);
        }
    }
}

/// [`store_block`] in AVX-512, a block row in two vectors: no call per row, the bias loaded once per block. The
/// AMX unit finishes a 32 × 32 block of k = 768 in ≈ 1536 cycles, so a per-row epilogue of a few dozen cycles
/// would cost a third of that again.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn store_block_avx512(
    c: &[f32; BLOCK * BLOCK],
    out: *mut f32,
    ldo: usize,
    rows: usize,
    cols: usize,
    st: TileStore,
) {
    use crate::cpu::simd::{generic, Avx512};
    use std::arch::x86_64::*;
    let mask = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    let (b0, b1) = if st.bias.is_null() {
        (_mm512_setzero_ps(), _mm512_setzero_ps())
    } else {
        (
            _mm512_maskz_loadu_ps(m0, st.bias),
            _mm512_maskz_loadu_ps(m1, st.bias.add(16)),
        )
    };
    let has_bias = !st.bias.is_null();
    for i in 0..rows {
        let src = c.as_ptr().add(i * BLOCK);
        // Lanes past `cols` read as 0, so they stay 0 through bias (masked) and activation (act(0) = 0).
        let (mut v0, mut v1) = (
            _mm512_maskz_loadu_ps(m0, src),
            _mm512_maskz_loadu_ps(m1, src.add(16)),
        );
        let p = out.add(i * ldo);
        if st.load_c && !st.to_bf16 {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, p.add(16)));
        }
        if has_bias {
            (v0, v1) = (_mm512_add_ps(v0, b0), _mm512_add_ps(v1, b1));
        }
        if let Some(a) = st.act {
            (v0, v1) = (
                generic::activation::<Avx512>(v0, a),
                generic::activation::<Avx512>(v1, a),
            );
        }
        if st.to_bf16 {
            // An odd last column pairs with a lane past `cols`, which is 0.
            let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(v1, v0));
            _mm512_mask_storeu_epi32(p as *mut i32, mask(cols.div_ceil(2)), pairs);
        } else {
            _mm512_mask_storeu_ps(p, m0, v0);
            _mm512_mask_storeu_ps(p.add(16), m1, v1);
        }
    }
}

/// `out[rows, n] (+)= A · B` for row blocks `row_blocks` and panels `panels`, single-threaded, with a loaded
/// configuration. `m` bounds the rows stored. With `st.to_bf16`, `out` holds bf16 pairs and `ldo` counts pairs.
///
/// # Safety
/// `out` must be valid for `m` rows of stride `ldo` covering `b.n` columns (⌈b.n/2⌉ pairs with `to_bf16`);
/// `st.bias`, when set, for `b.n` values.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_blocks<T: Tiles>(
    t: &mut T,
    isa: Isa,
    a: &PackedA,
    m: usize,
    b: &PackedB,
    row_blocks: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    out: *mut f32,
    ldo: usize,
    st: TileStore,
) {
    let mut c = [0f32; BLOCK * BLOCK];
    for p in panels {
        let (col, cols) = (p * BLOCK, BLOCK.min(b.n - p * BLOCK));
        let st = st.at_column(col);
        for rb in row_blocks.clone() {
            let r0 = rb * BLOCK;
            block(t, a.row(r0), a.pairs, b.panel(p), b.ksteps, &mut c);
            // Panels start at even columns, so a pair never straddles two of them.
            let at = if st.to_bf16 {
                (out as *mut u32).add(r0 * ldo + col / 2) as *mut f32
            } else {
                out.add(r0 * ldo + col)
            };
            store_block(isa, &c, at, ldo, BLOCK.min(m - r0), cols, st);
        }
    }
}

thread_local! {
    /// The bf16 copy of A, reused across calls on this thread.
    static A_SCRATCH: RefCell<PackedA> = RefCell::new(PackedA::default());
}

/// A raw pointer that jobs may share: each job writes a disjoint rectangle of C.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes, one job per rectangle of C.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// (row blocks per job, panels per job) for `row_blocks × panels` blocks on the pool's threads: among panel-group
/// sizes ≤ 8, the one whose jobs split most evenly (the slowest thread sets the time), larger on ties.
fn job_shape(row_blocks: usize, panels: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().max(1);
    let rows_per = ROW_BLOCKS_PER_JOB.min(row_blocks).max(1);
    let row_groups = row_blocks.div_ceil(rows_per);
    let cost = |per: usize| (row_groups * panels.div_ceil(per)).div_ceil(threads) * per;
    let per = (1..=8usize.min(panels).max(1))
        .rev()
        .min_by_key(|&p| cost(p))
        .unwrap_or(1);
    (rows_per, per)
}

/// The store rule of epilogue `ep` with `bias`.
fn store_rule(ep: Epilogue, bias: Option<&[f32]>) -> TileStore {
    TileStore {
        load_c: ep == Epilogue::Accumulate,
        bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
        act: match ep {
            Epilogue::Activation(act) => Some(act),
            _ => None,
        },
        to_bf16: false,
    }
}

/// The threaded GEMM on tile unit `T` (see the module docs). Shapes are checked by the caller: `a` holds ≥ m·k
/// values, `out` ≥ m·n, `bias` ≥ n.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Tiles + Default>(
    isa: Isa,
    a: &[f32],
    m: usize,
    k: usize,
    w: &PackedB,
    bias: Option<&[f32]>,
    out: &mut [f32],
    ep: Epilogue,
) {
    let n = w.n;
    assert!(
        w.k == k && a.len() >= m * k && out.len() >= m * n && bias.is_none_or(|b| b.len() >= n)
    );
    if m == 0 || n == 0 {
        return;
    }
    with_a_scratch(|packed| {
        packed.fill(m, k, true, |i| &a[i * k..(i + 1) * k]);
        // SAFETY: out holds m·n values (asserted).
        unsafe { gemm_packed::<T>(isa, packed, m, w, out.as_mut_ptr(), n, store_rule(ep, bias)) };
    });
}

/// The MLP with its residual on tile unit `T`: `x += act(input·W1ᵀ + b1)·W2ᵀ + b2`, the hidden activations stored
/// by fc1's epilogue straight into fc2's bf16 A operand (no f32 round trip, no conversion pass). Shapes are checked
/// by the caller.
#[allow(clippy::too_many_arguments)]
pub fn mlp<T: Tiles + Default>(
    isa: Isa,
    input: &[f32],
    m: usize,
    (w1, b1): (&PackedB, Option<&[f32]>),
    act: crate::backend::Activation,
    (w2, b2): (&PackedB, Option<&[f32]>),
    x: &mut [f32],
) {
    let (d, hidden) = (w1.k, w1.n);
    assert!(w2.k == hidden && w2.n == d && input.len() >= m * d && x.len() >= m * d);
    assert!(b1.is_none_or(|b| b.len() >= hidden) && b2.is_none_or(|b| b.len() >= d));
    if m == 0 || d == 0 {
        return;
    }
    thread_local! {
        static HIDDEN: RefCell<PackedA> = RefCell::new(PackedA::default());
    }
    with_a_scratch(|packed| {
        let run = |h: &mut PackedA| {
            packed.fill(m, d, true, |i| &input[i * d..(i + 1) * d]);
            h.prepare(m, hidden);
            let fc1 = TileStore {
                to_bf16: true,
                ..store_rule(crate::backend::Epilogue::Activation(act), b1)
            };
            // SAFETY: h holds m (padded) rows of h.pairs pairs, x m·d values (asserted).
            unsafe {
                gemm_packed::<T>(isa, packed, m, w1, h.row_mut(0) as *mut f32, h.pairs, fc1);
                let fc2 = store_rule(Epilogue::Accumulate, b2);
                gemm_packed::<T>(isa, h, m, w2, x.as_mut_ptr(), d, fc2);
            }
        };
        crate::cpu::with_thread_scratch(&HIDDEN, run)
    });
}

/// Runs `f` with this thread's bf16 A scratch (a fresh one when a nested call, through rayon work stealing, finds
/// it borrowed).
fn with_a_scratch<R>(f: impl FnOnce(&mut PackedA) -> R) -> R {
    crate::cpu::with_thread_scratch(&A_SCRATCH, f)
}

/// `out (+)= a · wᵀ` over every block, jobs on rayon's threads, each with its own tile configuration.
///
/// # Safety
/// `out` must be valid for `m` rows of stride `ldo` (f32, or bf16 pairs with `st.to_bf16`) covering `w.n` columns;
/// `st.bias` for `w.n` values; `a` must hold `m` rows of `w.k` values; `T = Native` only where AMX is usable.
unsafe fn gemm_packed<T: Tiles + Default>(
    isa: Isa,
    a: &PackedA,
    m: usize,
    w: &PackedB,
    out: *mut f32,
    ldo: usize,
    st: TileStore,
) {
    if m == 0 || w.n == 0 {
        return;
    }
    let (row_blocks, panels) = (m.div_ceil(BLOCK), w.panels());
    let (rows_per, panels_per) = job_shape(row_blocks, panels);
    let row_groups = row_blocks.div_ceil(rows_per);
    let jobs = row_groups * panels.div_ceil(panels_per);
    let (c, st) = (SendPtr(out), SendStore(st));
    (0..jobs).into_par_iter().for_each(|j| {
        let (rg, pg) = (j % row_groups, j / row_groups);
        let rows = rg * rows_per..((rg + 1) * rows_per).min(row_blocks);
        let cols = pg * panels_per..((pg + 1) * panels_per).min(panels);
        let mut t = T::default();
        // SAFETY: the caller's contract bounds every row and column written; jobs write disjoint rectangles.
        unsafe {
            t.configure(&CONFIG);
            run_blocks(&mut t, isa, a, m, w, rows, cols, c.get(), ldo, st.get());
            t.release();
        }
    });
}

/// A [`TileStore`] that jobs may share: its bias pointer is only read.
#[derive(Clone, Copy)]
struct SendStore(TileStore);
// SAFETY: the bias pointer is read-only and outlives the parallel loop.
unsafe impl Send for SendStore {}
unsafe impl Sync for SendStore {}
impl SendStore {
    fn get(self) -> TileStore {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Activation;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919) % 997) as f32 / 250.0 - 2.0)
            .collect()
    }

    /// The AVX-512 block store (what AMX machines run) and the portable one (the emulator on other hosts) agree on
    /// every rule and edge width, f32 and bf16-pair outputs alike.
    #[test]
    fn block_stores_agree_across_tiers() {
        if !(Isa::Avx512.available() && crate::cpu::isa::has_avx512_bf16()) {
            println!("skipped: the AVX-512 block store needs AVX512_BF16");
            return;
        }
        let block: [f32; BLOCK * BLOCK] = values(BLOCK * BLOCK, 1).try_into().unwrap();
        let bias = values(BLOCK, 2);
        for rows in [1usize, 17, 32] {
            for cols in [1usize, 15, 16, 17, 31, 32] {
                for (load_c, with_bias, act, to_bf16) in [
                    (false, false, None, false),
                    (true, true, None, false),
                    (false, true, Some(Activation::QuickGelu), false),
                    (false, true, Some(Activation::Gelu), true),
                    (false, false, None, true),
                ] {
                    let st = TileStore {
                        load_c,
                        bias: if with_bias {
                            bias.as_ptr()
                        } else {
                            std::ptr::null()
                        },
                        act,
                        to_bf16,
                    };
                    let ldo = 40;
                    let run = |isa: Isa| {
                        let mut out = values(rows * ldo, 3);
                        // SAFETY: out holds rows × ldo values (f32) or pairs (u32 of the same size).
                        unsafe { store_block(isa, &block, out.as_mut_ptr(), ldo, rows, cols, st) };
                        out
                    };
                    let (fast, portable) = (run(Isa::Avx512), run(Isa::Scalar));
                    let what = format!("rows {rows} cols {cols} {st:?}");
                    if to_bf16 {
                        let decode = |v: &[f32]| -> Vec<f32> {
                            v.iter()
                                .flat_map(|x| {
                                    let b = x.to_bits();
                                    [f32::from_bits(b << 16), f32::from_bits(b & 0xFFFF_0000)]
                                })
                                .collect()
                        };
                        for (a, b) in decode(&fast).iter().zip(decode(&portable)) {
                            assert!(
                                (a - b).abs() <= 1e-2 * b.abs().max(1e-3)
                                    || a.to_bits() == b.to_bits(),
                                "{what}: {a} vs {b}"
                            );
                        }
                    } else {
                        for (a, b) in fast.iter().zip(&portable) {
                            assert!(
                                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                                "{what}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }
}
