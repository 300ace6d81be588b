//! cliprt's fuzz harness: a seeded mutation loop on the stable toolchain, one target per parser that reads user
//! input (model folders, tokenizer.json, preprocessor_config.json, image bytes, index files and journals, command
//! lines). Each execution runs one mutated input through the public API and must end in `Ok` with finite outputs
//! or in a typed `Err`: a panic, a non-finite output or an execution over [`SLOW`] is a failure, and an abort or a
//! hang kills the process with the input left in `<work>/current-<target>-<worker>` for replay.
//!
//! Used by `examples/fuzz.rs` (long runs: `cargo run --release --example fuzz -- --help`) and by `tests/fuzz.rs`
//! (a short run of every target, plus every input under fuzz/regressions/).

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cliprt::index::Index;
use cliprt::preprocess::PreprocessConfig;
use cliprt::{Clip, Device, Engine, Precision};

/// An execution slower than this is reported (the acceptance bound for hostile inputs is 10 s).
pub const SLOW: Duration = Duration::from_secs(10);

/// The repository's fuzz folder.
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// splitmix64: small, fast and reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Integers that find boundary bugs, written in each width and byte order by [`mutate`].
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    u64::MAX,
    65535,
];

/// Tokens that JSON-shaped inputs are spliced with: numbers at and beyond every limit, wrong types, structure.
const JSON_TOKENS: [&str; 24] = [
    "0",
    "-1",
    "1e400",
    "-1e400",
    "1e-45",
    "NaN",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "18446744073709551616",
    "4294967296",
    "65535",
    "8193",
    "1e38",
    "0.0",
    "3.4e38",
    "\"x\"",
    "[1,2]",
    "{\"a\":1}",
    "\"\\u0000\"",
    "99999999999",
    "2",
];

/// One to four stacked byte-level mutations of `input`, with splices from `others` and `tokens`.
pub fn mutate(rng: &mut Rng, input: &[u8], others: &[&[u8]], tokens: &[&[u8]]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                // Delete a run.
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16.min(len - a))).min(len);
                d.drain(a..b);
            }
            3 => {
                // Insert random bytes.
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, bytes);
            }
            4 if len > 0 => {
                // Duplicate a run.
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64.min(len - a))).min(len);
                let run = d[a..b].to_vec();
                let at = rng.below(len + 1);
                d.splice(at..at, run);
            }
            5 if len > 0 => {
                // An interesting integer in 1, 2, 4 or 8 bytes, either order.
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let w = 1 << rng.below(4);
                let mut bytes = v.to_le_bytes()[..w].to_vec();
                if rng.below(2) == 0 {
                    bytes.reverse();
                }
                let at = rng.below(len);
                let end = (at + w).min(len);
                d.splice(at..end, bytes);
            }
            6 if !tokens.is_empty() => {
                // A token replaces a number-like run, or is inserted.
                let t = tokens[rng.below(tokens.len())];
                let at = rng.below(len + 1);
                let mut end = at;
                while end < len && (d[end].is_ascii_digit() || b".-+eE".contains(&d[end])) {
                    end += 1;
                }
                d.splice(at..end, t.iter().copied());
            }
            7 if !others.is_empty() => {
                // Splice in part of another seed.
                let o = others[rng.below(others.len())];
                if !o.is_empty() {
                    let a = rng.below(o.len());
                    let b = (a + 1 + rng.below(256)).min(o.len());
                    let at = rng.below(len + 1);
                    d.splice(at..at, o[a..b].iter().copied());
                }
            }
            8 if len > 0 => d.truncate(rng.below(len)),
            _ if len > 1 => {
                // Swap two bytes.
                let (i, j) = (rng.below(len), rng.below(len));
                d.swap(i, j);
            }
            _ => d.push(rng.next() as u8),
        }
    }
    d
}

/// How one execution ended, when it did not fail.
pub enum Outcome {
    /// Ran to the end; outputs finite.
    Accepted,
    /// Refused with a typed error.
    Refused,
}

/// A failure of one execution.
#[derive(Debug)]
pub enum Failure {
    Panic(String),
    NonFinite(String),
    Slow(Duration),
    /// A property of the target broke (e.g. a tokenizer returned more ids than the context length).
    Wrong(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panic(m) => write!(f, "panic: {m}"),
            Failure::NonFinite(m) => write!(f, "non-finite output: {m}"),
            Failure::Slow(d) => write!(f, "slow: {:.1} s", d.as_secs_f64()),
            Failure::Wrong(m) => write!(f, "wrong result: {m}"),
        }
    }
}

