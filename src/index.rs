//! Image indexes: `cliprt index` embeds a folder tree into an index file, `cliprt search` memory-maps it.
//!
//! Two files. While indexing, every finished batch is appended to a journal (`INDEX.partial`) as one record with
//! its own checksum and is flushed to disk (`fsync`) before the next batch starts: a killed run loses at most the
//! batch in flight, and the next run over the same folder and model reads the journal back (dropping a torn last
//! record), skips what it holds and goes on. When every file is done, the index is written to a temporary file,
//! synced and renamed over `INDEX`, and the journal is deleted: `INDEX` is either absent or complete, never
//! half-written.
//!
//! Index layout (little-endian), 64-byte aligned sections so the embeddings can be used in place from an mmap:
//! `"CLIPRTIX" | u32 version | u32 dim | u64 rows | u64 meta_len | u64 paths_len | u64 checksum | pad to 64 |
//! meta JSON, pad | f32 embeddings [rows, dim] (L2-normalized), pad | u64 path offsets [rows + 1] | path bytes`.
//! The checksum (FNV-1a) covers the metadata, offsets and paths; the embeddings are not re-read at load (a 1M-entry
//! index opens in milliseconds), their integrity comes from the atomic rename.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checksum::{fnv1a, FNV_START};
use crate::clip::Clip;
use crate::error::{Error, Result};

const INDEX_MAGIC: &[u8; 8] = b"CLIPRTIX";
const JOURNAL_MAGIC: &[u8; 8] = b"CLIPRTJ1";
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
            let g = crate::search::Gallery::new(
                crate::search::Storage::F32(self.embeddings()),
                self.dim(),
                true,
            )?;
            return crate::search::search(&g, queries, k, 1.0);
        }
        let g = engine.upload_gallery(self.embeddings(), self.dim(), true)?;
        engine.search(&g, queries, k, 1.0)
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
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is only read; an index is replaced by rename, never modified in place.
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
        let (dim, rows) = (u32_at(12) as usize, u64_at(16) as usize);
        let (meta_len, paths_len, checksum) =
            (u64_at(24) as usize, u64_at(32) as usize, u64_at(40));
        let emb_at = HEADER + pad64(meta_len);
        let emb_bytes = rows
            .checked_mul(dim)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| bad("size overflow".into()))?;
        let offsets_at = emb_at + pad64(emb_bytes);
        let paths_at = offsets_at + 8 * (rows + 1);
        if dim == 0 || paths_at.checked_add(paths_len) != Some(map.len()) {
            return Err(bad(format!(
                "{} bytes, header describes another size (truncated?)",
                map.len()
            )));
        }
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

    /// The path of entry `i`, as it was indexed.
    pub fn path(&self, i: usize) -> &str {
        let (a, b) = (self.offset(i), self.offset(i + 1));
        std::str::from_utf8(&self.map[self.paths_at + a..self.paths_at + b])
            .unwrap_or("<non-UTF-8 path>")
    }
}

/// Writes a finished index atomically (temporary file, fsync, rename, fsync of the folder).
fn write_index(
    out: &Path,
    identity: &ModelIdentity,
    entries: &[(String, u64)],
    journal: &Path,
    dim: usize,
) -> Result<()> {
    let meta = serde_json::to_vec(identity)
        .map_err(|e| Error::InvalidArgument(format!("metadata: {e}")))?;
    let mut offsets = Vec::with_capacity(8 * (entries.len() + 1));
    let mut paths = Vec::new();
    offsets.extend_from_slice(&0u64.to_le_bytes());
    for (p, _) in entries {
        paths.extend_from_slice(p.as_bytes());
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

    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        w.write_all(&header)?;
        w.write_all(&meta)?;
        w.write_all(&vec![0; pad64(meta.len()) - meta.len()])?;
        // Embeddings stream from the journal in entry order.
        let mut r = BufReader::with_capacity(1 << 20, File::open(journal)?);
        let mut row = vec![0u8; dim * 4];
        for &(_, at) in entries {
            r.seek(SeekFrom::Start(at))?;
            r.read_exact(&mut row)?;
            w.write_all(&row)?;
        }
        let emb = entries.len() * dim * 4;
        w.write_all(&vec![0; pad64(emb) - emb])?;
        w.write_all(&offsets)?;
        w.write_all(&paths)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        // The rename itself must reach the disk before the journal goes.
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(out, e)
    })
}

