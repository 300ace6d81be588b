//! The resource test of issue 16: each adversarial file or argument, run through the `cliprt` binary, ends with a
//! typed error (exit status 1) or the correct result, within 2 GB of peak RSS and 10 s, and leaves no partial file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// What one run of the binary cost.
struct Run {
    code: Option<i32>,
    stderr: String,
    max_rss_mb: f64,
    took: Duration,
}

const MAX_RSS_MB: f64 = 2048.0;
const MAX_TIME: Duration = Duration::from_secs(10);

/// Runs `cliprt args` and measures its peak RSS (wait4's rusage) and wall time; a run past 30 s is killed.
fn run(args: &[&str]) -> Run {
    let stderr_file = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cliprt"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(stderr_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            while start.elapsed() < Duration::from_secs(30) {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watchdog.join().unwrap();
    assert_eq!(r, pid);
    std::mem::forget(child); // reaped by wait4 above
    Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stderr: std::fs::read_to_string(stderr_file.path()).unwrap(),
        max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
        took,
    }
}

/// Runs a hostile case: a typed error (status 1, message containing `says`), within the bounds.
fn refused(what: &str, args: &[&str], says: &str) {
    let r = run(args);
    println!(
        "{what}: status {:?}, {:.0} MB, {:.2} s: {}",
        r.code,
        r.max_rss_mb,
        r.took.as_secs_f64(),
        r.stderr.trim()
    );
    assert_eq!(r.code, Some(1), "{what}: {}", r.stderr);
    assert!(r.stderr.contains(says), "{what}: {}", r.stderr);
    assert!(r.max_rss_mb < MAX_RSS_MB, "{what}: {:.0} MB", r.max_rss_mb);
    assert!(r.took < MAX_TIME, "{what}: {:?}", r.took);
}

/// The files in `dir` (names), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A zlib stream that inflates to `len` zero bytes, written by hand so that no test has to hold `len` bytes:
/// one fixed-Huffman block of a literal 0 and then length-258, distance-1 copies (13 bits per 258 bytes).
fn zlib_zeros(len: u64) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, v: u64, n: u32) {
            self.acc |= v << self.n;
            self.n += n;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code goes out most significant bit first.
        fn code(&mut self, code: u64, n: u32) {
            let rev = (0..n).fold(0, |r, i| r | (((code >> i) & 1) << (n - 1 - i)));
            self.put(rev, n);
        }
    }
    let mut b = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    b.put(1, 1); // final block
    b.put(1, 2); // fixed Huffman
    b.code(0x30, 8); // literal 0
    let mut left = len - 1;
    while left >= 258 {
        b.code(0xC5, 8); // length code 285 = 258 (fixed code 11000101)
        b.code(0, 5); // distance code 0 = 1
        left -= 258;
    }
    for _ in 0..left {
        b.code(0x30, 8);
    }
    b.code(0, 7); // end of block (256)
    b.put(0, 7);
    // Adler-32 of `len` zeros: a = 1, b = len mod 65521.
    let adler = ((len % 65521) << 16) | 1;
    b.out.extend_from_slice(&(adler as u32).to_be_bytes());
    b.out
}

