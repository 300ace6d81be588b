//! `cliprt index` → `cliprt search` end to end on the fixture model and generated images: ranking, unreadable
//! files, a run killed half-way that resumes (also over a torn journal), and the index's bad-input errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cliprt::index::Index;
use cliprt::{Clip, Device, Error};
use common::fixture;

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

/// `n` distinct small PNGs (colour gradients) spread over nested folders, plus a broken file and a non-image.
fn make_images(dir: &Path, n: usize) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for i in 0..n {
        let sub = dir.join(["", "a", "a/b", "c"][i % 4]);
        std::fs::create_dir_all(&sub).unwrap();
        let img = image::RgbImage::from_fn(48 + i as u32, 40, |x, y| {
            image::Rgb([
                (x * 5 + i as u32 * 37) as u8,
                (y * 6 + i as u32 * 11) as u8,
                (i as u32 * 53 % 256) as u8,
            ])
        });
        let p = sub.join(format!("img{i:02}.png"));
        img.save(&p).unwrap();
        paths.push(p);
    }
    std::fs::write(dir.join("a/broken.jpg"), b"not a jpeg").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
    paths
}

fn model() -> String {
    fixture("tiny-openai").to_string_lossy().into_owned()
}

#[test]
fn index_then_search_ranks_the_query_image_first() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let paths = make_images(&images, 10);
    let out = tmp.path().join("gallery.idx");
    let (ok, stdout, stderr) = cliprt(&[
        "index",
        "--model",
        &model(),
        "--images",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "3",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("indexed 10 images") && stdout.contains("1 skipped"),
        "{stdout}"
    );
    assert!(
        stderr.contains("broken.jpg"),
        "the unreadable file is listed: {stderr}"
    );
    assert!(
        !Path::new(&format!("{}.partial", out.display())).exists(),
        "journal removed"
    );

    let idx = Index::open(&out).unwrap();
    assert_eq!(idx.rows(), 10);
    let mut indexed: Vec<String> = (0..10).map(|i| idx.path(i).display().to_string()).collect();
    indexed.sort();
    let mut want: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    want.sort();
    assert_eq!(indexed, want);

    // Each image finds itself first, with cosine 1.
    for p in [&paths[0], &paths[7]] {
        let (ok, stdout, stderr) = cliprt(&[
            "search",
            "--model",
            &model(),
            "--index",
            out.to_str().unwrap(),
            "--image",
            p.to_str().unwrap(),
            "-k",
            "3",
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let hits: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(hits.as_array().unwrap().len(), 3);
        assert_eq!(hits[0]["path"], p.to_string_lossy().as_ref());
        assert!(
            (hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4,
            "{hits}"
        );
    }

    // A text query ranks exactly as the brute-force reference over the embeddings.
    let clip = Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap();
    let q = clip.embed_texts(&["a red square"]).unwrap();
    let want = cliprt::search::search_reference(idx.embeddings(), idx.dim(), &q.data, 10, 1.0);
    let (ok, stdout, _) = cliprt(&[
        "search",
        "--model",
        &model(),
        "--index",
        out.to_str().unwrap(),
        "--text",
        "a red square",
        "-k",
        "20",
        "--json",
    ]);
    assert!(ok);
    let hits: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let got: Vec<&str> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = want
        .hits(0)
        .map(|(i, _)| idx.path(i).display().to_string())
        .collect();
    assert_eq!(
        got, expected,
        "k > N returns every entry, in reference order"
    );
}

#[test]
fn a_killed_run_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    make_images(&images, 24);
    let out = tmp.path().join("resumed.idx");
    let journal = PathBuf::from(format!("{}.partial", out.display()));
    let args = [
        "index",
        "--model",
        &model(),
        "--images",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "2",
    ];

    // Slowed down so that it can be killed mid-way: 12 batches, 150 ms each.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cliprt"))
        .args(args)
        .env("CLIPRT_INDEX_THROTTLE_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    // Wait for a few whole batches in the journal, then SIGKILL.
    while std::fs::metadata(&journal).map_or(0, |m| m.len()) < 1500
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run leaves no index");
    assert!(journal.exists());
    // A write torn by the kill: garbage after the last whole record is dropped on resume.
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&[0xAB; 37]);
    std::fs::write(&journal, &bytes).unwrap();

    // The folder changed while the run was down: one indexed image deleted, one new image added.
    std::fs::remove_file(images.join("img00.png")).unwrap();
    image::RgbImage::from_fn(20, 20, |x, y| image::Rgb([x as u8 * 9, y as u8 * 9, 77]))
        .save(images.join("a/new.png"))
        .unwrap();

    let (ok, stdout, stderr) = cliprt(&args);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("indexed 24 images") && stdout.contains("resumed"),
        "{stdout}"
    );
    assert!(!journal.exists());

    // The same entries as one uninterrupted run over the folder as it is now.
    let fresh = tmp.path().join("fresh.idx");
    let (ok, _, stderr) = cliprt(&[
        "index",
        "--model",
        &model(),
        "--images",
        images.to_str().unwrap(),
        "--out",
        fresh.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (a, b) = (Index::open(&out).unwrap(), Index::open(&fresh).unwrap());
    assert_eq!((a.rows(), b.rows()), (24, 24));
    let by_path = |ix: &Index| -> std::collections::BTreeMap<String, Vec<f32>> {
        (0..ix.rows())
            .map(|i| {
                (
                    ix.path(i).display().to_string(),
                    ix.embeddings()[i * ix.dim()..(i + 1) * ix.dim()].to_vec(),
                )
            })
            .collect()
    };
    let (ea, eb) = (by_path(&a), by_path(&b));
    assert_eq!(ea.keys().collect::<Vec<_>>(), eb.keys().collect::<Vec<_>>());
    assert!(!ea.keys().any(|p| p.ends_with("img00.png")));
    assert!(ea.keys().any(|p| p.ends_with("new.png")));
    for (p, x) in &ea {
        assert!(common::cosine(x, &eb[p]) > 0.999_99, "{p}");
    }
}

#[test]
fn index_errors_are_typed_and_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    make_images(&images, 3);
    let out = tmp.path().join("x.idx");
    let clip = Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap();
    let opts = cliprt::index::IndexOptions::default();
    cliprt::index::build(&clip, &images, &out, &opts, |_| {}).unwrap();

    // Exists: refused without --force.
    assert!(
        matches!(cliprt::index::build(&clip, &images, &out, &opts, |_| {}), Err(Error::InvalidArgument(m)) if m.contains("--force"))
    );
    // Missing or empty folders.
    assert!(matches!(
        cliprt::index::build(
            &clip,
            &tmp.path().join("nope"),
            &tmp.path().join("y"),
            &opts,
            |_| {}
        ),
        Err(Error::NotFound(_))
    ));
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(
        cliprt::index::build(&clip, &empty, &tmp.path().join("z"), &opts, |_| {}),
        Err(Error::EmptyInput(_))
    ));
    // Truncated and corrupted files, and a file that is not an index.
    let bytes = std::fs::read(&out).unwrap();
    let bad = tmp.path().join("bad.idx");
    std::fs::write(&bad, &bytes[..bytes.len() - 3]).unwrap();
    assert!(matches!(Index::open(&bad), Err(Error::InvalidArgument(m)) if m.contains("truncated")));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x20;
    std::fs::write(&bad, &flipped).unwrap();
    assert!(matches!(Index::open(&bad), Err(Error::InvalidArgument(m)) if m.contains("checksum")));
    std::fs::write(&bad, b"hello").unwrap();
    assert!(matches!(Index::open(&bad), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        Index::open(&tmp.path().join("missing.idx")),
        Err(Error::NotFound(_))
    ));
    // Another model cannot search it.
    let (ok, _, stderr) = cliprt(&[
        "search",
        "--model",
        fixture("exotic").to_str().unwrap(),
        "--index",
        out.to_str().unwrap(),
        "--text",
        "x",
    ]);
    assert!(!ok && stderr.contains("another model"), "{stderr}");
    let (ok, _, stderr) = cliprt(&[
        "search",
        "--model",
        &model(),
        "--index",
        out.to_str().unwrap(),
        "--text",
        "x",
        "-k",
        "0",
    ]);
    assert!(!ok && stderr.contains("k = 0"), "{stderr}");
}
