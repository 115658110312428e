//! Counter keys that never collide.
//!
//! Every part (domain, each entry's key and value) is written with its byte length in front,
//! so the key can be read back unambiguously: two different (domain, entries, window) can never
//! produce the same key, whatever bytes the values hold. (Joining parts with `_`, as the
//! reference does, lets `a_b`+`c` and `a`+`b_c` share a counter.)

use std::fmt::Write;

use crate::algorithm::Algorithm;
use crate::query::Entry;

/// The key of the counter for `entries` in `domain` with windows of `window_secs`, counted by
/// `algorithm`, which ends the key as a letter, so that a change of algorithm never reads
/// another's state (the algorithms keep different state, fixed windows even a different Redis
/// type).
///
/// `shared_values` lists (entry index, pattern) pairs whose pattern stands for the request's
/// value, so all values matching a `share_threshold` wildcard share one counter.
pub fn counter_key(
    prefix: &str,
    domain: &str,
    entries: &[Entry],
    shared_values: &[(usize, &str)],
    window_secs: u64,
    algorithm: Algorithm,
) -> String {
    let parts: usize = entries
        .iter()
        .map(|e| e.key.len() + e.value.len() + 8)
        .sum();
    let mut key = String::with_capacity(prefix.len() + domain.len() + parts + 16);
    key.push_str(prefix);
    push_part(&mut key, domain);
    for (i, entry) in entries.iter().enumerate() {
        let value = shared_values
            .iter()
            .find(|(at, _)| *at == i)
            .map_or(entry.value.as_str(), |(_, pattern)| pattern);
        key.push('|');
        push_part(&mut key, &entry.key);
        push_part(&mut key, value);
    }
    key.push('|');
    key.push_str(itoa::Buffer::new().format(window_secs));
    key.push_str(algorithm.code());
    key
}

/// The prefix of every registry key of `domain` (users and API keys). Its `{...}` hash tag,
/// made from a hash of the domain (which may itself hold braces), keeps a domain's registry in
/// one Redis Cluster slot so one script can change it atomically.
pub fn registry_prefix(prefix: &str, domain: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + domain.len() + 32);
    key.push_str(prefix);
    let _ = write!(
        key,
        "reg{{{:016x}}}|",
        crate::hash::fnv1a(domain.as_bytes())
    );
    push_part(&mut key, domain);
    key.push('|');
    key
}

/// The key of another kind of per-domain state (`kind` is a fixed word such as `block`).
pub fn state_key(prefix: &str, kind: &str, domain: &str, id: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + kind.len() + domain.len() + id.len() + 16);
    key.push_str(prefix);
    key.push_str(kind);
    key.push('|');
    push_part(&mut key, domain);
    key.push('|');
    push_part(&mut key, id);
    key
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of the key, or of its `{hash tag}` when it
/// has a non-empty one, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16_384
}

/// `part` prefixed with its length, so that no two lists of parts make the same key. (itoa, not
/// `write!`: keys are built on every request, and the formatting machinery costs more than
/// the rest of the key.)
fn push_part(key: &mut String, part: &str) {
    key.push_str(itoa::Buffer::new().format(part.len()));
    key.push(':');
    key.push_str(part);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn e(key: &str, value: &str) -> Entry {
        Entry {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn cluster_slots_match_redis() {
        // Values from Redis' CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(
            slot(b"{}foo"),
            crc16::State::<crc16::XMODEM>::calculate(b"{}foo") % 16_384,
            "an empty tag hashes the whole key"
        );
    }

    #[test]
    fn layout() {
        let key = counter_key(
            "fg:",
            "api",
            &[e("k", "v_1")],
            &[],
            60,
            Algorithm::FixedWindow,
        );
        assert_eq!(key, "fg:3:api|1:k3:v_1|60f");
        let key = counter_key(
            "fg:",
            "api",
            &[e("k", "v")],
            &[],
            60,
            Algorithm::SlidingWindow,
        );
        assert_eq!(key, "fg:3:api|1:k1:v|60s");
    }

    #[test]
    fn no_collisions_between_tricky_values() {
        let cases: Vec<(&str, Vec<Entry>, u64)> = vec![
            ("d", vec![e("a_b", "c")], 60),
            ("d", vec![e("a", "b_c")], 60),
            ("d", vec![e("a", "b"), e("c", "")], 60),
            ("d", vec![e("a", "b|1:c0:")], 60),
            ("d_a", vec![e("b", "c")], 60),
            ("d", vec![e("a", "b:c")], 60),
            ("d", vec![e("a:b", "c")], 60),
            ("d", vec![e("a", "*")], 60),
            ("d", vec![e("a", "x y")], 60),
            ("d", vec![e("a", "x  y")], 60),
            ("d", vec![e("a", "ü")], 60),
            ("d", vec![e("a", "u\u{308}")], 60),
            ("d", vec![e("a", "b")], 1),
            ("d", vec![e("a", "b")], 60),
            ("d", vec![e("a", "b|60")], 60),
            ("d", vec![], 60),
        ];
        let keys: HashSet<String> = cases
            .iter()
            .map(|(d, entries, w)| counter_key("p:", d, entries, &[], *w, Algorithm::FixedWindow))
            .collect();
        assert_eq!(keys.len(), cases.len());
    }

    #[test]
    fn shared_values_replace_the_request_value() {
        let fixed = Algorithm::FixedWindow;
        let a = counter_key("", "d", &[e("path", "/a")], &[(0, "/*")], 60, fixed);
        let b = counter_key("", "d", &[e("path", "/b")], &[(0, "/*")], 60, fixed);
        assert_eq!(a, b);
        assert_ne!(a, counter_key("", "d", &[e("path", "/a")], &[], 60, fixed));
    }
}
