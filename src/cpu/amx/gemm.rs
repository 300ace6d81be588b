//! The AMX bf16 GEMM: `C[m, n] (+)= A[m, k] · W[n, k]ᵀ (+ bias, activation)`, generic over [`Tiles`].
//!
//! - **Tiles.** Every tile is 16 rows × 64 bytes (one configuration, loaded once per job): an accumulator holds
//!   16 × 16 f32, an A tile 16 rows × 32 bf16 of k, a B tile 16 k-pairs × 16 columns × 2 bf16 (the VNNI pair
//!   layout `tdpbf16ps` reads).
//! - **Register blocking.** A 32 × 32 block of C lives in 4 accumulators (tmm0–3); each k step of 32 loads 2 A
//!   tiles (tmm4–5) and 2 B tiles (tmm6–7) and issues 4 `tdpbf16ps`, so each loaded tile feeds two products. With 8
//!   tile registers this 2 × 2 block is the largest that still leaves room for the operands.
//! - **Packing: every tile a contiguous 1 KB.** Weights are packed once at load ([`PackedB`]): per 32-column panel,
//!   its k steps back to back, each step the panel's two B tiles side by side (2 KB), zero past n and k. Columns are
//!   padded to 32 (CLIP's widths are multiples of 32, so nothing is wasted there). A is converted to bf16 per call
//!   into a thread-local [`PackedA`] of the same shape: per 32-row block, its k steps back to back, each step the
//!   block's two A tiles (rows padded to 32 and k to 32 with zeros: the padding of k meets B's zero rows and must add
//!   nothing; padded rows are computed and never stored). So a block's k loop reads two sequential 2 KB streams, and
//!   every `tileloadd` has stride 64 B: 16 consecutive cache lines, which the hardware prefetchers follow (row-major
//!   A touched 16 lines 1.5 KB apart per tile). Every tile row starts on a cache line (`Lines`): the first version's
//!   16-byte-aligned tiles, each row straddling two lines, kept the tower at 17 % of the AMX peak on the Xeon of
//!   BENCHMARKS.md's session 21.
//! - **Epilogue.** Accumulators are stored to a 4 KB block on the stack, then each valid row gets C added (the
//!   residual), the bias and the activation before it is written: one pass over C, as in the f32 kernel; in
//!   AVX-512 on AMX hosts (two vectors a row), portably elsewhere (the emulator on other machines). A fused MLP's
//!   fc1 writes its block as bf16 pairs straight into fc2's A operand ([`mlp`]): a 32 × 32 block of fc1's output is
//!   exactly one k step of one row block of fc2's A, 2 KB in place (`Dest::Tiles`). A block's epilogue runs after
//!   the next block's tile work is issued, so the vector units work while the tile unit does (`run_blocks`).
//! - **Split products.** Weights packed by [`PackedB::from_rows_split`] carry each value as two bf16 halves along
//!   a tripled k, and [`gemm()`] splits A to match ([`Split`]): the same kernel then computes f32-grade products,
//!   for the layers kept out of bf16 (ARCHITECTURE §7.13). They never enter the fused MLP.
//! - **Threads and caches.** A job is a rectangle of row blocks × panels; inside it, row blocks go in chunks whose
//!   A (≤ `L2_A_BYTES`) stays in L2 while each panel of the job's group (≤ `L2_B_BYTES` of B, also in L2) runs
//!   over the chunk. The grid is chosen per GEMM (`job_grid`): first the most even split over the threads, then
//!   the least traffic from L3 (every row split reads B once more, every panel group A once more). Small fixed jobs
//!   (4 row blocks × ≤ 8 panels) refetched A and B from L3 for every job: 67 MB for a 5.6 GFLOP ViT-B/32 b32 qkv
//!   GEMM that needs 6.

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
/// u32 (bf16 pairs) per packed tile, A or B: 16 rows × 64 bytes.
const B_TILE_U32: usize = (K_STEP / 2) * TILE_COLS;
/// u32 per k step of a 32-row block or a 32-column panel: its two tiles.
const STEP_U32: usize = 2 * B_TILE_U32;
/// bf16 pairs per row of an A tile (the row stride inside a packed A step).
const A_ROW_PAIRS: usize = K_STEP / 2;
/// B a job keeps in L2 (its panel group): half of a 2 MB L2, the size of every AMX core so far (Sapphire Rapids,
/// Emerald Rapids, Granite Rapids), leaving room for the A chunk.
const L2_B_BYTES: usize = 1 << 20;
/// A a job keeps in L2 (its row chunk).
const L2_A_BYTES: usize = 512 << 10;

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

