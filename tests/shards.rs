//! `cliprt index --shards`: webdataset shards in, one finished output per shard, bad shards listed and passed over,
//! reruns that redo only unfinished shards.

mod common;

use std::path::{Path, PathBuf};

use cliprt::index::shards::{self, ShardMeta};
use cliprt::{Clip, Device};
use common::fixture;

/// Writes a tar of `(member name, bytes)` with the `tar` crate (as Python's tarfile would, end blocks included).
fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

const IMAGES: [&str; 6] = [
    "square.png",
    "landscape.png",
    "photo.jpg",
    "portrait.png",
    "photo.webp",
    "grey.png",
];

/// Sample `i` of the test shards: image `IMAGES[i % 6]`, a caption and a json record.
fn sample(i: usize) -> Vec<(String, Vec<u8>)> {
    let img = IMAGES[i % IMAGES.len()];
    let ext = img.rsplit('.').next().unwrap();
    vec![
        (
            format!("{i:06}.{ext}"),
            std::fs::read(fixture("images").join(img)).unwrap(),
        ),
        (format!("{i:06}.txt"), format!("caption {i}").into_bytes()),
        (
            format!("{i:06}.json"),
            format!("{{\"url\": \"http://x/{i}\"}}").into_bytes(),
        ),
    ]
}

struct Job {
    dir: tempfile::TempDir,
    shards: Vec<String>,
}

impl Job {
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
}

/// Three good shards of 5, 40 and 3 samples (40 spans two batches of 32); shard 1 also holds a member that is
/// not an image and a sample without one. Then a truncated shard and a missing one.
fn job() -> Job {
    let dir = tempfile::tempdir().unwrap();
    let mut shards = Vec::new();
    let mut next = 0;
    for (s, n) in [5usize, 40, 3].into_iter().enumerate() {
        let mut members: Vec<(String, Vec<u8>)> = (next..next + n).flat_map(sample).collect();
        next += n;
        if s == 1 {
            members.insert(6, ("bad001.jpg".into(), b"not a jpeg at all".to_vec()));
            members.push((
                "textonly.txt".into(),
                b"a caption without an image".to_vec(),
            ));
        }
        let path = dir.path().join(format!("{s:05}.tar"));
        write_tar(&path, &members);
        shards.push(path.to_string_lossy().into_owned());
    }
    let full = dir.path().join("00001.tar");
    let cut = std::fs::read(&full).unwrap();
    std::fs::write(dir.path().join("00003.tar"), &cut[..cut.len() / 2]).unwrap();
    shards.push(dir.path().join("00003.tar").to_string_lossy().into_owned());
    shards.push(dir.path().join("00004.tar").to_string_lossy().into_owned());
    Job { dir, shards }
}

fn meta(shard: &str, out: &Path) -> ShardMeta {
    shards::read_meta(shard, out).expect("a finished output")
}

#[test]
fn shards_embed_list_failures_and_resume_only_what_is_unfinished() {
    let clip = Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap();
    let job = job();
    let out = job.out();
    let report = shards::run(&clip, &job.shards, &out, 32, false, |_| {}).unwrap();

    // The truncated and the missing shard are listed with their reason, and have no output.
    let failed: Vec<&str> = report.failed.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(failed, [job.shards[3].as_str(), job.shards[4].as_str()]);
    assert!(
        report.failed[0].1.contains("truncated tar"),
        "{}",
        report.failed[0].1
    );
    assert!(
        report.failed[1].1.contains("no such file"),
        "{}",
        report.failed[1].1
    );
    for s in &job.shards[3..] {
        assert!(shards::read_meta(s, &out).is_none());
        let o = shards::outputs(s, &out);
        assert!(!o.embeddings.exists() && !o.meta.exists());
    }

    // The good shards: one row per sample with an image, in order, with caption and json; the rest skipped.
    let rows: Vec<usize> = report.embedded.iter().map(|r| r.rows).collect();
    assert_eq!(rows, [5, 40, 3]);
    let m1 = meta(&job.shards[1], &out);
    let skipped: Vec<(&str, bool)> = m1
        .skipped
        .iter()
        .map(|s| (s.key.as_str(), s.reason.contains("cannot decode")))
        .collect();
    assert_eq!(skipped, [("bad001", true), ("textonly", false)]);
    assert!(m1.skipped[1].reason.contains("no image member"));
    assert_eq!(m1.samples[0].key, "000005");
    assert_eq!(m1.samples[0].caption.as_deref(), Some("caption 5"));
    assert_eq!(m1.samples[0].json.as_ref().unwrap()["url"], "http://x/5");

    // Embeddings equal those of the same files embedded directly (unit rows).
    let (emb, shape) =
        cliprt::npy::read_npy(&shards::outputs(&job.shards[1], &out).embeddings).unwrap();
    assert_eq!(shape, [40, clip.config().projection_dim]);
    let files: Vec<PathBuf> = (5..45)
        .map(|i| fixture("images").join(IMAGES[i % IMAGES.len()]))
        .collect();
    let direct = clip.embed_image_files(&files).unwrap().normalized();
    for r in 0..40 {
        let got = &emb[r * shape[1]..(r + 1) * shape[1]];
        let cos = common::cosine(got, direct.row(r));
        assert!(cos > 0.999999, "row {r}: cosine {cos}");
    }

    // A rerun does nothing but retry the failed shards; removing one output redoes only that shard, identically.
    let before = std::fs::read(shards::outputs(&job.shards[1], &out).embeddings).unwrap();
    let again = shards::run(&clip, &job.shards, &out, 32, false, |_| {}).unwrap();
    assert_eq!(again.already_done, job.shards[..3]);
    assert!(again.embedded.is_empty());
    assert_eq!(again.failed.len(), 2);
    std::fs::remove_file(shards::outputs(&job.shards[1], &out).meta).unwrap();
    let redo = shards::run(&clip, &job.shards[..3], &out, 32, false, |_| {}).unwrap();
    let redone: Vec<&str> = redo.embedded.iter().map(|r| r.shard.as_str()).collect();
    assert_eq!(redone, [job.shards[1].as_str()]);
    let after = std::fs::read(shards::outputs(&job.shards[1], &out).embeddings).unwrap();
    assert_eq!(before, after, "a redone shard is bitwise the same");
}

/// The CLI: brace ranges, the per-shard outputs, failed shards on stderr and a failing exit status after every
/// other shard is done.
#[test]
fn cli_index_shards() {
    let job = job();
    let out = job.out();
    let pattern = job.dir.path().join("{00000..00004}.tar");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cliprt"))
            .args(["index", "--model"])
            .arg(fixture("tiny-openai"))
            .arg("--shards")
            .arg(&pattern)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(!first.status.success());
    assert!(
        stdout.contains("embedded 3 shards (48 images, 2 samples skipped)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("failed shard:") && stderr.contains("00003.tar"),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipped:") && stderr.contains("bad001"),
        "{stderr}"
    );
    for s in &job.shards[..3] {
        assert!(shards::read_meta(s, &out).is_some());
    }
    let second = run();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains("embedded 0 shards") && stdout.contains("3 already done"),
        "{stdout}"
    );
}
