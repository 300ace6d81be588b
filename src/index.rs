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

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checksum::{fnv1a, FNV_START};
use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::files::{path_bytes, path_from_bytes};

const INDEX_MAGIC: &[u8; 8] = b"CLIPRTIX";
/// Journal format 2 keys files by name bytes and identity; format 1 (names as UTF-8 only) is not resumed.
const JOURNAL_MAGIC: &[u8; 8] = b"CLIPRTJ2";
const OLD_JOURNAL_MAGIC: &[u8; 8] = b"CLIPRTJ1";
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
            read_at(journal, &mut row, at)?;
            w.write_all(&row)?;
        }
        let emb = entries.len() * dim * 4;
        w.write_all(&vec![0; pad64(emb) - emb])?;
        w.write_all(&offsets)?;
        w.write_all(&paths)
    })?;
    outputs.commit()
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// What identifies the content of a file without reading it: size, modification time and inode. A file replaced
/// or rewritten since it was embedded has another identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId([u64; 4]);

impl FileId {
    const BYTES: usize = 32;

    fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId([
            m.len(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ino(),
        ]))
    }

    fn to_bytes(self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        for (c, v) in b.chunks_exact_mut(8).zip(self.0) {
            c.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8]) -> Option<FileId> {
        let mut v = [0u64; 4];
        for (o, c) in v.iter_mut().zip(b.get(..Self::BYTES)?.chunks_exact(8)) {
            *o = u64::from_le_bytes(c.try_into().ok()?);
        }
        Some(FileId(v))
    }
}

/// One finished file in the journal.
enum Done {
    /// Embedded: where its f32 embedding sits in the journal.
    Embedded(u64),
    Failed(String),
}

/// One file's outcome in a batch appended to the journal.
struct Outcome {
    path: PathBuf,
    /// `None` when the file could not even be looked at (it fails and is retried by the next run).
    id: Option<FileId>,
    result: std::result::Result<Vec<f32>, String>,
}

/// The journal of an index run, locked for this run: header with the model identity, then checksummed batch records.
/// `done` maps each file to its latest record.
struct Journal {
    file: File,
    path: PathBuf,
    done: HashMap<PathBuf, (FileId, Done)>,
}

impl Journal {
    fn path_for(out: &Path) -> PathBuf {
        let mut p = out.as_os_str().to_owned();
        p.push(".partial");
        PathBuf::from(p)
    }

    /// Opens and locks the journal for `out`: resumes a compatible one (keeping every whole record), or starts a new
    /// one. Never follows a symlink planted at the journal's name.
    fn open(out: &Path, identity: &ModelIdentity) -> Result<Journal> {
        let path = Journal::path_for(out);
        let io = |e| Error::io(&path, e);
        let file = lock_journal(&path)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            let meta =
                serde_json::to_vec(identity).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let mut head = Vec::new();
            head.extend_from_slice(JOURNAL_MAGIC);
            head.extend_from_slice(&(meta.len() as u64).to_le_bytes());
            head.extend_from_slice(&meta);
            (&file)
                .write_all(&head)
                .and_then(|_| file.sync_all())
                .map_err(io)?;
            return Ok(Journal {
                file,
                path,
                done: HashMap::new(),
            });
        }
        let bytes = std::fs::read(&path).map_err(io)?;
        let restart = |why: &str| {
            Error::InvalidArgument(format!(
                "{}: {why}; delete it to start over",
                path.display()
            ))
        };
        if bytes.starts_with(OLD_JOURNAL_MAGIC) {
            return Err(restart("journal of an older cliprt"));
        }
        let (theirs, mut at) =
            read_journal_header(&bytes).ok_or_else(|| restart("unreadable journal"))?;
        if !theirs.matches(identity) {
            return Err(restart(&format!(
                "this interrupted run used another model ({})",
                theirs.model
            )));
        }
        let mut done = HashMap::new();
        while let Some((records, next)) = read_batch(&bytes, at, identity.dim) {
            // A later record of a file (re-embedded after it changed) replaces the earlier one.
            done.extend(records.into_iter().map(|(p, id, d)| (p, (id, d))));
            at = next;
        }
        // A torn last record (the run died mid-write) is dropped.
        file.set_len(at as u64).map_err(io)?;
        let mut file = file;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(Journal { file, path, done })
    }

    /// Appends one batch and syncs it to disk.
    fn append(&mut self, batch: Vec<Outcome>) -> Result<()> {
        let start = self
            .file
            .stream_position()
            .map_err(|e| Error::io(&self.path, e))?;
        let mut rec = Vec::new();
        rec.extend_from_slice(&(batch.len() as u32).to_le_bytes());
        let mut done = Vec::with_capacity(batch.len());
        for o in batch {
            let name = path_bytes(&o.path);
            rec.extend_from_slice(&(name.len() as u32).to_le_bytes());
            rec.extend_from_slice(&name);
            // A file that could not be looked at gets an identity no file has, so the next run retries it.
            let id = o.id.unwrap_or(FileId([u64::MAX; 4]));
            rec.extend_from_slice(&id.to_bytes());
            match o.result {
                Ok(e) => {
                    rec.push(0);
                    // +8: the record's length prefix written before it.
                    done.push((o.path, (id, Done::Embedded(start + 8 + rec.len() as u64))));
                    rec.extend_from_slice(bytemuck::cast_slice(&e));
                }
                Err(msg) => {
                    rec.push(1);
                    rec.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                    rec.extend_from_slice(msg.as_bytes());
                    done.push((o.path, (id, Done::Failed(msg))));
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

/// Opens (creating it if absent, never truncating, never through a symlink) and exclusively locks the journal at
/// `path`. The lock lives as long as the file handle. After locking, the name must still lead to the locked file:
/// a run that finished in between deleted it, and we start again on a fresh one.
fn lock_journal(path: &Path) -> Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;
    for _ in 0..8 {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Err(Error::Locked(path.to_path_buf()));
            }
            return Err(Error::io(path, e));
        }
        let ours = file.metadata().map_err(|e| Error::io(path, e))?;
        let same = std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev());
        if same && ours.is_file() {
            return Ok(file);
        }
    }
    Err(Error::Locked(path.to_path_buf()))
}

