//! The [`Key`] value type and its redacted fingerprint, [`KeyId`].

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use super::KeyError;

/// Bytes stored inline, without a heap allocation. 30 keeps `size_of::<Key>()` at 32.
const INLINE_CAP: usize = 30;

/// What a limit is about: a mailbox, a chat, a space, a bot token, a client address.
///
/// A key is an opaque byte string of at most [`Key::MAX_LEN`] bytes.
///
/// - Keys of up to 30 bytes (numeric ids, IP addresses, UUIDs without dashes, most
///   chat and space ids) are stored inline: building, cloning and comparing them never
///   allocates. Longer keys live behind an `Arc`, so cloning them is a reference-count
///   increment.
/// - A key longer than `MAX_LEN` is refused with a [`KeyError`] rather than stored:
///   a 1 MB header must never become 1 MB of limiter state. Hash such values yourself in
///   a closure extractor if you really key on them.
/// - `Debug` and `Display` show the key's bytes (as text when they are printable UTF-8,
///   as hex otherwise). Errors and tracing events never do: they carry the key's
///   [`KeyId`] fingerprint, because keys are often personal data (mail addresses, IPs).
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE_CAP] },
    Heap(Arc<[u8]>),
}

impl Key {
    /// The longest key accepted, in bytes.
    pub const MAX_LEN: usize = 512;

    /// Builds a key from bytes, refusing keys longer than [`Key::MAX_LEN`].
    ///
    /// ```
    /// # use tollgate::key::Key;
    /// let key = Key::new("alice@contoso.com").unwrap();
    /// assert_eq!(key.as_bytes(), b"alice@contoso.com");
    /// assert!(Key::new(vec![b'x'; 10_000]).is_err());
    /// ```
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        let bytes = bytes.as_ref();
        if bytes.len() > Self::MAX_LEN {
            return Err(KeyError::too_long(bytes.len()));
        }
        Ok(Self::from_short(bytes))
    }

    /// Builds a key from a value known to be short, such as a string literal.
    ///
    /// # Panics
    ///
    /// Panics when `s` is longer than [`Key::MAX_LEN`]: use [`Key::new`] for values
    /// that come from outside the program.
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(s) {
            Ok(key) => key,
            Err(_) => panic!("Key::from_static: key longer than Key::MAX_LEN bytes"),
        }
    }

    /// Builds a key from an IP address: 4 bytes for IPv4 (and IPv4-mapped IPv6), 16
    /// for IPv6. The result is the same key as the one [`PeerIp`](super::PeerIp) makes
    /// for that address with no prefix grouping.
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::from_short(&v4.octets()),
            IpAddr::V6(v6) => Self::from_short(&v6.octets()),
        }
    }

    /// Builds a composite key from parts, so that `("a", "bc")` and `("ab", "c")` stay
    /// different keys: each part is length-prefixed.
    pub fn compose(parts: &[&Key]) -> Result<Self, KeyError> {
        let len: usize = parts.iter().map(|p| p.len() + varint_len(p.len())).sum();
        if len > Self::MAX_LEN {
            return Err(KeyError::too_long(len));
        }
        let mut buf = [0u8; Self::MAX_LEN];
        let mut at = 0;
        for part in parts {
            let mut n = part.len();
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                buf[at] = if n == 0 { byte } else { byte | 0x80 };
                at += 1;
                if n == 0 {
                    break;
                }
            }
            buf[at..at + part.len()].copy_from_slice(part.as_bytes());
            at += part.len();
        }
        Ok(Self::from_short(&buf[..at]))
    }

    fn from_short(bytes: &[u8]) -> Self {
        debug_assert!(bytes.len() <= Self::MAX_LEN);
        if bytes.len() <= INLINE_CAP {
            let mut buf = [0u8; INLINE_CAP];
            buf[..bytes.len()].copy_from_slice(bytes);
            Key(Repr::Inline {
                len: bytes.len() as u8,
                buf,
            })
        } else {
            Key(Repr::Heap(Arc::from(bytes)))
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Heap(bytes) => bytes,
        }
    }

    /// The key's length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the key has no bytes (a valid key: the constant "global" key may be empty).
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The key's redacted fingerprint, as errors and tracing events show it.
    pub fn id(&self) -> KeyId {
        KeyId::of(self.as_bytes())
    }
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

