//! Reading inputs and committing outputs safely (ARCHITECTURE.md, Hostile input; README, "Limits and safety"):
//! - inputs are regular files only, opened without blocking (a FIFO or device named `x.png` is refused, never read
//!   forever) and read with a size limit;
//! - outputs are staged in temporary files created exclusively (`O_EXCL`, random names, never following a planted
//!   symlink) beside their targets, completely written and synced before the first one is renamed into place, so a
//!   failing command leaves no output, partial or not;
//! - file names travel as bytes, so two non-UTF-8 names never collapse into one.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Opens `path` for reading if it is a regular file (following symlinks). Opening is non-blocking, so a FIFO
/// without a writer is refused instead of waiting.
pub fn open_regular(path: &Path) -> Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile(path.to_path_buf()));
    }
    Ok(file)
}

/// Fills `buf` from `file` at `offset` (a positioned read: no shared cursor, and a file truncated meanwhile gives
/// an error, where a memory map would give SIGBUS).
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

/// Whether `path` is a regular file (following symlinks), without opening it.
pub fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// The whole content of the regular file `path`, refused with [`Error::Limit`] when over `limit` bytes. `what`
/// names the file in the message.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    crate::limits::check(&format!("{} ({what}) in bytes", path.display()), len, limit)?;
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows while it is read.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    crate::limits::check(
        &format!("{} ({what}) in bytes", path.display()),
        bytes.len() as u64,
        limit,
    )?;
    Ok(bytes)
}

/// [`read_limited`] for a JSON file of a model folder: the text, refused as a config error when not UTF-8.
pub fn read_json_text(path: &Path) -> Result<String> {
    let bytes = read_limited(path, crate::limits::MAX_JSON_BYTES, "JSON")?;
    String::from_utf8(bytes).map_err(|_| Error::config(path, "not valid UTF-8"))
}

/// A file name as bytes (its exact bytes on Unix).
pub fn path_bytes(path: &Path) -> Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(path.as_os_str().as_bytes())
    }
    #[cfg(not(unix))]
    {
        Cow::Owned(path.to_string_lossy().into_owned().into_bytes())
    }
}

/// The inverse of [`path_bytes`].
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(OsStr::from_bytes(bytes))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// The folder a file `path` lives in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Outputs written all together or not at all: each is staged in an exclusive temporary file in its target's
/// folder; [`Outputs::commit`] renames them into place only once every one is complete and synced. Dropping an
/// uncommitted set deletes the temporary files.
#[derive(Default)]
pub struct Outputs {
    staged: Vec<(tempfile::NamedTempFile, PathBuf)>,
}

impl Outputs {
    pub fn new() -> Outputs {
        Outputs::default()
    }

    /// Stages the output `target`, written by `write`.
    pub fn stage(
        &mut self,
        target: &Path,
        write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
    ) -> Result<()> {
        let name = target.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: not a file path", target.display()))
        })?;
        if target.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: is a folder, not an output file",
                target.display()
            )));
        }
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(name);
        prefix.push(".");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        {
            // Ordinary output permissions (0666 less the umask), not tempfile's private 0600.
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let tmp = builder
            .tempfile_in(parent_dir(target))
            .map_err(|e| Error::io(target, e))?;
        let written = (|| {
            let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
            write(&mut w)?;
            w.flush()?;
            drop(w);
            tmp.as_file().sync_all()
        })();
        written.map_err(|e| Error::io(target, e))?;
        self.staged.push((tmp, target.to_path_buf()));
        Ok(())
    }

    /// Stages `target` with the content `bytes`.
    pub fn stage_bytes(&mut self, target: &Path, bytes: &[u8]) -> Result<()> {
        self.stage(target, |w| w.write_all(bytes))
    }

    /// Renames every staged file into place and syncs the folders, so the renames survive a crash.
    pub fn commit(self) -> Result<()> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (tmp, target) in self.staged {
            tmp.persist(&target)
                .map_err(|e| Error::io(&target, e.error))?;
            let dir = parent_dir(&target).to_path_buf();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }
}

/// Writes one output atomically (see [`Outputs`]).
pub fn write_atomic(target: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = Outputs::new();
    out.stage_bytes(target, bytes)?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(open_regular(&fifo), Err(Error::NotAFile(_))));
        assert!(matches!(
            read_limited(Path::new("/dev/zero"), 10, "test"),
            Err(Error::NotAFile(_))
        ));
    }

    #[test]
    fn outputs_commit_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.npy");
        let mut out = Outputs::new();
        out.stage_bytes(&a, b"first").unwrap();
        // The second target's folder does not exist: staging fails, and dropping the set leaves nothing.
        assert!(out
            .stage_bytes(&dir.path().join("missing/b.npy"), b"second")
            .is_err());
        drop(out);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&a, b"x").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn planted_symlink_at_a_predictable_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = dir.path().join("out.npy");
        // The old name scheme: `.out.npy.tmp-<pid>`.
        let planted = dir
            .path()
            .join(format!(".out.npy.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, planted).unwrap();
        write_atomic(&out, b"data").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&out).unwrap(), b"data");
    }

    #[test]
    fn non_utf8_names_round_trip_as_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let a = Path::new(OsStr::from_bytes(b"/x/\xff.png"));
        let b = Path::new(OsStr::from_bytes(b"/x/\xfe.png"));
        assert_ne!(path_bytes(a), path_bytes(b));
        assert_eq!(path_from_bytes(&path_bytes(a)), a);
    }
}