/// A PNG chunk with its CRC.
fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A valid 8 × 8 grey PNG with an iCCP chunk that inflates to `icc` bytes.
fn png_with_icc(icc: u64) -> Vec<u8> {
    let plain = image::GrayImage::new(8, 8);
    let mut enc = std::io::Cursor::new(Vec::new());
    plain.write_to(&mut enc, image::ImageFormat::Png).unwrap();
    let png = enc.into_inner();
    let mut iccp = b"bomb\0\0".to_vec();
    iccp.extend_from_slice(&zlib_zeros(icc));
    // Signature and IHDR (8 + 25 bytes), then the profile, then the rest.
    let mut out = png[..33].to_vec();
    out.extend_from_slice(&chunk(b"iCCP", &iccp));
    out.extend_from_slice(&png[33..]);
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_adversarial_input_is_refused_within_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = fixture("tiny-openai");
    let m = s(&model);
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    let npy = out.join("x.npy");

    // Images: a strip that resizes past the pixel limit, a header bomb, a 2 GB ICC profile in a small PNG.
    let strip = write("strip.png", &flat_png(1, 70_000));
    refused(
        "1×70000 strip",
        &[
            "embed",
            "--model",
            m,
            "--image",
            s(&strip),
            "--out-image",
            s(&npy),
        ],
        "over the limit",
    );
    let mut bomb = png_header(30_000, 30_000);
    bomb.truncate(bomb.len());
    let bomb = write("bomb.png", &bomb);
    refused(
        "30000² header",
        &[
            "embed",
            "--model",
            m,
            "--image",
            s(&bomb),
            "--out-image",
            s(&npy),
        ],
        "decompression-bomb",
    );
    let icc = write("icc.png", &png_with_icc(2 << 30));
    refused(
        "2 GB ICC profile",
        &[
            "embed",
            "--model",
            m,
            "--image",
            s(&icc),
            "--out-image",
            s(&npy),
        ],
        "1 MiB",
    );
    let fifo = d.join("fifo.png");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    refused(
        "FIFO as --image",
        &[
            "embed",
            "--model",
            m,
            "--image",
            s(&fifo),
            "--out-image",
            s(&npy),
        ],
        "not a regular file",
    );

    // A preprocessor config with a huge shortest edge, a config with huge sizes.
    let hostile_model = copy_model("tiny-openai");
    let hm = s(hostile_model.path()).to_string();
    // Each file edited, run, and restored.
    let edited = |file: &str, from: &str, to: &str, what: &str, says: &str| {
        let path = hostile_model.path().join(file);
        let original = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, original.replace(from, to)).unwrap();
        refused(what, &["embed", "--model", &hm, "--text", "a cat"], says);
        std::fs::write(&path, &original).unwrap();
    };
    edited(
        "preprocessor_config.json",
        "\"shortest_edge\": 32",
        "\"shortest_edge\": 4611686018427387904",
        "huge shortest_edge",
        "shortest_edge",
    );
    edited(
        "config.json",
        "\"intermediate_size\": 96",
        "\"intermediate_size\": 9600000000",
        "huge intermediate_size",
        "intermediate_size",
    );

    // Arguments.
    refused(
        "--threads 1e9",
        &["--threads", "1000000000", "info"],
        "limit of 1024",
    );
    refused(
        "bench gallery",
        &[
            "bench",
            "--workload",
            "search",
            "--gallery",
            "1000000000000",
        ],
        "estimated memory",
    );
    refused(
        "bench batch",
        &["bench", "--batch", "10000000"],
        "estimated memory",
    );
    refused(
        "bench reps",
        &["bench", "--reps", "18446744073709551615"],
        "over the limit",
    );

    // An index whose header sizes overflow.
    let images = d.join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(fixture("images/square.png"), images.join("a.png")).unwrap();
    let idx = out.join("x.idx");
    let built = run(&[
        "index",
        "--model",
        m,
        "--images",
        s(&images),
        "--out",
        s(&idx),
    ]);
    assert_eq!(built.code, Some(0), "{}", built.stderr);
    let mut bytes = std::fs::read(&idx).unwrap();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let bad_idx = write("bad.idx", &bytes);
    refused(
        "index rows overflow",
        &[
            "search",
            "--model",
            m,
            "--index",
            s(&bad_idx),
            "--text",
            "a cat",
        ],
        "not a valid cliprt index",
    );

    // A second output that cannot be written: neither output is written.
    let r = run(&[
        "embed",
        "--model",
        m,
        "--image",
        s(&fixture("images/square.png")),
        "--text",
        "a cat",
        "--out-image",
        s(&npy),
        "--out-text",
        s(&out.join("missing/t.npy")),
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        listing(&out),
        vec!["x.idx".to_string()],
        "no output and no temporary file is left behind"
    );
}

/// A large image that is allowed (81 M pixels, under PIL's limit and cliprt's decode budget) decodes to the correct
/// result within the bounds.
#[test]
fn a_large_allowed_image_stays_within_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.png");
    std::fs::write(&big, flat_png(9000, 9000)).unwrap();
    let npy = dir.path().join("x.npy");
    let r = run(&[
        "embed",
        "--model",
        s(&fixture("tiny-openai")),
        "--image",
        s(&big),
        "--out-image",
        s(&npy),
    ]);
    println!(
        "9000² PNG: status {:?}, {:.0} MB, {:.2} s",
        r.code,
        r.max_rss_mb,
        r.took.as_secs_f64()
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.max_rss_mb < MAX_RSS_MB && r.took < MAX_TIME);
    assert!(npy.exists());
}

/// Images that do not all fit the decode budget at once: the parallel decodes wait for each other's memory and
/// finish (no deadlock between a decode holding memory and one waiting for it), within the bounds.
#[test]
fn decodes_over_the_shared_budget_wait_for_each_other_and_finish() {
    let dir = tempfile::tempdir().unwrap();
    // Three 42 M-pixel images: about 480 MB of decode memory each, 1.4 GB together against a 1 GiB budget.
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("big{i}.png"));
            std::fs::write(&p, flat_png(6500, 6500)).unwrap();
            p
        })
        .collect();
    let npy = dir.path().join("x.npy");
    let model = fixture("tiny-openai");
    let mut args = vec!["embed", "--model", s(&model), "--out-image", s(&npy)];
    for p in &paths {
        args.extend(["--image", s(p)]);
    }
    let r = run(&args);
    println!(
        "3 × 42 MP: status {:?}, {:.0} MB, {:.2} s",
        r.code,
        r.max_rss_mb,
        r.took.as_secs_f64()
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.max_rss_mb < MAX_RSS_MB && r.took < MAX_TIME);
}

/// SIGBUS (what the kernel sends when a memory-mapped index is truncated in place by another program) ends the CLI
/// with a message naming the cause and status 74, not a bare crash.
#[test]
fn sigbus_ends_the_cli_with_a_message() {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cliprt"))
        .args([
            "bench",
            "--workload",
            "search",
            "--gallery",
            "200000",
            "--reps",
            "1000",
        ])
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGBUS) };
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(err.path()).unwrap();
    assert_eq!(status.code(), Some(74), "{stderr}");
    assert!(stderr.contains("SIGBUS"), "{stderr}");
}
