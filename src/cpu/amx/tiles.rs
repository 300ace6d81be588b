//! The tile-ops layer the AMX kernels are written against, with two implementations:
//!
//! - [`Native`]: the instructions themselves (`ldtilecfg`, `tilezero`, `tileloadd`, `tdpbf16ps`, `tilestored`,
//!   `tilerelease`) through inline `asm!`, tile registers named by const generics so each call is one instruction;
//! - [`Emulator`]: the same operations in plain Rust, following the Intel SDM's definition of each instruction
//!   (vol. 2, "TDPBF16PS", "TILELOADD", "LDTILECFG"): tile shapes from the loaded configuration, bytes past a
//!   tile's configured rows and columns zeroed on every write, `tdpbf16ps`'s pairwise bf16 products accumulated in
//!   f32 with round-to-nearest-even, bf16 denormal inputs read as zero (DAZ) and f32 denormal results flushed to
//!   zero (FTZ), MXCSR ignored.
//!
//! The kernels are generic over [`Tiles`], so every machine runs the whole AMX path on the emulator (the tests do),
//! and an AMX machine runs the same code on the hardware. This is the CPU twin of the CUDA simulator.
//!
//! A misuse the hardware answers with #UD or #GP (a tile used unconfigured, shapes that do not chain, rows > 16 or
//! rows wider than 64 bytes) is a bug in our kernels, not bad input: the emulator panics on it, so the tests catch it
//! before a real CPU would fault.

/// The 64-byte operand of `ldtilecfg` (SDM vol. 2, "LDTILECFG", palette 1).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileConfig {
    pub palette: u8,
    pub start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of tiles 0..8 (entries 8..16 must be zero).
    pub colsb: [u16; 16],
    /// Rows of tiles 0..8 (entries 8..16 must be zero).
    pub rows: [u8; 16],
}

/// Tile registers of palette 1.
pub const TILES: usize = 8;
/// Most rows of a tile.
pub const MAX_ROWS: usize = 16;
/// Most bytes per tile row.
pub const MAX_COLSB: usize = 64;

impl TileConfig {
    /// Palette 1 with every one of the 8 tiles at 16 rows × 64 bytes: the only shape our kernels use (a 16 × 16 f32
    /// accumulator, a 16 × 32 bf16 A tile, a 16-pair × 16-column bf16 B tile).
    pub const fn full() -> TileConfig {
        TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
            rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    /// A palette-1 configuration with the given (rows, bytes per row) for tiles 0..8 (the emulator's tests).
    #[cfg(test)]
    pub fn with_shapes(shapes: [(u8, u16); TILES]) -> TileConfig {
        let mut c = TileConfig::full();
        for (t, (r, b)) in shapes.into_iter().enumerate() {
            c.rows[t] = r;
            c.colsb[t] = b;
        }
        c
    }
}

/// The AMX operations our kernels use. Tile registers are const generics (`T`, `C`, `A`, `B` in 0..8).
///
/// # Safety
/// Every method is `unsafe`: pointers must be valid for the configured rows × bytes at the given stride, a
/// configuration must be loaded before any other call, and [`Native`] needs a CPU with AMX-TILE and AMX-BF16 whose
/// tile state this process was granted (see `detect`).
#[allow(clippy::missing_safety_doc)] // one contract for every method, stated above
pub trait Tiles {
    /// `ldtilecfg`: loads a configuration and zeroes every tile.
    unsafe fn configure(&mut self, cfg: &TileConfig);
    /// `tilezero tmmT`.
    unsafe fn zero<const T: u8>(&mut self);
    /// `tileloadd tmmT, [base + stride·row]`.
    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize);
    /// `tilestored [base + stride·row], tmmT`.
    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize);
    /// `tdpbf16ps tmmC, tmmA, tmmB`: `C[m][n] += Σ_k A[m][2k]·B[k][2n] + A[m][2k+1]·B[k][2n+1]` (bf16 → f32).
    unsafe fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self);
    /// `tilerelease`: back to the init state (no configuration, tiles zero).
    unsafe fn release(&mut self);
}

/// The real AMX instructions.
#[derive(Clone, Copy, Debug, Default)]
pub struct Native;

