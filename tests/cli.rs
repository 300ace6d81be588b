//! The `cliprt` binary's interface: outputs, formats, and errors (non-zero exit, message, no partial files).

mod common;

use std::process::Command;

use cliprt::cpu::MatrixEngine;
use cliprt::{Clip, Device};
use common::*;

fn cliprt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cliprt"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_forced_cpu_engine_runs_and_an_unknown_one_is_a_clear_error() {
    let run = |engine: &str| {
        Command::new(env!("CARGO_BIN_EXE_cliprt"))
            .env("CLIPRT_CPU_ENGINE", engine)
            .args([
                "bench",
                "--workload",
                "text",
                "--batch",
                "1",
                "--warmup",
                "0",
                "--reps",
                "1",
                "--json",
            ])
            .output()
            .unwrap()
    };
    let out = run("amx-bf16-emu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["engine"], "amx-bf16-emu");
    assert_eq!(m["precision"], "bf16");
    assert!(m["peak_fraction"].is_null() || m["peak_fraction"].as_f64().is_none_or(f64::is_nan));
    // The i16 engines report their own precision and a fraction of their own (`vpmaddwd`, `vpdpwssd`) peak.
    for engine in [MatrixEngine::Avx2I16, MatrixEngine::Avx512I16] {
        if !engine.available() {
            continue;
        }
        let out = run(engine.name());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (&m["engine"], &m["precision"]),
            (&engine.name().into(), &"i16".into())
        );
        assert!(
            m["peak_fraction"]
                .as_f64()
                .is_some_and(|f| f > 0.0 && f < 1.5),
            "{m}"
        );
    }
    let out = run("tpu");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown CPU engine") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn embed_writes_normalized_and_raw_npy() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-openai");
    let img = fixture("images").join("square.png");
    let texts = tmp.path().join("texts.txt");
    std::fs::write(&texts, "a dog\n\nthird text\n").unwrap();
    let (oi, ot) = (tmp.path().join("i.npy"), tmp.path().join("t.npy"));
    let args = |extra: &[&str]| {
        let mut a = vec![
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
        ];
        a.extend(["--text", "a cat", "--text-file", texts.to_str().unwrap()]);
        a.extend([
            "--out-image",
            oi.to_str().unwrap(),
            "--out-text",
            ot.to_str().unwrap(),
        ]);
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let clip = Clip::load(&model, Device::Cpu).unwrap();
    let want_t = clip.embed_texts(&["a cat", "a dog", "third text"]).unwrap();
    let want_i = clip.embed_image_files(&[&img]).unwrap();
    for raw in [false, true] {
        let a = args(if raw { &["--no-normalize"] } else { &[] });
        let (ok, _, err) = cliprt(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{err}");
        let (ti, si) = cliprt::npy::read_npy(&oi).unwrap();
        let (tt, st) = cliprt::npy::read_npy(&ot).unwrap();
        assert_eq!(si, vec![1, 24]);
        assert_eq!(st, vec![3, 24]);
        let (wi, wt) = if raw {
            (want_i.clone(), want_t.clone())
        } else {
            (want_i.normalized(), want_t.normalized())
        };
        assert_close(&ti, &wi.data, 1e-6, 1e-6, "image npy");
        assert_close(&tt, &wt.data, 1e-6, 1e-6, "text npy");
    }
}

#[test]
fn failures_exit_nonzero_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.npy");
    let bad_img = tmp.path().join("bad.png");
    std::fs::write(&bad_img, b"junk").unwrap();
    let model = fixture("tiny-openai");
    let (ok, _, err) = cliprt(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "a cat",
        "--image",
        bad_img.to_str().unwrap(),
        "--out-text",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("cannot decode image"), "{err}");
    assert!(
        !out.exists(),
        "no output may be written when any input fails"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no temporary files left behind"
    );
    let (ok, _, err) = cliprt(&["info", "--model", "/no/such/model"]);
    assert!(!ok && err.contains("no such file"), "{err}");
    let (ok, _, err) = cliprt(&[
        "info",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cuda",
    ]);
    assert!(!ok && err.contains("device unavailable"), "{err}");
}

