//! Image indexes: `cliprt index` embeds a folder tree into an index file, `cliprt search` memory-maps it.
//!
//! Two files. While indexing, every finished batch is appended to a journal (`INDEX.partial`) as one record with
//! its own checksum and is flushed to disk (`fsync`) before the next batch starts: a killed run loses at most the
//! batch in flight, and the next run over the same folder and model reads the journal back (dropping a torn last
//! record), skips what it holds and goes on. The journal is locked (`flock`) while a run uses it, so a second run on
//! the same output stops with [`Error::Locked`] instead of interleaving records. Each record keys a file by its name
//! as bytes and its identity (size, modification time, inode): a file replaced after an interrupted run is embedded
//! again. When every file is done, the index is staged in an exclusive temporary file, synced and renamed over
//! `INDEX` ([`crate::files::Outputs`]), and the journal is deleted: `INDEX` is either absent or complete, never
//! half-written.
//!
//! The index is memory-mapped so that a multi-GB gallery opens in milliseconds and is searched in place. The limit
//! that comes with it: a program that truncates an index file *in place* while cliprt reads it makes the kernel send
//! SIGBUS (the CLI then exits with a message saying so). cliprt itself never does that; it replaces indexes by
//! rename, which leaves an open mapping intact.
//!
//! Index layout (little-endian), 64-byte aligned sections so the embeddings can be used in place from an mmap:
//! `"CLIPRTIX" | u32 version | u32 dim | u64 rows | u64 meta_len | u64 paths_len | u64 checksum | pad to 64 |
//! meta JSON, pad | f32 embeddings [rows, dim] (L2-normalized), pad | u64 path offsets [rows + 1] | path bytes`.
//! The checksum (FNV-1a) covers the metadata, offsets and paths; the embeddings are not re-read at load (a 1M-entry
//! index opens in milliseconds), their integrity comes from the atomic rename.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checksum::{fnv1a, FNV_START};
use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::files::{path_bytes, path_from_bytes};

mod journal;
pub mod shards;
mod tar;
use journal::{Done, FileId, Journal, Outcome};

const INDEX_MAGIC: &[u8; 8] = b"CLIPRTIX";
const VERSION: u32 = 1;
const HEADER: usize = 64;
/// The text whose embedding identifies the model an index was built with.
const PROBE_TEXT: &str = "a photo of a cat.";
/// File extensions `cliprt index` tries to decode (others are not images and are passed over silently).
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "jfif"];

/// Which model built an index: checked before a search, so embeddings of two models are never compared.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelIdentity {
    /// The model folder as given when indexing (for messages).
    pub model: String,
    pub dim: usize,
    pub logit_scale: f32,
    /// The normalized embedding of a fixed probe text: depends on every weight of the text tower.
    pub probe: Vec<f32>,
}

impl ModelIdentity {
    pub fn of(clip: &Clip) -> Result<ModelIdentity> {
        let probe = clip.embed_texts(&[PROBE_TEXT])?.normalized();
        Ok(ModelIdentity {
            model: clip.dir().display().to_string(),
            dim: probe.dim,
            logit_scale: clip.logit_scale(),
            probe: probe.data,
        })
    }

    /// Whether `other` is the same model, allowing for the rounding of another device or precision.
    pub fn matches(&self, other: &ModelIdentity) -> bool {
        if self.dim != other.dim || self.probe.len() != other.probe.len() {
            return false;
        }
        let dot: f64 = self
            .probe
            .iter()
            .zip(&other.probe)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        // Unit vectors: 0.99 tolerates fp16 and bf16 runs of one model, and rejects any other model.
        dot >= 0.99 && (self.logit_scale - other.logit_scale).abs() <= 1e-3 * self.logit_scale.abs()
    }
}

fn pad64(n: usize) -> usize {
    n.next_multiple_of(64)
}

/// Where the sections of an index with these header fields lie: `(embeddings, offsets, paths, file length)`, or
/// `None` when the sizes overflow (a corrupt or hostile header).
fn layout(
    dim: u64,
    rows: u64,
    meta_len: u64,
    paths_len: u64,
) -> Option<(usize, usize, usize, usize)> {
    let us = |v: u64| usize::try_from(v).ok();
    let emb_at = us(meta_len)?
        .checked_next_multiple_of(64)?
        .checked_add(HEADER)?;
    let emb_bytes = us(rows)?.checked_mul(us(dim)?)?.checked_mul(4)?;
    let offsets_at = emb_at.checked_add(emb_bytes.checked_next_multiple_of(64)?)?;
    let paths_at = offsets_at.checked_add(us(rows)?.checked_add(1)?.checked_mul(8)?)?;
    Some((
        emb_at,
        offsets_at,
        paths_at,
        paths_at.checked_add(us(paths_len)?)?,
    ))
}

