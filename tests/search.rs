//! The fused top-k search and logits against the f64 brute-force reference: random galleries of awkward sizes,
//! unnormalized rows, exact ties (lower index first), k > N, every SIMD tier, and bf16 galleries (recall).

mod common;

use cliprt::cpu::Isa;
use cliprt::search::{self, Gallery, Storage};
use cliprt::Error;
use common::{assert_matches, random};

#[test]
fn f32_top_k_matches_the_f64_reference_on_every_tier() {
    let cases = [
        (1, 1, 1, 1),
        (7, 3, 2, 10), // k > N
        (63, 17, 5, 4),
        (65, 16, 16, 65),
        (1000, 512, 17, 10),
        (5003, 64, 64, 100),
        (777, 768, 65, 7),
        (300, 33, 130, 300),
    ];
    for tier in Isa::available_tiers() {
        for (c, &(n, d, q, k)) in cases.iter().enumerate() {
            let seed = 1000 + c as u64;
            // Unnormalized rows of different lengths: the norms must be fused in.
            let g: Vec<f32> = random(n * d, seed, 1.0)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1.0 + (i / d % 5) as f32))
                .collect();
            let qs = random(q * d, seed + 1, 3.0);
            let gallery = Gallery::new(Storage::F32(&g), d, false).unwrap();
            let got = search::search_with(tier, &gallery, &qs, k, 1.0).unwrap();
            let want = search::search_reference(&g, d, &qs, k + 1, 1.0);
            assert_matches(
                &got,
                &want,
                k.min(n),
                1e-5,
                1e-5,
                &format!("{tier:?} n{n} d{d} q{q} k{k}"),
            );
            // Scaled like CLIP's logits: errors scale with it.
            let got = search::search_with(tier, &gallery, &qs, k, 100.0).unwrap();
            let want = search::search_reference(&g, d, &qs, k + 1, 100.0);
            assert_matches(
                &got,
                &want,
                k.min(n),
                1e-3,
                1e-3,
                &format!("{tier:?} scaled n{n}"),
            );
        }
    }
}

#[test]
fn exact_ties_come_out_lower_index_first() {
    let d = 24;
    let base = random(4 * d, 5, 1.0);
    // 100 rows: copies of 4 vectors, so every score appears 25 times, bit for bit.
    let g: Vec<f32> = (0..100)
        .flat_map(|i| base[(i % 4) * d..(i % 4 + 1) * d].to_vec())
        .collect();
    let qs = random(3 * d, 6, 1.0);
    for tier in Isa::available_tiers() {
        for normalized in [false, true] {
            let gallery = Gallery::new(Storage::F32(&g), d, normalized).unwrap();
            let got = search::search_with(tier, &gallery, &qs, 30, 1.0).unwrap();
            for q in 0..3 {
                let hits: Vec<(usize, f32)> = got.hits(q).collect();
                for w in hits.windows(2) {
                    assert!(
                        w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0),
                        "{tier:?}: {w:?}"
                    );
                }
                // The best vector's 25 copies first, in index order, then the next one's.
                let best = hits[0].0 % 4;
                let firsts: Vec<usize> = hits[..25].iter().map(|h| h.0).collect();
                assert_eq!(
                    firsts,
                    (0..25).map(|i| best + 4 * i).collect::<Vec<_>>(),
                    "{tier:?}"
                );
            }
        }
    }
}

#[test]
fn normalized_flag_skips_the_norm_pass_with_the_same_result() {
    let (n, d) = (500, 40);
    let mut g = random(n * d, 7, 1.0);
    cliprt::similarity::normalize_rows(&mut g, d);
    let qs = random(5 * d, 8, 1.0);
    let a = search::search(
        &Gallery::new(Storage::F32(&g), d, true).unwrap(),
        &qs,
        20,
        1.0,
    )
    .unwrap();
    let b = search::search(
        &Gallery::new(Storage::F32(&g), d, false).unwrap(),
        &qs,
        20,
        1.0,
    )
    .unwrap();
    let want = search::search_reference(&g, d, &qs, 21, 1.0);
    assert_matches(&a, &want, 20, 1e-5, 1e-5, "normalized");
    assert_matches(&b, &want, 20, 1e-5, 1e-5, "renormalized");
}

