//! [`PathSegment`]: a segment of the request path as the key, by position or by a
//! `{capture}` in a pattern.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use http::Request;
use percent_encoding::percent_decode;

use super::{Key, KeyError, KeyExtractor};

/// A segment of the request path as the key: a mailbox, a chat, a space, a repository.
///
/// Pick the segment by position with [`PathSegment::index`], or by name with
/// [`PathSegment::pattern`], which also checks the rest of the path:
///
/// ```
/// use tollgate::key::{KeyExtractor, PathSegment};
///
/// let req = http::Request::builder()
///     .uri("https://graph.example/v1.0/users/alice%40contoso.com/messages?$top=5")
///     .body(())
///     .unwrap();
///
/// let mailbox = PathSegment::pattern("/v1.0/users/{id}/messages", "id").unwrap();
/// assert_eq!(mailbox.extract(&req).unwrap(), "alice@contoso.com");
/// assert_eq!(PathSegment::index(2).extract(&req).unwrap(), "alice@contoso.com");
///
/// let other = http::Request::builder().uri("/v1.0/me/messages").body(()).unwrap();
/// assert!(mailbox.extract(&other).is_err());
/// ```
///
/// # Decisions
///
/// - **Segments**: the path is split on `/` and empty segments are skipped, so a
///   trailing slash (`/users/u1/`) or a doubled one (`/users//u1`) changes nothing. The
///   query string is never part of the path, nor of the key.
/// - **Percent-decoding**: the key is the segment percent-decoded, so
///   `alice%40contoso.com` and `alice@contoso.com` are one key and a client cannot
///   split its traffic over several spellings of one id. The decoded bytes are the key
///   even when they are not UTF-8; `+` is kept as `+` (it means a space only in forms).
///   Literal segments of a pattern are compared after decoding too, on both sides.
/// - **Case**: literal segments match case-sensitively, and the key keeps its case.
/// - **No match is no key**: a path that is too short, too long or has a different
///   literal segment has no key
///   ([`KeyErrorKind::Missing`](super::KeyErrorKind::Missing)); it never falls into a
///   shared bucket.
/// - **Cost**: a pattern is parsed once, when the extractor is built, and shared by
///   its clones; matching a request does not allocate, and neither does the key when it
///   is at most 30 bytes long.
#[derive(Clone, Debug)]
pub struct PathSegment {
    select: Select,
}

#[derive(Clone, Debug)]
enum Select {
    /// The n-th non-empty segment.
    Index(usize),
    /// The capture at `capture` in `segments`.
    Pattern {
        segments: Arc<[Segment]>,
        capture: usize,
    },
}

#[derive(PartialEq, Eq)]
enum Segment {
    /// Matches a segment equal to these bytes once both are percent-decoded.
    Literal(Box<[u8]>),
    /// `{name}`: matches one segment.
    Capture,
    /// `{*name}`: matches every remaining segment, possibly none. Always last.
    Rest,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Literal(bytes) => f
                .debug_tuple("Literal")
                .field(&String::from_utf8_lossy(bytes))
                .finish(),
            Segment::Capture => f.write_str("Capture"),
            Segment::Rest => f.write_str("Rest"),
        }
    }
}

impl PathSegment {
    /// The `n`-th non-empty segment of the path, counting from 0: in
    /// `/v1.0/users/u1/messages`, segment 2 is `u1`.
    ///
    /// A path with fewer segments has no key.
    pub fn index(n: usize) -> Self {
        PathSegment {
            select: Select::Index(n),
        }
    }

