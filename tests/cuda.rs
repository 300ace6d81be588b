//! The CUDA backend: every kernel against the f64 reference backend on random inputs and awkward shapes (outputs
//! poisoned with NaN before each launch), the fixtures' embeddings against HF's float64 references, and GPU
//! against CPU on synthetic ViT-B/32 and ViT-L/14.
//!
//! Each kernel check runs on the CUDA simulator (the same kernels and launch code on the CPU, under
//! AddressSanitizer: src/cuda/sim.rs) at small shapes, and on the GPU when there is one at CLIP's full shapes.
//! Without a C++ compiler the simulator runs print "skipped: no CUDA simulator" (`CLIPRT_REQUIRE_SIM=1`, set by
//! CI, makes that a failure); without a GPU the GPU runs print "skipped: no CUDA device"
//! (`CLIPRT_REQUIRE_CUDA=1`, set by scripts/gpu/run.sh, makes that a failure). The kernel compile check and the
//! no-GPU error paths run everywhere.
#![cfg(feature = "cuda")]

mod common;

use cliprt::backend::reference::ReferenceBackend;
use cliprt::backend::{self, AttnShape, Backend, Epilogue, GemmShape};
use cliprt::config::presets;
use cliprt::cpu::CpuBackend;
use cliprt::cuda::CudaBackend;
use cliprt::model::ClipModel;
use cliprt::model::ClipWeights;
use cliprt::model::TextBatch;
use cliprt::search::Retrieval;
use cliprt::{Clip, Device, Error};
use common::*;
use half::f16;

fn gpu() -> Option<CudaBackend> {
    or_skip(CudaBackend::new(0), "CLIPRT_REQUIRE_CUDA", "no CUDA device")
}

/// The CUDA backend on the CPU simulator with `choices` of kernel variants.
fn sim(choices: &[(&str, &str)]) -> Option<CudaBackend> {
    or_skip(
        CudaBackend::simulated(choices),
        "CLIPRT_REQUIRE_SIM",
        "no CUDA simulator",
    )
}

/// Every device a kernel check runs on: the simulator, and the GPU when present.
fn devices(choices: &[(&str, &str)]) -> Vec<CudaBackend> {
    let mut all: Vec<CudaBackend> = sim(choices).into_iter().collect();
    if gpu().is_some() {
        all.push(CudaBackend::with_variants(0, choices).unwrap());
    }
    all
}

/// Values as the GPU stores them: the reference then sees exactly the GPU's inputs, and the comparison measures
/// the kernel, not the input rounding.
fn r16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

/// A device buffer full of NaN: any element a kernel fails to write shows up in the comparison.
fn poisoned(g: &CudaBackend, len: usize) -> cliprt::cuda::CudaBuf {
    let mut buf = g.alloc(len).unwrap();
    g.write(&mut buf, &vec![f32::NAN; len]).unwrap();
    buf
}

/// One GEMM on `g` against the reference: random fp16-exact inputs from `seed`, the output poisoned (or the
/// residual, for Accumulate).
fn gemm_case(g: &CudaBackend, s: GemmShape, ep: Epilogue, with_bias: bool, seed: u64, label: &str) {
    let r = ReferenceBackend;
    let GemmShape { m, n, k } = s;
    let x = r16(&random(m * k, seed, 1.0));
    let w = r16(&random(n * k, seed + 100, 1.0 / (k as f32).sqrt()));
    let bias = r16(&random(n, seed + 200, 0.5));
    let init = r16(&random(m * n, seed + 300, 1.0));
    let bias = with_bias.then_some(bias.as_slice());

    let (rl, rx) = (r.linear(&w, n, k, bias).unwrap(), r.upload(&x).unwrap());
    let mut want = r.upload(&init).unwrap();
    backend::gemm(&r, &mut want, &rx, &rl, s, ep).unwrap();

    let (gl, gx) = (g.linear(&w, n, k, bias).unwrap(), g.upload(&x).unwrap());
    let mut out = if ep == Epilogue::Accumulate {
        g.upload(&init).unwrap()
    } else {
        poisoned(g, m * n)
    };
    backend::gemm(g, &mut out, &gx, &gl, s, ep).unwrap();
    assert_close(
        &g.download(&out).unwrap(),
        &want,
        2e-3,
        3e-3,
        &format!("gemm {label} {s:?} {ep:?} bias {with_bias}"),
    );
}

