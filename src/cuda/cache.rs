//! The on-disk CUBIN cache. An entry's key is (module source hash, arch, NVRTC version); the file holds a header
//! with the full key and a checksum of the payload, so a stale, truncated or corrupt entry is detected, rebuilt
//! and overwritten, never loaded. Entries are written to a temporary file and renamed into place, so a crash
//! leaves either the old entry or the new one. Location: `CLIPRT_CACHE_DIR`, else `$XDG_CACHE_HOME/cliprt`, else
//! `~/.cache/cliprt`; `CLIPRT_CACHE_DIR=off` disables it. A cache that cannot be written is skipped silently:
//! it only saves compile time.

use std::path::PathBuf;

const MAGIC: &[u8; 8] = b"CLIPRTK1";

/// FNV-1a of `bytes` ([`crate::checksum`]). A key collision cannot load a wrong entry: the full key is stored
/// and compared too.
fn fnv1a(bytes: &[u8]) -> u64 {
    crate::checksum::fnv1a(crate::checksum::FNV_START, bytes)
}

/// The cache folder, or `None` when disabled or no home folder is known.
pub fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CLIPRT_CACHE_DIR") {
        return (d != "off").then(|| PathBuf::from(d).join("kernels"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("cliprt").join("kernels"))
}

/// One cache entry: where it lives and the key it must carry.
pub struct Entry {
    path: PathBuf,
    key: String,
}

impl Entry {
    /// The entry for `module` with source `source`, compiled for `arch` by NVRTC `version`.
    pub fn new(dir: PathBuf, module: &str, source: &str, arch: &str, version: (i32, i32)) -> Entry {
        let key = format!(
            "{module}|{arch}|nvrtc {}.{}|{:016x}|{}",
            version.0,
            version.1,
            fnv1a(source.as_bytes()),
            source.len()
        );
        let path = dir.join(format!(
            "{module}-{arch}-{:016x}.cubin",
            fnv1a(key.as_bytes())
        ));
        Entry { path, key }
    }

    /// The cached CUBIN, if the entry exists, carries this key and its payload checks out.
    pub fn read(&self) -> Option<Vec<u8>> {
        // A cache entry is at most a few MB; a larger or non-regular file is not one of ours.
        let bytes = crate::files::read_limited(&self.path, 256 << 20, "kernel cache").ok()?;
        let rest = bytes.strip_prefix(MAGIC)?;
        let (key_len, rest) = split_u64(rest)?;
        let key_len = usize::try_from(key_len).ok()?;
        let (key, rest) = (rest.get(..key_len)?, rest.get(key_len..)?);
        let (sum, payload) = split_u64(rest)?;
        (key == self.key.as_bytes() && sum == fnv1a(payload) && !payload.is_empty())
            .then(|| payload.to_vec())
    }

    /// Stores `cubin` atomically (an exclusive temporary file + rename); failures are ignored (the cache is an
    /// optimisation).
    pub fn write(&self, cubin: &[u8]) {
        let Some(parent) = self.path.parent() else {
            return;
        };
        if std::fs::create_dir_all(parent).is_err() {
            return;
        }
        let mut bytes = Vec::with_capacity(cubin.len() + self.key.len() + 24);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(self.key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(self.key.as_bytes());
        bytes.extend_from_slice(&fnv1a(cubin).to_le_bytes());
        bytes.extend_from_slice(cubin);
        let _ = crate::files::write_atomic(&self.path, &bytes);
    }

    #[cfg(test)]
    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

fn split_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let e = Entry::new(dir.path().to_path_buf(), "gemm", "src", "sm_90", (12, 9));
        assert!(e.read().is_none());
        e.write(b"cubin bytes");
        assert_eq!(e.read().as_deref(), Some(&b"cubin bytes"[..]));
        // A flipped payload byte fails the checksum.
        let mut bytes = std::fs::read(e.path()).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(e.path(), &bytes).unwrap();
        assert!(e.read().is_none());
        // A truncated file is rejected, not trusted.
        std::fs::write(e.path(), &bytes[..bytes.len() / 2]).unwrap();
        assert!(e.read().is_none());
        // Another source, arch or NVRTC version is another entry.
        e.write(b"cubin bytes");
        for other in [
            Entry::new(dir.path().to_path_buf(), "gemm", "src2", "sm_90", (12, 9)),
            Entry::new(dir.path().to_path_buf(), "gemm", "src", "sm_80", (12, 9)),
            Entry::new(dir.path().to_path_buf(), "gemm", "src", "sm_90", (13, 0)),
        ] {
            assert!(other.read().is_none());
        }
    }
}
