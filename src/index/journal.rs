//! The journal of an index build (see the module docs of `index`): a header with the model identity, then one
//! checksummed record per batch, synced before the next batch starts; locked with `flock` while a build uses it, and
//! keyed by file name bytes and identity.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ModelIdentity;
use crate::checksum::{fnv1a, FNV_START};
use crate::error::{Error, Result};
use crate::files::{path_bytes, path_from_bytes};

/// Journal format 2 keys files by name bytes and identity; format 1 (names as UTF-8 only) is not resumed.
const JOURNAL_MAGIC: &[u8; 8] = b"CLIPRTJ2";
const OLD_JOURNAL_MAGIC: &[u8; 8] = b"CLIPRTJ1";

/// What identifies the content of a file without reading it: size, modification time and inode. A file replaced
/// or rewritten since it was embedded has another identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileId([u64; 4]);

impl FileId {
    const BYTES: usize = 32;

    pub(super) fn of(path: &Path) -> Option<FileId> {
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
pub(super) enum Done {
    /// Embedded: where its f32 embedding sits in the journal.
    Embedded(u64),
    Failed(String),
}

/// One file's outcome in a batch appended to the journal.
pub(super) struct Outcome {
    pub(super) path: PathBuf,
    /// `None` when the file could not even be looked at (it fails and is retried by the next run).
    pub(super) id: Option<FileId>,
    pub(super) result: std::result::Result<Vec<f32>, String>,
}

/// The journal of an index run, locked for this run: header with the model identity, then checksummed batch records.
/// `done` maps each file to its latest record.
pub(super) struct Journal {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) done: HashMap<PathBuf, (FileId, Done)>,
}

impl Journal {
    fn path_for(out: &Path) -> PathBuf {
        let mut p = out.as_os_str().to_owned();
        p.push(".partial");
        PathBuf::from(p)
    }

    /// Opens and locks the journal for `out`: resumes a compatible one (keeping every whole record), or starts a new
    /// one. Never follows a symlink planted at the journal's name.
    pub(super) fn open(out: &Path, identity: &ModelIdentity) -> Result<Journal> {
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
        let restart = |why: &str| {
            Error::InvalidArgument(format!(
                "{}: {why}; delete it to start over",
                path.display()
            ))
        };
        // Streamed record by record: a resume holds one record at a time, never the whole journal (gigabytes for a
        // large index, or a hostile file).
        let mut r = std::io::BufReader::with_capacity(1 << 20, &file);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|_| restart("unreadable journal"))?;
        if &magic == OLD_JOURNAL_MAGIC {
            return Err(restart("journal of an older cliprt"));
        }
        let theirs = read_journal_header(&mut r, &magic, len)
            .ok_or_else(|| restart("unreadable journal"))?;
        if !theirs.0.matches(identity) {
            return Err(restart(&format!(
                "this interrupted run used another model ({})",
                theirs.0.model
            )));
        }
        let mut at = theirs.1;
        let mut done = HashMap::new();
        while let Some((records, next)) = read_batch(&mut r, at, len, identity.dim) {
            // A later record of a file (re-embedded after it changed) replaces the earlier one.
            done.extend(records.into_iter().map(|(p, id, d)| (p, (id, d))));
            at = next;
        }
        drop(r);
        // A torn last record (the run died mid-write) is dropped.
        file.set_len(at).map_err(io)?;
        let mut file = file;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(Journal { file, path, done })
    }

    /// Appends one batch and syncs it to disk.
    pub(super) fn append(&mut self, batch: Vec<Outcome>) -> Result<()> {
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
                Err(mut msg) => {
                    // Bounded, so a record never outgrows `max_record_bytes`.
                    if msg.len() > 4096 {
                        let mut cut = 4096;
                        while !msg.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        msg.truncate(cut);
                    }
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

/// The model identity in a journal's header (after its magic, already read and equal to `JOURNAL_MAGIC`) and where
/// the first record starts.
fn read_journal_header(
    r: &mut impl Read,
    magic: &[u8; 8],
    file_len: u64,
) -> Option<(ModelIdentity, u64)> {
    if magic != JOURNAL_MAGIC {
        return None;
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > crate::limits::MAX_JSON_BYTES || 16 + len > file_len {
        return None;
    }
    let mut meta = vec![0u8; len as usize];
    r.read_exact(&mut meta).ok()?;
    Some((serde_json::from_slice(&meta).ok()?, 16 + len))
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

/// The longest record a build writes for embeddings of `dim`: a full batch, each entry with its embedding or an
/// error message, its path and identity. Longer is corrupt, and never allocated.
fn max_record_bytes(dim: usize) -> u64 {
    crate::limits::MAX_INDEX_BATCH as u64 * (4 * dim as u64 + 16 * 1024)
}

/// The next whole, checksummed batch record, which starts at file offset `at`, with the offset after it; `None` at
/// the end of the file or at a torn, oversized or corrupt record.
fn read_batch(r: &mut impl Read, at: u64, file_len: u64, dim: usize) -> Option<(Vec<Record>, u64)> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    let end = at.checked_add(16)?.checked_add(len)?;
    if len > max_record_bytes(dim) || end > file_len {
        return None;
    }
    let mut rec = vec![0u8; len as usize];
    r.read_exact(&mut rec).ok()?;
    let mut sum = [0u8; 8];
    r.read_exact(&mut sum).ok()?;
    if u64::from_le_bytes(sum) != fnv1a(FNV_START, &rec) {
        return None;
    }
    let body_at = at + 8;
    let mut c = Cursor { b: &rec, p: 0 };
    let count = c.u32()?;
    let mut out = Vec::new();
    for _ in 0..count {
        let plen = c.u32()?;
        let path = path_from_bytes(c.take(plen)?);
        let id = FileId::from_bytes(c.take(FileId::BYTES)?)?;
        match c.take(1)?[0] {
            0 => {
                let offset = body_at + c.p as u64;
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
    Some((out, end))
}
