//! [`Header`]: a request header's value as the key.

use http::{HeaderName, Request};

use super::{Key, KeyError, KeyExtractor};

/// A request header's value as the key: an API key, a bot token, a tenant id.
///
/// The key is the value's bytes, exactly as received (no case folding, no decoding),
/// minus any optional whitespace around them, which HTTP says is not part of the value.
///
/// - **Absent**: a request without the header has no key
///   ([`KeyErrorKind::Missing`](super::KeyErrorKind::Missing)).
/// - **Empty**: a value that is empty, or only spaces and tabs, is treated as absent.
///   An empty API key identifies nobody; it must not become one bucket shared by every
///   client that sends it.
/// - **Repeated**: a header that appears more than once makes the key
///   [`KeyErrorKind::Invalid`](super::KeyErrorKind::Invalid), even if the values are
///   equal. Picking the first or the last would let a client choose its own key by
///   sending several. A single line with commas in it is one value and is kept whole.
/// - **Long**: a value longer than [`Key::MAX_LEN`] is refused
///   ([`KeyErrorKind::TooLong`](super::KeyErrorKind::TooLong)).
///
/// Values of up to 30 bytes become a key without allocating.
///
/// ```
/// use tollgate::key::{Header, KeyExtractor};
///
/// let by_token = Header::new("x-api-key");
/// let req = http::Request::builder()
///     .header("x-api-key", "k-7f3a")
///     .body(())
///     .unwrap();
/// assert_eq!(by_token.extract(&req).unwrap(), "k-7f3a");
///
/// let anonymous = http::Request::new(());
/// assert!(by_token.extract(&anonymous).is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
}

impl Header {
    /// The value of the header called `name`, which must be lower-case.
    ///
    /// # Panics
    ///
    /// Panics, like [`HeaderName::from_static`], when `name` is not a valid header name
    /// or has upper-case letters. Use [`Header::from_name`] for names that come from
    /// configuration.
    pub fn new(name: &'static str) -> Self {
        Header {
            name: HeaderName::from_static(name),
        }
    }

    /// The value of the header called `name`.
    ///
    /// ```
    /// use tollgate::key::Header;
    ///
    /// let by_auth = Header::from_name(http::header::AUTHORIZATION);
    /// let from_config = Header::from_name("X-Tenant".parse().unwrap());
    /// # let _ = (by_auth, from_config);
    /// ```
    pub fn from_name(name: HeaderName) -> Self {
        Header { name }
    }
}

impl<B> KeyExtractor<Request<B>> for Header {
    fn extract(&self, request: &Request<B>) -> Result<Key, KeyError> {
        let mut values = request.headers().get_all(&self.name).iter();
        let Some(value) = values.next() else {
            return Err(KeyError::missing("key header not present"));
        };
        if values.next().is_some() {
            return Err(KeyError::invalid("header appears more than once"));
        }
        let value = trim_ows(value.as_bytes());
        if value.is_empty() {
            return Err(KeyError::missing("key header is empty"));
        }
        Key::new(value)
    }
}