/// One finished file in the journal.
enum Done {
    /// Embedded: where its f32 embedding sits in the journal.
    Embedded(u64),
    Failed(String),
}

/// The journal of an index run: header with the model identity, then checksummed batch records.
struct Journal {
    file: File,
    path: PathBuf,
    done: Vec<(String, Done)>,
}

impl Journal {
    fn path_for(out: &Path) -> PathBuf {
        let mut p = out.as_os_str().to_owned();
        p.push(".partial");
        PathBuf::from(p)
    }

    /// Opens the journal for `out`: resumes a compatible one (keeping every whole record), or starts a new one.
    fn open(out: &Path, identity: &ModelIdentity) -> Result<Journal> {
        let path = Journal::path_for(out);
        let io = |e| Error::io(&path, e);
        if path.exists() {
            let bytes = std::fs::read(&path).map_err(io)?;
            let (theirs, mut at) = read_journal_header(&bytes).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: unreadable journal; delete it to start over",
                    path.display()
                ))
            })?;
            if !theirs.matches(identity) {
                return Err(Error::InvalidArgument(format!(
                    "{}: this interrupted run used another model ({}); delete it to start over",
                    path.display(),
                    theirs.model
                )));
            }
            let dim = identity.dim;
            let mut done = Vec::new();
            while let Some((records, next)) = read_batch(&bytes, at, dim) {
                done.extend(records);
                at = next;
            }
            // A torn last record (the run died mid-write) is dropped.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io)?;
            file.set_len(at as u64).map_err(io)?;
            let mut file = file;
            file.seek(SeekFrom::End(0)).map_err(io)?;
            return Ok(Journal { file, path, done });
        }
        let meta =
            serde_json::to_vec(identity).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut head = Vec::new();
        head.extend_from_slice(JOURNAL_MAGIC);
        head.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        head.extend_from_slice(&meta);
        let mut file = File::create(&path).map_err(io)?;
        file.write_all(&head)
            .and_then(|_| file.sync_all())
            .map_err(io)?;
        Ok(Journal {
            file,
            path,
            done: Vec::new(),
        })
    }

    /// Appends one batch and syncs it to disk.
    fn append(
        &mut self,
        batch: Vec<(String, std::result::Result<Vec<f32>, String>)>,
    ) -> Result<()> {
        let start = self
            .file
            .stream_position()
            .map_err(|e| Error::io(&self.path, e))?;
        let mut rec = Vec::new();
        rec.extend_from_slice(&(batch.len() as u32).to_le_bytes());
        let mut done = Vec::with_capacity(batch.len());
        for (p, r) in batch {
            rec.extend_from_slice(&(p.len() as u32).to_le_bytes());
            rec.extend_from_slice(p.as_bytes());
            match r {
                Ok(e) => {
                    rec.push(0);
                    // +8: the record's length prefix written before it.
                    done.push((p, Done::Embedded(start + 8 + rec.len() as u64)));
                    rec.extend_from_slice(bytemuck::cast_slice(&e));
                }
                Err(msg) => {
                    rec.push(1);
                    rec.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                    rec.extend_from_slice(msg.as_bytes());
                    done.push((p, Done::Failed(msg)));
                }
            }
        }
        let mut out = Vec::with_capacity(rec.len() + 16);
        out.extend_from_slice(&(rec.len() as u64).to_le_bytes());
        out.extend_from_slice(&rec);
        out.extend_from_slice(&fnv1a(FNV_START, &rec).to_le_bytes());
        self.file
            .write_all(&out)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))?;
        self.done.extend(done);
        Ok(())
    }
}

fn read_journal_header(b: &[u8]) -> Option<(ModelIdentity, usize)> {
    if b.get(..8)? != JOURNAL_MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(b.get(16..16usize.checked_add(len)?)?).ok()?;
    Some((meta, 16 + len))
}

/// Reads a record front to back.
struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.p..self.p.checked_add(n)?)?;
        self.p += n;
        Some(s)
    }
}