fn read_journal_header(b: &[u8]) -> Option<(ModelIdentity, usize)> {
    if b.get(..8)? != JOURNAL_MAGIC {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(b.get(8..16)?.try_into().ok()?)).ok()?;
    let end = 16usize.checked_add(len)?;
    let meta = serde_json::from_slice(b.get(16..end)?).ok()?;
    Some((meta, end))
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

    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
}

/// One file's record as read back from the journal.
type Record = (PathBuf, FileId, Done);

/// One whole, checksummed batch record at `at`, or `None` (end of file, or a torn or corrupt record).
fn read_batch(b: &[u8], at: usize, dim: usize) -> Option<(Vec<Record>, usize)> {
    let len = usize::try_from(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
    .ok()?;
    let body_at = at + 8;
    let body_end = body_at.checked_add(len)?;
    let rec = b.get(body_at..body_end)?;
    let sum = u64::from_le_bytes(b.get(body_end..body_end.checked_add(8)?)?.try_into().ok()?);
    if sum != fnv1a(FNV_START, rec) {
        return None;
    }
    let mut c = Cursor { b: rec, p: 0 };
    let count = c.u32()?;
    let mut out = Vec::new();
    for _ in 0..count {
        let plen = c.u32()?;
        let path = path_from_bytes(c.take(plen)?);
        let id = FileId::from_bytes(c.take(FileId::BYTES)?)?;
        match c.take(1)?[0] {
            0 => {
                let offset = (body_at + c.p) as u64;
                c.take(dim.checked_mul(4)?)?;
                out.push((path, id, Done::Embedded(offset)));
            }
            _ => {
                let mlen = c.u32()?;
                let msg = String::from_utf8_lossy(c.take(mlen)?).into_owned();
                out.push((path, id, Done::Failed(msg)));
            }
        }
    }
    Some((out, body_end + 8))
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
    let todo: Vec<&PathBuf> = files.iter().filter(|p| !is_done(&journal, p)).collect();
    let resumed = files.len() - todo.len();
    let total = files.len();
    let throttle = std::env::var("CLIPRT_INDEX_THROTTLE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let t = Instant::now();
    let mut finished = 0;
    let mut failed = files
        .iter()
        .filter(|p| is_done(&journal, p))
        .filter(|p| matches!(journal.done.get(*p), Some((_, Done::Failed(_)))))
        .count();
    for chunk in todo.chunks(opts.batch) {
        // Identity first, then the content: a file changed in between gets embedded again by the next run.
        // Decode and preprocess in parallel; a file that fails is recorded, not fatal.
        let pixels: Vec<(Option<FileId>, Result<Vec<f32>>)> = chunk
            .par_iter()
            .map(|p| (current(p), clip.preprocess_file(p)))
            .collect();
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
