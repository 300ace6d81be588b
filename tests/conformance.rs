//! The backend conformance suite: every op check written once, generic over [`Backend`] + [`Retrieval`], run on
//! every engine this machine has (ARCHITECTURE.md, "The backend contract"):
//! - the f64 reference backend (its own oracle: checks the plumbing, the shape checks and the search contract);
//! - every CPU matrix engine (scalar, avx2, avx512-f32, avx512-bf16, the AMX emulator, AMX where present);
//! - the CUDA simulator, with every kernel variant of the registry (small shapes: the simulator is slow);
//! - a GPU, with every variant, when one is present (`CLIPRT_REQUIRE_CUDA=1` makes its absence a failure).
//!
//! Adding a backend is one line in this file: a `#[test]` that calls [`conform`] with it. Each check feeds fresh
//! random inputs, rounded as the backend rounds its inputs (bf16, f16), poisons outputs with NaN, and compares
//! with the reference backend in f64 within the backend's stated tolerance.

mod common;

use cliprt::backend::reference::ReferenceBackend;
use cliprt::backend::{
    self, Activation, AttnShape, Backend, Epilogue, GemmShape, MlpShape, PatchShape,
};
use cliprt::cpu::{CpuBackend, MatrixEngine, Precision};
use cliprt::search::{search_reference, Retrieval};
use common::*;

/// How one backend is held to the reference.
struct Profile {
    name: String,
    /// What the backend does to its inputs (rounding to bf16 or f16), applied to the reference's inputs too.
    round: fn(&[f32]) -> Vec<f32>,
    /// Elementwise tolerance |got − want| ≤ atol + rtol·|want| of the GEMM-like ops, per √k for GEMMs.
    atol: f32,
    rtol: f32,
    /// Attention's tolerance (engines that round P to bf16 or f16 need more).
    attn: (f32, f32),
    /// Small shapes only (the CUDA simulator).
    small: bool,
}

fn same(v: &[f32]) -> Vec<f32> {
    v.to_vec()
}
fn to_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}
#[cfg(feature = "cuda")]
fn to_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

fn cpu_profile(cpu: &CpuBackend) -> Profile {
    let bf16 = cpu.precision() == Precision::Bf16;
    // i16 rounds each activation row and weight column to its own grid (steps of 2⁻¹⁴ and 2⁻¹¹ of its range),
    // which no elementwise rounding of the inputs reproduces: a tolerance instead. Weights at 1/√k put a column's
    // step near 2⁻¹¹/√k, so the error of a product stays ≈ 1e-4 whatever k; tests/ops.rs holds the kernel to its
    // exact grid.
    let (atol, rtol) = if cpu.precision() == Precision::I16 {
        (3e-4, 1e-3)
    } else {
        (1e-5, 1e-5)
    };
    Profile {
        name: cpu.engine().name().into(),
        round: if bf16 { to_bf16 } else { same },
        atol,
        rtol,
        // Engines on tiles keep Q, K, V and P in bf16 (2⁻⁹ relative each): measured worst 0.0101, so a 3× margin.
        attn: if cpu.tile_attention() {
            (3e-2, 1e-2)
        } else {
            (2e-5, 1e-4)
        },
        small: false,
    }
}

/// The fp16 backends: inputs and outputs rounded to f16 (2⁻¹¹ relative), sums in f32.
#[cfg(feature = "cuda")]
fn f16_profile(name: String, small: bool) -> Profile {
    Profile {
        name,
        round: to_f16,
        atol: 2e-3,
        rtol: 3e-3,
        attn: (3e-3, 4e-3),
        small,
    }
}

fn poisoned<B: Backend>(b: &B, len: usize) -> B::Buf {
    b.upload(&vec![f32::NAN; len]).unwrap()
}

