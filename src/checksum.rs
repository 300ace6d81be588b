//! FNV-1a, 64-bit: the stable hash of cliprt's on-disk formats (kernel cache keys and entries, index and journal
//! checksums). std's `DefaultHasher` may change between Rust releases, which would orphan every file written
//! before; FNV-1a never changes. Not cryptographic: it catches torn writes and bit rot, not tampering.

/// The FNV-1a offset basis: the hash of no bytes.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues hash `h` over `bytes` (chain calls to hash several buffers as one).
pub fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_chaining() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a(FNV_START, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_START, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            fnv1a(fnv1a(FNV_START, b"fo"), b"o"),
            fnv1a(FNV_START, b"foo")
        );
    }
}