/// One attention on `g` against the reference, random fp16-exact q|k|v from `seed`, the output poisoned.
fn attention_case(g: &CudaBackend, s: AttnShape, seed: u64, label: &str) {
    let r = ReferenceBackend;
    let rows = s.batch * s.seq;
    let qkv = r16(&random(rows * 3 * s.width(), seed, 1.0));
    let mut want = r.alloc(rows * s.width()).unwrap();
    backend::attention(&r, &mut want, &r.upload(&qkv).unwrap(), s).unwrap();
    let mut out = poisoned(g, rows * s.width());
    backend::attention(g, &mut out, &g.upload(&qkv).unwrap(), s).unwrap();
    assert_close(
        &g.download(&out).unwrap(),
        &want,
        2e-3,
        3e-3,
        &format!("attention {label} {s:?}"),
    );
}

/// One layernorm on `g` against the reference: rows with an offset mean, as in a residual stream (the two-pass
/// variance must not cancel), the output poisoned.
fn layernorm_case(g: &CudaBackend, rows: usize, dim: usize, seed: u64, label: &str) {
    let r = ReferenceBackend;
    let x: Vec<f32> = r16(&random(rows * dim, seed, 3.0)
        .iter()
        .map(|v| v + 2.0)
        .collect::<Vec<_>>());
    let gamma = r16(&random(dim, seed + 1, 1.0));
    let beta = r16(&random(dim, seed + 2, 0.5));
    let mut want = r.alloc(rows * dim).unwrap();
    let (rg, rb) = (r.upload(&gamma).unwrap(), r.upload(&beta).unwrap());
    let rx = r.upload(&x).unwrap();
    backend::layernorm(&r, &mut want, &rx, &rg, &rb, rows, dim, 1e-5).unwrap();
    let mut out = poisoned(g, rows * dim);
    let (gg, gb) = (g.upload(&gamma).unwrap(), g.upload(&beta).unwrap());
    let gx = g.upload(&x).unwrap();
    backend::layernorm(g, &mut out, &gx, &gg, &gb, rows, dim, 1e-5).unwrap();
    assert_close(
        &g.download(&out).unwrap(),
        &want,
        3e-3,
        3e-3,
        &format!("layernorm {label} {rows}x{dim}"),
    );
}

#[test]
fn attention_rejects_head_dims_over_128() {
    for g in devices(&[]) {
        check_head_dim_limit(&g);
    }
}

fn check_head_dim_limit(g: &CudaBackend) {
    let s = AttnShape {
        batch: 1,
        seq: 4,
        heads: 1,
        head_dim: 160,
        causal: false,
    };
    let qkv = g.alloc(4 * 3 * 160).unwrap();
    let mut out = g.alloc(4 * 160).unwrap();
    assert!(matches!(
        backend::attention(g, &mut out, &qkv, s),
        Err(Error::UnsupportedModel(_))
    ));
}

#[test]
fn fixture_embeddings_match_hf_float64_on_gpu() {
    let mut on = Vec::new();
    if sim(&[]).is_some() {
        on.push(Device::CudaSim);
    }
    if gpu().is_some() {
        on.push(Device::Cuda(0));
    }
    for device in on {
        check_fixtures(device);
    }
}