/// One 64-byte tile row, aligned to a cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
struct Line([u32; 16]);
// SAFETY: 16 u32 with the alignment of their size: no padding, every bit pattern valid.
unsafe impl bytemuck::Zeroable for Line {}
unsafe impl bytemuck::Pod for Line {}

/// Tile storage: u32 words (bf16 pairs) on cache-line boundaries. Every tile row must start on a line: a
/// `tileloadd` whose 16 rows each straddle two lines ran 4.5× slower on the Xeon of session 21 (12 → 55 cycles a
/// tile from L1), and the allocator only promises 16 bytes.
#[derive(Clone, Debug, Default)]
struct Lines(Vec<Line>);

impl Lines {
    /// `words` words (a multiple of 16); new words zero, old ones kept.
    fn resize(&mut self, words: usize) {
        debug_assert!(words.is_multiple_of(16));
        self.0.resize(words / 16, Line::default());
    }

    /// `words` zero words.
    fn zeroed(&mut self, words: usize) {
        self.0.clear();
        self.resize(words);
    }

    fn words(&self) -> &[u32] {
        bytemuck::cast_slice(&self.0)
    }

    fn words_mut(&mut self) -> &mut [u32] {
        bytemuck::cast_slice_mut(&mut self.0)
    }
}

/// The two halves of split products: A rows as `[hi | hi | lo]`, B rows as `[hi | lo | hi]`, each segment k long,
/// where hi is a value rounded to bf16 and lo the bf16 rounding of what hi leaves. Along the tripled k, A·Bᵀ then
/// sums hi·hi + hi·lo + lo·hi: every value is carried to ≈ 16 significant bits, and only lo·lo (≈ 2⁻¹⁶ of a
/// product) is left out. ARCHITECTURE §7.13 says which layers need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    A,
    B,
}

/// One row of `x` as its split row of `3 · x.len()` values (see [`Split`]); the segments are exact in bf16 except
/// lo, which the packing rounds.
pub fn split_row(x: &[f32], side: Split) -> Vec<f32> {
    let k = x.len();
    let mut v = vec![0f32; 3 * k];
    let (first, rest) = v.split_at_mut(k);
    let (second, third) = rest.split_at_mut(k);
    match side {
        Split::A => {
            split_bf16(x, first, third);
            second.copy_from_slice(first);
        }
        Split::B => {
            split_bf16(x, first, second);
            third.copy_from_slice(first);
        }
    }
    v
}

/// `hi[i]` = `x[i]` rounded to bf16 (to nearest even), `lo[i] = x[i] − hi[i]` (exact in f32); where hi is not
/// finite (x infinite or NaN, or rounded past bf16's largest value), lo is 0 so the products keep hi's value.
fn split_bf16(x: &[f32], hi: &mut [f32], lo: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa::has_avx512_bf16() {
        // SAFETY: AVX512_BF16 detected; the call reads and writes whole chunks of 16 inside the three slices.
        done = unsafe { split_chunks_avx512(x, hi, lo) };
    }
    for ((&v, h), l) in x[done..].iter().zip(&mut hi[done..]).zip(&mut lo[done..]) {
        *h = half::bf16::from_f32(v).to_f32();
        *l = if h.is_finite() { v - *h } else { 0.0 };
    }
}

