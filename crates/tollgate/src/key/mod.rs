//! Keys: what a limit is about, and how to get one from a request.
//!
//! Every tollgate layer limits *per key*. A [`KeyExtractor`] reads the key from a
//! request; the built-ins cover what users of rate-limited APIs key on:
//!
//! | extractor | key |
//! |---|---|
//! | [`Header`] | a header's value (an API key, a bot token, a tenant id) |
//! | [`PathSegment`] | a path segment by position, or a `{capture}` in a pattern such as `/users/{id}/messages` |
//! | [`Host`] | the URI host (or the `Host` header), lower-cased |
//! | [`Constant`] | one key for every request: a global limit |
//! | [`PeerIp`] | the client address, with trusted proxies and IPv6 prefix grouping |
//! | `(A, B)`, `(A, B, C)`, `(A, B, C, D)` | a composite key: every part must be present |
//! | any `Fn(&R) -> Result<K, KeyError>` or `Fn(&R) -> Option<K>` | your own |
//!
//! # A missing key is an error
//!
//! A request without a key is never silently put in a shared bucket: extraction fails
//! with a [`KeyError`], which the layers turn into an error (or a `400 Bad Request` on a
//! server). When a fallback *is* wanted, say so with
//! [`KeyExtractorExt::or`]: `Header::new("x-api-key").or(PeerIp::new())`.
//!
//! ```
//! use tollgate::key::{Constant, Header, Key, KeyExtractor, KeyExtractorExt, PathSegment};
//!
//! let req = http::Request::builder()
//!     .uri("/v1.0/users/alice@contoso.com/messages")
//!     .body(())
//!     .unwrap();
//!
//! let mailbox = PathSegment::pattern("/v1.0/users/{id}/messages", "id").unwrap();
//! assert_eq!(mailbox.extract(&req).unwrap(), "alice@contoso.com");
//!
//! // No header: an error, unless a fallback is named.
//! assert!(Header::new("x-api-key").extract(&req).is_err());
//! let keyed = Header::new("x-api-key").or(Constant::new("anonymous"));
//! assert_eq!(keyed.extract(&req).unwrap(), "anonymous");
//!
//! // Closures are extractors too.
//! let by_method = |req: &http::Request<()>| Key::new(req.method().as_str());
//! assert_eq!(by_method.extract(&req).unwrap(), "GET");
//! ```

use std::error::Error as StdError;
use std::fmt;

mod header;
mod host;
mod path;
mod peer;
mod repr;

pub use header::Header;
pub use host::Host;
pub use path::{PathSegment, PatternError};
pub use peer::{PeerAddr, PeerIp, ProxyConfigError};
pub use repr::{Key, KeyId};

/// Reads the key a request is limited under.
///
/// Implemented by the built-in extractors, by tuples of extractors (a composite key),
/// and by closures `Fn(&R) -> O` where `O` is a `Result<K, KeyError>`, an `Option<K>`
/// (`None` is a missing key) or a [`Key`], with `K` anything that converts into a
/// key.
///
/// Extraction is synchronous and must be cheap: it runs on every request.
pub trait KeyExtractor<R> {
    /// The request's key, or why it has none.
    fn extract(&self, request: &R) -> Result<Key, KeyError>;
}

/// What a closure extractor may return: a key, an optional key, or a fallible key.
pub trait IntoKeyResult {
    /// Converts into the extraction result.
    fn into_key_result(self) -> Result<Key, KeyError>;
}

impl IntoKeyResult for Key {
    fn into_key_result(self) -> Result<Key, KeyError> {
        Ok(self)
    }
}

impl<K> IntoKeyResult for Result<K, KeyError>
where
    K: TryInto<Key>,
    KeyError: From<K::Error>,
{
    fn into_key_result(self) -> Result<Key, KeyError> {
        Ok(self?.try_into()?)
    }
}

impl<K> IntoKeyResult for Option<K>
where
    K: TryInto<Key>,
    KeyError: From<K::Error>,
{
    fn into_key_result(self) -> Result<Key, KeyError> {
        match self {
            Some(k) => Ok(k.try_into()?),
            None => Err(KeyError::missing("closure returned None")),
        }
    }
}

impl From<std::convert::Infallible> for KeyError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl<R, F, O> KeyExtractor<R> for F
where
    F: Fn(&R) -> O,
    O: IntoKeyResult,
{
    fn extract(&self, request: &R) -> Result<Key, KeyError> {
        self(request).into_key_result()
    }
}

/// Combinators for every extractor.
///
/// Implemented for every type (the request type is only known where the extractor is
/// used), so importing it adds `.or(..)` to values that are not extractors, too.
pub trait KeyExtractorExt: Sized {
    /// Uses `fallback` when this extractor finds no key (or an unusable one).
    ///
    /// The fallback is explicit on purpose: tollgate never invents a shared bucket for
    /// keyless requests by itself. If both fail, the error is `fallback`'s.
    fn or<Y>(self, fallback: Y) -> Or<Self, Y> {
        Or {
            first: self,
            fallback,
        }
    }
}

impl<X> KeyExtractorExt for X {}

/// An extractor with a fallback; see [`KeyExtractorExt::or`].
#[derive(Clone, Debug)]
pub struct Or<X, Y> {
    first: X,
    fallback: Y,
}

impl<R, X, Y> KeyExtractor<R> for Or<X, Y>
where
    X: KeyExtractor<R>,
    Y: KeyExtractor<R>,
{
    fn extract(&self, request: &R) -> Result<Key, KeyError> {
        self.first
            .extract(request)
            .or_else(|_| self.fallback.extract(request))
    }
}

