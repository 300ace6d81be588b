//! A streaming reader of tar files, the container of webdataset shards: POSIX ustar members, with the GNU long-name
//! (`L`) and pax (`x`) headers that GNU tar and Python's `tarfile` write for long paths. Only what a shard needs:
//! regular files, in order, each with its full path. A tar that ends before its end-of-archive block (two zero
//! blocks) is truncated: every writer puts one there, so a file cut exactly between two members is caught too.

use std::io::Read;

/// Why a tar cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarError {
    /// The data ends inside a header or a member, or before the end-of-archive block.
    Truncated(String),
    /// A header whose checksum or size field is not valid.
    Corrupt(String),
    /// The underlying read failed.
    Io(String),
}

impl std::fmt::Display for TarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TarError::Truncated(m) => write!(f, "truncated tar: {m}"),
            TarError::Corrupt(m) => write!(f, "corrupt tar: {m}"),
            TarError::Io(m) => write!(f, "cannot read tar: {m}"),
        }
    }
}

/// One regular file of the tar.
#[derive(Debug)]
pub enum Entry {
    /// Its path and contents.
    File { name: String, data: Vec<u8> },
    /// A file over the size limit its reader set: its data was skipped, not read into memory.
    TooLarge { name: String, size: u64 },
}

const BLOCK: usize = 512;
/// GNU long names and pax headers larger than this are corrupt, not read (real ones are a few hundred bytes).
const MAX_META: u64 = 1 << 20;

pub struct TarReader<R> {
    r: R,
    /// The path a GNU `L` or pax `x` header gave the next member.
    next_name: Option<String>,
    ended: bool,
    /// Offset of the next header, for messages.
    at: u64,
}

impl<R: Read> TarReader<R> {
    pub fn new(r: R) -> TarReader<R> {
        TarReader {
            r,
            next_name: None,
            ended: false,
            at: 0,
        }
    }

    /// The next regular file; `max_size(name)` is the largest it may be read whole. `None` at the end-of-archive.
    pub fn next_entry(
        &mut self,
        max_size: impl Fn(&str) -> u64,
    ) -> Result<Option<Entry>, TarError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let mut header = [0u8; BLOCK];
            let got = read_full(&mut self.r, &mut header)?;
            if got == 0 {
                return Err(TarError::Truncated(format!(
                    "no end-of-archive block after byte {}",
                    self.at
                )));
            }
            if got < BLOCK {
                return Err(TarError::Truncated(format!(
                    "header at byte {} is cut",
                    self.at
                )));
            }
            let header_at = self.at;
            self.at += BLOCK as u64;
            if header.iter().all(|&b| b == 0) {
                // The end-of-archive block (Python's tarfile, too, stops at the first of the two).
                self.ended = true;
                return Ok(None);
            }
            check_checksum(&header, header_at)?;
            let size = parse_size(&header[124..136])
                .ok_or_else(|| TarError::Corrupt(format!("size field at byte {header_at}")))?;
            let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
            let name = self
                .next_name
                .take()
                .unwrap_or_else(|| header_name(&header));
            match header[156] {
                b'0' | 0 | b'7' => {
                    let entry = if size > max_size(&name) {
                        self.skip(padded)?;
                        Entry::TooLarge { name, size }
                    } else {
                        let data = self.read_data(size, padded)?;
                        Entry::File { name, data }
                    };
                    return Ok(Some(entry));
                }
                kind @ (b'L' | b'x') => {
                    if size > MAX_META {
                        return Err(TarError::Corrupt(format!(
                            "a {size}-byte long-name header at byte {header_at}"
                        )));
                    }
                    let data = self.read_data(size, padded)?;
                    self.next_name = if kind == b'L' {
                        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                        Some(String::from_utf8_lossy(&data[..end]).into_owned())
                    } else {
                        pax_path(&data)
                    };
                }
                // Folders, links, devices, global pax headers: nothing a shard holds as a sample.
                _ => self.skip(padded)?,
            }
        }
    }

    fn read_data(&mut self, size: u64, padded: u64) -> Result<Vec<u8>, TarError> {
        let mut data = vec![0u8; size as usize];
        if read_full(&mut self.r, &mut data)? < data.len() {
            return Err(TarError::Truncated(format!(
                "member data at byte {} is cut",
                self.at
            )));
        }
        self.at += size;
        self.skip(padded - size)?;
        Ok(data)
    }

    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let skipped = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| TarError::Io(e.to_string()))?;
        if skipped < n {
            return Err(TarError::Truncated(format!(
                "member data at byte {} is cut",
                self.at
            )));
        }
        self.at += n;
        Ok(())
    }
}