fn check_fixtures(device: Device) {
    // The simulator takes every 5th prompt (spread over short, long and truncated ones): its cost grows with the
    // text batch, and each prompt's embedding does not depend on the others.
    let step = if device == Device::CudaSim { 5 } else { 1 };
    for &name in MODEL_FIXTURES {
        let clip = Clip::load(fixture(name), device).unwrap();
        let r = reference(name);
        let dim = clip.config().projection_dim;
        let img = clip.embed_pixels(&r.pixels, r.images.len()).unwrap();
        let picked: Vec<usize> = (0..r.texts.len()).step_by(step).collect();
        let texts: Vec<&str> = picked.iter().map(|&t| r.texts[t].as_str()).collect();
        let txt = clip.embed_texts(&texts).unwrap();
        let want_text: Vec<f32> = picked
            .iter()
            .flat_map(|&t| r.text_embeds[t * dim..(t + 1) * dim].to_vec())
            .collect();
        let want_logits: Vec<f32> = (0..r.images.len())
            .flat_map(|i| picked.iter().map(move |&t| (i, t)))
            .map(|(i, t)| r.logits[i * r.texts.len() + t])
            .collect();
        let wi = assert_rows_match(
            &img.data,
            &r.image_embeds,
            dim,
            0.9995,
            0.05,
            &format!("{name} image"),
        );
        let wt = assert_rows_match(
            &txt.data,
            &want_text,
            dim,
            0.9995,
            0.05,
            &format!("{name} text"),
        );
        let logits = clip.logits(&img, &txt).unwrap();
        assert_close(
            &logits,
            &want_logits,
            0.05 * r.logit_scale,
            0.0,
            &format!("{name} logits"),
        );
        println!(
            "{name} on {device:?}: {} texts, worst image cos {:.6} abs {:.2e}; text cos {:.6} abs {:.2e}",
            texts.len(),
            wi.0,
            wi.1,
            wt.0,
            wt.1
        );
    }
}

#[test]
fn gpu_matches_cpu_on_synthetic_vit_b_32_and_vit_l_14() {
    if gpu().is_none() {
        return;
    }
    for arch in ["vit-b-32", "vit-l-14"] {
        let config = presets::by_name(arch).unwrap();
        let gpu_model = ClipModel::new(
            CudaBackend::new(0).unwrap(),
            &config,
            ClipWeights::random(&config, 7),
        )
        .unwrap();
        let cpu_model = ClipModel::new(
            CpuBackend::default(),
            &config,
            ClipWeights::random(&config, 7),
        )
        .unwrap();
        let size = config.vision.image_size;
        let batch = 3;
        let pixels = random(batch * 3 * size * size, 8, 2.0);
        let (gi, ci) = (
            gpu_model.encode_images(&pixels, batch).unwrap(),
            cpu_model.encode_images(&pixels, batch).unwrap(),
        );
        let rows = cliprt::bench::prompt_ids()[..5].to_vec();
        let tb = TextBatch::new(&rows, &config.text).unwrap();
        let (gt, ct) = (
            gpu_model.encode_texts(&tb).unwrap(),
            cpu_model.encode_texts(&tb).unwrap(),
        );
        let dim = config.projection_dim;
        let wi = assert_rows_match(&gi, &ci, dim, 0.999, 0.05, &format!("{arch} image"));
        let wt = assert_rows_match(&gt, &ct, dim, 0.999, 0.05, &format!("{arch} text"));
        println!(
            "{arch} gpu vs cpu: worst image cos {:.6}, text cos {:.6}",
            wi.0, wt.0
        );
    }
}