/// The checks that exercise `op`'s kernels (every check for an op without a dedicated one).
fn conform_op<B: Backend + Retrieval>(b: &B, p: &Profile, op: &str) {
    match op {
        "gemm" => {
            gemm(b, p);
            mlp(b, p);
        }
        "attention" => attention(b, p),
        "layernorm" => layernorm(b, p),
        "im2col" | "vision_embed" | "text_embed" | "gather_rows" => embeddings(b, p),
        "topk" | "topk_merge" | "scaled_cosine" => logits_and_search(b, p),
        _ => conform(b, p),
    }
}

/// Every check on `b`.
fn conform<B: Backend + Retrieval>(b: &B, p: &Profile) {
    gemm(b, p);
    mlp(b, p);
    layernorm(b, p);
    attention(b, p);
    embeddings(b, p);
    logits_and_search(b, p);
    rejects_bad_shapes(b);
}

fn gemm<B: Backend>(b: &B, p: &Profile) {
    let r = ReferenceBackend;
    // 1×1×1, odd sizes, K % 8 ≠ 0 (the GPU's element loads and fallbacks), K % 32 ≠ 0 with more k tiles than
    // pipeline stages, past a 64 and a 128 tile both ways; the full list adds CLIP's widths.
    let small: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (7, 63, 65),
        (65, 130, 76),
        (33, 72, 40),
        (130, 136, 168),
    ];
    let full: &[(usize, usize, usize)] = &[
        (0, 5, 3),
        (1, 1, 1),
        (7, 63, 65),
        (50, 65, 50),
        (77, 96, 257),
        (197, 130, 7),
        (65, 130, 588),
        (300, 257, 776),
    ];
    let eps = [
        Epilogue::Store,
        Epilogue::Accumulate,
        Epilogue::Activation(Activation::QuickGelu),
        Epilogue::Activation(Activation::Gelu),
        Epilogue::Activation(Activation::GeluTanh),
    ];
    let shapes = if p.small { small } else { full };
    for (case, &(m, n, k)) in shapes.iter().enumerate() {
        for (e, &ep) in eps.iter().enumerate() {
            for with_bias in [false, true] {
                let seed = (case * 16 + e * 2 + usize::from(with_bias)) as u64;
                let x = (p.round)(&random(m * k, seed, 1.0));
                let w = (p.round)(&random(n * k, seed + 100, 1.0 / (k as f32).sqrt()));
                let bias = (p.round)(&random(n, seed + 200, 0.5));
                let init = (p.round)(&random(m * n, seed + 300, 1.0));
                let bias = with_bias.then_some(bias.as_slice());
                let s = GemmShape { m, n, k };
                let mut want = init.clone();
                backend::gemm(&r, &mut want, &x, &r.linear(&w, n, k, bias).unwrap(), s, ep)
                    .unwrap();
                let mut out = if ep == Epilogue::Accumulate {
                    b.upload(&init).unwrap()
                } else {
                    poisoned(b, m * n)
                };
                let (bx, bw) = (b.upload(&x).unwrap(), b.linear(&w, n, k, bias).unwrap());
                backend::gemm(b, &mut out, &bx, &bw, s, ep).unwrap();
                assert_close(
                    &b.download(&out).unwrap(),
                    &want,
                    p.atol * (k as f32).sqrt(),
                    p.rtol,
                    &format!("{} gemm {s:?} {ep:?} bias {with_bias}", p.name),
                );
            }
        }
    }
}