/// The whole chunks of 16 of [`split_bf16`]; returns how many values it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn split_chunks_avx512(x: &[f32], hi: &mut [f32], lo: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let whole = x.len().min(hi.len()).min(lo.len()) / 16 * 16;
    for i in (0..whole).step_by(16) {
        let v = _mm512_loadu_ps(x.as_ptr().add(i));
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        let h = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
        // Exponent all ones: infinite or NaN.
        let exp_mask = _mm512_set1_epi32(0x7f80_0000);
        let not_finite =
            _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(h), exp_mask), exp_mask);
        let l = _mm512_maskz_sub_ps(!not_finite, v, h);
        _mm512_storeu_ps(hi.as_mut_ptr().add(i), h);
        _mm512_storeu_ps(lo.as_mut_ptr().add(i), l);
    }
    whole
}

/// A matrix `W[n, k]` packed into B tiles (see the module docs), ready for the tile kernels.
#[derive(Clone, Debug, Default)]
pub struct PackedB {
    data: Lines,
    pub n: usize,
    /// The packed depth: the weight's k, or 3·k for split products ([`PackedB::from_rows_split`]).
    pub k: usize,
    /// k steps of 32.
    pub ksteps: usize,
    /// Split products: A must come as [`Split::A`] rows of `k / 3` values.
    pub split: bool,
}

impl PackedB {
    /// Packs `W[n, k]` given by its rows: `row(j)` holds the k values of output column j (a weight in HF layout,
    /// or attention's K with the keys as columns).
    pub fn from_rows<R: AsRef<[f32]>>(n: usize, k: usize, row: impl Fn(usize) -> R) -> PackedB {
        let mut p = PackedB::default();
        p.repack_rows(n, k, row);
        p
    }

    /// Packs `W[n, k]` for split products (ARCHITECTURE §7.13): each row as [`Split::B`] along a k three times as
    /// deep, so that a GEMM with A split as [`Split::A`] sums hi·hi + hi·lo + lo·hi, which leaves out only lo·lo
    /// (≈ 2⁻¹⁶ of each product): f32-grade products at a third of the bf16 rate.
    pub fn from_rows_split<'a>(n: usize, k: usize, row: impl Fn(usize) -> &'a [f32]) -> PackedB {
        let mut p = PackedB::from_rows(n, 3 * k, |j| split_row(&row(j)[..k], Split::B));
        p.split = true;
        p
    }

    /// Zeroed room for `W[n, k]`, reusing the allocation (attention repacks K and V per head).
    fn reset(&mut self, n: usize, k: usize) {
        let ksteps = k.div_ceil(K_STEP);
        self.data.zeroed(n.div_ceil(BLOCK) * ksteps * STEP_U32);
        (self.n, self.k, self.ksteps, self.split) = (n, k, ksteps, false);
    }

    /// Where pair `pair` (k indices 2·pair, 2·pair + 1) of column `j` lives in a packing of `ksteps` k steps: panel,
    /// k step, which of the step's two tiles, pair-row, column.
    #[inline(always)]
    fn at(ksteps: usize, j: usize, pair: usize) -> usize {
        let step = (j / BLOCK) * ksteps + pair / (K_STEP / 2);
        let tile = step * 2 + (j / TILE_COLS) % 2;
        tile * B_TILE_U32 + (pair % (K_STEP / 2)) * TILE_COLS + j % TILE_COLS
    }

    /// [`PackedB::from_rows`] into this buffer: each row is converted to bf16 pairs in one vector pass, then the
    /// pairs are placed (one column of every B tile it spans).
    pub fn repack_rows<R: AsRef<[f32]>>(&mut self, n: usize, k: usize, row: impl Fn(usize) -> R) {
        self.reset(n, k);
        let (ksteps, words) = (self.ksteps, self.data.words_mut());
        let mut pairs = vec![0u32; k.div_ceil(2)];
        for j in 0..n {
            row_to_bf16_pairs(&row(j).as_ref()[..k], &mut pairs);
            for (pair, &v) in pairs.iter().enumerate() {
                words[Self::at(ksteps, j, pair)] = v;
            }
        }
    }

    /// Packs `W[n, k]` given by its columns: `col(t)` holds the n values of reduction index t (attention's V,
    /// keys along k): two of them make one pair-row of every B tile they span.
    pub fn repack_cols<'a>(&mut self, n: usize, k: usize, col: impl Fn(usize) -> &'a [f32]) {
        self.reset(n, k);
        let (ksteps, words) = (self.ksteps, self.data.words_mut());
        let (mut lo, mut hi) = (vec![0u16; n], vec![0u16; n]);
        for pair in 0..k.div_ceil(2) {
            bf16_row(&col(2 * pair)[..n], &mut lo);
            if 2 * pair + 1 < k {
                bf16_row(&col(2 * pair + 1)[..n], &mut hi);
            } else {
                hi.fill(0);
            }
            for j in 0..n {
                words[Self::at(ksteps, j, pair)] = pair_bits(lo[j], hi[j]);
            }
        }
    }

    /// 32-column panels.
    fn panels(&self) -> usize {
        self.n.div_ceil(BLOCK)
    }

    /// Panel `p`'s first k step (its two tiles; the next step follows [`STEP_U32`] later).
    fn panel(&self, p: usize) -> *const u32 {
        self.data.words()[p * self.ksteps * STEP_U32..].as_ptr()
    }
}