/// The same key for every request: a global limit for the whole service.
///
/// ```
/// # use tollgate::key::{Constant, KeyExtractor};
/// let global = Constant::new("telegram-bot");
/// assert_eq!(global.extract(&()).unwrap(), "telegram-bot");
/// ```
#[derive(Clone, Debug)]
pub struct Constant(Key);

impl Constant {
    /// A constant key from a string literal or another short value.
    ///
    /// # Panics
    ///
    /// Panics when `key` is longer than [`Key::MAX_LEN`].
    pub fn new(key: &'static str) -> Self {
        Constant(Key::from_static(key))
    }

    /// A constant key from a [`Key`].
    pub fn key(key: Key) -> Self {
        Constant(key)
    }
}

impl<R> KeyExtractor<R> for Constant {
    fn extract(&self, _: &R) -> Result<Key, KeyError> {
        Ok(self.0.clone())
    }
}

macro_rules! tuple_extractor {
    ($($x:ident),+) => {
        #[allow(non_snake_case)]
        impl<R, $($x),+> KeyExtractor<R> for ($($x,)+)
        where
            $($x: KeyExtractor<R>,)+
        {
            fn extract(&self, request: &R) -> Result<Key, KeyError> {
                let ($($x,)+) = self;
                $(let $x = $x.extract(request)?;)+
                Key::compose(&[$(&$x),+])
            }
        }
    };
}
tuple_extractor!(A, B);
tuple_extractor!(A, B, C);
tuple_extractor!(A, B, C, D);

/// Why a request has no usable key.
///
/// The layers wrap it in a [`crate::Error`] of kind [`crate::ErrorKind::Key`]; on a
/// server it becomes `400 Bad Request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    kind: KeyErrorKind,
    detail: &'static str,
    len: usize,
}

/// The kinds of [`KeyError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyErrorKind {
    /// The request does not carry the key (no such header, path segment, peer address).
    Missing,
    /// The request carries something where the key should be, but it cannot be used.
    Invalid,
    /// The key is longer than [`Key::MAX_LEN`].
    TooLong,
}

impl KeyError {
    /// The key is not in the request; `what` names where it was looked for.
    pub fn missing(what: &'static str) -> Self {
        KeyError {
            kind: KeyErrorKind::Missing,
            detail: what,
            len: 0,
        }
    }

    /// The request has a value where the key should be, but it is unusable; `what`
    /// says why.
    pub fn invalid(what: &'static str) -> Self {
        KeyError {
            kind: KeyErrorKind::Invalid,
            detail: what,
            len: 0,
        }
    }

    pub(crate) fn too_long(len: usize) -> Self {
        KeyError {
            kind: KeyErrorKind::TooLong,
            detail: "",
            len,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> KeyErrorKind {
        self.kind
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            KeyErrorKind::Missing => write!(f, "no key in request: {}", self.detail),
            KeyErrorKind::Invalid => write!(f, "unusable key in request: {}", self.detail),
            KeyErrorKind::TooLong => write!(
                f,
                "key of {} bytes is longer than the {} allowed",
                self.len,
                Key::MAX_LEN
            ),
        }
    }
}

impl StdError for KeyError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> http::Request<()> {
        http::Request::builder()
            .uri("https://graph.example/v1.0/users/u1/messages")
            .header("x-tenant", "t1")
            .body(())
            .unwrap()
    }

    #[test]
    fn closures_may_return_keys_options_or_results() {
        let k = |_: &http::Request<()>| Key::from_static("k");
        assert_eq!(k.extract(&req()).unwrap(), "k");
        let none = |_: &http::Request<()>| None::<&str>;
        assert_eq!(
            none.extract(&req()).unwrap_err().kind(),
            KeyErrorKind::Missing
        );
        let some = |r: &http::Request<()>| r.headers().get("x-tenant").cloned();
        assert_eq!(some.extract(&req()).unwrap(), "t1");
        let res = |_: &http::Request<()>| Ok::<_, KeyError>(7u64);
        assert_eq!(res.extract(&req()).unwrap(), "7");
        let long = |_: &http::Request<()>| Some("x".repeat(Key::MAX_LEN + 1));
        assert_eq!(
            long.extract(&req()).unwrap_err().kind(),
            KeyErrorKind::TooLong
        );
    }

    #[test]
    fn tuples_compose_and_fail_when_any_part_is_missing() {
        let pair = (Header::new("x-tenant"), Constant::new("writes"));
        let key = pair.extract(&req()).unwrap();
        let expected =
            Key::compose(&[&Key::from_static("t1"), &Key::from_static("writes")]).unwrap();
        assert_eq!(key, expected);
        let missing = (Header::new("x-tenant"), Header::new("x-absent"));
        assert_eq!(
            missing.extract(&req()).unwrap_err().kind(),
            KeyErrorKind::Missing
        );
    }

    #[test]
    fn or_falls_back_only_when_the_first_has_no_key() {
        let x = Header::new("x-tenant").or(Constant::new("fallback"));
        assert_eq!(x.extract(&req()).unwrap(), "t1");
        let y = Header::new("x-absent").or(Constant::new("fallback"));
        assert_eq!(y.extract(&req()).unwrap(), "fallback");
        let z = Header::new("x-absent").or(Header::new("x-also-absent"));
        assert!(z.extract(&req()).is_err());
    }
}