    /// The segment that `{capture}` matches in `pattern`, for paths that match the
    /// whole pattern.
    ///
    /// A pattern is a path whose segments are literals, matched exactly
    /// (case-sensitively, after percent-decoding), or captures:
    ///
    /// - `{name}` matches any one non-empty segment;
    /// - `{*name}`, allowed only as the last segment, matches all remaining segments,
    ///   possibly none. Without it a path must have exactly as many segments as the
    ///   pattern. Naming it as the `capture` makes the key the remaining segments,
    ///   decoded and joined with `/` (so an encoded `%2F` reads as a `/`); when there
    ///   are none, the request has no key.
    ///
    /// ```
    /// use tollgate::key::{KeyExtractor, PathSegment};
    ///
    /// let chat = PathSegment::pattern("/bot{token}/{*method}", "method");
    /// assert!(chat.is_err(), "a capture must be a whole segment");
    ///
    /// let space = PathSegment::pattern("/v1/spaces/{space}/{*rest}", "space").unwrap();
    /// let req = http::Request::builder()
    ///     .uri("/v1/spaces/AAAA/messages/1")
    ///     .body(())
    ///     .unwrap();
    /// assert_eq!(space.extract(&req).unwrap(), "AAAA");
    /// ```
    ///
    /// # Errors
    ///
    /// A [`PatternError`] when `capture` is not a capture of `pattern`, when two
    /// captures share a name, when `{*name}` is not the last segment, or when a
    /// segment has empty or unbalanced braces or braces that do not span the whole
    /// segment.
    pub fn pattern(pattern: &str, capture: &str) -> Result<Self, PatternError> {
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let mut wanted = None;
        let mut parts = pattern.split('/').filter(|s| !s.is_empty()).peekable();
        while let Some(part) = parts.next() {
            let Some(name) = parse_capture(part)? else {
                segments.push(Segment::Literal(percent_decode(part.as_bytes()).collect()));
                continue;
            };
            let (rest, name) = match name.strip_prefix('*') {
                Some(name) => (true, name),
                None => (false, name),
            };
            if rest && parts.peek().is_some() {
                return Err(PatternError::new(ErrorKind::RestNotLast, part));
            }
            if names.contains(&name) {
                return Err(PatternError::new(ErrorKind::Duplicate, name));
            }
            names.push(name);
            if name == capture {
                wanted = Some(segments.len());
            }
            segments.push(if rest {
                Segment::Rest
            } else {
                Segment::Capture
            });
        }
        let capture = wanted.ok_or_else(|| PatternError::new(ErrorKind::Unknown, capture))?;
        Ok(PathSegment {
            select: Select::Pattern {
                segments: segments.into(),
                capture,
            },
        })
    }
}

/// The capture name in `part` (with its `*` if any) when `part` is `{...}`, `None` when
/// `part` is a literal.
fn parse_capture(part: &str) -> Result<Option<&str>, PatternError> {
    let has_braces = part.contains(['{', '}']);
    if !has_braces {
        return Ok(None);
    }
    let inner = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'));
    let Some(inner) = inner else {
        let kind = if part.matches('{').count() == part.matches('}').count() {
            ErrorKind::PartialSegment
        } else {
            ErrorKind::Unbalanced
        };
        return Err(PatternError::new(kind, part));
    };
    if inner.contains(['{', '}']) {
        return Err(PatternError::new(ErrorKind::Unbalanced, part));
    }
    let name = inner.strip_prefix('*').unwrap_or(inner);
    if name.is_empty() {
        return Err(PatternError::new(ErrorKind::Empty, part));
    }
    if name.contains('*') {
        return Err(PatternError::new(ErrorKind::Star, part));
    }
    Ok(Some(inner))
}

impl<B> KeyExtractor<Request<B>> for PathSegment {
    fn extract(&self, request: &Request<B>) -> Result<Key, KeyError> {
        let mut path = segments(request.uri().path());
        match &self.select {
            Select::Index(n) => match path.nth(*n) {
                Some(segment) => decoded_key([segment]),
                None => Err(KeyError::missing("path has no segment at the index")),
            },
            Select::Pattern { segments, capture } => {
                let mut key = None;
                for (i, want) in segments.iter().enumerate() {
                    match want {
                        Segment::Rest if i == *capture => {
                            let mut rest = path.by_ref().peekable();
                            if rest.peek().is_none() {
                                return Err(KeyError::missing("path has no rest segments"));
                            }
                            return decoded_key(rest);
                        }
                        Segment::Rest => return decoded_key(key),
                        Segment::Capture => {
                            let segment = path.next().ok_or_else(no_match)?;
                            if i == *capture {
                                key = Some(segment);
                            }
                        }
                        Segment::Literal(literal) => {
                            let segment = path.next().ok_or_else(no_match)?;
                            if !percent_decode(segment.as_bytes()).eq(literal.iter().copied()) {
                                return Err(no_match());
                            }
                        }
                    }
                }
                if path.next().is_some() {
                    return Err(no_match());
                }
                decoded_key(key)
            }
        }
    }
}

fn no_match() -> KeyError {
    KeyError::missing("path does not match the pattern")
}