fn mlp<B: Backend>(b: &B, p: &Profile) {
    let r = ReferenceBackend;
    let shapes: &[(usize, usize, usize)] = if p.small {
        &[(3, 16, 40)]
    } else {
        &[(1, 8, 32), (7, 64, 256), (50, 96, 384)]
    };
    for (i, &(rows, dim, hidden)) in shapes.iter().enumerate() {
        let s = MlpShape { rows, dim, hidden };
        let seed = 900 + i as u64 * 10;
        let input = (p.round)(&random(rows * dim, seed, 1.0));
        let x0 = (p.round)(&random(rows * dim, seed + 1, 1.0));
        let (w1, b1) = (
            (p.round)(&random(hidden * dim, seed + 2, 1.0 / (dim as f32).sqrt())),
            random(hidden, seed + 3, 0.5),
        );
        let (w2, b2) = (
            (p.round)(&random(
                dim * hidden,
                seed + 4,
                1.0 / (hidden as f32).sqrt(),
            )),
            random(dim, seed + 5, 0.5),
        );
        let act = Activation::QuickGelu;
        let mut want = x0.clone();
        let mut hid = vec![0.0; rows * hidden];
        let (r1, r2) = (
            r.linear(&w1, hidden, dim, Some(&b1)).unwrap(),
            r.linear(&w2, dim, hidden, Some(&b2)).unwrap(),
        );
        backend::mlp(&r, &mut want, &mut hid, &input, &r1, &r2, s, act).unwrap();
        let (f1, f2) = (
            b.linear(&w1, hidden, dim, Some(&b1)).unwrap(),
            b.linear(&w2, dim, hidden, Some(&b2)).unwrap(),
        );
        let mut x = b.upload(&x0).unwrap();
        let mut h = poisoned(b, rows * hidden);
        let bi = b.upload(&input).unwrap();
        backend::mlp(b, &mut x, &mut h, &bi, &f1, &f2, s, act).unwrap();
        // The hidden activations are rounded as the backend stores them (bf16, f16) before fc2: a second rounding
        // the reference does not make, so twice the GEMM tolerance (and bf16's 2⁻⁹ where inputs are bf16).
        let rounding = (p.round)(&[1.0 + 1.0 / 1024.0])[0] != 1.0 + 1.0 / 1024.0;
        let (atol, rtol) = if rounding {
            (2e-2, 2e-2)
        } else {
            (2.0 * p.atol * (hidden as f32).sqrt(), 2.0 * p.rtol)
        };
        assert_close(
            &b.download(&x).unwrap(),
            &want,
            atol,
            rtol,
            &format!("{} mlp {s:?}", p.name),
        );
    }
}

fn layernorm<B: Backend>(b: &B, p: &Profile) {
    let r = ReferenceBackend;
    let shapes: &[(usize, usize)] = if p.small {
        &[(1, 64), (7, 33), (5, 1280)]
    } else {
        &[(1, 1), (1, 64), (7, 33), (77, 512), (197, 768), (3, 1664)]
    };
    for (i, &(rows, dim)) in shapes.iter().enumerate() {
        // A large mean: two-pass statistics keep their precision where one pass would cancel.
        let x: Vec<f32> = (p.round)(
            &random(rows * dim, i as u64, 1.0)
                .iter()
                .map(|v| v + 3.0)
                .collect::<Vec<_>>(),
        );
        let g = (p.round)(&random(dim, 50 + i as u64, 1.0));
        let be = (p.round)(&random(dim, 60 + i as u64, 1.0));
        let mut want = vec![0.0; rows * dim];
        backend::layernorm(&r, &mut want, &x, &g, &be, rows, dim, 1e-5).unwrap();
        let mut out = poisoned(b, rows * dim);
        let (bx, bg, bb) = (
            b.upload(&x).unwrap(),
            b.upload(&g).unwrap(),
            b.upload(&be).unwrap(),
        );
        backend::layernorm(b, &mut out, &bx, &bg, &bb, rows, dim, 1e-5).unwrap();
        let (atol, rtol) = if p.atol > 1e-4 {
            (p.atol, p.rtol)
        } else {
            (1e-4, 1e-4)
        };
        assert_close(
            &b.download(&out).unwrap(),
            &want,
            atol,
            rtol,
            &format!("{} layernorm {rows}x{dim}", p.name),
        );
    }
}