/// The whole ViT-B/32 at its real shapes on the simulator against the CPU, for every variant set (slow: minutes
/// per set on 2 cores; `cargo test --release --test cuda -- --ignored --nocapture`).
#[test]
#[ignore]
fn simulator_matches_cpu_on_synthetic_vit_b_32() {
    let config = presets::by_name("vit-b-32").unwrap();
    let cpu = ClipModel::new(
        CpuBackend::default(),
        &config,
        ClipWeights::random(&config, 7),
    )
    .unwrap();
    let size = config.vision.image_size;
    let pixels = random(3 * size * size, 8, 2.0);
    let rows = cliprt::bench::prompt_ids()[..2].to_vec();
    let tb = TextBatch::new(&rows, &config.text).unwrap();
    let (ci, ct) = (
        cpu.encode_images(&pixels, 1).unwrap(),
        cpu.encode_texts(&tb).unwrap(),
    );
    // Run i takes the i-th variant of every op (its default where it has fewer): every variant of the registry
    // runs the whole model, a new one included, in as many runs as the longest op has variants.
    let runs = cliprt::cuda::OPS
        .iter()
        .map(|o| o.variants.len())
        .max()
        .unwrap_or(1);
    for i in 0..runs {
        let choices: Vec<(&str, &str)> = cliprt::cuda::OPS
            .iter()
            .map(|o| (o.name, o.variants.get(i).map_or(o.default, |v| v.name)))
            .collect();
        let v = format!("variant #{}", i + 1);
        let Some(g) = sim(&choices) else {
            return;
        };
        let model = ClipModel::new(g, &config, ClipWeights::random(&config, 7)).unwrap();
        let t = std::time::Instant::now();
        let (gi, gt) = (
            model.encode_images(&pixels, 1).unwrap(),
            model.encode_texts(&tb).unwrap(),
        );
        let dim = config.projection_dim;
        let wi = assert_rows_match(&gi, &ci, dim, 0.999, 0.05, &format!("{v} image"));
        let wt = assert_rows_match(&gt, &ct, dim, 0.999, 0.05, &format!("{v} text"));
        println!(
            "vit-b-32 gemm+attention {v} on the simulator vs cpu: image cos {:.6}, text cos {:.6} ({:.0} s)",
            wi.0,
            wt.0,
            t.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn cuda_graph_replays_match_the_eager_forward() {
    if gpu().is_none() {
        return;
    }
    let config = presets::by_name("vit-b-32").unwrap();
    let recorded = ClipModel::new(
        CudaBackend::new(0).unwrap(),
        &config,
        ClipWeights::random(&config, 3),
    )
    .unwrap();
    let eager_backend = CudaBackend::new(0).unwrap();
    eager_backend.disable_graphs("eager reference");
    let eager = ClipModel::new(eager_backend, &config, ClipWeights::random(&config, 3)).unwrap();
    let size = config.vision.image_size;
    for batch in [1, 3, 1] {
        let pixels = random(batch * 3 * size * size, 20 + batch as u64, 2.0);
        // Twice: the first call records and replays, the second only replays.
        for _ in 0..2 {
            let got = recorded.encode_images(&pixels, batch).unwrap();
            let want = eager.encode_images(&pixels, batch).unwrap();
            assert_eq!(
                got, want,
                "batch {batch}: a replay differs from the eager forward"
            );
        }
    }
    // The text tower too, with different prompts at the same shape (the ids are rewritten, the graph replayed).
    let prompts = cliprt::bench::prompt_ids();
    for rows in [&prompts[..2], &prompts[2..4], &prompts[..2]] {
        let tb = TextBatch::new(rows, &config.text).unwrap();
        for _ in 0..2 {
            assert_eq!(
                recorded.encode_texts(&tb).unwrap(),
                eager.encode_texts(&tb).unwrap(),
                "text: a replay differs from the eager forward"
            );
        }
    }
    assert_eq!(
        recorded.backend.graphs_off(),
        None,
        "graphs were switched off"
    );
}

#[test]
fn chunked_image_batches_match_one_batch() {
    // On the simulator (and the GPU): a batch of 7 in chunks of 3 (three chunks, both parities, a short last one)
    // gives exactly what one chunk of 7 gives. On the GPU this also exercises the pinned staging copies.
    let config =
        cliprt::config::ClipConfig::from_file(&fixture("tiny-openai").join("config.json")).unwrap();
    let size = config.vision.image_size;
    let pixels = random(7 * 3 * size * size, 31, 2.0);
    for g in devices(&[]) {
        let name = g.device_info().name.clone();
        let whole = ClipModel::new(g, &config, ClipWeights::random(&config, 5)).unwrap();
        whole.backend.set_image_chunk(7);
        let want = whole.encode_images(&pixels, 7).unwrap();
        whole.backend.set_image_chunk(3);
        // Twice: recorded graphs (where there are) replay the same way.
        for _ in 0..2 {
            assert_eq!(
                whole.encode_images(&pixels, 7).unwrap(),
                want,
                "chunks of 3 on {name}"
            );
        }
        let cpu = ClipModel::new(
            CpuBackend::default(),
            &config,
            ClipWeights::random(&config, 5),
        )
        .unwrap();
        let dim = config.projection_dim;
        assert_rows_match(
            &want,
            &cpu.encode_images(&pixels, 7).unwrap(),
            dim,
            0.9995,
            0.05,
            &format!("{name} vs cpu"),
        );
    }
}

#[test]
fn gpu_top_k_matches_the_cpu_search() {
    for g in devices(&[]) {
        check_top_k(&g);
    }
}

fn check_top_k(g: &CudaBackend) {
    use cliprt::search::{self, Gallery, Storage};
    // The simulator's cases: k > N, several slices, candidates overflowing the sort buffer (k = 300 over 1200
    // rows), one query at the GPU's k limit.
    let small = [
        (1, 1, 1, 1),
        (7, 3, 2, 10),
        (1000, 64, 3, 10),
        (1200, 33, 5, 300),
        (3000, 8, 1, 2048),
    ];
    // (rows, dim, queries, k): k > N, one query over many slices, many queries, k at the GPU limit.
    let full = [
        (1, 1, 1, 1),
        (7, 3, 2, 10),
        (1000, 512, 17, 10),
        (5003, 64, 64, 100),
        (777, 768, 3, 7),
        (300, 33, 130, 300),
        (20_000, 512, 1, 2048),
        (100_000, 256, 4, 50),
    ];
    let cases: &[_] = if g.is_simulated() { &small } else { &full };
    for (c, &(n, d, q, k)) in cases.iter().enumerate() {
        let rows = random(n * d, 500 + c as u64, 1.0);
        let qs = random(q * d, 600 + c as u64, 1.0);
        for normalized in [false, true] {
            let mut data = rows.clone();
            if normalized {
                cliprt::similarity::normalize_rows(&mut data, d);
            }
            let want = search::search(
                &Gallery::new(Storage::F32(&data), d, normalized).unwrap(),
                &qs,
                k + 1,
                1.0,
            )
            .unwrap();
            let dev = g.upload_gallery(&data, d, normalized).unwrap();
            let got = g.search(&dev, &qs, k, 1.0).unwrap();
            assert_matches(
                &got,
                &want,
                k.min(n),
                1e-5,
                1e-5,
                &format!("gpu top-k n{n} d{d} q{q} k{k} normalized {normalized}"),
            );
        }
    }
    // Exact ties: copies of 4 vectors, lower index first.
    let d = 24;
    let base = random(4 * d, 5, 1.0);
    let data: Vec<f32> = (0..1000)
        .flat_map(|i| base[(i % 4) * d..(i % 4 + 1) * d].to_vec())
        .collect();
    let qs = random(2 * d, 6, 1.0);
    let dev = g.upload_gallery(&data, d, false).unwrap();
    let got = g.search(&dev, &qs, 300, 1.0).unwrap();
    let want = search::search(
        &Gallery::new(Storage::F32(&data), d, false).unwrap(),
        &qs,
        300,
        1.0,
    )
    .unwrap();
    assert_eq!(got.indices, want.indices);
    assert!(matches!(
        g.search(&dev, &qs, 4096, 1.0),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn profile_validates_and_times_every_variant() {
    if gpu().is_none() {
        return;
    }
    let cfg = cliprt::cuda::profile::ProfileConfig {
        device: Device::Cuda(0),
        ops: vec!["all".into()],
        archs: vec!["vit-b-32".into()],
        batches: vec![2],
        reps: 3,
    };
    let mut rows = Vec::new();
    cliprt::cuda::profile::run(&cfg, |r| rows.push(r.clone())).unwrap();
    for r in &rows {
        println!(
            "{} {} {} {} {:?}",
            r.op, r.shape, r.variant, r.status, r.median_ms
        );
        assert!(
            r.status.starts_with("ok") || r.status.starts_with("skipped"),
            "{r:?}"
        );
    }
    let gemm_variants = cliprt::cuda::kernels::op("gemm").unwrap().variants.len();
    assert!(
        rows.iter()
            .filter(|r| r.op == "gemm" && r.variant != "cublas")
            .count()
            >= 12 * gemm_variants
    );
}

#[test]
fn missing_gpu_is_a_typed_error_and_the_cpu_keeps_working() {
    // With a GPU present, ask for an ordinal past the last device instead.
    let ordinal = match cliprt::cuda::device_count() {
        Ok(n) => n,
        Err(e) => {
            assert!(matches!(e, Error::DeviceUnavailable(_)), "{e:?}");
            0
        }
    };
    match Clip::load(fixture("tiny-openai"), Device::Cuda(ordinal)) {
        Err(Error::DeviceUnavailable(msg)) => assert!(!msg.is_empty()),
        Err(e) => panic!("expected DeviceUnavailable, got {e:?}"),
        Ok(_) => panic!("cuda:{ordinal} does not exist but loaded"),
    }
    let clip = Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap();
    assert_eq!(clip.embed_texts(&["still works"]).unwrap().rows, 1);
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    if let Err(e) = cliprt::cuda::nvrtc_info() {
        assert!(
            std::env::var_os("CLIPRT_REQUIRE_NVRTC").is_none(),
            "CLIPRT_REQUIRE_NVRTC is set, but: {e}"
        );
        println!("skipped: no NVRTC ({e})");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let reports: Vec<_> = cliprt::cuda::check(arch)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        let symbols: Vec<&str> = reports
            .iter()
            .flat_map(|r| r.kernels.iter().map(|k| k.symbol.as_str()))
            .collect();
        for op in cliprt::cuda::OPS {
            for v in op.variants {
                assert!(
                    symbols.contains(&v.symbol),
                    "{} missing from the {arch} build",
                    v.symbol
                );
            }
        }
        for k in reports.iter().flat_map(|r| &r.kernels) {
            assert_eq!(
                (k.spill_stores, k.spill_loads, k.stack_bytes),
                (0, 0, 0),
                "{} on {arch}",
                k.symbol
            );
            assert!(
                k.registers > 0 && k.registers <= 255,
                "{}: {} registers",
                k.symbol,
                k.registers
            );
        }
    }
}

#[test]
fn unknown_kernel_variant_is_an_error() {
    // Only the registry is consulted: no GPU needed.
    let op = cliprt::cuda::kernels::op("gemm").unwrap();
    let got = op.pick(Some("v999"));
    assert!(matches!(got, Err(Error::InvalidArgument(m)) if m.contains("CLIPRT_KERNEL_GEMM=v999")));
    assert_eq!(op.pick(None).unwrap().symbol, "gemm_f16_v1");
    assert_eq!(op.pick(Some("v1")).unwrap().symbol, "gemm_f16_v1");
}

#[test]
fn simulator_reports_bad_launches_and_out_of_bounds_accesses() {
    if sim(&[]).is_none() {
        return;
    }
    use cliprt::cuda::sim::{SimArg, Simulator};
    let s = Simulator::start().unwrap();
    let x = s.alloc(2 * 8).unwrap(); // one row of 8 halves
    let out = s.alloc(2 * 8).unwrap();
    let rows = s.alloc(4).unwrap();
    let (block, one) = ((256, 1, 1), (1, 1, 1));
    // Launch errors leave the simulator running, as cuLaunchKernel's do.
    let err = s
        .launch(
            "gather_rows_f16_v1",
            one,
            block,
            0,
            &[SimArg::Ptr(out.ptr())],
        )
        .unwrap_err();
    assert!(err.to_string().contains("takes arguments (pppii)"), "{err}");
    let err = s.launch("no_such_kernel", one, block, 0, &[]).unwrap_err();
    assert!(err.to_string().contains("no kernel named"), "{err}");
    let err = s
        .launch("gemm_f16_v2", one, block, 60 * 1024, &[])
        .unwrap_err();
    assert!(err.to_string().contains("takes arguments"), "{err}");
    // Row 5 of a one-row matrix: AddressSanitizer stops the kernel, and the simulator stays dead.
    s.write(&rows, 0, &5u32.to_le_bytes()).unwrap();
    let args = [
        SimArg::Ptr(out.ptr()),
        SimArg::Ptr(x.ptr()),
        SimArg::Ptr(rows.ptr()),
        SimArg::I32(1),
        SimArg::I32(8),
    ];
    let err = s
        .launch("gather_rows_f16_v1", one, block, 0, &args)
        .unwrap_err();
    assert!(err.to_string().contains("heap-buffer-overflow"), "{err}");
    assert!(s.alloc(4).is_err());
}

#[test]
fn simulator_enforces_the_dynamic_shared_memory_limit() {
    if sim(&[]).is_none() {
        return;
    }
    use cliprt::cuda::sim::{SimArg, Simulator};
    let s = Simulator::start().unwrap();
    let m = s.alloc(256).unwrap();
    let p = SimArg::Ptr(m.ptr());
    let args = [
        p,
        p,
        p,
        p,
        SimArg::I32(1),
        SimArg::I32(1),
        SimArg::I32(8),
        SimArg::I32(0),
        SimArg::I32(0),
        SimArg::I32(1),
    ];
    // 60 KiB is over the default 48 KiB until the kernel's limit is raised, as on a GPU.
    let err = s
        .launch("gemm_f16_v2", (1, 1, 1), (256, 1, 1), 60 * 1024, &args)
        .unwrap_err();
    assert!(err.to_string().contains("exceed its limit"), "{err}");
    s.set_max_dynamic_smem("gemm_f16_v2", 60 * 1024).unwrap();
    s.launch("gemm_f16_v2", (1, 1, 1), (256, 1, 1), 60 * 1024, &args)
        .unwrap();
}

#[test]
fn kernels_have_no_data_races_under_thread_sanitizer() {
    // Every variant of every op at tiny shapes on the simulator built with ThreadSanitizer: a shared- or
    // global-memory access that races with another CUDA thread's (no barrier between) ends it with the report.
    use cliprt::cuda::sim::Sanitizer;
    let racecheck = |choices: &[(&str, &str)]| {
        or_skip(
            CudaBackend::simulated_with(choices, Sanitizer::Thread),
            "CLIPRT_REQUIRE_SIM",
            "no CUDA simulator",
        )
    };
    for v in cliprt::cuda::kernels::op("gemm").unwrap().variants {
        let Some(g) = racecheck(&[("gemm", v.name)]) else {
            return;
        };
        // More k tiles than pipeline stages, edges in both directions.
        let s = GemmShape {
            m: 70,
            n: 72,
            k: 200,
        };
        gemm_case(
            &g,
            s,
            Epilogue::Accumulate,
            true,
            1,
            &format!("racecheck {}", v.name),
        );
    }
    for v in cliprt::cuda::kernels::op("attention").unwrap().variants {
        let Some(g) = racecheck(&[("attention", v.name)]) else {
            return;
        };
        let s = AttnShape {
            batch: 1,
            seq: 40,
            heads: 1,
            head_dim: 64,
            causal: true,
        };
        attention_case(&g, s, 3, &format!("racecheck {}", v.name));
    }
    let Some(g) = racecheck(&[]) else { return };
    layernorm_case(&g, 9, 100, 11, "racecheck");
    // The top-k kernels: candidates overflow the sort buffer several times (k = 300 over 1000 rows).
    use cliprt::search::{self, Gallery, Storage};
    let (n, d) = (1000, 16);
    let rows = random(n * d, 9, 1.0);
    let qs = random(2 * d, 10, 1.0);
    let want = search::search(
        &Gallery::new(Storage::F32(&rows), d, false).unwrap(),
        &qs,
        300,
        1.0,
    )
    .unwrap();
    let got = g
        .search(&g.upload_gallery(&rows, d, false).unwrap(), &qs, 300, 1.0)
        .unwrap();
    assert_eq!(got.indices, want.indices);
}

#[test]
fn ldmatrix_loads_are_free_of_bank_conflicts() {
    // The padded shared-memory row strides (40 halves in the GEMMs, head dim + 8 in attention) are meant to put
    // the 8 rows of every ldmatrix matrix in distinct banks: the simulator counts the extra wavefronts.
    let gemm = GemmShape {
        m: 70,
        n: 72,
        k: 200,
    };
    let attn = AttnShape {
        batch: 1,
        seq: 40,
        heads: 1,
        head_dim: 104,
        causal: false,
    };
    for (op, v) in cliprt::cuda::OPS
        .iter()
        .filter(|o| o.name == "gemm" || o.name == "attention")
        .flat_map(|o| o.variants.iter().map(move |v| (o.name, v.name)))
    {
        let Some(g) = sim(&[(op, v)]) else { return };
        match op {
            "gemm" => gemm_case(&g, gemm, Epilogue::Store, false, 1, "bank check"),
            _ => attention_case(&g, attn, 2, "bank check"),
        }
        let stats = g.simulator_stats().unwrap();
        println!("{op} {v}: {stats:?}");
        if op == "attention" && v == "v1" {
            continue; // CUDA cores, no ldmatrix
        }
        assert!(stats.ldmatrix_matrices > 0, "{op} {v}: no ldmatrix seen");
        assert_eq!(
            stats.ldmatrix_extra_wavefronts, 0,
            "{op} {v}: bank conflicts"
        );
    }
}