/// A target's execution of one input (its parts).
type RunFn = dyn Fn(&Workspace, &[Vec<u8>]) -> Result<Outcome, Failure> + Sync;

/// One fuzz target: its seeds (each input is a list of parts; a mutation changes one part) and its run.
pub struct Target {
    pub name: &'static str,
    pub seeds: Vec<Vec<Vec<u8>>>,
    tokens: Vec<Vec<u8>>,
    /// Applied to every other mutant: repairs a checksum so the mutation reaches the checks behind it.
    fixup: Option<fn(&mut [u8])>,
    run: Box<RunFn>,
}

/// A worker's scratch folder (inputs are written here to go through the file-reading paths) and shared state.
pub struct Workspace {
    pub dir: PathBuf,
    engine: Engine,
    /// The micro model (fuzz/seeds/model) loaded once, for the targets that need a model.
    clip: Clip,
}

impl Workspace {
    pub fn new(dir: PathBuf) -> Workspace {
        std::fs::create_dir_all(&dir).expect("fuzz work folder");
        Workspace {
            dir,
            engine: Engine::open(Device::Cpu, Precision::F32).expect("CPU engine"),
            clip: Clip::load(fuzz_dir().join("seeds/model"), Device::Cpu).expect("micro model"),
        }
    }
}

/// A typed error is a refusal, except non-finite values reaching an output, which the targets report themselves.
fn refused<T>(r: cliprt::Result<T>) -> Result<T, Result<Outcome, Failure>> {
    r.map_err(|_| Ok(Outcome::Refused))
}

macro_rules! tri {
    ($e:expr) => {
        match refused($e) {
            Ok(v) => v,
            Err(o) => return o,
        }
    };
}

fn finite(what: &str, v: &[f32]) -> Result<Outcome, Failure> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(Outcome::Accepted)
    } else {
        Err(Failure::NonFinite(what.to_string()))
    }
}

fn write(ws: &Workspace, name: &str, bytes: &[u8]) -> PathBuf {
    let p = ws.dir.join(name);
    std::fs::write(&p, bytes).expect("write a fuzz input");
    p
}