/// `m` rows of bf16 A for the tile kernels, in tiles (see the module docs): per 32-row block, per k step, 32 rows
/// × 16 bf16 pairs (the block's two A tiles, 2 KB), zero padded.
#[derive(Default)]
pub struct PackedA {
    data: Lines,
    /// k steps of 32.
    ksteps: usize,
}

impl PackedA {
    /// Room for `m` rows of `k` values (contents not yet set).
    fn shape(&mut self, m: usize, k: usize) {
        self.ksteps = k.div_ceil(K_STEP);
        self.data.resize(m.div_ceil(BLOCK) * self.ksteps * STEP_U32);
    }

    /// Converts `m` rows of `k` values, row `i` read from `row(i)`, rounding to nearest even; on rayon's threads when
    /// `parallel`. A caller holding a loaded tile configuration must pass `false`: a rayon wait could run another
    /// task on this thread, whose `tilerelease` would wipe the caller's tiles.
    pub fn fill<R: AsRef<[f32]>>(
        &mut self,
        m: usize,
        k: usize,
        parallel: bool,
        row: impl Fn(usize) -> R + Sync,
    ) {
        self.shape(m, k);
        let ksteps = self.ksteps;
        // One 32-row block: each row's k steps to their 64-byte slots, pairs past k and rows past m zero.
        let convert = |rb: usize, dst: &mut [u32]| {
            for r in 0..BLOCK {
                let i = rb * BLOCK + r;
                let owned = (i < m).then(|| row(i));
                let src = owned.as_ref().map_or(&[][..], |v| &v.as_ref()[..k]);
                for (s, step) in dst.chunks_exact_mut(STEP_U32).enumerate() {
                    let d = &mut step[r * A_ROW_PAIRS..(r + 1) * A_ROW_PAIRS];
                    let chunk = src.get(s * K_STEP..).unwrap_or(&[]);
                    let chunk = &chunk[..chunk.len().min(K_STEP)];
                    row_to_bf16_pairs(chunk, d);
                    d[chunk.len().div_ceil(2)..].fill(0);
                }
            }
        };
        // (k = 0 leaves no data: the chunk size only has to be non-zero.)
        let block_u32 = (ksteps * STEP_U32).max(1);
        // Large A (a GEMM's activations) converts in parallel; a few rows do not pay for the fork.
        let data = self.data.words_mut();
        if parallel && data.len() >= 1 << 16 {
            data.par_chunks_mut(block_u32)
                .enumerate()
                .for_each(|(rb, d)| convert(rb, d));
        } else {
            data.chunks_mut(block_u32)
                .enumerate()
                .for_each(|(rb, d)| convert(rb, d));
        }
    }

    /// Makes room for `m` rows of `k` values that a GEMM will store as bf16 pairs (a fused MLP's fc1 through
    /// `Dest::Tiles`): the padding (rows past `m`, pairs past ⌈k/2⌉) is zeroed here, the rest is left to the
    /// stores.
    pub fn prepare(&mut self, m: usize, k: usize) {
        self.shape(m, k);
        let (ksteps, written) = (self.ksteps, k.div_ceil(2));
        let last_step_pairs = written - (ksteps.max(1) - 1) * A_ROW_PAIRS;
        let block_u32 = (ksteps * STEP_U32).max(1);
        for (rb, block) in self.data.words_mut().chunks_mut(block_u32).enumerate() {
            for (s, step) in block.chunks_exact_mut(STEP_U32).enumerate() {
                for (r, row) in step.chunks_exact_mut(A_ROW_PAIRS).enumerate() {
                    if rb * BLOCK + r >= m {
                        row.fill(0);
                    } else if s + 1 == ksteps {
                        row[last_step_pairs..].fill(0);
                    }
                }
            }
        }
    }