/// The non-empty segments of `path`.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The key made of `segments`, percent-decoded and joined with `/`, built on the
/// stack. No segments is no key.
fn decoded_key<'a>(segments: impl IntoIterator<Item = &'a str>) -> Result<Key, KeyError> {
    let mut buf = [0u8; Key::MAX_LEN];
    let mut len = 0;
    let mut any = false;
    for segment in segments {
        let separator = any.then_some(b'/');
        any = true;
        for byte in separator
            .into_iter()
            .chain(percent_decode(segment.as_bytes()))
        {
            if let Some(slot) = buf.get_mut(len) {
                *slot = byte;
            }
            len += 1;
        }
    }
    if !any {
        return Err(no_match());
    }
    match buf.get(..len) {
        Some(bytes) => Key::new(bytes),
        None => Err(KeyError::too_long(len)),
    }
}

/// Why a path pattern was refused by [`PathSegment::pattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    kind: ErrorKind,
    part: Box<str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    Unknown,
    Duplicate,
    RestNotLast,
    Empty,
    Unbalanced,
    PartialSegment,
    Star,
}

impl PatternError {
    fn new(kind: ErrorKind, part: &str) -> Self {
        PatternError {
            kind,
            part: part.into(),
        }
    }
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = &self.part;
        match self.kind {
            ErrorKind::Unknown => write!(f, "the pattern has no capture named {part:?}"),
            ErrorKind::Duplicate => write!(f, "capture name {part:?} appears more than once"),
            ErrorKind::RestNotLast => write!(f, "{part:?} must be the pattern's last segment"),
            ErrorKind::Empty => write!(f, "empty capture name in pattern segment {part:?}"),
            ErrorKind::Unbalanced => write!(f, "unbalanced braces in pattern segment {part:?}"),
            ErrorKind::PartialSegment => write!(
                f,
                "a capture must be a whole segment, unlike pattern segment {part:?}"
            ),
            ErrorKind::Star => write!(
                f,
                "`*` may only start a capture name, unlike in pattern segment {part:?}"
            ),
        }
    }
}

impl StdError for PatternError {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::key::KeyErrorKind;