#[cfg(target_arch = "x86_64")]
impl Tiles for Native {
    #[inline(always)]
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        std::arch::asm!("ldtilecfg [{0}]", in(reg) cfg as *const TileConfig, options(nostack, readonly));
    }
    #[inline(always)]
    unsafe fn zero<const T: u8>(&mut self) {
        std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem));
    }
    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        std::arch::asm!(
            "tileloadd tmm{t}, [{base} + {stride}*1]",
            t = const T, base = in(reg) base, stride = in(reg) stride,
            options(nostack, readonly),
        );
    }
    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        std::arch::asm!(
            "tilestored [{base} + {stride}*1], tmm{t}",
            t = const T, base = in(reg) base, stride = in(reg) stride,
            options(nostack),
        );
    }
    #[inline(always)]
    unsafe fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self) {
        std::arch::asm!(
            "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
            c = const C, a = const A, b = const B,
            options(nostack, nomem),
        );
    }
    #[inline(always)]
    unsafe fn release(&mut self) {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Tiles for Native {
    unsafe fn configure(&mut self, _: &TileConfig) {
        unreachable!("AMX is x86_64 only; detection never selects it elsewhere")
    }
    unsafe fn zero<const T: u8>(&mut self) {}
    unsafe fn load<const T: u8>(&mut self, _: *const u8, _: usize) {}
    unsafe fn store<const T: u8>(&mut self, _: *mut u8, _: usize) {}
    unsafe fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self) {}
    unsafe fn release(&mut self) {}
}

/// The AMX instructions emulated in plain Rust (see the module docs for the rules it follows).
#[derive(Clone)]
pub struct Emulator {
    /// `None` in the init state (after `tilerelease`, or before the first `ldtilecfg`).
    shapes: Option<[(usize, usize); TILES]>,
    /// 8 tiles × 16 rows × 64 bytes, as the hardware holds them.
    data: Box<[[[u8; MAX_COLSB]; MAX_ROWS]; TILES]>,
}

impl Default for Emulator {
    fn default() -> Self {
        Emulator {
            shapes: None,
            data: Box::new([[[0; MAX_COLSB]; MAX_ROWS]; TILES]),
        }
    }
}

/// bf16 bits → f32 with denormals read as zero (tdpbf16ps's DAZ on its inputs).
#[inline(always)]
fn bf16_daz(bits: u16) -> f32 {
    let exponent = bits & 0x7F80;
    let bits = if exponent == 0 { bits & 0x8000 } else { bits };
    f32::from_bits(u32::from(bits) << 16)
}