    /// Row block `rb`'s first k step (its two tiles; the next step follows [`STEP_U32`] later).
    fn block(&self, rb: usize) -> *const u32 {
        self.data.words()[rb * self.ksteps * STEP_U32..].as_ptr()
    }

    /// Where a GEMM stores into this operand (fc1 → fc2).
    fn dest(&mut self) -> Dest {
        Dest::Tiles {
            ptr: self.data.words_mut().as_mut_ptr(),
            ksteps: self.ksteps,
        }
    }
}

/// Where a tile GEMM writes its product.
#[derive(Clone, Copy)]
pub(crate) enum Dest {
    /// f32 rows: element (i, j) at `ptr[i·ld + j]`.
    Rows { ptr: *mut f32, ld: usize },
    /// bf16 pairs in the layout of a [`PackedA`] with `ksteps` k steps (the next GEMM's operand).
    Tiles { ptr: *mut u32, ksteps: usize },
}

// SAFETY: jobs write disjoint rectangles through the pointer (see `gemm_packed`).
unsafe impl Send for Dest {}
unsafe impl Sync for Dest {}

impl Dest {
    /// The first element of the 32 × 32 block at row block `rb`, panel `p`, and its row stride (in f32, or in
    /// pairs for tiles).
    ///
    /// # Safety
    /// The block must lie inside the destination.
    unsafe fn block(self, rb: usize, p: usize) -> (*mut f32, usize) {
        match self {
            Dest::Rows { ptr, ld } => (ptr.add(rb * BLOCK * ld + p * BLOCK), ld),
            // A panel of 32 output columns is one k step of the next GEMM's A.
            Dest::Tiles { ptr, ksteps } => (
                ptr.add((rb * ksteps + p) * STEP_U32) as *mut f32,
                A_ROW_PAIRS,
            ),
        }
    }
}

/// The single tile configuration of every kernel here.
static CONFIG: TileConfig = TileConfig::full();

/// One 32 × 32 block into the accumulators tmm0–3: `A block · B panel` over `ksteps` k steps (configuration
/// loaded); `a` and `b` point at the first step of a [`PackedA`] row block and a [`PackedB`] panel.
#[inline(always)]
unsafe fn multiply<T: Tiles>(t: &mut T, a: *const u32, b: *const u32, ksteps: usize) {
    const TILE_STRIDE: usize = 64;
    t.zero::<0>();
    t.zero::<1>();
    t.zero::<2>();
    t.zero::<3>();
    for s in 0..ksteps {
        let (a0, b0) = (a.add(s * STEP_U32), b.add(s * STEP_U32));
        t.load::<4>(a0 as *const u8, TILE_STRIDE);
        t.load::<5>(a0.add(B_TILE_U32) as *const u8, TILE_STRIDE);
        t.load::<6>(b0 as *const u8, TILE_STRIDE);
        t.load::<7>(b0.add(B_TILE_U32) as *const u8, TILE_STRIDE);
        t.dpbf16ps::<0, 4, 6>();
        t.dpbf16ps::<1, 4, 7>();
        t.dpbf16ps::<2, 5, 6>();
        t.dpbf16ps::<3, 5, 7>();
    }
}