fn read(p: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

fn tokens(extra: &[&str]) -> Vec<Vec<u8>> {
    JSON_TOKENS
        .iter()
        .chain(extra)
        .map(|t| t.as_bytes().to_vec())
        .collect()
}

/// safetensors + config.json of a model folder: load it whole (config, tokenizer, preprocessing, weights) and embed
/// a text and an image; embeddings must be finite.
fn model_target() -> Target {
    let seed = fuzz_dir().join("seeds/model");
    let seeds = vec![vec![
        read(seed.join("config.json")),
        read(seed.join("model.safetensors")),
    ]];
    Target {
        name: "model",
        seeds,
        fixup: None,
        tokens: tokens(&[
            "\"hidden_size\"",
            "\"gelu\"",
            "\"F16\"",
            "\"BF16\"",
            "\"I64\"",
            "\"shape\"",
            "\"data_offsets\"",
        ]),
        run: Box::new(|ws, parts| {
            let dir = ws.dir.join("model");
            std::fs::create_dir_all(&dir).expect("model folder");
            let seed = fuzz_dir().join("seeds/model");
            for f in ["tokenizer.json", "preprocessor_config.json"] {
                if !dir.join(f).exists() {
                    std::fs::copy(seed.join(f), dir.join(f)).expect("seed file");
                }
            }
            std::fs::write(dir.join("config.json"), &parts[0]).expect("config");
            std::fs::write(dir.join("model.safetensors"), &parts[1]).expect("weights");
            let clip = tri!(Clip::load(&dir, Device::Cpu));
            let ids = tri!(clip.tokenize(&["a photo of a cat"]));
            let t = tri!(clip.embed_token_ids(&ids));
            finite("text embedding", &t.data)?;
            let size = clip.config().vision.image_size;
            let pixels = vec![0.25f32; 3 * size * size];
            let i = tri!(clip.embed_pixels(&pixels, 1));
            finite("image embedding", &i.data)
        }),
    }
}

/// tokenizer.json and a text: ids must number 1 ..= the context length.
fn tokenizer_target() -> Target {
    let tok = read(fuzz_dir().join("seeds/tokenizer/tokenizer.json"));
    let texts = [
        "a photo of a cat.",
        "",
        "Ünïcödé  \t text ✓ 123 it's",
        "<|endoftext|> x",
    ];
    Target {
        name: "tokenizer",
        seeds: texts
            .iter()
            .map(|t| vec![tok.clone(), t.as_bytes().to_vec()])
            .collect(),
        fixup: None,
        tokens: tokens(&[
            "\"BPE\"",
            "\"vocab\"",
            "\"merges\"",
            "\"Regex\"",
            "\"<|endoftext|>\"",
            "\"RobertaProcessing\"",
        ]),
        run: Box::new(|ws, parts| {
            let path = write(ws, "tokenizer.json", &parts[0]);
            let t = tri!(cliprt::tokenizer::ClipTokenizer::from_file(&path, 16));
            let ids = tri!(t.encode(&String::from_utf8_lossy(&parts[1])));
            if ids.is_empty() || ids.len() > 16 {
                return Err(Failure::Wrong(format!(
                    "{} ids for a context of 16",
                    ids.len()
                )));
            }
            Ok(Outcome::Accepted)
        }),
    }
}

/// spiece.model, tokenizer_config.json and a text (SigLIP's SentencePiece tokenizer): ids must number 1 ..= the
/// context length.
fn sentencepiece_target() -> Target {
    let dir = fuzz_dir().join("seeds/sentencepiece");
    let (model, config) = (
        read(dir.join("spiece.model")),
        read(dir.join("tokenizer_config.json")),
    );
    let texts = [
        "a photo of a cat.",
        "",
        "x </s> <unk> ▁y",
        "ÜNÏCÖDÉ  \t ① ﬁ 123",
    ];
    Target {
        name: "sentencepiece",
        seeds: texts
            .iter()
            .map(|t| vec![model.clone(), config.clone(), t.as_bytes().to_vec()])
            .collect(),
        fixup: None,
        tokens: tokens(&[
            "\"legacy\"",
            "\"do_lower_case\"",
            "\"added_tokens_decoder\"",
            "</s>",
            "<unk>",
            "▁",
        ]),
        run: Box::new(|ws, parts| {
            let path = write(ws, "spiece.model", &parts[0]);
            let config: Option<serde_json::Value> = serde_json::from_slice(&parts[1]).ok();
            let t = tri!(cliprt::tokenizer::ClipTokenizer::siglip(
                &path,
                config.as_ref(),
                16
            ));
            let ids = tri!(t.encode(&String::from_utf8_lossy(&parts[2])));
            if ids.is_empty() || ids.len() > 16 {
                return Err(Failure::Wrong(format!(
                    "{} ids for a context of 16",
                    ids.len()
                )));
            }
            Ok(Outcome::Accepted)
        }),
    }
}

/// open_clip_config.json: read as `Clip::load` reads an open_clip folder (the model config, then the preprocessing);
/// an accepted config must validate, and its preprocessing must give finite pixels for a fixture image.
fn open_clip_target() -> Target {
    let dir = fuzz_dir().join("seeds/open_clip");
    let seeds = ["ls.json", "custom.json"]
        .iter()
        .map(|f| vec![read(dir.join(f))])
        .collect();
    Target {
        name: "open_clip",
        seeds,
        fixup: None,
        tokens: tokens(&[
            "\"model_cfg\"",
            "\"vision_cfg\"",
            "\"text_cfg\"",
            "\"preprocess_cfg\"",
            "\"ls_init_value\"",
            "\"head_width\"",
            "\"mlp_ratio\"",
            "\"resize_mode\"",
            "\"squash\"",
            "\"timm_model_name\"",
        ]),
        run: Box::new(|ws, parts| {
            let path = write(ws, "open_clip_config.json", &parts[0]);
            let config = tri!(cliprt::config::ClipConfig::from_open_clip_file(&path));
            if let Err(e) = config.validate() {
                return Err(Failure::Wrong(format!("accepted an invalid config: {e}")));
            }
            let cfg = tri!(PreprocessConfig::from_open_clip(&path, 8));
            let image = fuzz_dir().join("../tests/fixtures/images/rgba.png");
            let (pixels, _) = tri!(cfg.apply_file(&image));
            finite("pixels", &pixels)
        }),
    }
}

/// preprocessor_config.json: preprocess a fixture image for a model of input 8 as `Clip` does; the pixels must be
/// finite.
fn preprocessor_target() -> Target {
    let dir = fuzz_dir().join("seeds/preprocessor");
    let mut seeds: Vec<Vec<Vec<u8>>> = std::fs::read_dir(&dir)
        .expect("preprocessor seeds")
        .map(|e| vec![read(e.expect("entry").path())])
        .collect();
    seeds.sort();
    Target {
        name: "preprocessor",
        seeds,
        fixup: None,
        tokens: tokens(&[
            "\"shortest_edge\"",
            "\"height\"",
            "\"width\"",
            "\"crop_size\"",
            "\"rescale_factor\"",
            "\"image_std\"",
        ]),
        run: Box::new(|ws, parts| {
            let path = write(ws, "preprocessor_config.json", &parts[0]);
            let cfg = tri!(PreprocessConfig::from_file(&path, 8));
            let image = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/images/landscape.png");
            // Clip refuses a crop of another size before decoding.
            if cfg.crop.is_some_and(|c| c != (8, 8)) {
                return Ok(Outcome::Refused);
            }
            let (pixels, size) = tri!(cfg.apply_file(&image));
            if pixels.len() != 3 * size.0 * size.1 {
                return Err(Failure::Wrong("pixel count does not match the size".into()));
            }
            finite("pixels", &pixels)
        }),
    }
}

/// Image bytes: decode and preprocess (OpenAI's transform at 8 px); pixels must be finite.
fn image_target() -> Target {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
    let mut seeds: Vec<Vec<Vec<u8>>> = std::fs::read_dir(&dir)
        .expect("fixture images")
        .filter_map(|e| e.ok())
        .filter(|e| e.metadata().is_ok_and(|m| m.len() < 16_000))
        .map(|e| vec![read(e.path())])
        .collect();
    seeds.sort();
    Target {
        name: "image",
        seeds,
        fixup: None,
        tokens: vec![
            b"IEND".to_vec(),
            b"IDAT".to_vec(),
            b"\xFF\xD9".to_vec(),
            b"\xFF\xDA".to_vec(),
            b"RIFF".to_vec(),
            b"VP8L".to_vec(),
            b"iCCP".to_vec(),
        ],
        run: Box::new(|ws, parts| {
            let path = write(ws, "image", &parts[0]);
            let (pixels, _) = tri!(PreprocessConfig::openai(8).apply_file(&path));
            finite("pixels", &pixels)
        }),
    }
}

/// A webdataset shard (tar): read to its end and embedded with the micro model into a shard output; a finished
/// output must read back whole with finite rows, and a refused shard must leave no output.
fn shard_target() -> Target {
    let fixture = |f: &str| {
        read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/images")
                .join(f),
        )
    };
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("000000.png", fixture("square.png")),
        ("000000.txt", b"a caption".to_vec()),
        ("000000.json", br#"{"url": "x"}"#.to_vec()),
        ("000001.jpg", fixture("photo.jpg")),
        ("000002.txt", b"no image".to_vec()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data.as_slice())
            .expect("seed shard member");
    }
    let seed = tar.into_inner().expect("seed shard");
    Target {
        name: "shard",
        seeds: vec![vec![seed]],
        fixup: None,
        tokens: vec![
            b"ustar\0".to_vec(),
            b".jpg".to_vec(),
            b".txt".to_vec(),
            b"\0\0\0\0".to_vec(),
        ],
        run: Box::new(|ws, parts| {
            use cliprt::index::shards;
            let path = write(ws, "shard.tar", &parts[0]);
            let shard = path.to_string_lossy().into_owned();
            let out = ws.dir.join("shard-out");
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).expect("shard output folder");
            let identity = tri!(cliprt::index::ModelIdentity::of(&ws.clip));
            let done = shards::embed_shard(&ws.clip, &identity, &shard, &out, 2);
            let files = shards::outputs(&shard, &out);
            if done.is_err() {
                if files.embeddings.exists() || files.meta.exists() {
                    return Err(Failure::Wrong("a refused shard left output".into()));
                }
                return Ok(Outcome::Refused);
            }
            let Some(meta) = shards::read_meta(&shard, &out) else {
                return Err(Failure::Wrong("a finished shard does not read back".into()));
            };
            let (rows, shape) = tri!(cliprt::npy::read_npy(&files.embeddings));
            if shape != [meta.rows, meta.dim] || meta.samples.len() != meta.rows {
                return Err(Failure::Wrong(format!(
                    "shape {shape:?} vs {} rows",
                    meta.rows
                )));
            }
            finite("shard embeddings", &rows)
        }),
    }
}

