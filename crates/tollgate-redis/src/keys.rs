//! Redis key names.
//!
//! A tollgate [`Key`] is arbitrary bytes (up to [`Key::MAX_LEN`]); it is written in
//! lower-case hex inside a hash tag, so that no byte of it (`{`, `}`, spaces, newlines)
//! can end the tag early or clash with the separators:
//!
//! ```text
//! <prefix>{<hex of the key>}:q    quota state of the key (little-endian doubles)
//! <prefix>{<hex of the key>}:c    concurrency leases of the key (a sorted set)
//! <prefix>{_global}:cooldown      the global cooldown (its end, Redis µs)
//! ```
//!
//! Every script touches one key (a batch of admissions aside, which falls back to one
//! key per call on Cluster: see `batch.rs`), and a key's two names share one hash
//! tag, so all of them live in one Redis Cluster slot. `_global` is not hex, so no tollgate key can
//! name the global cooldown's tag.

use tollgate::key::Key;

/// The hash-tagged name of `key`'s state of one `kind` (`b'q'` or `b'c'`).
pub(crate) fn state_key(prefix: &str, key: &Key, kind: u8) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = key.as_bytes();
    let mut name = Vec::with_capacity(prefix.len() + 2 * bytes.len() + 4);
    name.extend_from_slice(prefix.as_bytes());
    name.push(b'{');
    for b in bytes {
        name.push(HEX[usize::from(b >> 4)]);
        name.push(HEX[usize::from(b & 0xf)]);
    }
    name.extend_from_slice(b"}:");
    name.push(kind);
    name
}

pub(crate) fn global_key(prefix: &str) -> Vec<u8> {
    format!("{prefix}{{_global}}:cooldown").into_bytes()
}

/// A prefix must not open or close a hash tag itself.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.contains(['{', '}'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hex_inside_one_hash_tag() {
        let key = Key::new(&b"a}{b"[..]).unwrap();
        assert_eq!(state_key("tg:", &key, b'q'), b"tg:{617d7b62}:q");
        assert_eq!(state_key("", &key, b'c'), b"{617d7b62}:c");
        assert_eq!(global_key("tg:"), b"tg:{_global}:cooldown");
        assert!(valid_prefix("tollgate:"));
        assert!(!valid_prefix("a{b}:"));
    }
}
