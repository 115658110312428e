//! A stable hash, the same in every process and release: for Redis hash tags (every replica
//! must name a domain's registry slot alike) and config versions.

/// 64-bit FNV-1a: stable and dependency-free (not for hash tables facing untrusted keys).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