/// The folder and index the index and journal targets start from, built once with the micro model.
fn index_seed(ws: &Workspace) -> (PathBuf, PathBuf) {
    let images = ws.dir.join("index-images");
    if !images.exists() {
        std::fs::create_dir_all(&images).expect("index images");
        for f in ["square.png", "photo.jpg", "grey.png"] {
            std::fs::copy(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/images")
                    .join(f),
                images.join(f),
            )
            .expect("index image");
        }
    }
    let out = ws.dir.join("seed.idx");
    if !out.exists() {
        let opts = cliprt::index::IndexOptions {
            batch: 1,
            force: true,
        };
        cliprt::index::build(&ws.clip, &images, &out, &opts, |_| {}).expect("seed index");
    }
    (images, out)
}

/// FNV-1a, as src/checksum.rs computes the index checksum.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    h
}

/// Recomputes an index's checksum over its metadata, offsets and paths where the header's sizes allow.
fn fix_index_checksum(b: &mut [u8]) {
    let u64_at = |b: &[u8], o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
    };
    let (Some(rows), Some(meta), Some(dim)) = (u64_at(b, 16), u64_at(b, 24), b.get(12..16)) else {
        return;
    };
    let dim = u64::from(u32::from_le_bytes(dim.try_into().unwrap_or_default()));
    // Checked like the parser itself: a mutated header's sizes may overflow.
    let offsets_at = meta
        .checked_next_multiple_of(64)
        .and_then(|m| m.checked_add(64))
        .and_then(|x| {
            x.checked_add(
                rows.checked_mul(dim)?
                    .checked_mul(4)?
                    .checked_next_multiple_of(64)?,
            )
        });
    let meta_end = meta.checked_add(64);
    match (offsets_at, meta_end) {
        (Some(at), Some(end)) if at <= b.len() as u64 && end <= b.len() as u64 => {
            let sum = fnv1a(
                fnv1a(0xCBF2_9CE4_8422_2325, &b[64..end as usize]),
                &b[at as usize..],
            );
            b[40..48].copy_from_slice(&sum.to_le_bytes());
        }
        _ => {}
    }
}