    fn req(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    fn key(x: &PathSegment, uri: &str) -> Key {
        x.extract(&req(uri)).unwrap()
    }

    fn kind(x: &PathSegment, uri: &str) -> KeyErrorKind {
        x.extract(&req(uri)).unwrap_err().kind()
    }

    fn pattern(pattern: &str, capture: &str) -> PathSegment {
        PathSegment::pattern(pattern, capture).unwrap()
    }

    fn pattern_error(pattern: &str, capture: &str) -> String {
        PathSegment::pattern(pattern, capture)
            .unwrap_err()
            .to_string()
    }

    const MESSAGES: &str = "/v1.0/users/{id}/messages";

    #[test]
    fn index_counts_non_empty_segments_from_zero() {
        let x = PathSegment::index(2);
        assert_eq!(key(&x, "/v1.0/users/u1/messages"), "u1");
        assert_eq!(key(&x, "//v1.0//users/u1"), "u1");
        assert_eq!(key(&PathSegment::index(0), "/v1.0/users"), "v1.0");
    }

    #[test]
    fn index_past_the_last_segment_is_missing() {
        let x = PathSegment::index(2);
        assert_eq!(kind(&x, "/v1.0/users"), KeyErrorKind::Missing);
        assert_eq!(kind(&x, "/v1.0/users/"), KeyErrorKind::Missing);
        assert_eq!(kind(&x, "/"), KeyErrorKind::Missing);
    }

    #[test]
    fn a_pattern_capture_is_the_key() {
        let x = pattern(MESSAGES, "id");
        assert_eq!(key(&x, "/v1.0/users/u1/messages"), "u1");
        assert_eq!(
            key(&x, "https://graph.example/v1.0/users/u1/messages"),
            "u1"
        );
    }

    #[test]
    fn percent_encoded_and_plain_spellings_are_one_key() {
        let x = pattern(MESSAGES, "id");
        let encoded = key(&x, "/v1.0/users/alice%40contoso.com/messages");
        let plain = key(&x, "/v1.0/users/alice@contoso.com/messages");
        assert_eq!(encoded, plain);
        assert_eq!(plain, "alice@contoso.com");
        assert_eq!(
            key(&PathSegment::index(2), "/v1.0/users/alice%40contoso.com"),
            plain
        );
    }

    #[test]
    fn decoded_keys_need_not_be_utf8_and_plus_stays_plus() {
        let x = PathSegment::index(0);
        assert_eq!(key(&x, "/%FF%00").as_bytes(), b"\xff\x00");
        assert_eq!(key(&x, "/a+b"), "a+b");
        assert_eq!(key(&x, "/a%2Fb"), "a/b");
        assert_eq!(
            key(&x, "/100%"),
            "100%",
            "invalid escapes are kept as they are"
        );
    }

    #[test]
    fn the_query_string_is_never_part_of_the_key() {
        let x = PathSegment::index(0);
        assert_eq!(key(&x, "/u1?x=1"), "u1");
        assert_eq!(key(&x, "/u1?x=2/3"), "u1");
        let y = pattern(MESSAGES, "id");
        assert_eq!(key(&y, "/v1.0/users/u1/messages?$top=5"), "u1");
    }

    #[test]
    fn a_trailing_slash_is_ignored() {
        let x = pattern(MESSAGES, "id");
        assert_eq!(key(&x, "/v1.0/users/u1/messages/"), "u1");
    }

    #[test]
    fn literal_segments_match_exactly_and_case_sensitively() {
        let x = pattern(MESSAGES, "id");
        assert_eq!(kind(&x, "/v1.0/users/u1/Messages"), KeyErrorKind::Missing);
        assert_eq!(kind(&x, "/v2.0/users/u1/messages"), KeyErrorKind::Missing);
        assert_eq!(kind(&x, "/v1.0/users/u1/messagesx"), KeyErrorKind::Missing);
    }

    #[test]
    fn literal_segments_match_after_percent_decoding_on_both_sides() {
        let x = pattern(MESSAGES, "id");
        assert_eq!(key(&x, "/v1.0/%75sers/u1/messages"), "u1");
        let spaced = pattern("/my%20files/{f}", "f");
        let raw = pattern("/my files/{f}", "f");
        assert_eq!(key(&spaced, "/my%20files/a"), "a");
        assert_eq!(key(&spaced, "/my%20fil%65s/a"), "a");
        assert_eq!(key(&raw, "/my%20files/a"), "a");
    }

    #[test]
    fn keys_keep_their_case() {
        let x = pattern(MESSAGES, "id");
        assert_eq!(key(&x, "/v1.0/users/AbC/messages"), "AbC");
    }

    #[test]
    fn without_rest_the_path_must_have_the_patterns_segment_count() {
        let x = pattern(MESSAGES, "id");
        assert_eq!(kind(&x, "/v1.0/users/u1"), KeyErrorKind::Missing);
        assert_eq!(
            kind(&x, "/v1.0/users/u1/messages/m1"),
            KeyErrorKind::Missing
        );
        assert_eq!(kind(&x, "/v1.0/users//messages"), KeyErrorKind::Missing);
    }

    #[test]
    fn rest_matches_any_number_of_remaining_segments() {
        let x = pattern("/v1/spaces/{space}/{*rest}", "space");
        assert_eq!(key(&x, "/v1/spaces/S1"), "S1");
        assert_eq!(key(&x, "/v1/spaces/S1/"), "S1");
        assert_eq!(key(&x, "/v1/spaces/S1/messages"), "S1");
        assert_eq!(key(&x, "/v1/spaces/S1/messages/m1/reactions"), "S1");
        assert_eq!(kind(&x, "/v1/spaces"), KeyErrorKind::Missing);
    }

    #[test]
    fn capturing_rest_keys_on_the_decoded_remaining_segments() {
        let x = pattern("/files/{*path}", "path");
        assert_eq!(key(&x, "/files/a/b%20c//d/"), "a/b c/d");
        assert_eq!(kind(&x, "/files"), KeyErrorKind::Missing);
        assert_eq!(kind(&x, "/files/"), KeyErrorKind::Missing);
        assert_eq!(kind(&x, "/other/a"), KeyErrorKind::Missing);
    }

    #[test]
    fn a_path_that_does_not_match_is_missing_not_shared() {
        let x = pattern(MESSAGES, "id");
        let err = x.extract(&req("/v1.0/me/messages")).unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Missing);
        assert!(err.to_string().contains("pattern"), "{err}");
    }