#[test]
fn bf16_gallery_keeps_recall_at_k_above_0_99() {
    let (n, d, k) = (20_000, 511, 10);
    let mut g = random(n * d, 9, 1.0);
    cliprt::similarity::normalize_rows(&mut g, d);
    let pairs = search::to_bf16_pairs(&g, d);
    // 3 queries take the row-dot kernel, 32 the tiles (odd dim: a zero-padded last pair).
    for (tier, q) in Isa::available_tiers()
        .into_iter()
        .flat_map(|t| [(t, 3), (t, 32)])
    {
        let qs = random(q * d, 10 + q as u64, 1.0);
        let exact = search::search_reference(&g, d, &qs, k, 1.0);
        let gallery = Gallery::new(Storage::Bf16(&pairs), d, false).unwrap();
        assert_eq!(gallery.precision(), "bf16");
        let got = search::search_with(tier, &gallery, &qs, k, 1.0).unwrap();
        let found: usize = (0..q)
            .map(|i| {
                let want: Vec<usize> = exact.hits(i).map(|h| h.0).collect();
                got.hits(i).filter(|h| want.contains(&h.0)).count()
            })
            .sum();
        let recall = found as f64 / (q * k) as f64;
        println!("{tier:?} {q} queries: bf16 recall@{k} {recall:.4}");
        assert!(recall >= 0.99, "{tier:?}: recall {recall}");
        // Scores stay close to the exact ones (bf16 inputs, f32 sums).
        for (i, s) in got.scores.iter().enumerate() {
            assert!(
                (s - exact.scores[i]).abs() < 0.02,
                "{tier:?} score {s} vs {}",
                exact.scores[i]
            );
        }
    }
}

#[test]
fn logits_match_the_host_scaled_cosine() {
    for &(n, q, d) in &[(1, 1, 1), (1000, 3, 512), (33, 70, 17), (5, 16, 768)] {
        let g = random(n * d, 11, 1.0);
        let qs = random(q * d, 12, 2.0);
        let gallery = Gallery::new(Storage::F32(&g), d, false).unwrap();
        let got = search::logits(&gallery, &qs, 100.0).unwrap();
        let want = cliprt::similarity::scaled_cosine(&qs, q, &g, n, d, 100.0).unwrap();
        common::assert_close(&got, &want, 1e-3, 1e-5, &format!("logits {n}x{q}x{d}"));
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let g = random(10 * 4, 1, 1.0);
    let gallery = Gallery::new(Storage::F32(&g), 4, false).unwrap();
    assert!(matches!(
        search::search(&gallery, &[], 3, 1.0),
        Err(Error::EmptyInput(_))
    ));
    assert!(matches!(
        search::search(&gallery, &[1.0; 5], 3, 1.0),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        search::search(&gallery, &[1.0; 4], 0, 1.0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        search::search(&gallery, &[1.0; 4], 5000, 1.0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        search::search(&gallery, &[1.0; 4], 3, f32::NAN),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Gallery::new(Storage::F32(&g[..39]), 4, false),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        Gallery::new(Storage::F32(&g), 0, false),
        Err(Error::InvalidArgument(_))
    ));
    let empty = Gallery::new(Storage::F32(&[]), 4, false).unwrap();
    assert!(matches!(
        search::search(&empty, &[1.0; 4], 3, 1.0),
        Err(Error::EmptyInput(_))
    ));
    // A zero query scores 0 against everything instead of dividing by zero.
    let got = search::search(&gallery, &[0.0; 4], 3, 1.0).unwrap();
    assert!(got.scores.iter().all(|&s| s == 0.0) && got.indices == [0, 1, 2]);
}