/// An index file: open it and search it; scores must be finite, paths readable.
fn index_target(ws: &Workspace) -> Target {
    let (_, idx) = index_seed(ws);
    Target {
        name: "index",
        seeds: vec![vec![read(idx)]],
        fixup: Some(fix_index_checksum),
        tokens: tokens(&["\"probe\"", "\"dim\"", "\"logit_scale\""]),
        run: Box::new(|ws, parts| {
            let path = write(ws, "fuzzed.idx", &parts[0]);
            let idx = tri!(Index::open(&path));
            let q = vec![1.0f32 / (idx.dim() as f32).sqrt(); idx.dim()];
            let top = tri!(idx.search(&ws.engine, &q, 3));
            for (i, _) in top.hits(0) {
                let _ = idx.path(i);
            }
            finite("scores", &top.scores)
        }),
    }
}

/// A journal of an interrupted run: resume from it; a finished index must open.
fn journal_target(ws: &Workspace) -> Target {
    let (images, _) = index_seed(ws);
    // A real journal: a run stopped (by a panicking progress callback) after its first batch.
    let out = ws.dir.join("journal-seed.idx");
    let journal = ws.dir.join("journal-seed.idx.partial");
    if !journal.exists() {
        let opts = cliprt::index::IndexOptions {
            batch: 1,
            force: true,
        };
        let quiet = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            cliprt::index::build(&ws.clip, &images, &out, &opts, |_| {
                panic!("stop after the first batch")
            })
        }));
        panic::set_hook(quiet);
    }
    Target {
        name: "journal",
        seeds: vec![vec![read(&journal)]],
        fixup: None,
        tokens: tokens(&["CLIPRTJ2"]),
        run: Box::new(move |ws, parts| {
            let (images, _) = index_seed(ws);
            let out = ws.dir.join("resumed.idx");
            let _ = std::fs::remove_file(&out);
            std::fs::write(ws.dir.join("resumed.idx.partial"), &parts[0]).expect("journal");
            let opts = cliprt::index::IndexOptions {
                batch: 2,
                force: true,
            };
            tri!(cliprt::index::build(&ws.clip, &images, &out, &opts, |_| {}));
            let idx = Index::open(&out)
                .map_err(|e| Failure::Wrong(format!("finished index does not open: {e}")))?;
            finite("embeddings", idx.embeddings())
        }),
    }
}