/// `bytes` without leading and trailing optional whitespace (spaces and tabs).
#[inline]
pub(super) fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    // Values parsed off the wire never start or end with whitespace (the parser drops
    // it): two byte tests, and the scans below only for values built otherwise.
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) if !is_ows(first) && !is_ows(last) => return bytes,
        _ => {}
    }
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;
    use crate::key::KeyErrorKind;

    fn request(values: &[&'static str]) -> Request<()> {
        let mut req = Request::new(());
        for value in values {
            req.headers_mut()
                .append("x-api-key", HeaderValue::from_static(value));
        }
        req
    }

    fn kind(result: Result<Key, KeyError>) -> KeyErrorKind {
        result.unwrap_err().kind()
    }

    #[test]
    fn the_key_is_the_header_value() {
        let key = Header::new("x-api-key")
            .extract(&request(&["k-7f3a"]))
            .unwrap();
        assert_eq!(key, "k-7f3a");
    }

    #[test]
    fn the_key_is_the_raw_bytes_without_case_folding_or_decoding() {
        let key = Header::new("x-api-key")
            .extract(&request(&["Bearer%20AbC"]))
            .unwrap();
        assert_eq!(key, "Bearer%20AbC");
        let mut req = Request::new(());
        let opaque = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        req.headers_mut().insert("x-api-key", opaque);
        let key = Header::new("x-api-key").extract(&req).unwrap();
        assert_eq!(key.as_bytes(), b"caf\xe9");
    }

    #[test]
    fn surrounding_whitespace_is_not_part_of_the_key() {
        let key = Header::new("x-api-key")
            .extract(&request(&[" \tk-7f3a\t "]))
            .unwrap();
        assert_eq!(key, "k-7f3a");
    }

    #[test]
    fn an_absent_header_is_a_missing_key() {
        let err = Header::new("x-api-key").extract(&request(&[])).unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Missing);
        assert!(err.to_string().contains("header"), "{err}");
    }

    #[test]
    fn an_empty_or_blank_header_is_a_missing_key() {
        let header = Header::new("x-api-key");
        assert_eq!(kind(header.extract(&request(&[""]))), KeyErrorKind::Missing);
        assert_eq!(
            kind(header.extract(&request(&[" \t "]))),
            KeyErrorKind::Missing
        );
    }

    #[test]
    fn a_repeated_header_is_invalid_even_with_equal_values() {
        let header = Header::new("x-api-key");
        let err = header.extract(&request(&["a", "b"])).unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Invalid);
        assert!(err.to_string().contains("more than once"), "{err}");
        assert_eq!(
            kind(header.extract(&request(&["a", "a"]))),
            KeyErrorKind::Invalid
        );
        assert_eq!(
            kind(header.extract(&request(&["", "a"]))),
            KeyErrorKind::Invalid
        );
    }

    #[test]
    fn a_comma_separated_value_on_one_line_is_one_key() {
        let key = Header::new("x-api-key")
            .extract(&request(&["a, b"]))
            .unwrap();
        assert_eq!(key, "a, b");
    }

    #[test]
    fn a_value_longer_than_max_len_is_too_long() {
        let mut req = Request::new(());
        let long = HeaderValue::from_str(&"k".repeat(Key::MAX_LEN + 1)).unwrap();
        req.headers_mut().insert("x-api-key", long);
        assert_eq!(
            kind(Header::new("x-api-key").extract(&req)),
            KeyErrorKind::TooLong
        );
    }

    #[test]
    fn names_from_configuration_are_case_insensitive() {
        let header = Header::from_name("X-Api-Key".parse().unwrap());
        assert_eq!(header.extract(&request(&["k"])).unwrap(), "k");
    }

    #[test]
    #[should_panic]
    fn new_panics_on_an_upper_case_name() {
        let _ = Header::new("X-Api-Key");
    }

    #[test]
    fn the_extractor_is_cheap_to_share_across_threads() {
        fn assert_bounds<T: Clone + std::fmt::Debug + Send + Sync + 'static>() {}
        assert_bounds::<Header>();
    }

    proptest! {
        #[test]
        fn arbitrary_header_values_never_panic_and_keys_are_trimmed_values(
            values in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff],
                    0..600,
                ),
                0..4,
            ),
        ) {
            let mut req = Request::new(());
            for value in &values {
                let value = HeaderValue::from_bytes(value).unwrap();
                req.headers_mut().append("x-api-key", value);
            }
            let result = Header::new("x-api-key").extract(&req);
            match values.as_slice() {
                [one] => {
                    let trimmed = trim_ows(one);
                    match result {
                        Ok(key) => prop_assert_eq!(key.as_bytes(), trimmed),
                        Err(err) if trimmed.is_empty() => {
                            prop_assert_eq!(err.kind(), KeyErrorKind::Missing);
                        }
                        Err(err) => {
                            prop_assert!(trimmed.len() > Key::MAX_LEN);
                            prop_assert_eq!(err.kind(), KeyErrorKind::TooLong);
                        }
                    }
                }
                [] => prop_assert_eq!(kind(result), KeyErrorKind::Missing),
                _ => prop_assert_eq!(kind(result), KeyErrorKind::Invalid),
            }
        }
    }
}