/// The accumulators tmm0–3 to `c` (32 rows × 32 f32).
#[inline(always)]
unsafe fn store_accumulators<T: Tiles>(t: &mut T, c: &mut [f32; BLOCK * BLOCK]) {
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
/// configuration. `m` bounds the rows stored; `out` decides whether they are stored as f32 or as bf16 pairs.
///
/// # Safety
/// `out` must be valid for `m` rows covering `b.n` columns (as f32 rows, or as a [`PackedA`] of `b.n` k values
/// prepared for `m` rows); `st.bias`, when set, for `b.n` values.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_blocks<T: Tiles>(
    t: &mut T,
    isa: Isa,
    a: &PackedA,
    m: usize,
    b: &PackedB,
    row_blocks: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    out: Dest,
    st: TileStore,
) {
    let st = TileStore {
        to_bf16: matches!(out, Dest::Tiles { .. }),
        ..st
    };
    /// The accumulators' landing place, its rows on cache lines like every tile row (see [`Lines`]).
    #[repr(C, align(64))]
    struct Acc([f32; BLOCK * BLOCK]);
    /// A stored block whose epilogue is still to run: its buffer, destination, rows, columns and store rule.
    type Pending = (usize, *mut f32, usize, usize, usize, TileStore);
    let mut acc = [Acc([0f32; BLOCK * BLOCK]), Acc([0f32; BLOCK * BLOCK])];
    let mut pending: Option<Pending> = None;
    let flush = |acc: &[Acc; 2], p: Option<Pending>| {
        if let Some((i, at, ldo, rows, cols, st)) = p {
            store_block(isa, &acc[i].0, at, ldo, rows, cols, st);
        }
    };
    // Rows in chunks whose A stays in L2 while every panel runs over them (see the module docs).
    let chunk = (L2_A_BYTES / (a.ksteps * STEP_U32 * 4).max(1)).max(1);
    let mut next = 0;
    for first in row_blocks.clone().step_by(chunk) {
        let chunk = first..(first + chunk).min(row_blocks.end);
        for p in panels.clone() {
            let (col, cols) = (p * BLOCK, BLOCK.min(b.n - p * BLOCK));
            let st = st.at_column(col);
            for rb in chunk.clone() {
                multiply(t, a.block(rb), b.panel(p), b.ksteps);
                // The previous block's epilogue runs on the vector units while the tile unit works on this one:
                // only its `tdpbf16ps` wait for the tile unit, and the front end runs ahead of them.
                flush(&acc, pending.take());
                store_accumulators(t, &mut acc[next].0);
                // Panels start at even columns, so a pair never straddles two of them.
                let (at, ldo) = out.block(rb, p);
                pending = Some((next, at, ldo, BLOCK.min(m - rb * BLOCK), cols, st));
                next ^= 1;
            }
        }
    }
    flush(&acc, pending);
}

thread_local! {
    /// The bf16 copy of A, reused across calls on this thread.
    static A_SCRATCH: RefCell<PackedA> = RefCell::new(PackedA::default());
}