impl PartialEq for Key {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            // Inline buffers are zero past `len` (see `from_short`), so whole buffers
            // compare like the bytes, as a few word loads instead of a `memcmp` call:
            // this runs on every table probe.
            (Repr::Inline { len: a, buf: x }, Repr::Inline { len: b, buf: y }) => a == b && x == y,
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq<[u8]> for Key {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

macro_rules! key_from_integer {
    ($($t:ty),*) => {$(
        impl From<$t> for Key {
            /// Numeric ids (a Telegram chat id, a tenant number) as their decimal text,
            /// so `Key::from(42)` equals `Key::new("42")`. Never allocates.
            fn from(n: $t) -> Self {
                let mut buf = [0u8; 40];
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                // 40 bytes hold any 128-bit integer in decimal: this cannot fail.
                let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{n}"));
                let len = cursor.position() as usize;
                Key::from_short(&buf[..len])
            }
        }
    )*};
}
key_from_integer!(
    u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, usize, isize
);

impl From<IpAddr> for Key {
    fn from(ip: IpAddr) -> Self {
        Key::from_ip(ip)
    }
}

impl TryFrom<&str> for Key {
    type Error = KeyError;
    fn try_from(s: &str) -> Result<Self, KeyError> {
        Key::new(s)
    }
}

impl TryFrom<String> for Key {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        Key::new(s)
    }
}

impl TryFrom<&String> for Key {
    type Error = KeyError;
    fn try_from(s: &String) -> Result<Self, KeyError> {
        Key::new(s)
    }
}

impl TryFrom<&[u8]> for Key {
    type Error = KeyError;
    fn try_from(s: &[u8]) -> Result<Self, KeyError> {
        Key::new(s)
    }
}

impl TryFrom<&http::HeaderValue> for Key {
    type Error = KeyError;
    fn try_from(v: &http::HeaderValue) -> Result<Self, KeyError> {
        Key::new(v.as_bytes())
    }
}

impl TryFrom<http::HeaderValue> for Key {
    type Error = KeyError;
    fn try_from(v: http::HeaderValue) -> Result<Self, KeyError> {
        Key::new(v.as_bytes())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(")?;
        fmt_bytes(self.as_bytes(), f)?;
        write!(f, ")")
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_bytes(self.as_bytes(), f)
    }
}

fn fmt_bytes(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "{s:?}"),
        _ => {
            write!(f, "0x")?;
            bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}

/// A key's fingerprint: a 64-bit hash that names a key in errors, tracing events and
/// logs without revealing it.
///
/// The hash is seeded once per process at random, so a fingerprint cannot be reversed
/// by hashing every IPv4 address offline; the price is that fingerprints are stable
/// within one process only. To correlate across a fleet, log your own (hashed) key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(u64);

impl KeyId {
    fn of(bytes: &[u8]) -> Self {
        static SEED: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
        let mut hasher = SEED.get_or_init(Default::default).build_hasher();
        hasher.write(bytes);
        KeyId(hasher.finish())
    }

    /// The fingerprint as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_is_that_of_the_bytes_zero_padding_and_length_included() {
        let k = |b: &[u8]| Key::new(b).unwrap();
        assert_eq!(k(b"alice"), k(b"alice"));
        assert_ne!(k(b"a"), k(b"a\0"), "same buffer, other length");
        assert_ne!(k(b""), k(b"\0"));
        let long = [7u8; 40];
        assert_eq!(k(&long), k(&long));
        assert_ne!(k(&long[..30]), k(&long[..31]), "inline against heap");
        assert_eq!(k(&long[..30]), k(&long[..30]));
    }

    #[test]
    fn short_keys_are_inline_and_the_type_stays_small() {
        assert_eq!(size_of::<Key>(), 32);
        let key = Key::new("0123456789abcdefghijklmnopqrst").unwrap();
        assert!(matches!(key.0, Repr::Inline { .. }));
        let key = Key::new("0123456789abcdefghijklmnopqrstu").unwrap();
        assert!(matches!(key.0, Repr::Heap(_)));
    }

    #[test]
    fn keys_compare_by_bytes_whatever_their_storage() {
        let long = "x".repeat(100);
        assert_eq!(Key::new(&long).unwrap(), Key::new(long.as_bytes()).unwrap());
        assert_eq!(Key::from(42u64), Key::new("42").unwrap());
        assert_eq!(Key::from(-7i32), "-7");
        assert_eq!(
            Key::from(u128::MAX).as_bytes(),
            u128::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn keys_longer_than_max_len_are_refused() {
        assert!(Key::new(vec![0u8; Key::MAX_LEN]).is_ok());
        let err = Key::new(vec![0u8; 1 << 20]).unwrap_err();
        assert!(err.to_string().contains("1048576"), "{err}");
    }

    #[test]
    fn composite_keys_are_unambiguous() {
        let (a, bc, ab, c) = (
            Key::from_static("a"),
            Key::from_static("bc"),
            Key::from_static("ab"),
            Key::from_static("c"),
        );
        assert_ne!(
            Key::compose(&[&a, &bc]).unwrap(),
            Key::compose(&[&ab, &c]).unwrap()
        );
        let long = Key::new("y".repeat(200)).unwrap();
        let composed = Key::compose(&[&long, &a]).unwrap();
        assert_eq!(composed.len(), 2 + 200 + 1 + 1);
        let too_long = Key::new("z".repeat(Key::MAX_LEN)).unwrap();
        assert!(Key::compose(&[&too_long, &a]).is_err());
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_ipv4_key() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Key::from(v4), Key::from(mapped));
        assert_eq!(Key::from(v4).len(), 4);
    }

    #[test]
    fn fingerprints_are_stable_in_process_and_hide_the_key() {
        let key = Key::from_static("alice@contoso.com");
        assert_eq!(key.id(), Key::from_static("alice@contoso.com").id());
        assert_ne!(key.id(), Key::from_static("bob@contoso.com").id());
        assert!(!key.id().to_string().contains("alice"));
        assert_eq!(format!("{key}"), "\"alice@contoso.com\"");
        assert_eq!(format!("{}", Key::new([0u8, 255]).unwrap()), "0x00ff");
    }
}