/// A command line (arguments separated by NUL): parsed and checked as `cliprt` would, without running it.
fn cli_target(check: fn(&[std::ffi::OsString]) -> cliprt::Result<()>) -> Target {
    let lines = [
        "cliprt bench --arch vit-b-32 --batch 1,8,32 --reps 5",
        "cliprt bench --workload search --gallery 100000 --dim 512 --queries 1,64 --k 10",
        "cliprt --threads 2 bench --workload image,text --prompt-len 20 --warmup 1",
        "cliprt bench --arch vit-h-14 --batch 64 --max-memory-gb 4",
        "cliprt embed --model m --image a.png --text hello --out-image x.npy",
        "cliprt index --model m --images dir --out x.idx --batch 32",
        "cliprt search --model m --index x.idx --text cat -k 10 --json",
    ];
    Target {
        name: "cli",
        seeds: lines
            .iter()
            .map(|l| vec![l.replace(' ', "\0").into_bytes()])
            .collect(),
        fixup: None,
        tokens: [
            "\0--threads\0",
            "\0--batch\0",
            "\0--gallery\0",
            "\0--dim\0",
            "\0--reps\0",
            "1000000000",
            "18446744073709551615",
            "0",
            "-1",
            "1e308",
            "nan",
            ",",
            "\0--max-memory-gb\0",
            "\0--k\0",
        ]
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .collect(),
        run: Box::new(move |_, parts| {
            let args: Vec<std::ffi::OsString> = parts[0]
                .split(|&b| b == 0)
                .map(|a| {
                    use std::os::unix::ffi::OsStrExt;
                    std::ffi::OsStr::from_bytes(a).to_os_string()
                })
                .collect();
            tri!(check(&args));
            Ok(Outcome::Accepted)
        }),
    }
}

/// Every target, by name.
pub fn targets(
    ws: &Workspace,
    cli_check: fn(&[std::ffi::OsString]) -> cliprt::Result<()>,
) -> Vec<Target> {
    vec![
        model_target(),
        tokenizer_target(),
        sentencepiece_target(),
        open_clip_target(),
        preprocessor_target(),
        image_target(),
        shard_target(),
        index_target(ws),
        journal_target(ws),
        cli_target(cli_check),
    ]
}

/// Runs one input, catching panics and timing it.
pub fn execute(target: &Target, ws: &Workspace, parts: &[Vec<u8>]) -> Result<Outcome, Failure> {
    let t = Instant::now();
    let r = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(ws, parts)));
    let took = t.elapsed();
    match r {
        Err(p) => Err(Failure::Panic(
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default(),
        )),
        Ok(Ok(_)) | Ok(Err(Failure::Slow(_))) if took > SLOW => Err(Failure::Slow(took)),
        Ok(r) => r,
    }
}

