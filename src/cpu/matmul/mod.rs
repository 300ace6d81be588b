//! The CPU GEMM: `C[m, n] (+)= A[m, k] · W[n, k]ᵀ (+ bias, activation)` with the weight packed once at load time.
//!
//! (over ~700 lines: the packing, the f32 and bf16 micro-kernels, their fused epilogues and the fused MLP share
//! the panel layout and the tile-store contract; split, each piece would need the others' private invariants.)
//!
//! On AVX-512 CPUs this is our own kernel:
//! - **Packing.** `W` is cut into panels of [`NR`] = 48 output columns, each stored k-major (`[k][48]`, zero-padded
//!   past `n`), so the micro-kernel streams one contiguous panel. bf16 panels store k in pairs (`[k/2][48][2]`),
//!   the operand layout of `vdpbf16ps`.
//! - **Micro-kernel.** A tile of up to 8 rows × 48 columns lives in 24 zmm accumulators; each k step loads three
//!   panel vectors and broadcasts one A value per row, so 24 FMAs cost 11 loads. Two 512-bit FMA pipes with 4 cycles
//!   of latency need 8 chains in flight: 24 keep them saturated. Edges use masked loads/stores, so no padding of A or
//!   C is needed. Measured on one Zen 5 core against the 12 × 32 shape (2 panel vectors, 12 broadcasts): 217 → 234
//!   GFLOP/s on 1600×3072→768, 225 → 229 on 1600×768→2304 (`cargo bench --bench ops`, 1 thread), and ≈ +2 % on
//!   the ViT-B/32 tower at batch 32.
//! - **Blocking.** Rows are split into tiles of near-equal height (50 rows → 8 + 6 × 7, not 6 × 8 + 2). A job owns a
//!   block of ≈144 rows × a few panels of C; inside it, k runs in chunks of ≤ 768 so one panel chunk (144 KB) and the
//!   A block chunk (≈ 440 KB) stay in L2 while every tile × panel pair of the block consumes them. The next panel is
//!   prefetched while the current one is in use, its lines spread over all of the current panel's tiles
//!   (`PanelPrefetch`), and panels live on huge pages where the OS allows.
//! - **Epilogue.** On the last k chunk the tile adds the bias, applies the activation, or adds into C (the residual),
//!   before its single store: no second pass over C.
//! - **Threads.** Jobs go to rayon; the N split is made finer when there are few row blocks, so batch 1 (50 rows)
//!   still gives every core several jobs.
//!
//! On the AMX engines the weight is packed into tiles instead and `amx::gemm` runs the product. The i16 engines
//! quantize to 16-bit fixed point (`fixed16`): `avx512_i16` runs this kernel's shape with `vpdpwssd`. Without
//! AVX-512 the `avx2` module's 6 × 16 kernel runs it on its own panels, or, for i16, `avx2_i16`'s fixed-point twin. Only the forced scalar tier runs the `gemm` crate on the
//! pre-transposed weight, with a SIMD pass for bias and activation.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2_i16;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_i16;
#[cfg(target_arch = "x86_64")]
pub(crate) mod fixed16;

use super::amx::{self, PackedB};
use super::isa::{has_avx512_bf16, Isa};
use super::simd;
use super::MatrixEngine;
use crate::backend::{Activation, Epilogue};

/// Columns per packed weight panel.
pub const NR: usize = 16 * NV;
/// zmm registers per panel row.
const NV: usize = 3;
/// Most rows per micro-kernel tile (24 accumulators + 3 panel registers + a broadcast fit in 32 zmm).
pub const MR: usize = 8;
/// Tiles per row block of a job (≈ 144 rows).
const TILES_PER_BLOCK: usize = 18;
/// Longest k chunk (elements): ViT-B's K = 768 runs in one chunk, the MLP's K = 3072 in four. Measured on the
/// ViT-B/32 tower (2 threads, Zen 5): 192 to 768 are within noise of each other, 768 at the top.
const KC: usize = 768;
/// The AVX-512 kernels' job shape: 8 panels (384 columns) at most per job.
const BLOCKING: Blocking = Blocking {
    mr: MR,
    nr: NR,
    tiles_per_block: TILES_PER_BLOCK,
    max_panels_per_job: 8,
};

pub use crate::backend::Precision;

/// A weight in the layout of the kernel that will run it.
enum Packed {
    /// `[panel][k][NR]` f32.
    F32(Aligned<f32>),
    /// `[panel][⌈k/2⌉][NR]` u32, each holding the bf16 pair (w[2t], w[2t+1]) low half first.
    Bf16(Aligned<u32>),
    /// `[panel][k][avx2::NR]` f32, for the AVX2 kernel.
    Avx2(Aligned<f32>),
    /// Quantized 16-bit pairs and their column steps, in the AVX2 fixed-point kernel's 16-column panels.
    #[cfg(target_arch = "x86_64")]
    I16Avx2(fixed16::PackedI16),
    /// The same in the `vpdpwssd` kernel's 48-column panels.
    #[cfg(target_arch = "x86_64")]
    I16Vnni(fixed16::PackedI16),
    /// `Wᵀ[k, n]` row-major for the `gemm` crate.
    Transposed(Vec<f32>),
    /// AMX B tiles (see `amx::gemm`).
    Amx(PackedB),
}

/// A linear layer prepared for the CPU: packed weight `[n, k]` and optional bias `[n]`.
pub struct PackedLinear {
    w: Packed,
    bias: Option<Vec<f32>>,
    pub n: usize,
    pub k: usize,
}