/// An f32 result with denormals flushed to (signed) zero (tdpbf16ps's FTZ on its output).
#[inline(always)]
fn ftz(x: f32) -> f32 {
    if x.to_bits() & 0x7F80_0000 == 0 {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

impl Emulator {
    /// (rows, bytes per row) of tile `t`; panics where the hardware raises #UD (no configuration loaded).
    fn shape(&self, t: u8) -> (usize, usize) {
        let shapes = self
            .shapes
            .expect("AMX tile used with no configuration loaded (#UD)");
        assert!((t as usize) < TILES, "tile register tmm{t} does not exist");
        shapes[t as usize]
    }

    /// Writes `rows × colsb` bytes into tile `t` through `byte(r, c)`, zeroing the rest of the tile.
    fn write(&mut self, t: u8, mut byte: impl FnMut(usize, usize) -> u8) {
        let (rows, colsb) = self.shape(t);
        for (r, row) in self.data[t as usize].iter_mut().enumerate() {
            for (c, b) in row.iter_mut().enumerate() {
                *b = if r < rows && c < colsb { byte(r, c) } else { 0 };
            }
        }
    }

    fn f32_at(&self, t: u8, r: usize, col: usize) -> f32 {
        let b = &self.data[t as usize][r][4 * col..4 * col + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn bf16_at(&self, t: u8, r: usize, i: usize) -> u16 {
        let b = &self.data[t as usize][r][2 * i..2 * i + 2];
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Tile `t`'s row `r` as f32 values.
    #[cfg(test)]
    pub fn row_f32(&self, t: u8, r: usize) -> Vec<f32> {
        let (_, colsb) = self.shape(t);
        (0..colsb / 4).map(|c| self.f32_at(t, r, c)).collect()
    }
}

impl Tiles for Emulator {
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        match cfg.palette {
            0 => return self.release(),
            1 => {}
            p => panic!("ldtilecfg: palette {p} is not supported (#GP)"),
        }
        let mut shapes = [(0, 0); TILES];
        for (t, shape) in shapes.iter_mut().enumerate() {
            let (rows, colsb) = (cfg.rows[t] as usize, cfg.colsb[t] as usize);
            assert!(
                rows <= MAX_ROWS && colsb <= MAX_COLSB && (rows == 0) == (colsb == 0),
                "ldtilecfg: tile {t} of {rows} rows × {colsb} bytes is invalid (#GP)"
            );
            *shape = (rows, colsb);
        }
        assert!(
            cfg.rows[TILES..].iter().all(|&r| r == 0) && cfg.colsb[TILES..].iter().all(|&c| c == 0),
            "ldtilecfg: palette 1 has 8 tiles; entries 8..16 must be zero (#GP)"
        );
        self.shapes = Some(shapes);
        self.data
            .iter_mut()
            .for_each(|t| *t = [[0; MAX_COLSB]; MAX_ROWS]);
    }

    unsafe fn zero<const T: u8>(&mut self) {
        self.write(T, |_, _| 0);
    }

    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        // SAFETY: the caller guarantees `base + r·stride .. + colsb` is readable for every configured row.
        self.write(T, |r, c| unsafe { *base.add(r * stride + c) });
    }

    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        for r in 0..rows {
            // SAFETY: the caller guarantees `base + r·stride .. + colsb` is writable for every configured row.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.data[T as usize][r].as_ptr(),
                    base.add(r * stride),
                    colsb,
                )
            };
        }
    }

    unsafe fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self) {
        let ((c_rows, c_colsb), (a_rows, a_colsb), (b_rows, b_colsb)) =
            (self.shape(C), self.shape(A), self.shape(B));
        // The #UD conditions of the SDM: distinct registers, and shapes that chain (C = A·B).
        assert!(
            C != A && C != B && A != B,
            "tdpbf16ps: tile registers must differ (#UD)"
        );
        assert!(
            c_rows == a_rows && c_colsb == b_colsb && a_colsb / 4 == b_rows && a_colsb % 4 == 0,
            "tdpbf16ps: C {c_rows}×{c_colsb}B, A {a_rows}×{a_colsb}B, B {b_rows}×{b_colsb}B do not chain (#UD)"
        );
        let (pairs, cols) = (a_colsb / 4, c_colsb / 4);
        let mut out = [[0f32; MAX_COLSB / 4]; MAX_ROWS];
        for (m, acc) in out.iter_mut().enumerate().take(c_rows) {
            let mut tmp: [f32; MAX_COLSB / 4] =
                std::array::from_fn(|n| if n < cols { self.f32_at(C, m, n) } else { 0.0 });
            for k in 0..pairs {
                let (a0, a1) = (
                    bf16_daz(self.bf16_at(A, m, 2 * k)),
                    bf16_daz(self.bf16_at(A, m, 2 * k + 1)),
                );
                for (n, t) in tmp.iter_mut().enumerate().take(cols) {
                    let (b0, b1) = (
                        bf16_daz(self.bf16_at(B, k, 2 * n)),
                        bf16_daz(self.bf16_at(B, k, 2 * n + 1)),
                    );
                    // A bf16 × bf16 product has ≤ 16 significant bits, so it is exact in f32; each add rounds
                    // to nearest even, in the SDM's order (the even element first).
                    *t = ftz(*t + a0 * b0);
                    *t = ftz(*t + a1 * b1);
                }
            }
            *acc = tmp;
        }
        self.write(C, |r, c| out[r][c / 4].to_le_bytes()[c % 4]);
    }

    unsafe fn release(&mut self) {
        self.shapes = None;
        self.data
            .iter_mut()
            .for_each(|t| *t = [[0; MAX_COLSB]; MAX_ROWS]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16(x: f32) -> u16 {
        half::bf16::from_f32(x).to_bits()
    }

    /// A 2 × 4 times 2-pair × 3 product by hand, on a shrunken configuration: rows and bytes past the shape stay zero.
    #[test]
    fn dpbf16ps_follows_the_sdm_on_small_shapes() {
        let mut e = Emulator::default();
        // tmm0: C 2 rows × 3 f32; tmm1: A 2 rows × 4 bf16 (2 pairs); tmm2: B 2 pair-rows × 3 columns × 2 bf16.
        let mut shapes = [(0u8, 0u16); TILES];
        shapes[0] = (2, 12);
        shapes[1] = (2, 8);
        shapes[2] = (2, 12);
        let cfg = TileConfig::with_shapes(shapes);
        let a = [[1.0f32, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.25, 8.0]];
        // B[k][j] for k in 0..4 (logical), j in 0..3.
        let b = [
            [1.0f32, 0.0, 2.0],
            [0.5, 1.0, -1.0],
            [2.0, 3.0, 0.0],
            [1.0, -2.0, 0.5],
        ];
        let a_bytes: Vec<u8> = a
            .iter()
            .flatten()
            .flat_map(|&x| bf16(x).to_le_bytes())
            .collect();
        // VNNI pairs: row p holds (B[2p][j], B[2p+1][j]) for each j.
        let mut b_bytes = Vec::new();
        for rows in b.chunks_exact(2) {
            for (&even, &odd) in rows[0].iter().zip(&rows[1]) {
                b_bytes.extend(bf16(even).to_le_bytes());
                b_bytes.extend(bf16(odd).to_le_bytes());
            }
        }
        let c0 = [[10.0f32, 20.0, 30.0], [0.0, 0.0, 0.0]];
        let c_bytes: Vec<u8> = c0.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
        unsafe {
            e.configure(&cfg);
            e.load::<0>(c_bytes.as_ptr(), 12);
            e.load::<1>(a_bytes.as_ptr(), 8);
            e.load::<2>(b_bytes.as_ptr(), 12);
            e.dpbf16ps::<0, 1, 2>();
        }
        for m in 0..2 {
            let want: Vec<f32> = (0..3)
                .map(|j| c0[m][j] + (0..4).map(|k| a[m][k] * b[k][j]).sum::<f32>())
                .collect();
            assert_eq!(e.row_f32(0, m), want, "row {m}");
        }
        let mut out = [7u8; 3 * 12];
        unsafe { e.store::<0>(out.as_mut_ptr(), 12) };
        assert_eq!(
            &out[24..],
            &[7u8; 12],
            "a store writes only the configured rows"
        );
        assert!(
            e.data[0][2..].iter().flatten().all(|&b| b == 0),
            "rows past the shape stay zero"
        );
        assert!(
            e.data[0][0][12..].iter().all(|&b| b == 0),
            "bytes past the shape stay zero"
        );
    }

    #[test]
    fn denormal_inputs_read_as_zero_and_denormal_results_flush() {
        assert_eq!(bf16_daz(0x0001), 0.0);
        assert_eq!(bf16_daz(0x8001).to_bits(), 0x8000_0000);
        assert_eq!(bf16_daz(bf16(1.5)), 1.5);
        assert_eq!(ftz(f32::MIN_POSITIVE / 2.0), 0.0);
        assert_eq!(ftz(f32::MIN_POSITIVE), f32::MIN_POSITIVE);
        assert!(ftz(f32::NAN).is_nan());
        // 2^-70 · 2^-70 = 2^-140 is a denormal f32: flushed.
        let tiny = bf16(2f32.powi(-70));
        let mut e = Emulator::default();
        let mut shapes = [(0u8, 0u16); TILES];
        shapes[0] = (1, 4);
        shapes[1] = (1, 4);
        shapes[2] = (1, 4);
        let a = [tiny.to_le_bytes(), 0u16.to_le_bytes()].concat();
        unsafe {
            e.configure(&TileConfig::with_shapes(shapes));
            e.load::<1>(a.as_ptr(), 4);
            e.load::<2>(a.as_ptr(), 4);
            e.dpbf16ps::<0, 1, 2>();
        }
        assert_eq!(e.row_f32(0, 0), vec![0.0]);
    }

    #[test]
    #[should_panic(expected = "no configuration")]
    fn a_tile_op_without_configuration_faults() {
        let mut e = Emulator::default();
        unsafe { e.zero::<0>() };
    }

    #[test]
    #[should_panic(expected = "do not chain")]
    fn mismatched_shapes_fault() {
        let mut e = Emulator::default();
        let mut shapes = [(16u8, 64u16); TILES];
        shapes[2] = (8, 64);
        unsafe {
            e.configure(&TileConfig::with_shapes(shapes));
            e.dpbf16ps::<0, 1, 2>();
        }
    }

    #[test]
    fn config_layout_matches_the_sdm() {
        assert_eq!(std::mem::size_of::<TileConfig>(), 64);
        let c = TileConfig::full();
        let bytes: [u8; 64] = unsafe { std::mem::transmute(c) };
        assert_eq!(bytes[0], 1);
        assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 64);
        assert_eq!(bytes[48], 16);
        assert_eq!(bytes[56], 0);
    }
}