/// Reads until `buf` is full or the data ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, TarError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TarError::Io(e.to_string())),
        }
    }
    Ok(got)
}

/// The header's checksum: the sum of its bytes with the checksum field itself counted as spaces. (Some old
/// writers summed signed bytes; both sums are accepted, as GNU tar and Python accept them.)
fn check_checksum(h: &[u8; BLOCK], at: u64) -> Result<(), TarError> {
    let stored = parse_octal(&h[148..156])
        .ok_or_else(|| TarError::Corrupt(format!("checksum field at byte {at}")))?;
    let field = 148..156;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && stored as i64 != signed {
        return Err(TarError::Corrupt(format!("header checksum at byte {at}")));
    }
    Ok(())
}

/// A NUL- or space-terminated octal field.
fn parse_octal(f: &[u8]) -> Option<u64> {
    let digits: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// The size field: octal, or GNU's base-256 (high bit of the first byte set) for members of 8 GiB and more.
fn parse_size(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 == 0 {
        return parse_octal(f);
    }
    let mut v: u64 = u64::from(f[0] & 0x7F);
    for &b in &f[1..] {
        v = v.checked_mul(256)?.checked_add(u64::from(b))?;
    }
    Some(v)
}

/// A C string field.
fn c_str(f: &[u8]) -> String {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    String::from_utf8_lossy(&f[..end]).into_owned()
}

/// The member path: ustar's prefix joined to the name.
fn header_name(h: &[u8; BLOCK]) -> String {
    let name = c_str(&h[0..100]);
    let ustar = &h[257..263] == b"ustar\0";
    let prefix = if ustar {
        c_str(&h[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// The `path` record of a pax extended header (records are "LEN key=value\n").
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    let mut path = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(v) = record.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[len..];
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header for a regular file (`kind` b'0') or another kind.
    fn header(name: &str, size: u64, kind: u8) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn member(out: &mut Vec<u8>, name: &str, data: &[u8], kind: u8) {
        out.extend_from_slice(&header(name, data.len() as u64, kind));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(String, usize)>, TarError> {
        let mut r = TarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry(|_| 100)? {
            out.push(match e {
                Entry::File { name, data } => (name, data.len()),
                Entry::TooLarge { name, size } => (format!("big:{name}"), size as usize),
            });
        }
        Ok(out)
    }

    #[test]
    fn members_long_names_and_the_end() {
        let mut t = Vec::new();
        member(&mut t, "a/0001.jpg", b"abc", b'0');
        member(&mut t, "a", b"", b'5');
        let long = format!("{}/0002.txt", "d".repeat(150));
        member(
            &mut t,
            "././@LongLink",
            format!("{long}\0").as_bytes(),
            b'L',
        );
        member(&mut t, "short", b"hello", b'0');
        let pax_long = format!("{}/0003.json", "p".repeat(120));
        let rec = format!(" path={pax_long}\n");
        let len = rec.len() + (rec.len() + 3).to_string().len();
        member(&mut t, "PaxHeader", format!("{len}{rec}").as_bytes(), b'x');
        member(&mut t, "trunc", b"{}", b'0');
        member(&mut t, "big.jpg", &[7u8; 300], b'0');
        let full = [t.clone(), vec![0u8; 2 * BLOCK]].concat();
        assert_eq!(
            read_all(&full).unwrap(),
            vec![
                ("a/0001.jpg".to_string(), 3),
                (long, 5),
                (pax_long, 2),
                ("big:big.jpg".to_string(), 300)
            ]
        );
        // Every cut is caught: inside a header, inside data, and between members (no end-of-archive block).
        for cut in [t.len(), t.len() - 100, 700, BLOCK, 10] {
            assert!(
                matches!(read_all(&full[..cut]), Err(TarError::Truncated(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let mut t = Vec::new();
        member(&mut t, "x.jpg", b"abc", b'0');
        t.extend_from_slice(&[0u8; 2 * BLOCK]);
        let mut bad = t.clone();
        bad[5] ^= 1; // the name, under the checksum
        assert!(matches!(read_all(&bad), Err(TarError::Corrupt(_))));
        let mut bad = t.clone();
        bad[124] = b'9'; // not octal
        assert!(matches!(read_all(&bad), Err(TarError::Corrupt(_))));
        assert!(matches!(read_all(b"garbage"), Err(TarError::Truncated(_))));
    }

    #[test]
    fn base256_sizes() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 2;
        f[10] = 1;
        assert_eq!(parse_size(&f), Some(258));
        assert_eq!(parse_size(b"00000000017\0"), Some(15));
    }
}