/// A zeroed buffer whose first element sits on a cache line (64 bytes), for packed weights. Aligned, no load of a
/// panel row splits two cache lines (`Vec`'s large allocations start 16 bytes past a page: every 32- or 64-byte
/// load of a panel would split). Backed by transparent huge pages where the OS allows: the kernels stream hundreds
/// of MB of panels, and with 4 KB pages every 4 KB of a panel costs a TLB miss.
pub(crate) struct Aligned<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    const LINE: usize = 64;

    pub(crate) fn zeroed(len: usize) -> Aligned<T> {
        let size = std::mem::size_of::<T>();
        let buf = vec![T::default(); len + Self::LINE / size];
        let start = (buf.as_ptr() as usize).next_multiple_of(Self::LINE) - buf.as_ptr() as usize;
        assert!(
            start.is_multiple_of(size),
            "element size must divide the cache line"
        );
        let aligned = Aligned {
            buf,
            start: start / size,
            len,
        };
        #[cfg(target_os = "linux")]
        {
            const HUGE: usize = 2 << 20;
            let first = aligned.as_slice().as_ptr() as usize;
            let (from, to) = (
                first.next_multiple_of(HUGE),
                (first + len * size) / HUGE * HUGE,
            );
            if to > from {
                // SAFETY: advisory only, on whole huge pages inside our own (not yet touched) allocation; a
                // refusal (THP disabled) changes nothing.
                unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
            }
        }
        aligned
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Fills the panels of a packed weight in parallel, one panel (`depth` rows of `nr`) per task:
/// `fill(panel, columns)` writes its `depth × nr` values row by row, for the weight columns (`w` rows) it holds,
/// a range that stops at `n` (the zeros past it stay). Packing is most of a model's load time (serial, the
/// scattered stores of ViT-B/32's 151 M weights took 0.5 s of a 1.1 s load).
fn fill_panels<T: Send>(
    packed: &mut [T],
    nr: usize,
    depth: usize,
    n: usize,
    fill: impl Fn(&mut [T], std::ops::Range<usize>) + Sync,
) {
    if depth == 0 {
        return;
    }
    packed
        .par_chunks_mut(depth * nr)
        .enumerate()
        .for_each(|(p, panel)| fill(panel, p * nr..((p + 1) * nr).min(n)));
}

/// The bf16 pair of one or two values (a lone last value pairs with 0), the first in the low half, each rounded to
/// nearest even (what `vcvtne2ps2bf16` does; NaN stays NaN).
pub(crate) fn bf16_pair(pair: &[f32]) -> u32 {
    let bits = |x: f32| u32::from(half::bf16::from_f32(x).to_bits());
    bits(pair[0]) | pair.get(1).map_or(0, |&v| bits(v)) << 16
}

/// One row of f32 as its ⌈len/2⌉ bf16 pairs at the start of `dst`; vectorized where the CPU has AVX512_BF16.
pub(crate) fn row_to_bf16_pairs(src: &[f32], dst: &mut [u32]) {
    let pairs = src.len().div_ceil(2);
    #[cfg(target_arch = "x86_64")]
    if pairs > 0 && has_avx512_bf16() {
        // SAFETY: AVX512_BF16 detected; one row of src.len() floats into its pairs.
        unsafe { avx512::to_bf16_rows(src, src.len(), &mut dst[..pairs], pairs) };
        return;
    }
    for (d, pair) in dst[..pairs].iter_mut().zip(src.chunks(2)) {
        *d = bf16_pair(pair);
    }
}

impl PackedLinear {
    /// Packs `w[n, k]` (HF layout) for `engine`. Shapes are checked by the caller.
    pub fn new(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, engine: MatrixEngine) -> Self {
        let panels = n.div_ceil(NR);
        let packed = match engine {
            MatrixEngine::Avx512F32 => {
                let mut p = Aligned::<f32>::zeroed(panels * k * NR);
                fill_panels(p.as_mut_slice(), NR, k, n, |panel, cols| {
                    for (t, out) in panel.chunks_exact_mut(NR).enumerate() {
                        for (o, col) in out.iter_mut().zip(cols.clone()) {
                            *o = w[col * k + t];
                        }
                    }
                });
                Packed::F32(p)
            }
            MatrixEngine::Avx512Bf16 => {
                let kp = k.div_ceil(2);
                let mut p = Aligned::<u32>::zeroed(panels * kp * NR);
                fill_panels(p.as_mut_slice(), NR, kp, n, |panel, cols| {
                    // The panel's weight rows as bf16 pairs (vectorized), then transposed into it.
                    let mut pairs = vec![0u32; cols.len() * kp];
                    for (dst, col) in pairs.chunks_exact_mut(kp).zip(cols.clone()) {
                        row_to_bf16_pairs(&w[col * k..(col + 1) * k], dst);
                    }
                    for (t, out) in panel.chunks_exact_mut(NR).enumerate() {
                        for (o, row) in out.iter_mut().zip(pairs.chunks_exact(kp)) {
                            *o = row[t];
                        }
                    }
                });
                Packed::Bf16(p)
            }
            MatrixEngine::AmxBf16 | MatrixEngine::AmxBf16Emulated => {
                Packed::Amx(PackedB::from_rows(n, k, |j| &w[j * k..(j + 1) * k]))
            }
            #[cfg(target_arch = "x86_64")]
            MatrixEngine::Avx2 => Packed::Avx2(avx2::pack(w, n, k)),
            #[cfg(target_arch = "x86_64")]
            MatrixEngine::Avx2I16 => Packed::I16Avx2(avx2_i16::pack(w, n, k)),
            #[cfg(target_arch = "x86_64")]
            MatrixEngine::Avx512I16 => Packed::I16Vnni(avx512_i16::pack(w, n, k)),
            #[cfg(not(target_arch = "x86_64"))]
            MatrixEngine::Avx2 | MatrixEngine::Avx2I16 | MatrixEngine::Avx512I16 => {
                unreachable!("the avx2 and i16 engines exist only on x86_64")
            }
            MatrixEngine::Scalar => {
                let mut t = vec![0.0f32; n * k];
                for (col, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
                    for (kk, &v) in row.iter().enumerate() {
                        t[kk * n + col] = v;
                    }
                }
                Packed::Transposed(t)
            }
        };
        PackedLinear {
            w: packed,
            bias: bias.map(<[f32]>::to_vec),
            n,
            k,
        }
    }

    /// Packs `w[n, k]` (HF layout) for split products on an AMX engine (`amx::gemm::Split`): the layers that must
    /// not be rounded to bf16 (ARCHITECTURE §7.13). Shapes are checked by the caller.
    pub fn new_split(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        PackedLinear {
            w: Packed::Amx(PackedB::from_rows_split(n, k, |j| &w[j * k..(j + 1) * k])),
            bias: bias.map(<[f32]>::to_vec),
            n,
            k,
        }
    }

    /// The breakdown class of this layer's products: bf16 (`vdpbf16ps` or AMX tiles), split bf16, i16 or f32.
    pub fn op_class(&self) -> super::breakdown::OpClass {
        match &self.w {
            Packed::Amx(p) if p.split => super::breakdown::OpClass::GemmBf16x3,
            Packed::Bf16(_) | Packed::Amx(_) => super::breakdown::OpClass::GemmBf16,
            #[cfg(target_arch = "x86_64")]
            Packed::I16Avx2(_) | Packed::I16Vnni(_) => super::breakdown::OpClass::GemmI16,
            Packed::F32(_) | Packed::Avx2(_) | Packed::Transposed(_) => {
                super::breakdown::OpClass::GemmF32
            }
        }
    }

    pub fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    /// `out[m, n] (+)= a[m, k] · Wᵀ` with the epilogue `ep`. `a` holds ≥ m·k values and `out` ≥ m·n (asserted).
    pub fn run(&self, engine: MatrixEngine, a: &[f32], m: usize, out: &mut [f32], ep: Epilogue) {
        let (n, k) = (self.n, self.k);
        assert!(a.len() >= m * k && out.len() >= m * n);
        if m == 0 || n == 0 {
            return;
        }
        match &self.w {
            #[cfg(target_arch = "x86_64")]
            Packed::F32(p) => {
                avx512::run_f32(a, m, k, p.as_slice(), n, self.bias.as_deref(), out, ep)
            }
            #[cfg(target_arch = "x86_64")]
            Packed::Bf16(p) => {
                avx512::run_bf16(a, m, k, p.as_slice(), n, self.bias.as_deref(), out, ep)
            }
            #[cfg(target_arch = "x86_64")]
            Packed::Avx2(p) => avx2::run(a, m, k, p.as_slice(), n, self.bias.as_deref(), out, ep),
            #[cfg(target_arch = "x86_64")]
            Packed::I16Avx2(p) => avx2_i16::run(a, m, k, p, n, self.bias.as_deref(), out, ep),
            #[cfg(target_arch = "x86_64")]
            Packed::I16Vnni(p) => avx512_i16::run(a, m, k, p, n, self.bias.as_deref(), out, ep),
            Packed::Transposed(t) => {
                run_fallback(engine.isa(), a, m, k, t, n, self.bias.as_deref(), out, ep)
            }
            Packed::Amx(p) => {
                // Packed::Amx is only built for the AMX engines, so tiles() is Some; an engine mismatch is a bug.
                let mode = engine.tiles().expect("AMX weights run on an AMX engine");
                amx::gemm(
                    mode,
                    engine.isa(),
                    a,
                    m,
                    k,
                    p,
                    self.bias.as_deref(),
                    out,
                    ep,
                )
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("packed layouts are only built on x86_64"),
        }
    }
}

/// The MLP with its residual, `x += act(input · fc1ᵀ + b1) · fc2ᵀ + b2`, with the hidden activations handed from
/// fc1's epilogue to fc2 in bf16 on the bf16 engines: no f32 round trip through memory and no conversion pass
/// before fc2 (the largest of a layer's four, `rows × 4·width`). The result is the same as two GEMMs: the same
/// f32 values are rounded the same way, only where it happens moves. Returns false, having done nothing, where
/// the weights' layout has no fused path (f32 engines; fc1 too deep for a single k chunk); the caller then runs
/// the two GEMMs.
#[allow(clippy::too_many_arguments)]
pub fn fused_mlp(
    engine: MatrixEngine,
    fc1: &PackedLinear,
    fc2: &PackedLinear,
    input: &[f32],
    m: usize,
    x: &mut [f32],
    act: Activation,
) -> bool {
    let (d, hidden) = (fc1.k, fc1.n);
    assert!(fc2.k == hidden && fc2.n == d && input.len() >= m * d && x.len() >= m * d);
    match (&fc1.w, &fc2.w) {
        (Packed::Amx(w1), Packed::Amx(w2)) if !w1.split && !w2.split => {
            let Some(mode) = engine.tiles() else {
                return false;
            };
            let (b1, b2) = (fc1.bias.as_deref(), fc2.bias.as_deref());
            amx::mlp(mode, engine.isa(), input, m, (w1, b1), act, (w2, b2), x);
            true
        }
        #[cfg(target_arch = "x86_64")]
        (Packed::Bf16(w1), Packed::Bf16(w2)) if d > 0 && avx512::single_k_chunk(d) => {
            let (b1, b2) = (fc1.bias.as_deref(), fc2.bias.as_deref());
            avx512::with_bf16_scratch(|a| {
                avx512::to_bf16_pairs(input, m, d, a);
                let rest = |h: &mut Vec<u32>| {
                    h.resize(m * hidden.div_ceil(2), 0);
                    let fc1_out = avx512::Dest::Pairs(h);
                    avx512::run_bf16_pairs(
                        a,
                        m,
                        d,
                        w1.as_slice(),
                        hidden,
                        b1,
                        fc1_out,
                        Epilogue::Activation(act),
                    );
                    let fc2_out = avx512::Dest::F32(x);
                    avx512::run_bf16_pairs(
                        h,
                        m,
                        hidden,
                        w2.as_slice(),
                        d,
                        b2,
                        fc2_out,
                        Epilogue::Accumulate,
                    );
                };
                crate::cpu::with_thread_scratch(&HIDDEN_BF16, rest);
            });
            true
        }
        _ => false,
    }
}

thread_local! {
    /// A fused MLP's hidden activations in bf16 pairs, reused across calls on this thread.
    static HIDDEN_BF16: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` through the `gemm` crate, with explicit (row, column) strides.
///
/// The gemm crate's contract is `dst := alpha·dst + beta·lhs·rhs` (the reverse of BLAS's naming): alpha = 1 with
/// `read_dst` accumulates, beta = 1 scales the product by one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    threads: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // gemm leaves dst untouched for k = 0; the product is zero.
        if !accumulate {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    // Bounds the strided accesses below, so the unsafe call cannot read or write outside the slices.
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above keep every index within the slices; dst does not alias lhs or rhs (&mut borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            threads,
        );
    }
}

/// Rows per rayon task for the bias/activation pass of the fallback path.
const ROWS_PER_TASK: usize = 16;

#[allow(clippy::too_many_arguments)]
fn run_fallback(
    isa: Isa,
    a: &[f32],
    m: usize,
    k: usize,
    wt: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    ep: Epilogue,
) {
    let out = &mut out[..m * n];
    let acc = ep == Epilogue::Accumulate;
    sgemm(
        m,
        n,
        k,
        out,
        n,
        acc,
        a,
        k,
        1,
        wt,
        n,
        1,
        gemm::Parallelism::Rayon(0),
    );
    let act = match ep {
        Epilogue::Activation(a) => Some(a),
        _ => None,
    };
    if bias.is_some() || act.is_some() {
        out.par_chunks_mut(n * ROWS_PER_TASK).for_each(|rows| {
            for row in rows.chunks_exact_mut(n) {
                simd::bias_act(isa, row, bias, act);
            }
        });
    }
}

/// Row `t`'s start and height when `m` rows are cut into `tiles` tiles of near-equal height.
#[inline]
pub(crate) fn tile_span(m: usize, tiles: usize, t: usize) -> (usize, usize) {
    let (base, rem) = (m / tiles, m % tiles);
    (t * base + t.min(rem), base + usize::from(t < rem))
}

/// What a tile does when it stores: add C's old value, add the bias, apply the activation (in that order).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileStore {
    pub load_c: bool,
    /// Points at the bias of the tile's first column, or null.
    pub bias: *const f32,
    pub act: Option<Activation>,
    /// Store bf16 pairs (round to nearest even) instead of f32: C is then `u32` pairs, its row stride and column
    /// offsets counted in pairs. Only with `load_c` false (a fused MLP's fc1, whose output only fc2 reads).
    pub to_bf16: bool,
}

impl TileStore {
    /// The same rule for the tile starting at column `col` (the bias pointer moves along).
    pub fn at_column(self, col: usize) -> TileStore {
        TileStore {
            bias: if self.bias.is_null() {
                self.bias
            } else {
                self.bias.wrapping_add(col)
            },
            ..self
        }
    }

    /// Store the product as it is.
    pub const PLAIN: TileStore = TileStore {
        load_c: false,
        bias: std::ptr::null(),
        act: None,
        to_bf16: false,
    };
}

/// A kernel's job shape: its tile (`mr` rows × `nr` columns, one panel wide), the tiles of a job's row block, the
/// and the most panels a job takes.
#[derive(Clone, Copy)]
pub(crate) struct Blocking {
    pub mr: usize,
    pub nr: usize,
    pub tiles_per_block: usize,
    pub max_panels_per_job: usize,
}

/// Job partition of an `m × n` product: row blocks × panel groups, each cut into near-equal parts (so the jobs are
/// near-equal too: ViT-B/32 text at batch 32, 59 tiles, makes blocks of 20, 20, 19 tiles, not 24, 24, 11, which
/// left one of two threads up to a fifth more work).
pub(crate) struct Jobs {
    pub tiles: usize,
    row_blocks: usize,
    panels: usize,
    groups: usize,
}

impl Jobs {
    fn new(m: usize, n: usize, b: Blocking) -> Jobs {
        let tiles = m.div_ceil(b.mr);
        let row_blocks = tiles.div_ceil(b.tiles_per_block);
        let panels = n.div_ceil(b.nr);
        // At most `max_panels_per_job` per group (AVX-512: 8 panels, 384 columns), so a job's A block is reused
        // across several panels; among the group counts that allows, the one whose jobs split most evenly over the
        // threads (the slowest thread sets the time), fewer groups on ties. E.g. 3 row blocks on 2 threads: 3
        // groups make 9 jobs and leave one thread 5 of them; 2 or 4 groups split evenly.
        let threads = rayon::current_num_threads().max(1);
        let cost = |groups: usize| {
            // Panels the busiest thread computes, jobs dealt round-robin (rayon steals; sizes are near-equal).
            let rounds = (row_blocks * groups).div_ceil(threads);
            rounds * panels.div_ceil(groups)
        };
        let fewest = panels.div_ceil(b.max_panels_per_job).max(1);
        let groups = (fewest..=panels.max(1))
            .min_by_key(|&g| cost(g))
            .unwrap_or(fewest);
        Jobs {
            tiles,
            row_blocks,
            panels,
            groups,
        }
    }
    pub fn count(&self) -> usize {
        self.row_blocks * self.groups
    }
    /// (first tile, tile count, first panel, panel count) of job `j`.
    pub fn job(&self, j: usize) -> (usize, usize, usize, usize) {
        let (rb, g) = (j % self.row_blocks, j / self.row_blocks);
        let (t0, nt) = tile_span(self.tiles, self.row_blocks, rb);
        let (p0, np) = tile_span(self.panels, self.groups, g);
        (t0, nt, p0, np)
    }
}

/// k chunks of near-equal length ≤ `max`, each a multiple of `unit` (2 for bf16 pairs) except possibly the last:
/// (count, length).
pub(crate) fn k_chunks(k: usize, unit: usize, max: usize) -> (usize, usize) {
    let chunks = k.div_ceil(max).max(1);
    let len = k.div_ceil(chunks).next_multiple_of(unit);
    (k.div_ceil(len).max(1), len)
}

/// The store flags for k chunk `chunk` of `chunks`.
pub(crate) fn chunk_store(
    ep: Epilogue,
    chunk: usize,
    chunks: usize,
    bias: *const f32,
) -> TileStore {
    let last = chunk + 1 == chunks;
    TileStore {
        load_c: chunk > 0 || ep == Epilogue::Accumulate,
        bias: if last { bias } else { std::ptr::null() },
        act: match ep {
            Epilogue::Activation(a) if last => Some(a),
            _ => None,
        },
        to_bf16: false,
    }
}

/// Runs `job(jobs, j, a, w, bias, out)` for every job `j` of an `m × n` product, in parallel. Each job writes a
/// disjoint rectangle of `out`, which is why the raw pointers may be shared.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn par_jobs<A, W>(
    blocking: Blocking,
    m: usize,
    n: usize,
    a: *const A,
    w: *const W,
    bias: Option<&[f32]>,
    out: *mut f32,
    job: impl Fn(&Jobs, usize, *const A, *const W, *const f32, *mut f32) + Sync,
) {
    let jobs = Jobs::new(m, n, blocking);
    let (ap, wp, cp) = (SendPtr(a as *mut A), SendPtr(w as *mut W), SendPtr(out));
    let bp = SendPtr(bias.map_or(std::ptr::null(), <[f32]>::as_ptr) as *mut f32);
    (0..jobs.count())
        .into_par_iter()
        .for_each(|j| job(&jobs, j, ap.get(), wp.get(), bp.get(), cp.get()));
}

/// k = 0: the product is zero, so only the bias, activation or residual remain.
pub(crate) fn zero_k(
    isa: Isa,
    out: &mut [f32],
    m: usize,
    n: usize,
    bias: Option<&[f32]>,
    ep: Epilogue,
) {
    for row in out[..m * n].chunks_exact_mut(n) {
        if ep != Epilogue::Accumulate {
            row.fill(0.0);
        }
        let act = match ep {
            Epilogue::Activation(a) => Some(a),
            _ => None,
        };
        simd::bias_act(isa, row, bias, act);
    }
}

/// A raw pointer that rayon jobs may share: every job writes a disjoint rectangle of C.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only used for disjoint writes (one job per C rectangle), see `Jobs`.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method, so closures capture the `Send` wrapper rather than its raw-pointer field.
    fn get(&self) -> *mut T {
        self.0
    }
}

/// What a thread runs after panel `p` of k chunk `ch` (of `chunks`, `kc` long, over depth `k`) in job (`p0`, `np`
/// panels) of `jobs`, to prefetch: (panel, first k, k length) of the next panel chunk. The job's next panel; else its
/// first panel's next k chunk; else, with one row block (the jobs are then consecutive panel groups), the next job's
/// first panel, as rayon runs a thread's share of the jobs in index order. Measured on Zen 4 against the job's own
/// panels only (throwaway probe, 2 threads, alternated): bf16 ViT-B/32 GEMMs at 400 rows 357–410 → 375–421
/// GFLOP/s, at 1600 rows 384–403 → 396–419; at 50 rows within noise (347–412 both).
#[cfg(target_arch = "x86_64")]
pub(crate) fn next_panel_chunk(
    jobs: &Jobs,
    (p0, np, p): (usize, usize, usize),
    (ch, chunks, kc, k): (usize, usize, usize, usize),
) -> Option<(usize, usize, usize)> {
    let k0 = ch * kc;
    if p + 1 < p0 + np {
        Some((p + 1, k0))
    } else if ch + 1 < chunks {
        Some((p0, k0 + kc))
    } else if jobs.row_blocks == 1 && p + 1 < jobs.panels {
        Some((p + 1, 0))
    } else {
        None
    }
    .map(|(p, k0)| (p, k0, kc.min(k - k0)))
}

/// Brings the next panel chunk toward L1 while the current panel's tiles run, its lines spread evenly over all of
/// those tiles' k steps: tile `slot` of `slots` fetches the `slot`-th share, one or a few lines per step.
/// Fetching the whole next panel during the first tile (three lines every step) asked DRAM for 9 bytes per
/// cycle and stalled that tile; at batch 1 (7 tiles per panel) this cost about two tiles per panel. Measured on
/// Zen 4, ViT-B/32's four GEMMs over 12 layers of distinct weights (throwaway probe, old/new alternated): bf16 at
/// 50 rows 150–165 → 183–202 GFLOP/s on one core, 190–262 → 300–365 on two; 400 rows unchanged (203–213 on
/// one core); the f32 tower at batch 1 went from 63–80 % to 85–88 % of its peak (`cliprt bench`, 3 rounds).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct PanelPrefetch {
    base: *const u8,
    /// The share's first line; lines per step in 16.16 fixed point; lines fetched per step (≥ the rate, so no
    /// line is skipped).
    start: usize,
    rate: usize,
    per_step: usize,
}

#[cfg(target_arch = "x86_64")]
impl PanelPrefetch {
    /// Nothing to fetch.
    pub(crate) const NONE: PanelPrefetch = PanelPrefetch {
        base: std::ptr::null(),
        start: 0,
        rate: 0,
        per_step: 0,
    };

    /// Tile `slot` of `slots`' share of panel chunk `next` ([`next_panel_chunk`]) of packed weight `w` (panels of
    /// [`NR`] 4-byte words per k row, `depth` rows each: f32, bf16 pairs or i16 pairs), spread over `steps` k steps.
    #[inline(always)]
    pub(crate) fn of_chunk(
        w: *const u8,
        depth: usize,
        next: Option<(usize, usize, usize)>,
        (slot, slots): (usize, usize),
        steps: usize,
    ) -> Self {
        match next {
            Some((p, k0, klen)) => {
                let base = w.wrapping_add((p * depth + k0) * NR * 4);
                PanelPrefetch::share(base, (klen * NR * 4).div_ceil(64), slot, slots, steps)
            }
            None => PanelPrefetch::NONE,
        }
    }

    /// Share `slot` of `slots` of `lines` cache lines from `base`, spread over `steps` k steps.
    #[inline(always)]
    pub(crate) fn share(
        base: *const u8,
        lines: usize,
        slot: usize,
        slots: usize,
        steps: usize,
    ) -> Self {
        let each = lines.div_ceil(slots.max(1));
        let start = (slot * each).min(lines);
        let count = each.min(lines - start);
        PanelPrefetch {
            base,
            start,
            rate: (count << 16).div_ceil(steps.max(1)),
            per_step: count.div_ceil(steps.max(1)),
        }
    }

    /// The lines (from `base`) that k step `kk` fetches.
    #[inline(always)]
    fn lines(self, kk: usize) -> std::ops::Range<usize> {
        let first = self.start + ((kk * self.rate) >> 16);
        first..first + self.per_step
    }

    /// The prefetches of k step `kk`. Prefetches never fault, so any address is allowed.
    #[inline(always)]
    pub(crate) unsafe fn step(self, kk: usize) {
        for line in self.lines(kk) {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                self.base.wrapping_add(64 * line) as *const i8,
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::*;
    use crate::cpu::simd::{generic, Avx512};
    use std::arch::x86_64::*;

    /// The mask of a zmm's first `cols` lanes (all 16 from 16 on).
    #[inline(always)]
    pub(crate) fn mask16(cols: usize) -> __mmask16 {
        if cols >= 16 {
            0xFFFF
        } else {
            ((1u32 << cols) - 1) as __mmask16
        }
    }

    /// Adds C / bias, applies the activation, stores the first `cols` columns of an `R × NR` accumulator tile.
    #[inline(always)]
    pub(super) unsafe fn store_tile<const R: usize, const V: usize>(
        acc: &[[__m512; V]; R],
        c: *mut f32,
        ldc: usize,
        cols: usize,
        st: TileStore,
    ) {
        let masks: [__mmask16; V] = std::array::from_fn(|j| mask16(cols.saturating_sub(16 * j)));
        for (i, row) in acc.iter().enumerate() {
            for (j, &m) in masks.iter().enumerate() {
                if m == 0 {
                    continue;
                }
                let p = c.add(i * ldc + 16 * j);
                let mut v = row[j];
                if st.load_c {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, p));
                }
                if !st.bias.is_null() {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, st.bias.add(16 * j)));
                }
                if let Some(a) = st.act {
                    v = generic::activation::<Avx512>(v, a);
                }
                _mm512_mask_storeu_ps(p, m, v);
            }
        }
    }

    /// [`store_tile`] into bf16 pairs: bias and activation in f32, then rounded (C is never read here); only a fused
    /// MLP's fc1 tiles take it. Inlined: out of line, the accumulator array passed to it got a stack copy that LLVM
    /// zero-filled with a `memset` call at the start of every tile of every bf16 GEMM (10 % of a 1-thread qkv GEMM
    /// in `perf`; +2 % on the ViT-B/32 tower). A reference into an out-of-line call is worse still: it pins the
    /// accumulators to the stack for the whole k loop (measured: the tower 2.7× slower).
    #[inline(always)]
    unsafe fn store_tile_pairs<const R: usize>(
        acc: [[__m512; NV]; R],
        c: *mut u32,
        ldc: usize,
        cols: usize,
        st: TileStore,
    ) {
        let masks: [__mmask16; NV] = std::array::from_fn(|j| mask16(cols.saturating_sub(16 * j)));
        for (i, row) in acc.iter().enumerate() {
            let mut v = *row;

            for (j, &m) in masks.iter().enumerate() {
                if !st.bias.is_null() {
                    v[j] = _mm512_add_ps(v[j], _mm512_maskz_loadu_ps(m, st.bias.add(16 * j)));
                }
                if let Some(a) = st.act {
                    v[j] = generic::activation::<Avx512>(v[j], a);
                }
            }
            store_pairs(v, c.add(i * ldc), cols);
        }
    }

    /// Stores the first `cols` of 48 values as ⌈cols/2⌉ bf16 pairs (an odd last column pairs with the zero beside
    /// it: lanes past `cols` hold 0, as the weight panel is zero there and the bias load masked).
    #[inline(always)]
    unsafe fn store_pairs(v: [__m512; NV], dst: *mut u32, cols: usize) {
        let pairs = cols.div_ceil(2);
        // cvtne2ps2bf16 puts its second operand in the low half: columns 0–31, then 32–47.
        let lo: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(v[1], v[0]));
        let hi: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(_mm512_setzero_ps(), v[2]));
        _mm512_mask_storeu_epi32(dst as *mut i32, mask16(pairs), lo);
        _mm512_mask_storeu_epi32(
            dst.add(16) as *mut i32,
            mask16(pairs.saturating_sub(16)),
            hi,
        );
    }

    /// k steps before the end of a tile's loop at which it prefetches its C tile ([`prefetch_tile`]): ≈ 800
    /// cycles ahead, about a DRAM round trip, while the B lines the remaining steps stream through L1 (12 KB) leave
    /// the prefetched lines in place.
    const C_PREFETCH_STEPS: usize = 64;

    /// Runs `$step!(kk)` for every k step `kk` in `0..$k`, with `$prefetch` (of the C tile) issued
    /// [`C_PREFETCH_STEPS`] steps before the end.
    macro_rules! k_loop {
        ($k:expr, $step:ident, $prefetch:expr) => {{
            let split = $k.saturating_sub(C_PREFETCH_STEPS);
            for kk in 0..split {
                $step!(kk);
            }
            $prefetch;
            for kk in split..$k {
                $step!(kk);
            }
        }};
    }

    /// Prefetches the C tile a tile is about to store, with intent to write (`prefetchw`). A C larger than L2 (fc1
    /// at 1600 rows: 20 MB) otherwise makes every tile's store wait on a read-for-ownership of its lines from DRAM,
    /// and an Accumulate tile wait on its loads of the residual. Measured on one Zen 5 core (A already bf16,
    /// best of 5 × 10 runs, alternated with the old kernel 3 times): bf16 1600×768→3072 Store 421–427 → 486–489
    /// GFLOP/s, the other CLIP shapes unchanged within noise; f32 Accumulate (out, fc2, fc1) +3–5 %.
    #[inline(always)]
    pub(super) unsafe fn prefetch_tile<const R: usize>(c: *const f32, ldc: usize) {
        for i in 0..R {
            for j in 0..NV {
                _mm_prefetch::<_MM_HINT_ET0>(c.wrapping_add(i * ldc + 16 * j) as *const i8);
            }
        }
    }

    /// `C[R, cols] (+)= A[R, kc] · B[kc, cols]`, A rows at stride `lda`, B rows at stride `ldb` (cols ≤ NR, read
    /// with masked loads so B may be any strided matrix, not only a packed panel).
    ///
    /// `pf` fetches this tile's share of the next packed panel ahead of use: at small batch each panel is read by few
    /// tiles, and without it the first tile of every panel stalls on DRAM.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_f32<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        st: TileStore,
        pf: PanelPrefetch,
    ) {
        tile_f32_lda::<R, 0>(kc, a, lda, b, ldb, c, ldc, cols, st, pf)
    }

    /// [`tile_f32`] with the A row stride known at compile time when `LDA > 0`: the broadcasts then address
    /// `a + kk·4 + constant`, and the loop loses the serial pointer adds a run-time stride costs per k step
    /// (measured: +3 to +7 % on the ViT-B/32 tower).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_f32_lda<const R: usize, const LDA: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        st: TileStore,
        pf: PanelPrefetch,
    ) {
        let masks: [__mmask16; NV] = std::array::from_fn(|j| mask16(cols.saturating_sub(16 * j)));
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        macro_rules! step {
            ($kk:expr) => {{
                let kk = $kk;
                pf.step(kk);
                let bp = b.add(kk * ldb);
                let bv: [__m512; NV] =
                    std::array::from_fn(|j| _mm512_maskz_loadu_ps(masks[j], bp.add(16 * j)));
                for (i, row) in acc.iter_mut().enumerate() {
                    let stride = if LDA > 0 { LDA } else { lda };
                    let ai = _mm512_set1_ps(*a.add(i * stride + kk));
                    for j in 0..NV {
                        row[j] = _mm512_fmadd_ps(ai, bv[j], row[j]);
                    }
                }
            }};
        }
        k_loop!(kc, step, prefetch_tile::<R>(c, ldc));
        store_tile::<R, NV>(&acc, c, ldc, cols, st);
    }

    /// The bf16 twin of [`tile_f32`]: A and B hold bf16 pairs along k (`kp` pairs), products summed in f32.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_bf16<const R: usize>(
        kp: usize,
        a: *const u32,
        lda: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        st: TileStore,
        pf: PanelPrefetch,
    ) {
        tile_bf16_lda::<R, 0, NV>(kp, a, lda, b, c, ldc, cols, st, pf)
    }

    /// [`tile_bf16`] with the A row stride (in pairs) known at compile time when `LDA > 0`, as [`tile_f32_lda`],
    /// over the panel's first `V` vectors of 16 columns (`cols` ≤ 16·V; `NV` but in a narrow last panel).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_bf16_lda<const R: usize, const LDA: usize, const V: usize>(
        kp: usize,
        a: *const u32,
        lda: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        st: TileStore,
        pf: PanelPrefetch,
    ) {
        let lda = if LDA > 0 { LDA } else { lda };
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        macro_rules! step {
            ($kk:expr) => {{
                let kk = $kk;
                pf.step(kk);
                let bp = b.add(kk * NR) as *const __m512i;
                let bv: [__m512bh; V] =
                    std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(bp.add(j))));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*a.add(i * lda + kk) as i32));
                    for j in 0..V {
                        row[j] = _mm512_dpbf16_ps(row[j], ai, bv[j]);
                    }
                }
            }};
        }
        k_loop!(kp, step, prefetch_tile::<R>(c, ldc));
        if st.to_bf16 {
            // The pairs' store takes a full panel's registers: zero past the tile's vectors, as past `cols`.
            let full: [[__m512; NV]; R] = std::array::from_fn(|i| {
                std::array::from_fn(|j| acc[i].get(j).copied().unwrap_or(_mm512_setzero_ps()))
            });
            store_tile_pairs::<R>(full, c as *mut u32, ldc, cols, st);
        } else {
            store_tile::<R, V>(&acc, c, ldc, cols, st);
        }
    }

    /// A tile of a GEMM's last panel when it is 16 or 32 columns wide (ViT-L's width 1024 ends on 16 of 48, the
    /// text's 512 on 32): its products over the missing vectors would cost as much as the real ones, 3 % of those
    /// GEMMs. Out of line, so that the full-panel kernels inlined into the job keep their code.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_bf16_last_panel(
        rows: usize,
        kp: usize,
        a: *const u32,
        lda: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        st: TileStore,
        pf: PanelPrefetch,
    ) {
        macro_rules! narrow {
            ($v:literal) => {
                match rows {
                    1 => tile_bf16_lda::<1, 0, $v>(kp, a, lda, b, c, ldc, cols, st, pf),
                    2 => tile_bf16_lda::<2, 0, $v>(kp, a, lda, b, c, ldc, cols, st, pf),
                    3 => tile_bf16_lda::<3, 0, $v>(kp, a, lda, b, c, ldc, cols, st, pf),
                    4 => tile_bf16_lda::<4, 0, $v>(kp, a, lda, b, c, ldc, cols, st, pf),
                    5 => tile_bf16_lda::<5, 0, $v>(kp, a, lda, b, c, ldc, cols, st, pf),
                    6 => tile_bf16_lda::<6, 0, $v>(kp, a, lda, b, c, ldc, cols, st, pf),
                    7 => tile_bf16_lda::<7, 0, $v>(kp, a, lda, b, c, ldc, cols, st, pf),
                    8 => tile_bf16_lda::<8, 0, $v>(kp, a, lda, b, c, ldc, cols, st, pf),
                    rows => unreachable!("tile height {rows} outside 1..=8"),
                }
            };
        }
        if cols <= 16 {
            narrow!(1)
        } else {
            narrow!(2)
        }
    }

    /// Calls `$f::<R>` for a run-time tile height `rows` in 1..=12.
    macro_rules! by_rows {
        ($rows:expr, $f:ident, $($arg:expr),*) => {
            match $rows {
                1 => $f::<1>($($arg),*), 2 => $f::<2>($($arg),*), 3 => $f::<3>($($arg),*),
                4 => $f::<4>($($arg),*), 5 => $f::<5>($($arg),*), 6 => $f::<6>($($arg),*),
                7 => $f::<7>($($arg),*), 8 => $f::<8>($($arg),*), 9 => $f::<9>($($arg),*),
                10 => $f::<10>($($arg),*), 11 => $f::<11>($($arg),*), 12 => $f::<12>($($arg),*),
                _ => unreachable!("tile height {} outside 1..=12", $rows),
            }
        };
    }

    /// `C[R, cols] (+)= A[R, k] · B[k, cols]` with `V` = ⌈cols/16⌉ zmm per row (cols ≤ 16·V), B any strided
    /// matrix read with masked loads. Attention's products take it: their widths (the sequence for `Q·Kᵀ`, the head
    /// dim for `P·V`) fit a panel of 48 badly (64 = 48 + 48 with a third of the second panel's products wasted).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_cols<const R: usize, const V: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        st: TileStore,
    ) {
        let masks: [__mmask16; V] = std::array::from_fn(|j| mask16(cols.saturating_sub(16 * j)));
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for kk in 0..k {
            let bp = b.add(kk * ldb);
            let bv: [__m512; V] =
                std::array::from_fn(|j| _mm512_maskz_loadu_ps(masks[j], bp.add(16 * j)));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i * lda + kk));
                for j in 0..V {
                    row[j] = _mm512_fmadd_ps(ai, bv[j], row[j]);
                }
            }
        }
        store_tile::<R, V>(&acc, c, ldc, cols, st);
    }

    /// Widest product [`rows_times_cols`] takes: four zmm per row.
    pub(crate) const MAX_COLS: usize = 64;

    /// `C[m, cols] (+)= A[m, k] · B[k, cols]` for any m and `cols` ≤ [`MAX_COLS`], in row tiles whose
    /// accumulators fill ≤ 24 zmm (6 rows × 4 zmm, 8 × 3, 12 × 2; 12 × 1, as more rows would be bound by their
    /// broadcasts). `k(first_row, rows)` is the reduction length of each row tile: a causal or key-masked `P·V`
    /// stops at the last key any of the tile's rows sees (the probabilities past it are zero).
    ///
    /// # Safety
    /// AVX-512F must be available; A, B and C must be valid for the strided extents described.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn rows_times_cols(
        m: usize,
        k: impl Fn(usize, usize) -> usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        st: TileStore,
    ) {
        assert!(
            cols <= MAX_COLS,
            "rows_times_cols: {cols} columns > {MAX_COLS}"
        );
        macro_rules! tiles {
            ($v:literal, $rmax:literal, [$($r:literal)+]) => {{
                let tiles = m.div_ceil($rmax);
                for t in 0..tiles {
                    let (r0, rows) = tile_span(m, tiles, t);
                    let (kt, ap, cp) = (k(r0, rows), a.add(r0 * lda), c.add(r0 * ldc));
                    match rows {
                        $($r => tile_cols::<$r, $v>(kt, ap, lda, b, ldb, cp, ldc, cols, st),)+
                        _ => unreachable!("tile height {rows} outside 1..={}", $rmax),
                    }
                }
            }};
        }
        match cols.div_ceil(16) {
            0 => {}
            1 => tiles!(1, 12, [1 2 3 4 5 6 7 8 9 10 11 12]),
            2 => tiles!(2, 12, [1 2 3 4 5 6 7 8 9 10 11 12]),
            3 => tiles!(3, 8, [1 2 3 4 5 6 7 8]),
            _ => tiles!(4, 6, [1 2 3 4 5 6]),
        }
    }

    /// One tile of a job, as [`for_each_tile`] hands it out. `k` counts k units (floats, or bf16 pairs).
    #[derive(Clone, Copy)]
    pub(super) struct Tile {
        /// First row and height.
        pub r0: usize,
        pub rows: usize,
        /// k range of this chunk.
        pub k0: usize,
        pub klen: usize,
        /// Panel index, its first column and its width.
        pub p: usize,
        pub col: usize,
        pub cols: usize,
        /// What this thread runs after this panel, to prefetch: (panel, first k, k length) of the next panel chunk.
        pub next: Option<(usize, usize, usize)>,
        /// This tile's place among the tiles the job runs on this panel (its share of the next panel's prefetch).
        pub slot: usize,
        pub slots: usize,
        pub st: TileStore,
    }

    impl Tile {
        /// The prefetch of this tile's share of the next panel chunk, in packed weight `w` of `depth` rows per panel.
        #[inline(always)]
        pub(super) fn prefetch(&self, w: *const u8, depth: usize) -> PanelPrefetch {
            PanelPrefetch::of_chunk(w, depth, self.next, (self.slot, self.slots), self.klen)
        }
    }

    /// Walks job `j`'s tiles in cache order: k chunks, then panels (one panel chunk stays in L2), then row tiles.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn for_each_tile(
        jobs: &Jobs,
        j: usize,
        m: usize,
        k: usize,
        n: usize,
        bias: *const f32,
        ep: Epilogue,
        mut f: impl FnMut(Tile),
    ) {
        let (t0, nt, p0, np) = jobs.job(j);
        let (chunks, kc) = k_chunks(k, 1, KC);
        for ch in 0..chunks {
            let k0 = ch * kc;
            let st = chunk_store(ep, ch, chunks, bias);
            for p in p0..p0 + np {
                let col = p * NR;
                let st = st.at_column(col);
                let next = next_panel_chunk(jobs, (p0, np, p), (ch, chunks, kc, k));
                for t in t0..t0 + nt {
                    let (r0, rows) = tile_span(m, jobs.tiles, t);
                    f(Tile {
                        r0,
                        rows,
                        k0,
                        klen: kc.min(k - k0),
                        p,
                        col,
                        cols: NR.min(n - col),
                        next,
                        slot: t - t0,
                        slots: nt,
                        st,
                    });
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn job_f32(
        jobs: &Jobs,
        j: usize,
        a: *const f32,
        m: usize,
        k: usize,
        w: *const f32,
        n: usize,
        bias: *const f32,
        c: *mut f32,
        ep: Epilogue,
    ) {
        for_each_tile(jobs, j, m, k, n, bias, ep, |t| {
            let panel = w.add(t.p * k * NR + t.k0 * NR);
            let next = t.prefetch(w as *const u8, k);
            let (ap, cp) = (a.add(t.r0 * k + t.k0), c.add(t.r0 * n + t.col));
            // The common (tile height, K) pairs of CLIP's towers get a compile-time stride.
            macro_rules! fixed {
                ($r:literal, $k:literal) => {
                    tile_f32_lda::<$r, $k>(t.klen, ap, k, panel, NR, cp, n, t.cols, t.st, next)
                };
            }
            match (t.rows, k) {
                (8, 768) => fixed!(8, 768),
                (7, 768) => fixed!(7, 768),
                (8, 3072) => fixed!(8, 3072),
                (7, 3072) => fixed!(7, 3072),
                (8, 1024) => fixed!(8, 1024),
                (7, 1024) => fixed!(7, 1024),
                (8, 4096) => fixed!(8, 4096),
                (7, 4096) => fixed!(7, 4096),
                (8, 512) => fixed!(8, 512),
                (8, 2048) => fixed!(8, 2048),
                _ => {
                    by_rows!(t.rows, tile_f32, t.klen, ap, k, panel, NR, cp, n, t.cols, t.st, next)
                }
            }
        });
    }

    /// f32 packed product (see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_f32(
        a: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
        ep: Epilogue,
    ) {
        assert!(is_x86_feature_detected!("avx512f"));
        assert!(w.len() >= n.div_ceil(NR) * k * NR && bias.is_none_or(|b| b.len() >= n));
        if k == 0 {
            return zero_k(Isa::Avx512, out, m, n, bias, ep);
        }
        // SAFETY: AVX-512F asserted above; a, w, bias and out were bounds-checked for m, n, k; each job writes its
        // own rectangle of out.
        par_jobs(
            BLOCKING,
            m,
            n,
            a.as_ptr(),
            w.as_ptr(),
            bias,
            out.as_mut_ptr(),
            |jobs, j, a, w, b, c| unsafe { job_f32(jobs, j, a, m, k, w, n, b, c, ep) },
        );
    }

    /// Converts rows of f32 to bf16 pairs (round to nearest even), `kp` pairs per row, zero-padding odd k.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(crate) unsafe fn to_bf16_rows(src: &[f32], k: usize, dst: &mut [u32], kp: usize) {
        for (s, d) in src.chunks_exact(k).zip(dst.chunks_exact_mut(kp)) {
            let mut i = 0;
            // Whole 32-value steps with plain loads and stores, the masked forms only for the tail: with masked
            // loads and stores in every step, this pass took 6.6 % of a 1-thread out-projection GEMM (1600 rows)
            // in `perf`, 3.1 % without.
            while i + 32 <= k {
                let lo = _mm512_loadu_ps(s.as_ptr().add(i));
                let hi = _mm512_loadu_ps(s.as_ptr().add(i + 16));
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(d.as_mut_ptr().add(i / 2) as *mut __m512i, packed);
                i += 32;
            }
            while i < k {
                let w = (k - i).min(32);
                let lo = _mm512_maskz_loadu_ps(mask16(w), s.as_ptr().add(i));
                let hi =
                    _mm512_maskz_loadu_ps(mask16(w.saturating_sub(16)), s.as_ptr().add(i + 16));
                // cvtne2ps2bf16 puts its second operand in the low half.
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi32(
                    d.as_mut_ptr().add(i / 2) as *mut i32,
                    mask16(w.div_ceil(2)),
                    packed,
                );
                i += w;
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn job_bf16(
        jobs: &Jobs,
        j: usize,
        a: *const u32,
        m: usize,
        kp: usize,
        w: *const u32,
        n: usize,
        bias: *const f32,
        (c, ldc, to_bf16): (*mut f32, usize, bool),
        ep: Epilogue,
    ) {
        for_each_tile(jobs, j, m, kp, n, bias, ep, |mut t| {
            let panel = w.add(t.p * kp * NR + t.k0 * NR);
            let next = t.prefetch(w as *const u8, kp);
            t.st.to_bf16 = to_bf16;
            // A bf16-pair C counts its stride and columns in pairs (panels start at even columns).
            let cp = if to_bf16 {
                (c as *mut u32).add(t.r0 * ldc + t.col / 2) as *mut f32
            } else {
                c.add(t.r0 * ldc + t.col)
            };
            let ap = a.add(t.r0 * kp + t.k0);
            let n = ldc;
            if t.cols <= 32 && t.rows <= 8 {
                return tile_bf16_last_panel(
                    t.rows, t.klen, ap, kp, panel, cp, n, t.cols, t.st, next,
                );
            }
            // CLIP's common (tile height, K/2) pairs get a compile-time stride, as in job_f32.
            macro_rules! fixed {
                ($r:literal, $kp:literal) => {
                    tile_bf16_lda::<$r, $kp, NV>(t.klen, ap, kp, panel, cp, n, t.cols, t.st, next)
                };
            }
            match (t.rows, kp) {
                (8, 384) => fixed!(8, 384),
                (7, 384) => fixed!(7, 384),
                (8, 1536) => fixed!(8, 1536),
                (7, 1536) => fixed!(7, 1536),
                (8, 512) => fixed!(8, 512),
                (7, 512) => fixed!(7, 512),
                (8, 2048) => fixed!(8, 2048),
                (7, 2048) => fixed!(7, 2048),
                (8, 256) => fixed!(8, 256),
                (8, 1024) => fixed!(8, 1024),
                _ => by_rows!(t.rows, tile_bf16, t.klen, ap, kp, panel, cp, n, t.cols, t.st, next),
            }
        });
    }

    /// Converts `m` rows of `k` floats into bf16 pairs `[m][⌈k/2⌉]` (in parallel).
    pub(super) fn to_bf16_pairs(a: &[f32], m: usize, k: usize, dst: &mut Vec<u32>) {
        assert!(has_avx512_bf16() && a.len() >= m * k);
        let kp = k.div_ceil(2);
        dst.resize(m * kp, 0);
        if k == 0 {
            return;
        }
        dst[..m * kp]
            .par_chunks_mut(kp * 16)
            .zip(a[..m * k].par_chunks(k * 16))
            // SAFETY: AVX512_BF16 asserted above; chunk lengths match (16 rows of kp pairs / k floats).
            .for_each(|(d, s)| unsafe { to_bf16_rows(s, k, d, kp) });
    }

    /// Where a product's C goes: f32 `[m][n]`, or bf16 pairs `[m][⌈n/2⌉]` (a fused MLP's fc1).
    pub(super) enum Dest<'a> {
        F32(&'a mut [f32]),
        Pairs(&'a mut [u32]),
    }

    /// bf16 packed product on A already in bf16 pairs `[m][⌈k/2⌉]`: the tiles run `vdpbf16ps`. `Dest::Pairs`
    /// needs a single k chunk ([`single_k_chunk`]) and an epilogue that does not read C.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_bf16_pairs(
        abf: &[u32],
        m: usize,
        k: usize,
        w: &[u32],
        n: usize,
        bias: Option<&[f32]>,
        out: Dest,
        ep: Epilogue,
    ) {
        assert!(has_avx512_bf16());
        let kp = k.div_ceil(2);
        assert!(abf.len() >= m * kp);
        assert!(w.len() >= n.div_ceil(NR) * kp * NR && bias.is_none_or(|b| b.len() >= n));
        let c = match out {
            Dest::F32(out) => {
                assert!(out.len() >= m * n);
                if k == 0 {
                    return zero_k(Isa::Avx512, out, m, n, bias, ep);
                }
                (out.as_mut_ptr(), n, false)
            }
            Dest::Pairs(out) => {
                let np = n.div_ceil(2);
                assert!(
                    out.len() >= m * np && ep != Epilogue::Accumulate && single_k_chunk(k) && k > 0
                );
                (out.as_mut_ptr() as *mut f32, np, true)
            }
        };
        // SAFETY: as in run_f32; the bf16 A holds m·kp pairs, C m rows of its stride.
        par_jobs(
            BLOCKING,
            m,
            n,
            abf.as_ptr(),
            w.as_ptr(),
            bias,
            c.0,
            |jobs, j, a, w, b, cp| unsafe {
                job_bf16(jobs, j, a, m, kp, w, n, b, (cp, c.1, c.2), ep)
            },
        );
    }

    /// Whether a bf16 product over `k` runs in one k chunk (its tiles then store C once, so C may be bf16).
    pub(super) fn single_k_chunk(k: usize) -> bool {
        k_chunks(k.div_ceil(2), 1, KC).0 == 1
    }

    thread_local! {
        /// The bf16 copy of A, reused across calls on this thread (no allocation per layer once warm).
        static BF16_SCRATCH: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Runs `f` with this thread's bf16 scratch (a fresh buffer when a nested call, through rayon work stealing,
    /// finds it borrowed).
    pub(super) fn with_bf16_scratch<R>(f: impl FnOnce(&mut Vec<u32>) -> R) -> R {
        crate::cpu::with_thread_scratch(&BF16_SCRATCH, f)
    }

    /// bf16 packed product: A is converted to bf16 pairs once (in parallel), then the tiles run `vdpbf16ps`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_bf16(
        a: &[f32],
        m: usize,
        k: usize,
        w: &[u32],
        n: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
        ep: Epilogue,
    ) {
        with_bf16_scratch(|abf| {
            to_bf16_pairs(a, m, k, abf);
            run_bf16_pairs(abf, m, k, w, n, bias, Dest::F32(out), ep)
        });
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn panel_prefetch_shares_cover_the_next_panel_spread_over_the_steps() {
        // (lines, slots, steps): batch 1 (7 tiles), one tile, two tiles, more tiles than lines, a short k chunk.
        for (lines, slots, steps) in [
            (1152, 7, 384),
            (1152, 1, 384),
            (768, 2, 256),
            (5, 9, 3),
            (30, 4, 7),
            (0, 3, 5),
        ] {
            let mut seen = vec![0usize; lines + 8];
            let mut most_per_step = 0;
            for slot in 0..slots {
                let pf = PanelPrefetch::share(std::ptr::null(), lines, slot, slots, steps);
                for kk in 0..steps {
                    let r = pf.lines(kk);
                    most_per_step = most_per_step.max(r.len());
                    for l in r {
                        assert!(
                            l <= lines + 1,
                            "line {l} past the panel ({lines} lines, {slots} slots)"
                        );
                        seen[l] += 1;
                    }
                }
            }
            assert!(
                seen[..lines].iter().all(|&c| c > 0),
                "a line never fetched: {lines} lines, {slots} slots"
            );
            // Spread: no step fetches more than its even share of the panel (rounded up).
            assert!(most_per_step <= lines.div_ceil(slots * steps).max(usize::from(lines > 0)) + 1);
        }
    }

    /// The prefetch target after each panel chunk is the chunk the job's walk (`avx512::for_each_tile`: k chunks,
    /// then panels) visits next, and after a job's last one the next job's first where the jobs are consecutive
    /// panel groups of one row block.
    #[test]
    fn the_prefetched_panel_chunk_is_the_one_the_walk_runs_next() {
        for (m, n, k) in [
            (50, 768, 384),
            (50, 768, 1536),
            (400, 3072, 384),
            (1, 100, 1000),
            (97, 17, 5),
        ] {
            let jobs = Jobs::new(m, n, BLOCKING);
            let (chunks, kc) = k_chunks(k, 1, KC);
            // Each job's walk: (panel, first k, k length) in visiting order.
            let walks: Vec<Vec<(usize, usize, usize)>> = (0..jobs.count())
                .map(|j| {
                    let (_, _, p0, np) = jobs.job(j);
                    (0..chunks)
                        .flat_map(|ch| {
                            (p0..p0 + np).map(move |p| (p, ch * kc, kc.min(k - ch * kc)))
                        })
                        .collect()
                })
                .collect();
            for (j, walk) in walks.iter().enumerate() {
                let (_, _, p0, np) = jobs.job(j);
                for (i, &(p, k0, _)) in walk.iter().enumerate() {
                    let got = next_panel_chunk(&jobs, (p0, np, p), (k0 / kc, chunks, kc, k));
                    let want = match walk.get(i + 1) {
                        Some(&next) => Some(next),
                        None if jobs.row_blocks == 1 => walks.get(j + 1).map(|w| w[0]),
                        None => None,
                    };
                    assert_eq!(got, want, "{m}×{n}×{k}, job {j}, step {i}");
                }
            }
        }
    }

    /// Every (tile, panel) pair belongs to exactly one job, and jobs differ by at most one tile and one panel.
    #[test]
    fn jobs_cover_the_product_once_in_near_equal_parts() {
        for b in [BLOCKING, avx2::BLOCKING] {
            for (m, n) in [
                (1, 1),
                (50, 768),
                (352, 512),
                (1600, 2304),
                (97, 17),
                (400, 3072),
            ] {
                let jobs = Jobs::new(m, n, b);
                let panels = n.div_ceil(b.nr);
                let mut seen = vec![0u8; jobs.tiles * panels];
                let (mut heights, mut widths) = (Vec::new(), Vec::new());
                for j in 0..jobs.count() {
                    let (t0, nt, p0, np) = jobs.job(j);
                    assert!(nt <= b.tiles_per_block && np <= b.max_panels_per_job && nt * np > 0);
                    heights.push(nt);
                    widths.push(np);
                    for t in t0..t0 + nt {
                        for p in p0..p0 + np {
                            seen[t * panels + p] += 1;
                        }
                    }
                }
                assert!(
                    seen.iter().all(|&c| c == 1),
                    "{m}×{n}: a pair missed or repeated"
                );
                let spread = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap();
                assert!(
                    spread(&heights) <= 1 && spread(&widths) <= 1,
                    "{m}×{n}: uneven jobs"
                );
            }
        }
    }
}
