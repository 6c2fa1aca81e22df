//! [`Host`]: the host a request is for as the key.

use std::net::Ipv6Addr;

use http::{Request, header};

use super::header::trim_ows;
use super::{Key, KeyError, KeyExtractor};

/// The host a request is for as the key: one limit per upstream on a client, one per
/// virtual host on a server.
///
/// - **Where**: the URI's host when the URI has an authority (`https://api.example/…`:
///   requests built by a client, HTTP/2 requests on a server), otherwise the `Host`
///   header (HTTP/1.1 requests on a server). When the URI has an authority the `Host`
///   header is not read, as HTTP requires.
/// - **Normalized**: hosts are case-insensitive, so the key is ASCII-lower-cased; the
///   port is not part of it; a trailing dot (`api.example.`, the same DNS name) is
///   removed. An IPv6 literal keeps its brackets (`[2001:db8::1]`), as in the URI.
/// - **Missing**: a request with neither an authority nor a `Host` header, or with an
///   empty `Host` header (which HTTP uses to say there is no host), has no key
///   ([`KeyErrorKind::Missing`](super::KeyErrorKind::Missing)).
/// - **Invalid**: a `Host` header that is not `host[:port]` (bad characters, an empty
///   host, a non-numeric port, an IP literal that is not IPv6) or that appears more
///   than once, which HTTP forbids, is
///   [`KeyErrorKind::Invalid`](super::KeyErrorKind::Invalid).
///
/// Hosts of up to 30 bytes become a key without allocating.
///
/// ```
/// use tollgate::key::{Host, KeyExtractor};
///
/// let client_side = http::Request::builder()
///     .uri("https://API.Example:8443/v1/items")
///     .body(())
///     .unwrap();
/// assert_eq!(Host::new().extract(&client_side).unwrap(), "api.example");
///
/// let server_side = http::Request::builder()
///     .uri("/v1/items")
///     .header("host", "api.example:8443")
///     .body(())
///     .unwrap();
/// assert_eq!(Host::new().extract(&server_side).unwrap(), "api.example");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Host {
    _priv: (),
}

impl Host {
    /// The host extractor.
    pub fn new() -> Self {
        Host { _priv: () }
    }
}

impl<B> KeyExtractor<Request<B>> for Host {
    fn extract(&self, request: &Request<B>) -> Result<Key, KeyError> {
        if let Some(authority) = request.uri().authority() {
            let host = authority.host().as_bytes();
            if host.is_empty() {
                return Err(KeyError::missing("URI authority has no host"));
            }
            return lower_case_key(host);
        }
        let mut values = request.headers().get_all(header::HOST).iter();
        let Some(value) = values.next() else {
            return Err(KeyError::missing("no URI authority and no Host header"));
        };
        if values.next().is_some() {
            return Err(KeyError::invalid("Host header appears more than once"));
        }
        let value = trim_ows(value.as_bytes());
        if value.is_empty() {
            return Err(KeyError::missing("Host header is empty"));
        }
        lower_case_key(host_of(value).ok_or_else(invalid_host)?)
    }
}

fn invalid_host() -> KeyError {
    KeyError::invalid("malformed Host header")
}

/// The host part of a non-empty `Host` header value, `None` when the value is not
/// `uri-host [ ":" port ]` (RFC 9110, section 7.2).
fn host_of(value: &[u8]) -> Option<&[u8]> {
    let (host, port) = if let Some(literal) = value.strip_prefix(b"[") {
        let end = literal.iter().position(|b| *b == b']')?;
        let address = std::str::from_utf8(&literal[..end]).ok()?;
        address.parse::<Ipv6Addr>().ok()?;
        let (host, after) = value.split_at(end + 2);
        let port = match after {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return None,
        };
        (host, port)
    } else {
        let (host, port) = match value.iter().position(|b| *b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        };
        if host.is_empty() || !host.iter().all(|b| is_reg_name_byte(*b)) {
            return None;
        }
        (host, port)
    };
    match port {
        None | Some([]) => Some(host),
        Some(port) if port.len() <= 5 && port.iter().all(u8::is_ascii_digit) => {
            let port = std::str::from_utf8(port).ok()?;
            port.parse::<u16>().ok().map(|_| host)
        }
        Some(_) => None,
    }
}

/// Whether `b` may appear in a registered name or an IPv4 address (RFC 3986, 3.2.2).
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)
}