fn attention<B: Backend>(b: &B, p: &Profile) {
    let r = ReferenceBackend;
    // (batch, seq, heads, head_dim, causal): CLIP's head dims (64, 80, 104, 128) and sequences, one query, a head
    // dim that is not a multiple of 8 (the GPU's fallback to v1), and K/V past the GPU's shared memory (v3 → v2).
    let small: &[(usize, usize, usize, usize, bool)] = &[
        (2, 50, 2, 64, false),
        (1, 77, 2, 64, true),
        (2, 7, 2, 80, false),
        (1, 37, 1, 104, false),
        (1, 1, 1, 64, true),
        (1, 70, 1, 128, false),
        (2, 19, 3, 36, true),
        (1, 400, 1, 128, false),
    ];
    let full: &[(usize, usize, usize, usize, bool)] = &[
        (2, 50, 12, 64, false),
        (3, 77, 8, 64, true),
        (2, 7, 2, 80, false),
        (1, 197, 3, 104, false),
        (1, 1, 1, 64, true),
        (1, 1, 1, 1, false),
        (2, 19, 3, 36, true),
        (2, 33, 5, 7, true),
        (1, 257, 2, 128, false),
    ];
    for (i, &(batch, seq, heads, head_dim, causal)) in
        (if p.small { small } else { full }).iter().enumerate()
    {
        let s = AttnShape {
            batch,
            seq,
            heads,
            head_dim,
            causal,
        };
        let qkv = (p.round)(&random(batch * seq * 3 * s.width(), 700 + i as u64, 2.0));
        let mut want = vec![0.0; batch * seq * s.width()];
        backend::attention(&r, &mut want, &qkv, s).unwrap();
        let mut out = poisoned(b, batch * seq * s.width());
        backend::attention(b, &mut out, &b.upload(&qkv).unwrap(), s).unwrap();
        assert_close(
            &b.download(&out).unwrap(),
            &want,
            p.attn.0,
            p.attn.1,
            &format!("{} attention {s:?}", p.name),
        );
        // Under a key padding mask: lengths 1, seq and one between (SigLIP's padded text).
        let lens: Vec<usize> = (0..batch)
            .map(|j| [1, seq, 1 + (7 * j + i) % seq][(i + j) % 3])
            .collect();
        let lens32: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
        backend::attention_masked(&r, &mut want, &qkv, s, &backend::rows(&r, &lens).unwrap())
            .unwrap();
        let mut out = poisoned(b, batch * seq * s.width());
        let mut key_lens = backend::rows(b, &vec![0; batch]).unwrap();
        backend::write_rows(b, &mut key_lens, &lens32).unwrap();
        backend::attention_masked(b, &mut out, &b.upload(&qkv).unwrap(), s, &key_lens).unwrap();
        assert_close(
            &b.download(&out).unwrap(),
            &want,
            p.attn.0,
            p.attn.1,
            &format!("{} masked attention {s:?} key lengths {lens:?}", p.name),
        );
        if causal && b.attends_packed() {
            packed_attention(b, p, s, &qkv, &lens, i);
        }
    }
}

/// Causal attention on a packed stream (each item's first `lens[j]` rows, back to back) against the reference's
/// padded attention, whose first rows of an item see only those rows.
fn packed_attention<B: Backend>(
    b: &B,
    p: &Profile,
    s: AttnShape,
    qkv: &[f32],
    lens: &[usize],
    case: usize,
) {
    let (r, d) = (ReferenceBackend, s.width());
    let mut padded = vec![0.0; s.batch * s.seq * d];
    backend::attention(&r, &mut padded, &qkv.to_vec(), s).unwrap();
    let kept = |x: &[f32], w: usize| -> Vec<f32> {
        (0..s.batch)
            .flat_map(|j| x[j * s.seq * w..(j * s.seq + lens[j]) * w].to_vec())
            .collect()
    };
    let rows: usize = lens.iter().sum();
    // Poison past the packed rows too: nothing may be read or written there.
    let mut qkv_packed = kept(qkv, 3 * d);
    qkv_packed.extend(vec![f32::NAN; 3 * d]);
    let mut out = poisoned(b, (rows + 1) * d);
    let lens_rows = backend::rows(b, lens).unwrap();
    let what = format!(
        "{} packed attention {s:?} lengths {lens:?} (case {case})",
        p.name
    );
    backend::attention_packed(
        b,
        &mut out,
        &b.upload(&qkv_packed).unwrap(),
        s,
        &lens_rows,
        rows,
    )
    .unwrap();
    let got = b.download(&out).unwrap();
    assert!(
        got[rows * d..].iter().all(|v| v.is_nan()),
        "{what}: wrote past the stream"
    );
    assert_close(
        &got[..rows * d],
        &kept(&padded, d),
        p.attn.0,
        p.attn.1,
        &what,
    );
}

