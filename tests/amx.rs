//! The AMX path: on every machine through the tile emulator at CLIP's real shapes, and, where the CPU has AMX, the
//! real instructions against the emulator and the f64 reference. (Every op on every engine, the emulator included,
//! is also checked at awkward shapes in tests/ops.rs.)

mod common;

use cliprt::backend::reference::ReferenceBackend;
use cliprt::backend::{self, Activation, AttnShape, Backend, Epilogue, GemmShape};
use cliprt::bench::prompt_ids;
use cliprt::config::presets;
use cliprt::cpu::{CpuBackend, MatrixEngine, Precision};
use cliprt::model::ClipModel;
use cliprt::model::ClipWeights;
use cliprt::model::TextBatch;
use common::*;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The epilogues every GEMM check runs.
const EPILOGUES: [Epilogue; 3] = [
    Epilogue::Store,
    Epilogue::Accumulate,
    Epilogue::Activation(Activation::QuickGelu),
];

/// One GEMM check's random operands: weights and bias at scale 0.5, inputs and the accumulated C at 1.
struct GemmCase {
    s: GemmShape,
    w: Vec<f32>,
    b: Vec<f32>,
    x: Vec<f32>,
    init: Vec<f32>,
}

impl GemmCase {
    fn new(m: usize, n: usize, k: usize, seed: u64) -> Self {
        GemmCase {
            s: GemmShape { m, n, k },
            w: random(n * k, seed, 0.5),
            b: random(n, seed + 1, 0.5),
            x: random(m * k, seed + 2, 1.0),
            init: random(m * n, seed + 3, 1.0),
        }
    }

    /// The output before the GEMM: C for `Accumulate`, else poisoned with NaN.
    fn start(&self, ep: Epilogue) -> Vec<f32> {
        if ep == Epilogue::Accumulate {
            self.init.clone()
        } else {
            vec![f32::NAN; self.s.m * self.s.n]
        }
    }
}

/// Random-weight ViT-B/32 at the real shapes, 2 images and 4 prompts: every bf16 engine here (the AMX emulator
/// always) within cosine 0.9999 of the f32 engine.
#[test]
fn bf16_engines_on_vit_b_32_match_f32() {
    let config = presets::by_name("vit-b-32").unwrap();
    let f32m = ClipModel::new(
        CpuBackend::default(),
        &config,
        ClipWeights::random(&config, 3),
    )
    .unwrap();
    let size = config.vision.image_size;
    let pixels = random(2 * 3 * size * size, 11, 1.5);
    let rows: Vec<Vec<u32>> = prompt_ids().into_iter().take(4).collect();
    let texts = TextBatch::new(&rows, &config.text).unwrap();
    let (want_img, want_txt) = (
        f32m.encode_images(&pixels, 2).unwrap(),
        f32m.encode_texts(&texts).unwrap(),
    );
    let dim = config.projection_dim;
    for engine in MatrixEngine::available_engines() {
        if engine.precision() != Precision::Bf16 {
            continue;
        }
        let cpu = CpuBackend::with_engine(engine).unwrap();
        let m = ClipModel::new(cpu, &config, ClipWeights::random(&config, 3)).unwrap();
        for (got, want, what) in [
            (m.encode_images(&pixels, 2).unwrap(), &want_img, "image"),
            (m.encode_texts(&texts).unwrap(), &want_txt, "text"),
        ] {
            for (i, (g, w)) in got
                .chunks_exact(dim)
                .zip(want.chunks_exact(dim))
                .enumerate()
            {
                let c = cosine(g, w);
                println!(
                    "vit-b-32 {} {what}[{i}] vs f32 cosine {c:.7}",
                    engine.name()
                );
                assert!(c >= 0.9999, "{} {what}[{i}]: cosine {c}", engine.name());
            }
        }
    }
}