#[test]
fn tokenize_preprocess_zero_shot_info() {
    let model = fixture("exotic");
    let m = model.to_str().unwrap();
    let (ok, out, err) = cliprt(&[
        "tokenize",
        "--model",
        m,
        "--text",
        "a photo of a cat",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = reference("exotic");
    let want = &r.ids[0];
    assert_eq!(r.texts[0], "a photo of a cat");
    let got: Vec<u32> = v[0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(&got, want);

    let tmp = tempfile::tempdir().unwrap();
    let px = tmp.path().join("px.npy");
    let img = fixture("images").join(&r.images[0]);
    let (ok, _, err) = cliprt(&[
        "preprocess",
        "--model",
        m,
        "--image",
        img.to_str().unwrap(),
        "--out",
        px.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (data, shape) = cliprt::npy::read_npy(&px).unwrap();
    assert_eq!(shape, vec![3, 36, 36]);
    assert_close(&data, &r.pixels[..3 * 36 * 36], 0.02, 0.0, "preprocess npy");

    let (ok, out, err) = cliprt(&[
        "zero-shot",
        "--model",
        m,
        "--image",
        img.to_str().unwrap(),
        "--label",
        "cat",
        "--label",
        "dog",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let probs: f64 = v[0]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["prob"].as_f64().unwrap())
        .sum();
    assert!((probs - 1.0).abs() < 1e-5);
    let (ok, out, _) = cliprt(&[
        "zero-shot",
        "--model",
        m,
        "--image",
        img.to_str().unwrap(),
        "--label",
        "cat",
    ]);
    assert!(ok && out.contains("100.000%  cat"), "{out}");

    let (ok, out, err) = cliprt(&["info", "--model", m]);
    assert!(ok, "{err}");
    assert!(
        out.contains("gelu")
            && out.contains("context length:   40")
            && out.contains("image size:       36"),
        "{out}"
    );
}

#[test]
fn bench_reports_json_lines_with_the_documented_fields() {
    let (ok, out, err) = cliprt(&[
        "--threads",
        "2",
        "bench",
        "--workload",
        "image,text,similarity",
        "--batch",
        "1,2",
        "--warmup",
        "0",
        "--reps",
        "1",
        "--peak-gflops",
        "100",
        "--json",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for m in &lines {
        for key in [
            "arch",
            "workload",
            "batch",
            "seq",
            "precision",
            "device",
            "threads",
            "items_per_s",
            "ms_per_batch",
            "gflops_per_s",
            "peak_fraction",
            "engine",
            "engine_reason",
        ] {
            assert!(m.get(key).is_some(), "{key} missing in {m}");
        }
        assert_eq!(m["arch"], "vit-b-32");
        assert_eq!(m["threads"], 2);
        assert!(m["items_per_s"].as_f64().unwrap() > 0.0);
        let frac = m["gflops_per_s"].as_f64().unwrap() / m["peak_gflops"].as_f64().unwrap();
        assert!((m["peak_fraction"].as_f64().unwrap() - frac).abs() < 1e-9);
    }
    // Images have no sequence length; the real prompts (8 tokens each for the first two) do.
    assert!(lines[0]["seq"].is_null() && lines[0]["workload"] == "image");
    assert_eq!(lines[2]["workload"], "text");
    assert_eq!(lines[2]["seq"], 8);
    assert_eq!(lines[4]["workload"], "similarity");
    // The table form and its errors.
    let (ok, out, _) = cliprt(&[
        "bench",
        "--workload",
        "text",
        "--batch",
        "3",
        "--prompt-len",
        "20",
        "--reps",
        "1",
    ]);
    assert!(ok && out.contains("text") && out.contains("  20 "), "{out}");
    for bad in [
        &["bench", "--arch", "vit-z-99"][..],
        &["bench", "--workload", "video"],
        &["bench", "--batch", "0"],
        &["bench", "--precision", "int3"],
        &["bench", "--peak-gflops", "0"],
        &["bench", "--device", "cuda"],
        &["bench", "--prompt-len", "78", "--workload", "text"],
    ] {
        let (ok, _, err) = cliprt(bad);
        assert!(!ok && err.starts_with("error: "), "{bad:?}: {err}");
    }
}

/// `--breakdown`: op classes with shares that add up to the whole forward, rates that follow from the FLOPs, and
/// the classes an f32 tower has (no bf16 GEMM); the table's extra line; refused off the CPU.
#[test]
fn bench_breakdown_accounts_for_the_forward() {
    let (ok, out, err) = cliprt(&[
        "--threads",
        "2",
        "bench",
        "--workload",
        "image,text,similarity",
        "--batch",
        "2",
        "--warmup",
        "0",
        "--reps",
        "2",
        "--peak-gflops",
        "100",
        "--breakdown",
        "--json",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for m in &lines[..2] {
        let ops = m["ops"].as_array().unwrap();
        let names: Vec<&str> = ops.iter().map(|o| o["op"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["gemm f32", "attention", "layernorm", "other"],
            "{m}"
        );
        let total: f64 = ops.iter().map(|o| o["share"].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-9, "shares add up to {total}: {m}");
        let gemm = &ops[0];
        assert!(gemm["share"].as_f64().unwrap() > 0.3, "{m}");
        let rate = gemm["gflops_per_s"].as_f64().unwrap();
        let fraction = gemm["peak_fraction"].as_f64().unwrap();
        assert!(rate > 0.0 && (fraction - rate / 100.0).abs() < 1e-9, "{m}");
        assert!(ops[2]["gflops_per_s"].is_null() && ops[3]["peak_fraction"].is_null());
    }
    assert!(lines[2]["ops"].is_null(), "similarity runs no tower");
    let (ok, out, err) = cliprt(&[
        "bench",
        "--workload",
        "image",
        "--batch",
        "1",
        "--reps",
        "1",
        "--breakdown",
    ]);
    assert!(ok && out.contains("\n  time: gemm f32 "), "{out}{err}");
    let (ok, _, err) = cliprt(&["bench", "--device", "reference", "--breakdown"]);
    assert!(!ok && err.contains("--breakdown"), "{err}");
}

#[test]
fn bench_prompts_are_tokenized_for_real() {
    let tok = cliprt::tokenizer::ClipTokenizer::from_file(&fixtures().join("tokenizer.json"), 77)
        .unwrap();
    let ids = tok.encode_batch(&cliprt::bench::PROMPTS).unwrap();
    assert_eq!(ids, cliprt::bench::prompt_ids());
}

#[test]
fn info_reports_devices_and_a_missing_gpu_is_a_clear_error() {
    let (ok, out, err) = cliprt(&["info"]);
    assert!(ok, "{err}");
    assert!(out.contains("cpu:") && out.contains("cuda:"), "{out}");
    // The matrix engines: what CPUID says about AMX, every engine here (the emulator always), and each precision's.
    for line in [
        "amx:",
        "cpu engines:",
        "amx-bf16-emu",
        "f32 engine:",
        "bf16 engine:",
        "i16 engine:",
    ] {
        assert!(out.contains(line), "{line} missing in {out}");
    }
    // Where a GPU and NVRTC work, `--device cuda` succeeds instead; ask for a device that cannot exist.
    let (ok, out, err) = cliprt(&["info", "--device", "cuda:999"]);
    assert!(!ok, "{out}");
    assert!(err.contains("device unavailable"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (ok, _, err) = cliprt(&[
        "embed",
        "--model",
        fixture("tiny-openai").to_str().unwrap(),
        "--device",
        "cuda:999",
        "--text",
        "a dog",
    ]);
    assert!(
        !ok && err.contains("device unavailable") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn kernels_list_names_every_op() {
    let (ok, out, err) = cliprt(&["kernels", "--list"]);
    assert!(ok, "{err}");
    for op in [
        "gemm",
        "attention",
        "layernorm",
        "im2col",
        "vision_embed",
        "text_embed",
        "gather_rows",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(op)),
            "{op} missing:\n{out}"
        );
    }
    let (ok, _, err) = cliprt(&["kernels"]);
    assert!(!ok && err.contains("--list"), "{err}");
}