    #[test]
    fn segments_longer_than_max_len_are_too_long_even_before_decoding() {
        let x = PathSegment::index(0);
        let long = format!("/{}", "a".repeat(Key::MAX_LEN + 1));
        assert_eq!(kind(&x, &long), KeyErrorKind::TooLong);
        let fits = format!("/{}", "%41".repeat(Key::MAX_LEN));
        assert_eq!(key(&x, &fits).len(), Key::MAX_LEN);
        let rest = pattern("/{*all}", "all");
        let many = "/a".repeat(Key::MAX_LEN);
        let err = rest.extract(&req(&many)).unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::TooLong);
        assert!(
            err.to_string()
                .contains(&(2 * Key::MAX_LEN - 1).to_string()),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_capture_name_is_refused() {
        let err = pattern_error(MESSAGES, "user");
        assert_eq!(err, "the pattern has no capture named \"user\"");
        assert!(PathSegment::pattern("/users/id", "id").is_err());
    }

    #[test]
    fn duplicate_capture_names_are_refused() {
        let err = pattern_error("/a/{id}/b/{id}", "id");
        assert_eq!(err, "capture name \"id\" appears more than once");
        assert!(PathSegment::pattern("/a/{id}/{*id}", "id").is_err());
    }

    #[test]
    fn rest_must_be_the_last_segment() {
        let err = pattern_error("/a/{*rest}/{id}", "id");
        assert_eq!(err, "\"{*rest}\" must be the pattern's last segment");
        assert!(PathSegment::pattern("/a/{*rest}/", "rest").is_ok());
    }

    #[test]
    fn empty_or_unbalanced_braces_are_refused() {
        for (bad, capture, message) in [
            ("/a/{}", "id", "empty capture name"),
            ("/a/{*}", "id", "empty capture name"),
            ("/a/{id", "id", "unbalanced braces"),
            ("/a/id}", "id", "unbalanced braces"),
            ("/a/{{id}}", "id", "unbalanced braces"),
            ("/a/{i{d}", "id", "unbalanced braces"),
            ("/a/x{id}", "id", "whole segment"),
            ("/a/{id}.json", "id", "whole segment"),
            ("/a/{i*d}", "i*d", "`*`"),
        ] {
            let err = pattern_error(bad, capture);
            assert!(err.contains(message), "{bad}: {err}");
        }
    }

    #[test]
    fn pattern_errors_are_std_errors() {
        fn assert_error<E: StdError + Send + Sync + Clone + 'static>() {}
        assert_error::<PatternError>();
    }

    #[test]
    fn clones_share_the_parsed_pattern() {
        let x = pattern(MESSAGES, "id");
        let y = x.clone();
        let (Select::Pattern { segments: a, .. }, Select::Pattern { segments: b, .. }) =
            (&x.select, &y.select)
        else {
            panic!("not a pattern");
        };
        assert!(Arc::ptr_eq(a, b));
        assert_eq!(a[0], Segment::Literal(b"v1.0"[..].into()));
        fn assert_bounds<T: Clone + fmt::Debug + Send + Sync + 'static>() {}
        assert_bounds::<PathSegment>();
    }

    fn path_and_query() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just(String::new()),
            Just("users".to_owned()),
            Just("%".to_owned()),
            Just("%4".to_owned()),
            "[a-zA-Z0-9%._~@+-]{1,40}",
            "(%[0-9a-fA-F]{2}){1,200}",
        ];
        (
            proptest::collection::vec(segment, 0..8),
            proptest::option::of("[a-z0-9=&/%]{0,20}"),
        )
            .prop_map(|(segments, query)| {
                let mut path = format!("/{}", segments.join("/"));
                if let Some(query) = query {
                    path.push('?');
                    path.push_str(&query);
                }
                path
            })
    }

    proptest! {
        #[test]
        fn arbitrary_paths_never_panic(
            uri in path_and_query(),
            n in 0usize..8,
        ) {
            let Ok(uri) = uri.parse::<http::Uri>() else { return Ok(()) };
            let mut request = Request::new(());
            *request.uri_mut() = uri;
            let extractors = [
                PathSegment::index(n),
                pattern("/users/{id}", "id"),
                pattern("/{a}/users/{b}/{*rest}", "b"),
                pattern("/{*rest}", "rest"),
            ];
            for x in &extractors {
                if let Ok(key) = x.extract(&request) {
                    prop_assert!(key.len() <= Key::MAX_LEN);
                }
            }
        }

        #[test]
        fn arbitrary_patterns_never_panic(pattern in "[a-z/{}*%]{0,30}", capture in "[a-z*]{0,3}") {
            if let Ok(x) = PathSegment::pattern(&pattern, &capture) {
                let _ = x.extract(&req("/a/b/c"));
            }
        }

        #[test]
        fn the_key_is_the_decoded_segment(segment in "[a-zA-Z0-9@._~-]{1,40}") {
            let encoded: String = percent_encoding::utf8_percent_encode(
                &segment,
                percent_encoding::NON_ALPHANUMERIC,
            )
            .collect();
            let x = pattern(MESSAGES, "id");
            let plain = key(&x, &format!("/v1.0/users/{segment}/messages"));
            let decoded = key(&x, &format!("/v1.0/users/{encoded}/messages"));
            prop_assert_eq!(&plain, &decoded);
            prop_assert_eq!(plain.as_bytes(), segment.as_bytes());
        }
    }
}