/// im2col, the vision and text embeddings and the row gather: data movement, so exact up to the input rounding.
fn embeddings<B: Backend>(b: &B, p: &Profile) {
    let r = ReferenceBackend;
    let exact = |got: B::Buf, want: &[f32], what: &str| {
        assert_close(
            &b.download(&got).unwrap(),
            &(p.round)(want),
            0.0,
            0.0,
            &format!("{} {what}", p.name),
        );
    };
    for (i, &(batch, channels, image_size, patch)) in [(2, 3, 32, 8), (1, 3, 28, 14), (3, 1, 9, 4)]
        .iter()
        .enumerate()
    {
        let s = PatchShape {
            batch,
            channels,
            image_size,
            patch,
        };
        let px = (p.round)(&random(
            batch * channels * image_size * image_size,
            i as u64,
            1.0,
        ));
        let len = batch * s.patches() * s.patch_dim();
        let mut want = vec![0.0; len];
        backend::im2col(&r, &mut want, &px, s).unwrap();
        let mut out = poisoned(b, len);
        backend::im2col(b, &mut out, &b.upload(&px).unwrap(), s).unwrap();
        exact(out, &want, &format!("im2col {s:?}"));
    }
    // With a class token (CLIP) and without (a family that embeds patches only).
    for with_class in [true, false] {
        let (batch, seq, dim) = (2, 7, 9);
        let lead = usize::from(with_class);
        let patches = (p.round)(&random(batch * (seq - lead) * dim, 3, 1.0));
        let class = (p.round)(&random(dim, 4, 1.0));
        let pos = (p.round)(&random(seq * dim, 5, 1.0));
        let mut want = vec![0.0; batch * seq * dim];
        let rc = with_class.then_some(&class);
        backend::vision_embed(&r, &mut want, &patches, rc, &pos, batch, seq, dim).unwrap();
        let mut out = poisoned(b, batch * seq * dim);
        let (bp, bc, bpos) = (
            b.upload(&patches).unwrap(),
            b.upload(&class).unwrap(),
            b.upload(&pos).unwrap(),
        );
        let bcls = with_class.then_some(&bc);
        backend::vision_embed(b, &mut out, &bp, bcls, &bpos, batch, seq, dim).unwrap();
        // Sums of two rounded values are rounded once more by an f16 backend.
        assert_close(
            &b.download(&out).unwrap(),
            &want,
            p.atol,
            p.rtol,
            &format!("{} vision_embed class {with_class}", p.name),
        );
        // Too few patch rows for the sequence.
        let short = b.upload(&patches[..patches.len() - dim]).unwrap();
        assert!(backend::vision_embed(b, &mut out, &short, bcls, &bpos, batch, seq, dim).is_err());
    }

    let token = (p.round)(&random(11 * 4, 6, 1.0));
    let tpos = (p.round)(&random(3 * 4, 7, 1.0));
    let ids = [10usize, 0, 5, 1, 1, 1];
    let mut want = vec![0.0; 24];
    backend::text_embed(
        &r,
        &mut want,
        &backend::rows(&r, &ids).unwrap(),
        &token,
        &tpos,
        3,
        4,
    )
    .unwrap();
    let mut out = poisoned(b, 24);
    let mut bids = backend::rows(b, &ids).unwrap();
    let (bt, bpos) = (b.upload(&token).unwrap(), b.upload(&tpos).unwrap());
    backend::text_embed(b, &mut out, &bids, &bt, &bpos, 3, 4).unwrap();
    assert_close(
        &b.download(&out).unwrap(),
        &want,
        p.atol,
        p.rtol,
        &format!("{} text_embed", p.name),
    );
    // Rewritten in place: an id past the vocabulary, then more ids than the index holds.
    backend::write_rows(b, &mut bids, &[11, 0, 0]).unwrap();
    assert!(backend::text_embed(b, &mut out, &bids, &bt, &bpos, 3, 4).is_err());
    assert!(backend::write_rows(b, &mut bids, &[0; 7]).is_err());

    let rows = backend::rows(b, &[10, 0, 3]).unwrap();
    let mut g = poisoned(b, 8);
    backend::gather_rows(b, &mut g, &bt, &rows, 2, 4).unwrap();
    let got = b.download(&g).unwrap();
    assert_eq!(&got[..4], &token[40..44], "{} gather_rows", p.name);
    assert_eq!(&got[4..8], &token[..4], "{} gather_rows", p.name);
    assert!(backend::gather_rows(b, &mut g, &bt, &backend::rows(b, &[11]).unwrap(), 1, 4).is_err());
    assert!(backend::gather_rows(b, &mut g, &bt, &rows, 4, 4).is_err());
}