/// Input parts as one file: u32 part count, then u32 length + bytes per part.
pub fn encode_parts(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = (parts.len() as u32).to_le_bytes().to_vec();
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

pub fn decode_parts(b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let mut at = 4;
    let mut parts = Vec::new();
    for _ in 0..n {
        let len = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        parts.push(b.get(at + 4..at + 4 + len)?.to_vec());
        at += 4 + len;
    }
    Some(parts)
}

/// What a run of one target found.
#[derive(Default, Debug)]
pub struct Report {
    pub execs: u64,
    pub accepted: u64,
    pub refused: u64,
    pub failures: Vec<(String, PathBuf)>,
    pub slowest: Duration,
}

/// Runs `execs` mutated inputs of `target` (or until `deadline`) on `workers` threads from `seed`. Each failing
/// input is saved under `crashes/`; the input in flight is kept in `<work>/current-<target>-<worker>` so that an
/// abort or a hang (which end the process; a watchdog aborts after 4 × [`SLOW`]) leaves it behind.
pub fn fuzz(
    target: &Target,
    workspaces: &[Workspace],
    execs: u64,
    deadline: Option<Instant>,
    seed: u64,
    crashes: &Path,
) -> Report {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let beats: Vec<AtomicU64> = workspaces.iter().map(|_| AtomicU64::new(0)).collect();
    let start = Instant::now();
    let reports: Vec<Report> = std::thread::scope(|s| {
        let beats = &beats;
        let stop = &stop;
        let done = &done;
        s.spawn(move || {
            // Watchdog: a worker whose heartbeat is older than 4 × SLOW is hung. Progress every minute.
            let mut shown = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let minutes = start.elapsed().as_secs() / 60;
                if minutes > shown {
                    shown = minutes;
                    eprintln!(
                        "fuzz {}: {} executions after {minutes} min",
                        target.name,
                        done.load(Ordering::Relaxed)
                    );
                }
                let now = start.elapsed().as_millis() as u64;
                for (w, b) in beats.iter().enumerate() {
                    let last = b.load(Ordering::Relaxed);
                    if last > 0 && now.saturating_sub(last) > 4 * SLOW.as_millis() as u64 {
                        eprintln!(
                            "fuzz: worker {w} of {} hangs; input left in its current-* file",
                            target.name
                        );
                        std::process::abort();
                    }
                }
            }
        });
        let handles: Vec<_> = workspaces
            .iter()
            .enumerate()
            .map(|(w, ws)| {
                s.spawn(move || {
                    // The heartbeat stops when the worker ends, by returning or by a panic of the harness itself
                    // (which then propagates), so the watchdog never mistakes either for a hang.
                    let _idle = Idle(&beats[w]);
                    let mut rng = Rng::new(seed ^ (w as u64).wrapping_mul(0xA24B_AED4_963E_E407));
                    let mut report = Report::default();
                    let current = ws.dir.join(format!("current-{}-{w}", target.name));
                    let all: Vec<&[u8]> =
                        target.seeds.iter().flatten().map(Vec::as_slice).collect();
                    let tokens: Vec<&[u8]> = target.tokens.iter().map(Vec::as_slice).collect();
                    let mut corpus: Vec<Vec<Vec<u8>>> = target.seeds.clone();
                    while done.fetch_add(1, Ordering::Relaxed) < execs
                        && deadline.is_none_or(|d| Instant::now() < d)
                    {
                        let base = &corpus[rng.below(corpus.len())];
                        let mut parts = base.clone();
                        let p = rng.below(parts.len());
                        parts[p] = mutate(&mut rng, &base[p], &all, &tokens);
                        if let Some(fix) = target.fixup.filter(|_| rng.below(2) == 0) {
                            fix(&mut parts[p]);
                        }
                        let _ = std::fs::write(&current, encode_parts(&parts));
                        beats[w]
                            .store(start.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
                        let t = Instant::now();
                        let r = execute(target, ws, &parts);
                        report.slowest = report.slowest.max(t.elapsed());
                        report.execs += 1;
                        match r {
                            Ok(Outcome::Accepted) => {
                                report.accepted += 1;
                                // Accepted mutants become parents (bounded), so the search goes deeper than one step.
                                if corpus.len() < 256 {
                                    corpus.push(parts);
                                } else {
                                    let i = rng.below(corpus.len());
                                    corpus[i] = parts;
                                }
                            }
                            Ok(Outcome::Refused) => report.refused += 1,
                            Err(f) => {
                                let _ = std::fs::create_dir_all(crashes);
                                let file = crashes
                                    .join(format!("{}-{seed}-{w}-{}", target.name, report.execs));
                                let _ = std::fs::write(&file, encode_parts(&parts));
                                report.failures.push((f.to_string(), file));
                            }
                        }
                    }
                    report
                })
            })
            .collect();
        let reports = handles
            .into_iter()
            .map(|h| h.join().expect("fuzz worker"))
            .collect();
        stop.store(true, Ordering::Relaxed);
        reports
    });
    let mut total = Report::default();
    for r in reports {
        total.execs += r.execs;
        total.accepted += r.accepted;
        total.refused += r.refused;
        total.slowest = total.slowest.max(r.slowest);
        total.failures.extend(r.failures);
    }
    total
}

/// Clears a worker's heartbeat when dropped.
struct Idle<'a>(&'a AtomicU64);

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Every committed regression input of `target` (fuzz/regressions/<target>/*), each as its parts.
pub fn regressions(target: &str) -> Vec<(PathBuf, Vec<Vec<u8>>)> {
    let dir = fuzz_dir().join("regressions").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<Vec<u8>>)> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            let parts = decode_parts(&read(&p))
                .unwrap_or_else(|| panic!("{}: not a parts file", p.display()));
            (p, parts)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