/// (row blocks per job, panels per job) for `row_blocks × panels` blocks of `ksteps` k steps on the pool's threads:
/// the smallest makespan (jobs per thread × blocks per job), then the least L3 traffic (row splits × B + panel
/// groups × A), with a panel group's B within [`L2_B_BYTES`].
fn job_grid(row_blocks: usize, panels: usize, ksteps: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().max(1);
    // A row block's A and a panel's B have the same size: ksteps steps of two 1 KB tiles.
    let panel_bytes = (ksteps * STEP_U32 * 4).max(1);
    let max_per = (L2_B_BYTES / panel_bytes).clamp(1, panels.max(1));
    // Each distinct size of a split once: per = ⌈n / parts⌉ over parts = 1..=n.
    let sizes = |n: usize, largest: usize| {
        let mut v: Vec<usize> = (1..=n.max(1))
            .map(|parts| n.max(1).div_ceil(parts))
            .filter(|&per| per <= largest)
            .collect();
        v.dedup();
        v
    };
    let mut best = ((usize::MAX, usize::MAX), (row_blocks.max(1), max_per));
    for rows_per in sizes(row_blocks, usize::MAX) {
        for per in sizes(panels, max_per) {
            let (row_splits, groups) = (row_blocks.div_ceil(rows_per), panels.div_ceil(per));
            let makespan = (row_splits * groups).div_ceil(threads) * rows_per * per;
            let traffic = row_splits * panels + groups * row_blocks;
            best = best.min(((makespan, traffic), (rows_per, per)));
        }
    }
    best.1
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
    let depth = if w.split { 3 * k } else { k };
    assert!(
        w.k == depth && a.len() >= m * k && out.len() >= m * n && bias.is_none_or(|b| b.len() >= n)
    );
    if m == 0 || n == 0 {
        return;
    }
    with_a_scratch(|packed| {
        let row = |i: usize| &a[i * k..(i + 1) * k];
        if w.split {
            packed.fill(m, depth, true, |i| split_row(row(i), Split::A));
        } else {
            packed.fill(m, k, true, row);
        }
        let out = Dest::Rows {
            ptr: out.as_mut_ptr(),
            ld: n,
        };
        // SAFETY: out holds m·n values (asserted).
        unsafe { gemm_packed::<T>(isa, packed, m, w, out, store_rule(ep, bias)) };
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
    // Split weights run as two GEMMs: fc1's bf16 hidden store would undo fc2's split.
    assert!(!w1.split && !w2.split);
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
            let fc1 = store_rule(Epilogue::Activation(act), b1);
            let x = Dest::Rows {
                ptr: x.as_mut_ptr(),
                ld: d,
            };
            // SAFETY: h was prepared for m rows of `hidden` values, x holds m·d values (asserted).
            unsafe {
                gemm_packed::<T>(isa, packed, m, w1, h.dest(), fc1);
                let fc2 = store_rule(Epilogue::Accumulate, b2);
                gemm_packed::<T>(isa, h, m, w2, x, fc2);
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
/// As [`run_blocks`] for every block; `a` must hold `m` rows of `w.k` values; `T = Native` only where AMX is usable.
unsafe fn gemm_packed<T: Tiles + Default>(
    isa: Isa,
    a: &PackedA,
    m: usize,
    w: &PackedB,
    out: Dest,
    st: TileStore,
) {
    if m == 0 || w.n == 0 {
        return;
    }
    let (row_blocks, panels) = (m.div_ceil(BLOCK), w.panels());
    let (rows_per, panels_per) = job_grid(row_blocks, panels, w.ksteps);
    let row_groups = row_blocks.div_ceil(rows_per);
    let jobs = row_groups * panels.div_ceil(panels_per);
    let st = SendStore(st);
    (0..jobs).into_par_iter().for_each(|j| {
        let (rg, pg) = (j % row_groups, j / row_groups);
        let rows = rg * rows_per..((rg + 1) * rows_per).min(row_blocks);
        let cols = pg * panels_per..((pg + 1) * panels_per).min(panels);
        let mut t = T::default();
        // SAFETY: the caller's contract bounds every row and column written; jobs write disjoint rectangles.
        unsafe {
            t.configure(&CONFIG);
            run_blocks(&mut t, isa, a, m, w, rows, cols, out, st.get());
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

    /// The job grid covers every block with sizes ≥ 1, keeps a panel group's B within its L2 budget (unless one
    /// panel alone exceeds it), and splits CLIP's large GEMMs evenly over the threads.
    #[test]
    fn job_grid_is_valid_and_even() {
        let threads = rayon::current_num_threads().max(1);
        for (row_blocks, panels, ksteps) in [
            (0, 0, 0),
            (1, 1, 1),
            (2, 24, 24),
            (50, 72, 24),
            (50, 24, 96),
            (65, 128, 32),
            (3, 1, 400),
        ] {
            let (rows_per, per) = job_grid(row_blocks, panels, ksteps);
            assert!(rows_per >= 1 && per >= 1, "{row_blocks} {panels} {ksteps}");
            assert!(per == 1 || per * ksteps * STEP_U32 * 4 <= L2_B_BYTES);
            if row_blocks * panels >= 64 * threads {
                let jobs = row_blocks.div_ceil(rows_per) * panels.div_ceil(per);
                let makespan = jobs.div_ceil(threads) * rows_per * per;
                let ideal = (row_blocks * panels).div_ceil(threads);
                assert!(
                    makespan as f64 <= 1.1 * ideal as f64,
                    "{row_blocks}×{panels}: makespan {makespan}, ideal {ideal}"
                );
            }
        }
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