fn logits_and_search<B: Backend + Retrieval>(b: &B, p: &Profile) {
    // Logits: f32 host embeddings, an all-zero row (scores 0), dims off every vector width.
    for (i, &(ra, rb, dim)) in [(1, 1, 1), (3, 1000, 512), (2, 7, 33), (0, 3, 8)]
        .iter()
        .enumerate()
    {
        let mut a = random(ra * dim, 10 + i as u64, 1.0);
        if ra > 1 {
            a[..dim].fill(0.0);
        }
        let c = random(rb * dim, 20 + i as u64, 1.0);
        let want = cliprt::similarity::scaled_cosine(&a, ra, &c, rb, dim, 100.0).unwrap();
        let got = b.scaled_cosine(&a, ra, &c, rb, dim, 100.0).unwrap();
        assert_close(
            &got,
            &want,
            2e-3,
            1e-4,
            &format!("{} logits {ra}x{rb}x{dim}", p.name),
        );
    }
    assert!(b.scaled_cosine(&[1.0; 4], 2, &[1.0; 4], 1, 3, 1.0).is_err());
    // Search: ids as the f64 oracle ranks them (ties by the lower index), scores close, k past the gallery.
    let cases: &[(usize, usize, usize, usize, bool)] = if p.small {
        &[(300, 64, 3, 10, false), (40, 17, 2, 50, true)]
    } else {
        &[
            (5000, 512, 5, 10, false),
            (1000, 33, 3, 100, true),
            (40, 17, 2, 50, false),
            (1, 8, 1, 1, true),
        ]
    };
    for &(rows, dim, nq, k, normalized) in cases {
        let mut g = random(rows * dim, rows as u64, 1.0);
        if normalized {
            cliprt::similarity::normalize_rows(&mut g, dim);
        }
        let q = random(nq * dim, 77, 1.0);
        let want = search_reference(&g, dim, &q, k, 1.0);
        let gal = b.upload_gallery(&g, dim, normalized).unwrap();
        let got = b.search(&gal, &q, k, 1.0).unwrap();
        assert_eq!(
            (got.queries, got.k),
            (want.queries, want.k),
            "{} search",
            p.name
        );
        // bf16 galleries round the rows: the ranking is compared by score, not by id.
        let bf16 = b.search_info(1).precision == "bf16";
        for qi in 0..nq {
            let (g_hits, w_hits): (Vec<_>, Vec<_>) =
                (got.hits(qi).collect(), want.hits(qi).collect());
            for ((gi, gs), (wi, ws)) in g_hits.iter().zip(&w_hits) {
                assert!(
                    (gs - ws).abs() < if bf16 { 1e-2 } else { 1e-4 },
                    "{} search score {gs} vs {ws}",
                    p.name
                );
                if !bf16 && (gs - ws).abs() < 1e-6 {
                    assert_eq!(gi, wi, "{} search rank", p.name);
                }
            }
        }
    }
    let gal = b.upload_gallery(&random(40, 1, 1.0), 4, false).unwrap();
    assert!(
        b.search(&gal, &[1.0; 3], 2, 1.0).is_err(),
        "queries not whole rows"
    );
    assert!(
        b.search(&gal, &[1.0; 4], b.max_k() + 1, 1.0).is_err(),
        "k over the limit"
    );
    assert!(
        b.upload_gallery(&[1.0; 5], 4, false).is_err(),
        "gallery not whole rows"
    );
}