/// One whole, checksummed batch record at `at`, or `None` (end of file, or a torn or corrupt record).
fn read_batch(b: &[u8], at: usize, dim: usize) -> Option<(Vec<(String, Done)>, usize)> {
    let len = u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?) as usize;
    let body_at = at + 8;
    let rec = b.get(body_at..body_at.checked_add(len)?)?;
    let sum = u64::from_le_bytes(b.get(body_at + len..body_at + len + 8)?.try_into().ok()?);
    if sum != fnv1a(FNV_START, rec) {
        return None;
    }
    let mut c = Cursor { b: rec, p: 0 };
    let count = u32::from_le_bytes(c.take(4)?.try_into().ok()?);
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let plen = u32::from_le_bytes(c.take(4)?.try_into().ok()?) as usize;
        let path = String::from_utf8(c.take(plen)?.to_vec()).ok()?;
        match c.take(1)?[0] {
            0 => {
                let offset = (body_at + c.p) as u64;
                c.take(dim * 4)?;
                out.push((path, Done::Embedded(offset)));
            }
            _ => {
                let mlen = u32::from_le_bytes(c.take(4)?.try_into().ok()?) as usize;
                let msg = String::from_utf8_lossy(c.take(mlen)?).into_owned();
                out.push((path, Done::Failed(msg)));
            }
        }
    }
    Some((out, body_at + len + 8))
}

/// Every image file under `root` (by extension), depth first, sorted by name at each level so that a rerun
/// visits the same files in the same order. Symbolic links to folders are not followed (no cycles).
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
    if out.exists() && !opts.force {
        return Err(Error::InvalidArgument(format!(
            "{} exists (give --force to rebuild it)",
            out.display()
        )));
    }
    let files = image_files(folder)?;
    let identity = ModelIdentity::of(clip)?;
    let mut journal = Journal::open(out, &identity)?;
    let done: std::collections::HashSet<String> =
        journal.done.iter().map(|(p, _)| p.clone()).collect();
    let resumed = done.len();
    let todo: Vec<&PathBuf> = files
        .iter()
        .filter(|p| !done.contains(&p.to_string_lossy().into_owned()))
        .collect();
    let total = resumed + todo.len();
    let throttle = std::env::var("CLIPRT_INDEX_THROTTLE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let t = Instant::now();
    let mut finished = 0;
    // Counted as batches go (rescanning the journal each batch would be quadratic in the folder size).
    let mut failed = journal
        .done
        .iter()
        .filter(|(_, d)| matches!(d, Done::Failed(_)))
        .count();
    for chunk in todo.chunks(opts.batch) {
        // Decode and preprocess in parallel; a file that fails is recorded, not fatal.
        let pixels: Vec<Result<Vec<f32>>> =
            chunk.par_iter().map(|p| clip.preprocess_file(p)).collect();
        let ok: Vec<&Vec<f32>> = pixels.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut embedded = if ok.is_empty() {
            Vec::new()
        } else {
            let flat: Vec<f32> = ok.iter().flat_map(|v| v.iter().copied()).collect();
            let e = clip.embed_pixels(&flat, ok.len())?.normalized();
            e.data.chunks_exact(e.dim).map(<[f32]>::to_vec).collect()
        }
        .into_iter();
        let batch = chunk
            .iter()
            .zip(pixels)
            .map(|(p, r)| {
                let name = p.to_string_lossy().into_owned();
                match r {
                    Ok(_) => (name, Ok(embedded.next().unwrap_or_default())),
                    Err(e) => (name, Err(e.to_string())),
                }
            })
            .collect::<Vec<_>>();
        failed += batch.iter().filter(|(_, r)| r.is_err()).count();
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
    // Files deleted since an interrupted run started leave the index; files added were embedded above.
    let present: std::collections::HashSet<String> = files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let current = || journal.done.iter().filter(|(p, _)| present.contains(p));
    let entries: Vec<(String, u64)> = current()
        .filter_map(|(p, d)| match d {
            Done::Embedded(at) => Some((p.clone(), *at)),
            Done::Failed(_) => None,
        })
        .collect();
    let failed: Vec<(String, String)> = current()
        .filter_map(|(p, d)| match d {
            Done::Failed(m) => Some((p.clone(), m.clone())),
            Done::Embedded(_) => None,
        })
        .collect();
    if entries.is_empty() {
        return Err(Error::EmptyInput(
            "no image under the folder could be indexed",
        ));
    }
    write_index(out, &identity, &entries, &journal.path, identity.dim)?;
    let journal_path = journal.path.clone();
    drop(journal);
    let _ = std::fs::remove_file(&journal_path);
    Ok(IndexReport {
        indexed: entries.len(),
        failed,
        resumed,
    })
}
