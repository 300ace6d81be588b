//! Every resource limit of cliprt, in one place, each checked before the work it bounds starts (ARCHITECTURE.md,
//! Hostile input; README, "Limits and safety", lists them with what happens at each). The numbers bound a hostile
//! input's cost: no input file, config or argument makes cliprt allocate more than about 2 GB or run for long before
//! it is refused with [`Error::Limit`] (or [`Error::ImageTooLarge`]).

use crate::error::{Error, Result};

/// JSON files of a model folder (config.json, preprocessor_config.json, tokenizer.json, the shard index). The
/// largest real one we know, Gemma's tokenizer.json (SigLIP2), is 33 MB.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// A `--text-file`.
pub const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;
/// One text. Only the first tokens survive truncation to the context length, but the tokenizer reads all of it.
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// A .npy file read back (`cliprt` reads them for checks and profiles).
pub const MAX_NPY_BYTES: u64 = 1 << 30;
/// An image file, read whole before decoding.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// Pixels of a decoded image: PIL's own decompression-bomb error threshold (2 × `Image.MAX_IMAGE_PIXELS`), so cliprt
/// accepts what HF + PIL accept (as far as [`DECODE_MEMORY_BYTES`] allows).
pub const MAX_IMAGE_PIXELS: u64 = 2 * 89_478_485;
/// Pixels of an image after the resize step (before the crop): a 1×65535 strip resized to a shortest edge of 224
/// would be 3.3 billion pixels.
pub const MAX_RESIZED_PIXELS: u64 = 1 << 26;
/// Bytes that every image decode in flight may hold together (the decoded image, its RGB conversion and the resize
/// buffers), shared by the parallel decoding threads: a decode waits for room, and one that alone needs more is
/// refused. It also bounds what a decoder may allocate for metadata (a PNG's compressed ICC profile).
pub const DECODE_MEMORY_BYTES: u64 = 1 << 30;
/// What one decode may allocate beyond its pixels, for metadata it decompresses (a PNG's ICC profile, text
/// chunks). Real ICC profiles are a few KB; PIL itself refuses text chunks over 1 MB.
pub const DECODE_METADATA_BYTES: u64 = 16 << 20;
/// `--threads`.
pub const MAX_THREADS: usize = 1024;
/// What `cliprt bench` may allocate (weights, activations, galleries), estimated before it starts: half the
/// machine's physical memory, at least 2 GiB (`--max-memory-gb` sets it). A benchmark is asked for by name and size
/// (ViT-H weights alone are 4 GB, a 1M × 768 gallery 3 GB), so this is the one limit that follows the machine: it
/// refuses sizes the machine cannot hold instead of letting the allocator abort.
pub fn bench_memory_bytes() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let physical = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
    (physical / 2).max(2 << 30)
}
/// Images per forward pass of `cliprt index --batch`: their pixels are held together (600 KB each at 224 px).
pub const MAX_INDEX_BATCH: usize = 1024;
/// Batch sizes of `cliprt profile` (its activations live on the GPU, or in host memory on the simulator).
pub const MAX_PROFILE_BATCH: usize = 4096;
/// Timed or warm-up runs of one bench measurement.
pub const MAX_BENCH_RUNS: usize = 100_000;

/// Model architecture limits, the same for every family: they keep every size computed from a config far from
/// overflow. The largest public CLIP-family models (bigG: width 1664, MLP 8192, 48 layers; SigLIP so400m at 384 px;
/// Gemma's 256k vocabulary) sit well inside.
pub mod model {
    /// hidden_size, projection_dim.
    pub const MAX_WIDTH: usize = 1 << 14;
    /// intermediate_size.
    pub const MAX_INTERMEDIATE: usize = 1 << 16;
    pub const MAX_LAYERS: usize = 512;
    pub const MAX_VOCAB: usize = 1 << 21;
    /// max_position_embeddings (text context).
    pub const MAX_CONTEXT: usize = 1 << 14;
    /// image_size of the vision tower, and every size in preprocessor_config.json.
    pub const MAX_IMAGE_SIDE: usize = 8192;
    /// Tokens of the vision sequence (patches + class token).
    pub const MAX_VISION_TOKENS: usize = 1 << 16;
}

/// Fails with [`Error::Limit`] when `value` exceeds `limit`.
pub fn check(what: &str, value: u64, limit: u64) -> Result<()> {
    if value > limit {
        return Err(Error::Limit {
            what: what.to_string(),
            value: value.to_string(),
            limit: limit.to_string(),
        });
    }
    Ok(())
}