/// A finished index, memory-mapped.
pub struct Index {
    map: memmap2::Mmap,
    path: PathBuf,
    pub identity: ModelIdentity,
    rows: usize,
    dim: usize,
    emb_at: usize,
    offsets_at: usize,
    paths_at: usize,
}

impl Index {
    /// Opens and validates an index (header, sizes, checksum of metadata and paths).
    /// The `k` best images for each query row (unit-normalized embeddings of this index's model) by cosine. On the
    /// CPU the memory-mapped rows are searched in place (no copy of the gallery); other engines get them uploaded.
    pub fn search(
        &self,
        engine: &crate::Engine,
        queries: &[f32],
        k: usize,
    ) -> Result<crate::search::TopK> {
        if engine.backend::<crate::cpu::CpuBackend>().is_some() {
            return self.search_host(queries, k);
        }
        let g = engine.upload_gallery(self.embeddings(), self.dim(), true)?;
        engine.search(&g, queries, k, 1.0)
    }

    /// [`Index::search`] on the CPU, with no engine: the memory-mapped rows searched in place.
    pub fn search_host(&self, queries: &[f32], k: usize) -> Result<crate::search::TopK> {
        let g = crate::search::Gallery::new(
            crate::search::Storage::F32(self.embeddings()),
            self.dim(),
            true,
        )?;
        crate::search::search(&g, queries, k, 1.0)
    }

    /// Checks that `clip` is the model this index was built with (searching it with another model's embeddings
    /// would rank by meaningless scores).
    pub fn check_model(&self, clip: &Clip, path: &Path) -> Result<()> {
        if self.identity.matches(&ModelIdentity::of(clip)?) {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "{} was built with another model ({}); search it with that model",
            path.display(),
            self.identity.model
        )))
    }

    pub fn open(path: &Path) -> Result<Index> {
        let bad = |msg: String| {
            Error::InvalidArgument(format!(
                "{}: not a valid cliprt index: {msg}",
                path.display()
            ))
        };
        if !cfg!(target_endian = "little") {
            return Err(Error::InvalidArgument(
                "index files are little-endian; this machine is not".into(),
            ));
        }
        let file = crate::files::open_regular(path)?;
        // SAFETY: the file is only read; cliprt replaces an index by rename, never in place (the module docs say
        // what another program truncating it in place does).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if map.len() < HEADER || &map[..8] != INDEX_MAGIC {
            return Err(bad("no CLIPRTIX header".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap_or_default());
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "version {version} (this cliprt reads {VERSION})"
            )));
        }
        let (dim, rows) = (u32_at(12), u64_at(16));
        let (meta_len, paths_len, checksum) = (u64_at(24), u64_at(32), u64_at(40));
        let Some((emb_at, offsets_at, paths_at, total)) =
            layout(u64::from(dim), rows, meta_len, paths_len)
        else {
            return Err(bad("header sizes overflow".into()));
        };
        if dim == 0 || total != map.len() {
            return Err(bad(format!(
                "{} bytes, header describes another size (truncated?)",
                map.len()
            )));
        }
        // layout() succeeded, so these fit in usize and inside the map.
        let (dim, rows, meta_len, paths_len) = (
            dim as usize,
            rows as usize,
            meta_len as usize,
            paths_len as usize,
        );
        let mut sum = fnv1a(FNV_START, &map[HEADER..HEADER + meta_len]);
        sum = fnv1a(sum, &map[offsets_at..]);
        if sum != checksum {
            return Err(bad("checksum mismatch (corrupt file)".into()));
        }
        let identity: ModelIdentity = serde_json::from_slice(&map[HEADER..HEADER + meta_len])
            .map_err(|e| bad(format!("metadata: {e}")))?;
        let idx = Index {
            map,
            path: path.to_path_buf(),
            identity,
            rows,
            dim,
            emb_at,
            offsets_at,
            paths_at,
        };
        // Offsets must be non-decreasing and end at the paths' length.
        let mut prev = 0;
        for i in 0..=rows {
            let o = idx.offset(i);
            if o < prev || o > paths_len {
                return Err(bad(format!("path offset {i} out of order")));
            }
            prev = o;
        }
        if prev != paths_len || idx.identity.dim != dim {
            return Err(bad("path table or dimension inconsistent".into()));
        }
        Ok(idx)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn file(&self) -> &Path {
        &self.path
    }

    /// The normalized embeddings `[rows, dim]`, in place in the mapping.
    pub fn embeddings(&self) -> &[f32] {
        bytemuck::cast_slice(&self.map[self.emb_at..self.emb_at + self.rows * self.dim * 4])
    }

    fn offset(&self, i: usize) -> usize {
        let o = self.offsets_at + 8 * i;
        u64::from_le_bytes(self.map[o..o + 8].try_into().unwrap_or_default()) as usize
    }

    /// The path of entry `i`, as it was indexed (its exact bytes, UTF-8 or not).
    pub fn path(&self, i: usize) -> PathBuf {
        let (a, b) = (self.offset(i), self.offset(i + 1));
        path_from_bytes(&self.map[self.paths_at + a..self.paths_at + b])
    }
}