/// The key for `host`: ASCII-lower-cased on the stack, a trailing dot removed.
fn lower_case_key(host: &[u8]) -> Result<Key, KeyError> {
    let host = match host {
        [name @ .., b'.'] if !name.is_empty() => name,
        _ => host,
    };
    let mut buf = [0u8; Key::MAX_LEN];
    let Some(lower) = buf.get_mut(..host.len()) else {
        return Err(KeyError::too_long(host.len()));
    };
    lower.copy_from_slice(host);
    lower.make_ascii_lowercase();
    Key::new(lower)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;
    use crate::key::KeyErrorKind;

    fn with_uri(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    fn with_hosts(hosts: &[&str]) -> Request<()> {
        let mut req = with_uri("/v1/items");
        for host in hosts {
            let value = HeaderValue::from_str(host).unwrap();
            req.headers_mut().append(header::HOST, value);
        }
        req
    }

    fn key(req: &Request<()>) -> Key {
        Host::new().extract(req).unwrap()
    }

    fn kind(req: &Request<()>) -> KeyErrorKind {
        Host::new().extract(req).unwrap_err().kind()
    }

    #[test]
    fn the_uri_host_is_the_key_on_a_client() {
        assert_eq!(key(&with_uri("https://api.example/v1")), "api.example");
        assert_eq!(
            key(&with_uri("http://user:pw@api.example:80/")),
            "api.example"
        );
    }

    #[test]
    fn the_host_header_is_the_key_on_a_server() {
        assert_eq!(key(&with_hosts(&["api.example"])), "api.example");
        assert_eq!(key(&with_hosts(&["192.0.2.1:8080"])), "192.0.2.1");
    }

    #[test]
    fn the_uri_authority_wins_over_the_host_header() {
        let mut req = with_uri("https://api.example/v1");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("other.example"));
        assert_eq!(key(&req), "api.example");
    }

    #[test]
    fn hosts_are_lower_cased() {
        assert_eq!(key(&with_uri("https://API.Example/")), "api.example");
        assert_eq!(key(&with_hosts(&["API.Example:443"])), "api.example");
        assert_eq!(key(&with_hosts(&["[2001:DB8::1]"])), "[2001:db8::1]");
    }

    #[test]
    fn the_port_is_not_part_of_the_key() {
        let plain = key(&with_hosts(&["api.example"]));
        assert_eq!(key(&with_hosts(&["api.example:8443"])), plain);
        assert_eq!(key(&with_hosts(&["api.example:"])), plain);
        assert_eq!(key(&with_uri("https://api.example:8443/")), plain);
    }

    #[test]
    fn ipv6_literals_keep_their_brackets_and_lose_their_port() {
        let uri = key(&with_uri("http://[2001:db8::1]:8080/"));
        assert_eq!(uri, "[2001:db8::1]");
        assert_eq!(key(&with_hosts(&["[2001:db8::1]:8080"])), uri);
        assert_eq!(key(&with_hosts(&["[2001:db8::1]"])), uri);
    }

    #[test]
    fn a_trailing_dot_is_the_same_host() {
        assert_eq!(key(&with_hosts(&["api.example."])), "api.example");
        assert_eq!(key(&with_hosts(&["api.example.:80"])), "api.example");
        assert_eq!(key(&with_uri("https://api.example./")), "api.example");
    }

    #[test]
    fn neither_an_authority_nor_a_host_header_is_missing() {
        assert_eq!(kind(&with_uri("/v1/items")), KeyErrorKind::Missing);
        assert_eq!(kind(&with_uri("*")), KeyErrorKind::Missing);
    }

    #[test]
    fn an_empty_host_header_is_missing() {
        assert_eq!(kind(&with_hosts(&[""])), KeyErrorKind::Missing);
        assert_eq!(kind(&with_hosts(&["  "])), KeyErrorKind::Missing);
    }

    #[test]
    fn a_malformed_host_header_is_invalid() {
        for bad in [
            ":80",
            "api.example:http",
            "api.example:65536",
            "api.example:80:80",
            "api example",
            "api.example/path",
            "user@api.example",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[not-v6]",
            "2001:db8::1",
        ] {
            assert_eq!(kind(&with_hosts(&[bad])), KeyErrorKind::Invalid, "{bad}");
        }
        let mut req = with_uri("/");
        let non_ascii = HeaderValue::from_bytes(b"caf\xc3\xa9.example").unwrap();
        req.headers_mut().insert(header::HOST, non_ascii);
        assert_eq!(kind(&req), KeyErrorKind::Invalid);
    }

    #[test]
    fn a_repeated_host_header_is_invalid() {
        let err = Host::new()
            .extract(&with_hosts(&["a.example", "a.example"]))
            .unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Invalid);
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn a_host_longer_than_max_len_is_too_long() {
        let long = format!("{}.example", "a".repeat(Key::MAX_LEN));
        assert_eq!(kind(&with_hosts(&[&long])), KeyErrorKind::TooLong);
    }

    #[test]
    fn the_extractor_is_cheap_to_share_across_threads() {
        fn assert_bounds<T: Clone + Copy + std::fmt::Debug + Send + Sync + 'static>() {}
        assert_bounds::<Host>();
    }

    proptest! {
        #[test]
        fn arbitrary_host_headers_never_panic(
            value in proptest::collection::vec(
                prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff],
                0..40,
            ),
        ) {
            let mut req = with_uri("/");
            req.headers_mut()
                .insert(header::HOST, HeaderValue::from_bytes(&value).unwrap());
            if let Ok(key) = Host::new().extract(&req) {
                prop_assert!(!key.is_empty());
                prop_assert!(!key.as_bytes().iter().any(u8::is_ascii_uppercase));
            }
        }

        #[test]
        fn header_and_uri_agree(host in "[a-zA-Z0-9-]{1,20}(\\.[a-zA-Z0-9-]{1,20}){0,3}", port in 0u16..) {
            let from_header = key(&with_hosts(&[&format!("{host}:{port}")]));
            let from_uri = key(&with_uri(&format!("http://{host}:{port}/")));
            prop_assert_eq!(&from_header, &from_uri);
            let lower = host.to_ascii_lowercase();
            prop_assert_eq!(from_header.as_bytes(), lower.as_bytes());
        }
    }
}