/// The checked wrappers refuse wrong shapes before any backend code runs.
fn rejects_bad_shapes<B: Backend>(b: &B) {
    let lin = b.linear(&random(6, 1, 1.0), 2, 3, None).unwrap();
    let mut out = b.alloc(4).unwrap();
    let x = b.upload(&random(8, 2, 1.0)).unwrap();
    assert!(backend::gemm(
        b,
        &mut out,
        &x,
        &lin,
        GemmShape { m: 2, n: 2, k: 4 },
        Epilogue::Store
    )
    .is_err());
    assert!(backend::gemm(
        b,
        &mut out,
        &x,
        &lin,
        GemmShape { m: 3, n: 2, k: 3 },
        Epilogue::Store
    )
    .is_err());
    assert!(b.linear(&[1.0; 5], 2, 3, None).is_err());
    let s = AttnShape {
        batch: 1,
        seq: 2,
        heads: 1,
        head_dim: 4,
        causal: false,
    };
    let mut small = b.alloc(7).unwrap();
    assert!(backend::attention(b, &mut small, &b.alloc(24).unwrap(), s).is_err());
    // Key lengths: one per batch item, each in 1..=seq.
    let (mut out, qkv) = (b.alloc(8).unwrap(), b.alloc(24).unwrap());
    for lens in [&[0usize][..], &[3], &[1, 1]] {
        let lens = backend::rows(b, lens).unwrap();
        assert!(backend::attention_masked(b, &mut out, &qkv, s, &lens).is_err());
    }
    // Packed attention: the same bounds, lengths that sum to the stream's rows, and only where the backend has it.
    for (lens, rows) in [
        (&[0usize][..], 0),
        (&[3], 3),
        (&[1, 1], 2),
        (&[1], 2),
        (&[2], 1),
        (&[2], 3),
    ] {
        let lens = backend::rows(b, lens).unwrap();
        assert!(backend::attention_packed(b, &mut out, &qkv, s, &lens, rows).is_err());
    }
    let one = backend::rows(b, &[2]).unwrap();
    assert_eq!(
        backend::attention_packed(b, &mut out, &qkv, s, &one, 2).is_ok(),
        b.attends_packed()
    );
    let mut ln = b.alloc(8).unwrap();
    assert!(backend::layernorm(
        b,
        &mut ln,
        &x,
        &b.alloc(3).unwrap(),
        &b.alloc(4).unwrap(),
        2,
        4,
        1e-5
    )
    .is_err());
}

#[test]
fn reference_backend_conforms() {
    conform(
        &ReferenceBackend,
        &Profile {
            name: "reference".into(),
            round: same,
            atol: 0.0,
            rtol: 1e-12,
            attn: (0.0, 1e-12),
            small: false,
        },
    );
}