/// Writes a finished index atomically (an exclusive temporary file, fsync, rename, fsync of the folder).
fn write_index(
    out: &Path,
    identity: &ModelIdentity,
    entries: &[(&Path, u64)],
    journal: &File,
    dim: usize,
) -> Result<()> {
    let meta = serde_json::to_vec(identity)
        .map_err(|e| Error::InvalidArgument(format!("metadata: {e}")))?;
    let mut offsets = Vec::with_capacity(8 * (entries.len() + 1));
    let mut paths = Vec::new();
    offsets.extend_from_slice(&0u64.to_le_bytes());
    for (p, _) in entries {
        paths.extend_from_slice(&path_bytes(p));
        offsets.extend_from_slice(&(paths.len() as u64).to_le_bytes());
    }
    let checksum = fnv1a(fnv1a(fnv1a(FNV_START, &meta), &offsets), &paths);
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(INDEX_MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(dim as u32).to_le_bytes());
    header.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    header.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    header.extend_from_slice(&(paths.len() as u64).to_le_bytes());
    header.extend_from_slice(&checksum.to_le_bytes());
    header.resize(HEADER, 0);
    let mut outputs = crate::files::Outputs::new();
    outputs.stage(out, |w| {
        w.write_all(&header)?;
        w.write_all(&meta)?;
        w.write_all(&vec![0; pad64(meta.len()) - meta.len()])?;
        // Embeddings come from the journal in entry order.
        let mut row = vec![0u8; dim * 4];
        for &(_, at) in entries {
            crate::files::read_exact_at(journal, &mut row, at)?;
            w.write_all(&row)?;
        }
        let emb = entries.len() * dim * 4;
        w.write_all(&vec![0; pad64(emb) - emb])?;
        w.write_all(&offsets)?;
        w.write_all(&paths)
    })?;
    outputs.commit()
}

/// Every image file under `root` (by extension; regular files only, so a FIFO or device named `x.png` is passed
/// over, never opened), depth first, sorted by name bytes at each level so that a rerun visits the same files in
/// the same order. Symbolic links to files are followed; links to folders are not (no cycles).
pub fn image_files(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.is_dir() {
        return Err(if root.exists() {
            Error::InvalidArgument(format!("{}: not a folder", root.display()))
        } else {
            Error::NotFound(root.to_path_buf())
        });
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in entries {
            let Ok(kind) = e.file_type() else { continue };
            let p = e.path();
            if kind.is_dir() {
                subdirs.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
                && crate::files::is_regular(&p)
            {
                out.push(p);
            }
        }
        // Reversed onto the stack, so the first subfolder is visited first.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// Progress of an index run, as the callback sees it.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub failed: usize,
    /// Files finished by an earlier, interrupted run (counted in `done`).
    pub resumed: usize,
    /// Files per second in this run.
    pub rate: f64,
}

/// What an index run did.
#[derive(Debug)]
pub struct IndexReport {
    pub indexed: usize,
    /// Files that could not be read or decoded, with the reason.
    pub failed: Vec<(String, String)>,
    pub resumed: usize,
}

/// Options of [`build`].
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Rebuild even if `out` exists.
    pub force: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            batch: 32,
            force: false,
        }
    }
}