/// Where the CPU has AMX: the tile instructions give what the emulator gives (up to the order of the f32 adds
/// inside one `tdpbf16ps`, which the SDM leaves to the implementation), and both the f64 product of the
/// bf16-rounded inputs.
#[test]
fn native_amx_matches_the_emulator_and_the_f64_product() {
    if !MatrixEngine::AmxBf16.available() {
        println!(
            "skipped: no usable AMX here ({})",
            cliprt::cpu::amx::support().describe()
        );
        return;
    }
    // Attention on tiles (opt-in; the default runs the f32 AVX-512 kernel, the same on both).
    let native = CpuBackend::with_engine(MatrixEngine::AmxBf16)
        .unwrap()
        .with_tile_attention(true);
    let emu = CpuBackend::with_engine(MatrixEngine::AmxBf16Emulated)
        .unwrap()
        .with_tile_attention(true);
    let round = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect()
    };
    let mut seed = 40;
    for &(m, n, k) in &[
        (1usize, 1usize, 1usize),
        (50, 768, 768),
        (197, 130, 257),
        (77, 2048, 512),
        (33, 768, 3072),
    ] {
        for ep in EPILOGUES {
            seed += 1;
            let c = GemmCase::new(m, n, k, seed);
            let (s, w, b) = (c.s, &c.w, &c.b);
            let run = |cpu: &CpuBackend| {
                let mut out = c.start(ep);
                let lin = cpu.linear(w, n, k, Some(b)).unwrap();
                backend::gemm(cpu, &mut out, &c.x, &lin, s, ep).unwrap();
                out
            };
            let rf = ReferenceBackend;
            let mut want = c.init.clone();
            let (xr, wr) = (round(&c.x), round(w));
            let lin = rf.linear(&wr, n, k, Some(b)).unwrap();
            backend::gemm(&rf, &mut want, &xr, &lin, s, ep).unwrap();
            let (got, emulated) = (run(&native), run(&emu));
            let what = format!("amx {s:?} {ep:?}");
            assert_close(
                &got,
                &emulated,
                1e-5 * (k as f32).sqrt(),
                1e-5,
                &format!("{what} vs emulator"),
            );
            assert_close(
                &got,
                &want,
                1e-5 * (k as f32).sqrt(),
                1e-5,
                &format!("{what} vs f64"),
            );
        }
    }
    for causal in [false, true] {
        let s = AttnShape {
            batch: 2,
            seq: 77,
            heads: 3,
            head_dim: 64,
            causal,
        };
        let qkv = random(2 * 77 * 3 * s.width(), 9, 2.0);
        let (mut got, mut emulated) = (
            vec![f32::NAN; 2 * 77 * s.width()],
            vec![f32::NAN; 2 * 77 * s.width()],
        );
        backend::attention(&native, &mut got, &qkv, s).unwrap();
        backend::attention(&emu, &mut emulated, &qkv, s).unwrap();
        // As for the GEMMs, the tolerance grows with the length of the sums (the hardware's order of adds inside
        // one `tdpbf16ps` is its own: 1.5e-5 apart at seq 77 on a Xeon with AMX, session 21).
        assert_close(
            &got,
            &emulated,
            1e-5 * (s.seq.max(s.head_dim) as f32).sqrt(),
            1e-5,
            &format!("amx attention {s:?} vs emulator"),
        );
    }
}

/// The layers an AMX engine keeps at f32 precision (`Backend::linear_f32`, ARCHITECTURE §7.13) run as split bf16
/// products: against the f64 product of the unrounded inputs, at awkward shapes (k off the 32-wide tile steps, so
/// the hi and lo segments meet inside a step) and every epilogue, their error must be f32-grade, far below what
/// plain bf16 products make on the same data. The emulator runs everywhere; the real tiles where the CPU has them.
#[test]
fn split_products_are_f32_grade() {
    let rf = ReferenceBackend;
    let mut seed = 70;
    for engine in [MatrixEngine::AmxBf16Emulated, MatrixEngine::AmxBf16] {
        if !engine.available() {
            println!("skipped {}: not on this machine", engine.name());
            continue;
        }
        let cpu = CpuBackend::with_engine(engine).unwrap();
        for &(m, n, k) in &[
            (1usize, 1usize, 1usize),
            (11, 40, 17),
            (45, 96, 588),
            (33, 130, 512),
        ] {
            for ep in EPILOGUES {
                seed += 4;
                let c = GemmCase::new(m, n, k, seed);
                let (s, w, b) = (c.s, &c.w, &c.b);
                let mut want = c.init.clone();
                let lin = rf.linear(w, n, k, Some(b)).unwrap();
                backend::gemm(&rf, &mut want, &c.x, &lin, s, ep).unwrap();
                let (mut split, mut plain) = (c.start(ep), c.start(ep));
                let lin = cpu.linear_f32(w, n, k, Some(b)).unwrap();
                backend::gemm(&cpu, &mut split, &c.x, &lin, s, ep).unwrap();
                let lin = cpu.linear(w, n, k, Some(b)).unwrap();
                backend::gemm(&cpu, &mut plain, &c.x, &lin, s, ep).unwrap();
                let worst = |got: &[f32]| {
                    got.iter()
                        .zip(&want)
                        .map(|(g, w)| (g - w).abs())
                        .fold(0f32, f32::max)
                };
                let (e_split, e_plain) = (worst(&split), worst(&plain));
                let what = format!("{} split {s:?} {ep:?}", engine.name());
                println!("{what}: worst error {e_split:.2e} (plain bf16 {e_plain:.2e})");
                // Each product is carried to ≈ 2⁻¹⁶ relative (lo·lo left out, lo rounded): |a·w| ≤ 0.5 here, so
                // the sum of k errors of random sign stays within 2⁻¹⁶·0.5·√k with a margin of 4.
                assert_close(&split, &want, 3e-5 * (k as f32).sqrt(), 1e-6, &what);
                assert!(
                    k < 32 || e_split * 20.0 < e_plain,
                    "{what}: split {e_split} is not far below plain bf16 {e_plain}"
                );
            }
        }
    }
}