/// The oracle's key padding mask: a query row of an item with `len` valid keys equals the same query over that
/// item cut to its first `len` rows (plus the query row itself, for rows past the cut).
#[test]
fn reference_masked_attention_is_attention_over_the_valid_keys() {
    let (seq, heads, hd, len) = (9, 2, 8, 4);
    let s = AttnShape {
        batch: 1,
        seq,
        heads,
        head_dim: hd,
        causal: false,
    };
    let w = s.width();
    let qkv = random(seq * 3 * w, 5, 1.0);
    let mut masked = vec![0.0; seq * w];
    let lens = backend::rows(&ReferenceBackend, &[len]).unwrap();
    backend::attention_masked(&ReferenceBackend, &mut masked, &qkv, s, &lens).unwrap();
    for q in 0..seq {
        // Rows 0..len are the valid keys; the query row goes last, and the cut sequence is len + 1 long with the
        // query's own key masked (len valid keys).
        let mut cut: Vec<f32> = qkv[..len * 3 * w].to_vec();
        cut.extend_from_slice(&qkv[q * 3 * w..(q + 1) * 3 * w]);
        let c = AttnShape { seq: len + 1, ..s };
        let mut want = vec![0.0; (len + 1) * w];
        let cut_lens = backend::rows(&ReferenceBackend, &[len]).unwrap();
        backend::attention_masked(&ReferenceBackend, &mut want, &cut, c, &cut_lens).unwrap();
        let mut plain = vec![0.0; len * w];
        let p = AttnShape { seq: len, ..s };
        backend::attention(
            &ReferenceBackend,
            &mut plain,
            &cut[..len * 3 * w].to_vec(),
            p,
        )
        .unwrap();
        assert_eq!(&masked[q * w..(q + 1) * w], &want[len * w..]);
        if q < len {
            assert_eq!(&masked[q * w..(q + 1) * w], &plain[q * w..(q + 1) * w]);
        }
    }
}

#[test]
fn every_cpu_engine_conforms() {
    for e in MatrixEngine::available_engines() {
        let cpu = CpuBackend::with_engine(e).unwrap();
        conform(&cpu, &cpu_profile(&cpu));
        // The AMX engines' opt-in attention on tiles.
        let tiles = cpu.clone().with_tile_attention(true);
        if tiles.tile_attention() {
            let mut p = cpu_profile(&tiles);
            p.name += " with tile attention";
            conform_op(&tiles, &p, "attention");
        }
    }
}

/// The CUDA simulator, once per kernel variant of the registry (the other ops at their defaults): a variant added
/// to `src/cuda/kernels.rs` is checked here without editing this file.
#[cfg(feature = "cuda")]
#[test]
fn cuda_simulator_conforms_with_every_kernel_variant() {
    use cliprt::cuda::{kernels::OPS, CudaBackend};
    // Every op at its default variant, then each other variant on the checks of its op.
    let Some(sim) = common::or_skip_sim(CudaBackend::simulated(&[])) else {
        return;
    };
    conform(&sim, &f16_profile("cuda-sim defaults".into(), true));
    for op in OPS {
        for v in op.variants.iter().filter(|v| v.name != op.default) {
            let sim = CudaBackend::simulated(&[(op.name, v.name)]).unwrap();
            conform_op(
                &sim,
                &f16_profile(format!("cuda-sim {} {}", op.name, v.name), true),
                op.name,
            );
        }
    }
}

/// A GPU, once per kernel variant, at the full shapes.
#[cfg(feature = "cuda")]
#[test]
fn gpu_conforms_with_every_kernel_variant() {
    use cliprt::cuda::{kernels::OPS, CudaBackend};
    if common::or_skip_gpu(CudaBackend::new(0)).is_none() {
        return;
    }
    conform(
        &CudaBackend::new(0).unwrap(),
        &f16_profile("cuda defaults".into(), false),
    );
    for op in OPS {
        for v in op.variants.iter().filter(|v| v.name != op.default) {
            let gpu = CudaBackend::with_variants(0, &[(op.name, v.name)]).unwrap();
            conform_op(
                &gpu,
                &f16_profile(format!("cuda {} {}", op.name, v.name), false),
                op.name,
            );
        }
    }
}