/// Embeds every image under `folder` into the index `out` (resuming an interrupted run of the same model).
pub fn build(
    clip: &Clip,
    folder: &Path,
    out: &Path,
    opts: &IndexOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<IndexReport> {
    if opts.batch == 0 {
        return Err(Error::InvalidArgument("--batch must be ≥ 1".into()));
    }
    crate::limits::check(
        "--batch",
        opts.batch as u64,
        crate::limits::MAX_INDEX_BATCH as u64,
    )?;
    if out.exists() && !opts.force {
        return Err(Error::InvalidArgument(format!(
            "{} exists (give --force to rebuild it)",
            out.display()
        )));
    }
    let files = image_files(folder)?;
    let identity = ModelIdentity::of(clip)?;
    let mut journal = Journal::open(out, &identity)?;
    // A file is done when the journal holds it with its current identity; a replaced one is embedded again.
    let current = |p: &PathBuf| FileId::of(p);
    let is_done =
        |j: &Journal, p: &PathBuf| j.done.get(p).is_some_and(|(id, _)| Some(*id) == current(p));
    let done_now: Vec<bool> = files.iter().map(|p| is_done(&journal, p)).collect();
    let todo: Vec<&PathBuf> = files
        .iter()
        .zip(&done_now)
        .filter_map(|(p, &done)| (!done).then_some(p))
        .collect();
    let resumed = files.len() - todo.len();
    let total = files.len();
    let throttle = std::env::var("CLIPRT_INDEX_THROTTLE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let t = Instant::now();
    let mut finished = 0;
    let mut failed = files
        .iter()
        .zip(&done_now)
        .filter(|&(p, &done)| done && matches!(journal.done.get(p), Some((_, Done::Failed(_)))))
        .count();
    for chunk in todo.chunks(opts.batch) {
        // Identity first, then the content: a file changed in between gets embedded again by the next run.
        // Decode and preprocess in parallel; a file that fails is recorded, not fatal.
        let ids: Vec<Option<FileId>> = chunk.iter().map(|p| current(p)).collect();
        let pixels: Vec<(Option<FileId>, Result<Vec<f32>>)> =
            ids.into_iter().zip(clip.preprocess_files(chunk)).collect();
        let ok: Vec<&Vec<f32>> = pixels.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
        let mut embedded = if ok.is_empty() {
            Vec::new()
        } else {
            let flat: Vec<f32> = ok.iter().flat_map(|v| v.iter().copied()).collect();
            let e = clip.embed_pixels_unchecked(&flat, ok.len())?.normalized();
            e.data.chunks_exact(e.dim).map(<[f32]>::to_vec).collect()
        }
        .into_iter();
        let batch = chunk
            .iter()
            .zip(pixels)
            .map(|(p, (id, r))| {
                let result = match r {
                    Ok(_) => match embedded.next() {
                        Some(e) if e.iter().all(|v| v.is_finite()) => Ok(e),
                        _ => Err(format!(
                            "{}: {}",
                            p.display(),
                            Error::NonFinite("its embedding (not indexed)".into())
                        )),
                    },
                    Err(e) => Err(e.to_string()),
                };
                Outcome {
                    path: (*p).clone(),
                    id,
                    result,
                }
            })
            .collect::<Vec<_>>();
        failed += batch.iter().filter(|o| o.result.is_err()).count();
        journal.append(batch)?;
        finished += chunk.len();
        progress(&Progress {
            done: resumed + finished,
            total,
            failed,
            resumed,
            rate: finished as f64 / t.elapsed().as_secs_f64().max(1e-9),
        });
        if let Some(ms) = throttle {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
    // The index lists the folder's files in walk order; files deleted since an interrupted run are left out.
    let mut entries: Vec<(&Path, u64)> = Vec::new();
    let mut failed = Vec::new();
    for p in &files {
        match journal.done.get(p) {
            Some((_, Done::Embedded(at))) => entries.push((p, *at)),
            Some((_, Done::Failed(m))) => failed.push((p.display().to_string(), m.clone())),
            None => {}
        }
    }
    if entries.is_empty() {
        return Err(Error::EmptyInput(
            "no image under the folder could be indexed",
        ));
    }
    write_index(out, &identity, &entries, &journal.file, identity.dim)?;
    let journal_path = journal.path.clone();
    // Deleted while still locked: a run waiting for the lock then finds the name gone and starts afresh.
    let _ = std::fs::remove_file(&journal_path);
    drop(journal);
    Ok(IndexReport {
        indexed: entries.len(),
        failed,
        resumed,
    })
}
