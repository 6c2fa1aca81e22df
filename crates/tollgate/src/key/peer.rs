//! [`PeerIp`]: the client's IP address as the key, and [`PeerAddr`], the request
//! extension that carries the address of the connection's peer.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Request};
use ipnet::{IpNet, Ipv4Net};

use super::header::trim_ows;
use super::{Key, KeyError, KeyExtractor};

/// The address of the connection's peer, as a request extension for [`PeerIp`].
///
/// Servers know the peer address when they accept a connection, not when they handle
/// a request: insert it into every request of the connection. With axum, enable
/// tollgate's `axum` feature and serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` instead: [`PeerIp`] reads
/// axum's `ConnectInfo<SocketAddr>` too.
///
/// On a plain hyper server, build the service inside the accept loop, where
/// `listener.accept()` has just given you the address, and serve it with
/// `hyper_util::service::TowerToHyperService`:
///
/// ```
/// use std::net::SocketAddr;
///
/// use tollgate::key::{Key, KeyError, KeyExtractor, PeerAddr, PeerIp};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # tokio_test::block_on(async {
/// // let (stream, remote) = listener.accept().await?;
/// let remote: SocketAddr = "192.0.2.7:50312".parse().unwrap();
/// let svc = ServiceBuilder::new()
///     .map_request(move |mut req: http::Request<()>| {
///         req.extensions_mut().insert(PeerAddr(remote));
///         req
///     })
///     // ...your tollgate layers, keyed with `PeerIp::new()`...
///     .service_fn(|req: http::Request<()>| async move {
///         Ok::<Key, KeyError>(PeerIp::new().extract(&req)?)
///     });
/// let key = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(key, Key::from_ip(remote.ip()));
/// # });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The client's IP address as the key, behind trusted proxies if there are any, with
/// IPv6 clients grouped by their /64.
///
/// # Where the address comes from
///
/// The peer address is read from the request's [`PeerAddr`] extension or, with the
/// `axum` feature, from axum's `ConnectInfo<SocketAddr>` (`PeerAddr` wins when both
/// are present). A request with neither has no key
/// ([`KeyErrorKind::Missing`](super::KeyErrorKind::Missing)).
///
/// # Proxies and `X-Forwarded-For`
///
/// Without [`trust_proxies`](PeerIp::trust_proxies), the peer is the key and
/// `X-Forwarded-For` is never read: anyone can send that header.
///
/// With trusted proxies:
///
/// - a peer that is not a trusted proxy is the key, whatever it forwards;
/// - a trusted peer's `X-Forwarded-For` entries (every line of the header, in order,
///   comma-separated) are walked **from the right**, the end proxies append to. Trusted
///   proxies are skipped; the first entry that is not one is the client, and is the
///   key. Entries to its left were written by the client or by proxies you do not
///   control, and are never read;
/// - if every entry is a trusted proxy, the leftmost one is the key; a trusted peer
///   without `X-Forwarded-For` is itself the key;
/// - an entry may be an IP address, `[ipv6]`, `ip:port` or `[ipv6]:port` (some proxies
///   send ports); empty list elements are skipped. An entry the walk reaches that is
///   anything else (`unknown`, a host name) makes the key
///   [`KeyErrorKind::Invalid`](super::KeyErrorKind::Invalid) rather than a guess.
///
/// The leftmost entry is never taken on trust: a client that sends
/// `X-Forwarded-For: 1.2.3.4` through your proxy arrives as `1.2.3.4, <its address>`,
/// and the key is its address.
///
/// ```
/// use tollgate::key::{Key, KeyExtractor, PeerAddr, PeerIp};
///
/// let client_ip = PeerIp::new().trust_proxies(["10.0.0.0/8"]).unwrap();
///
/// // 203.0.113.9 claims to be 1.2.3.4; the proxy at 10.0.0.2 appends what it saw.
/// let req = http::Request::builder()
///     .header("x-forwarded-for", "1.2.3.4, 203.0.113.9")
///     .extension(PeerAddr("10.0.0.2:41000".parse().unwrap()))
///     .body(())
///     .unwrap();
/// let real = Key::from_ip("203.0.113.9".parse().unwrap());
/// assert_eq!(client_ip.extract(&req).unwrap(), real);
/// ```
///
/// # Prefix grouping
///
/// One IPv6 subscriber usually holds a whole /64, so by default IPv6 addresses are
/// grouped by their first 64 bits ([`ipv6_prefix`](PeerIp::ipv6_prefix)); IPv4
/// addresses are not grouped ([`ipv4_prefix`](PeerIp::ipv4_prefix) is 32). IPv4-mapped
/// IPv6 addresses (`::ffff:192.0.2.1`) are IPv4 addresses here, for trust and for keys.
/// Grouping shapes the key only: proxies are trusted by their full address.
///
/// The key is the address with the bits past the prefix cleared:
///
/// - IPv4 with prefix 32, IPv6 with prefix 128: exactly [`Key::from_ip`] (4 or 16
///   bytes), so those keys can be built from addresses elsewhere;
/// - otherwise, the masked address bytes followed by one byte holding the prefix
///   length (5 or 17 bytes), so `2001:db8::/48` and `2001:db8::/64` stay different keys.
///
/// Keys never allocate.
#[derive(Clone, Debug)]
pub struct PeerIp {
    trusted: Arc<[IpNet]>,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

impl Default for PeerIp {
    fn default() -> Self {
        PeerIp::new()
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

#[cfg(not(feature = "axum"))]
const NO_PEER: &str = "no peer address (PeerAddr extension)";
#[cfg(feature = "axum")]
const NO_PEER: &str = "no peer address (PeerAddr or ConnectInfo<SocketAddr> extension)";

impl PeerIp {
    /// The peer address as the key, no proxies trusted, IPv6 grouped by /64.
    pub fn new() -> Self {
        PeerIp {
            trusted: Arc::new([]),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }

    /// Trusts the proxies in `cidrs` to append the address they see to
    /// `X-Forwarded-For`, replacing any list set before.
    ///
    /// Each entry is a network such as `"10.0.0.0/8"` or `"fd00::/8"`, or a single
    /// address such as `"127.0.0.1"` or `"::1"` (a /32 or a /128). Trust only the
    /// proxies in front of this service: every address in these networks can claim to
    /// be any client.
    ///
    /// ```
    /// # use tollgate::key::PeerIp;
    /// let behind_lb = PeerIp::new().trust_proxies(["10.0.0.0/8", "::1"]).unwrap();
    /// assert!(PeerIp::new().trust_proxies(["10.0.0.0/33"]).is_err());
    /// # let _ = behind_lb;
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ProxyConfigError`] naming the first entry that is neither an address nor a
    /// network.
    pub fn trust_proxies<I, T>(self, cidrs: I) -> Result<Self, ProxyConfigError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let trusted = cidrs
            .into_iter()
            .map(|cidr| parse_net(cidr.as_ref()))
            .collect::<Result<Arc<[IpNet]>, _>>()?;
        Ok(PeerIp { trusted, ..self })
    }

    /// Groups IPv6 clients by their first `len` bits (default 64; clamped to 128).
    #[must_use]
    pub fn ipv6_prefix(self, len: u8) -> Self {
        PeerIp {
            ipv6_prefix: len.min(128),
            ..self
        }
    }

    /// Groups IPv4 clients by their first `len` bits (default 32, no grouping; clamped
    /// to 32).
    #[must_use]
    pub fn ipv4_prefix(self, len: u8) -> Self {
        PeerIp {
            ipv4_prefix: len.min(32),
            ..self
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: `peer`, or what trusted proxies say about it.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, KeyError> {
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        let mut leftmost = peer;
        for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            for entry in line.as_bytes().rsplit(|b| *b == b',') {
                let entry = trim_ows(entry);
                if entry.is_empty() {
                    continue;
                }
                let Some(ip) = parse_forwarded(entry) else {
                    return Err(KeyError::invalid("malformed X-Forwarded-For"));
                };
                let ip = ip.to_canonical();
                if !self.is_trusted(ip) {
                    return Ok(ip);
                }
                leftmost = ip;
            }
        }
        Ok(leftmost)
    }

    /// The key for the canonical address `ip`, masked to its prefix.
    fn key(&self, ip: IpAddr) -> Result<Key, KeyError> {
        match ip {
            IpAddr::V4(_) if self.ipv4_prefix == 32 => Ok(Key::from_ip(ip)),
            IpAddr::V6(_) if self.ipv6_prefix == 128 => Ok(Key::from_ip(ip)),
            IpAddr::V4(v4) => {
                let len = self.ipv4_prefix;
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                let mut bytes = [len; 5];
                bytes[..4].copy_from_slice(&(u32::from(v4) & mask).to_be_bytes());
                Key::new(bytes)
            }
            IpAddr::V6(v6) => {
                let len = self.ipv6_prefix;
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                let mut bytes = [len; 17];
                bytes[..16].copy_from_slice(&(u128::from(v6) & mask).to_be_bytes());
                Key::new(bytes)
            }
        }
    }
}

impl<B> KeyExtractor<Request<B>> for PeerIp {
    fn extract(&self, request: &Request<B>) -> Result<Key, KeyError> {
        let peer = peer_addr(request).ok_or_else(|| KeyError::missing(NO_PEER))?;
        let client = self.client(peer.ip().to_canonical(), request.headers())?;
        self.key(client)
    }
}

fn peer_addr<B>(request: &Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    if let Some(peer) = extensions.get::<PeerAddr>() {
        return Some(peer.0);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    None
}

/// An `X-Forwarded-For` entry: `ip`, `[ipv6]`, `ip:port` or `[ipv6]:port`.
fn parse_forwarded(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// A trusted proxy entry: a network, or an address meaning a network of one.
/// IPv4-mapped IPv6 networks become IPv4 networks, as addresses do.
fn parse_net(entry: &str) -> Result<IpNet, ProxyConfigError> {
    let trimmed = entry.trim();
    let net = match trimmed.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match trimmed.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(ProxyConfigError {
                    entry: entry.into(),
                });
            }
        },
    };
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    };
    Ok(net.trunc())
}

/// A trusted proxy given to [`PeerIp::trust_proxies`] is neither an IP address nor a
/// network in CIDR notation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfigError {
    entry: Box<str>,
}

impl fmt::Display for ProxyConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid trusted proxy {:?}: expected an IP address or a CIDR network such as \"10.0.0.0/8\"",
            self.entry
        )
    }
}

impl StdError for ProxyConfigError {}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;
    use crate::key::KeyErrorKind;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn peer(addr: &str) -> PeerAddr {
        let ip = ip(addr);
        PeerAddr(SocketAddr::new(ip, 40000))
    }

    fn req(from: &str, xff: &[&str]) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(peer(from));
        for line in xff {
            let value = HeaderValue::from_str(line).unwrap();
            req.headers_mut().append(X_FORWARDED_FOR, value);
        }
        req
    }

    fn behind(cidrs: &[&str]) -> PeerIp {
        PeerIp::new().trust_proxies(cidrs).unwrap()
    }

    fn key_of(addr: &str) -> Key {
        Key::from_ip(ip(addr))
    }

    #[test]
    fn the_peer_addr_extension_is_the_key() {
        let key = PeerIp::new().extract(&req("192.0.2.7", &[])).unwrap();
        assert_eq!(key, key_of("192.0.2.7"));
        assert_eq!(key.len(), 4);
    }

    #[test]
    fn a_request_without_a_peer_address_is_missing() {
        let err = PeerIp::new().extract(&Request::new(())).unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Missing);
        assert!(err.to_string().contains("PeerAddr"), "{err}");
    }

    #[test]
    fn without_trusted_proxies_x_forwarded_for_is_never_read() {
        let x = PeerIp::new();
        let spoofed = req("192.0.2.7", &["1.2.3.4"]);
        assert_eq!(x.extract(&spoofed).unwrap(), key_of("192.0.2.7"));
        let garbage = req("192.0.2.7", &["not an address"]);
        assert_eq!(x.extract(&garbage).unwrap(), key_of("192.0.2.7"));
    }

    #[test]
    fn an_untrusted_peer_is_the_key_whatever_it_forwards() {
        let x = behind(&["10.0.0.0/8"]);
        let direct = req("203.0.113.9", &["1.2.3.4", "garbage"]);
        assert_eq!(x.extract(&direct).unwrap(), key_of("203.0.113.9"));
    }

    #[test]
    fn a_trusted_peer_without_x_forwarded_for_is_the_key() {
        let x = behind(&["10.0.0.0/8"]);
        assert_eq!(
            x.extract(&req("10.0.0.2", &[])).unwrap(),
            key_of("10.0.0.2")
        );
        assert_eq!(
            x.extract(&req("10.0.0.2", &[" , "])).unwrap(),
            key_of("10.0.0.2")
        );
    }

    #[test]
    fn a_spoofed_leftmost_entry_is_never_the_key() {
        let x = behind(&["10.0.0.0/8"]);
        let spoofed = req("10.0.0.2", &["1.2.3.4, 203.0.113.9"]);
        assert_eq!(x.extract(&spoofed).unwrap(), key_of("203.0.113.9"));
    }

    #[test]
    fn the_first_untrusted_entry_from_the_right_is_the_client() {
        let x = behind(&["10.0.0.0/8", "192.168.0.0/16"]);
        let chain = req("10.0.0.2", &["1.2.3.4, 203.0.113.9, 192.168.1.1, 10.9.9.9"]);
        assert_eq!(x.extract(&chain).unwrap(), key_of("203.0.113.9"));
    }

    #[test]
    fn entries_span_every_header_line_in_order() {
        let x = behind(&["10.0.0.0/8"]);
        let lines = req(
            "10.0.0.2",
            &["1.2.3.4, 198.51.100.1", "203.0.113.9, 10.0.0.1"],
        );
        assert_eq!(x.extract(&lines).unwrap(), key_of("203.0.113.9"));
        let trusted_last_line = req("10.0.0.2", &["198.51.100.1", "10.0.0.1"]);
        assert_eq!(
            x.extract(&trusted_last_line).unwrap(),
            key_of("198.51.100.1")
        );
    }

    #[test]
    fn when_every_entry_is_trusted_the_leftmost_is_the_key() {
        let x = behind(&["10.0.0.0/8"]);
        let internal = req("10.0.0.2", &["10.1.1.1, 10.2.2.2", "10.3.3.3"]);
        assert_eq!(x.extract(&internal).unwrap(), key_of("10.1.1.1"));
    }

    #[test]
    fn a_malformed_entry_the_walk_reaches_is_invalid() {
        let x = behind(&["10.0.0.0/8"]);
        for bad in [
            "unknown",
            "client.example",
            "1.2.3",
            "1.2.3.4:http",
            "[1.2.3.4]",
        ] {
            let err = x.extract(&req("10.0.0.2", &[bad])).unwrap_err();
            assert_eq!(err.kind(), KeyErrorKind::Invalid, "{bad}");
            assert!(err.to_string().contains("X-Forwarded-For"), "{err}");
        }
        let behind_trusted = req("10.0.0.2", &["unknown, 10.0.0.1"]);
        assert_eq!(
            x.extract(&behind_trusted).unwrap_err().kind(),
            KeyErrorKind::Invalid
        );
    }

    #[test]
    fn malformed_entries_left_of_the_client_are_never_read() {
        let x = behind(&["10.0.0.0/8"]);
        let r = req("10.0.0.2", &["garbage, unknown", "203.0.113.9"]);
        assert_eq!(x.extract(&r).unwrap(), key_of("203.0.113.9"));
    }

    #[test]
    fn entries_may_carry_ports_and_brackets() {
        let x = behind(&["10.0.0.0/8"]).ipv6_prefix(128);
        for (entry, client) in [
            ("203.0.113.9:51234", "203.0.113.9"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:51234", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("\t203.0.113.9 ", "203.0.113.9"),
        ] {
            let r = req("10.0.0.2", &[entry]);
            assert_eq!(x.extract(&r).unwrap(), key_of(client), "{entry}");
        }
    }

    #[test]
    fn empty_list_elements_are_skipped() {
        let x = behind(&["10.0.0.0/8"]);
        let r = req("10.0.0.2", &["203.0.113.9,, 10.0.0.1 ,"]);
        assert_eq!(x.extract(&r).unwrap(), key_of("203.0.113.9"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4_for_trust_and_keys() {
        let x = behind(&["10.0.0.0/8"]);
        let mapped_peer = req("::ffff:10.0.0.2", &["::ffff:203.0.113.9"]);
        let key = x.extract(&mapped_peer).unwrap();
        assert_eq!(key, key_of("203.0.113.9"));
        assert_eq!(key.len(), 4);
        let mapped_cidr = behind(&["::ffff:10.0.0.0/104"]);
        assert_eq!(
            mapped_cidr
                .extract(&req("10.0.0.2", &["203.0.113.9"]))
                .unwrap(),
            key_of("203.0.113.9")
        );
    }

    #[test]
    fn bare_addresses_are_single_host_proxies() {
        let x = behind(&["10.0.0.2", "::1"]);
        assert_eq!(
            x.extract(&req("10.0.0.2", &["203.0.113.9"])).unwrap(),
            key_of("203.0.113.9")
        );
        assert_eq!(
            x.extract(&req("10.0.0.3", &["203.0.113.9"])).unwrap(),
            key_of("10.0.0.3")
        );
        assert_eq!(
            x.extract(&req("::1", &["203.0.113.9"])).unwrap(),
            key_of("203.0.113.9")
        );
    }

    #[test]
    fn trusting_proxies_again_replaces_the_list() {
        let x = behind(&["10.0.0.0/8"])
            .trust_proxies(["192.168.0.0/16"])
            .unwrap();
        let r = req("10.0.0.2", &["203.0.113.9"]);
        assert_eq!(x.extract(&r).unwrap(), key_of("10.0.0.2"));
    }

    #[test]
    fn an_unparsable_proxy_is_refused_and_named() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0",
            "proxy.internal",
            "",
            "10.0.0.0/8/8",
        ] {
            let err = PeerIp::new().trust_proxies(["127.0.0.1", bad]).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid trusted proxy"),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(PeerIp::new().trust_proxies([" 10.0.0.0/8 "]).is_ok());
        let owned = vec![String::from("fd00::/8")];
        assert!(PeerIp::new().trust_proxies(&owned).is_ok());
    }

    #[test]
    fn default_prefixes_key_ipv4_exactly_as_from_ip() {
        let key = PeerIp::default().extract(&req("192.0.2.7", &[])).unwrap();
        assert_eq!(key, key_of("192.0.2.7"));
        assert_eq!(key.as_bytes(), [192, 0, 2, 7]);
    }

    #[test]
    fn two_addresses_in_one_ipv6_64_share_a_key_and_the_next_64_does_not() {
        let x = PeerIp::new();
        let a = x.extract(&req("2001:db8:0:1::1", &[])).unwrap();
        let b = x
            .extract(&req("2001:db8:0:1:ffff:ffff:ffff:ffff", &[]))
            .unwrap();
        let next = x.extract(&req("2001:db8:0:2::1", &[])).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, next);
        let mut expected = ip_bytes("2001:db8:0:1::").to_vec();
        expected.push(64);
        assert_eq!(a.as_bytes(), expected);
    }

    fn ip_bytes(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn an_ipv6_prefix_of_128_is_exactly_from_ip() {
        let x = PeerIp::new().ipv6_prefix(128);
        let key = x.extract(&req("2001:db8::1", &[])).unwrap();
        assert_eq!(key, key_of("2001:db8::1"));
        assert_eq!(key.len(), 16);
    }

    #[test]
    fn an_ipv4_prefix_groups_and_records_its_length() {
        let x = PeerIp::new().ipv4_prefix(24);
        let a = x.extract(&req("198.51.100.1", &[])).unwrap();
        let b = x.extract(&req("198.51.100.254", &[])).unwrap();
        let c = x.extract(&req("198.51.101.1", &[])).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_bytes(), [198, 51, 100, 0, 24]);
        let whole = PeerIp::new().extract(&req("198.51.100.0", &[])).unwrap();
        assert_ne!(a, whole, "a /24 is not the host .0");
    }

    #[test]
    fn different_prefix_lengths_make_different_keys() {
        let r = req("2001:db8::1", &[]);
        let by48 = PeerIp::new().ipv6_prefix(48).extract(&r).unwrap();
        let by64 = PeerIp::new().extract(&r).unwrap();
        assert_eq!(by48.as_bytes()[..16], by64.as_bytes()[..16]);
        assert_ne!(by48, by64);
    }

    #[test]
    fn prefix_lengths_are_clamped() {
        let v6 = req("2001:db8::1", &[]);
        let wide = PeerIp::new().ipv6_prefix(200);
        assert_eq!(wide.extract(&v6).unwrap(), key_of("2001:db8::1"));
        let v4 = req("192.0.2.7", &[]);
        assert_eq!(
            PeerIp::new().ipv4_prefix(40).extract(&v4).unwrap(),
            key_of("192.0.2.7")
        );
        let everyone = PeerIp::new().ipv4_prefix(0);
        assert_eq!(everyone.extract(&v4).unwrap().as_bytes(), [0, 0, 0, 0, 0]);
        let everyone6 = PeerIp::new().ipv6_prefix(0);
        assert_eq!(everyone6.extract(&v6).unwrap().as_bytes(), [0; 17]);
    }

    #[test]
    fn the_client_from_x_forwarded_for_is_grouped_too() {
        let x = behind(&["10.0.0.0/8"]);
        let a = x.extract(&req("10.0.0.2", &["2001:db8:0:1::1"])).unwrap();
        let b = x.extract(&req("10.0.0.2", &["2001:db8:0:1::2"])).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn clones_share_the_trusted_list() {
        let x = behind(&["10.0.0.0/8"]);
        let y = x.clone();
        assert!(Arc::ptr_eq(&x.trusted, &y.trusted));
        fn assert_bounds<T: Clone + fmt::Debug + Send + Sync + 'static>() {}
        assert_bounds::<PeerIp>();
        assert_bounds::<PeerAddr>();
        fn assert_error<E: StdError + Send + Sync + Clone + 'static>() {}
        assert_error::<ProxyConfigError>();
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_connect_info_is_a_peer_address() {
        use axum::extract::ConnectInfo;

        let addr = SocketAddr::new(ip("192.0.2.7"), 40000);
        let mut r = Request::new(());
        r.extensions_mut().insert(ConnectInfo(addr));
        assert_eq!(PeerIp::new().extract(&r).unwrap(), key_of("192.0.2.7"));
        r.extensions_mut().insert(peer("198.51.100.1"));
        assert_eq!(
            PeerIp::new().extract(&r).unwrap(),
            key_of("198.51.100.1"),
            "PeerAddr wins"
        );
    }

    fn xff_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string().into_bytes()),
            any::<Ipv6Addr>().prop_map(|ip| ip.to_string().into_bytes()),
            any::<Ipv6Addr>().prop_map(|ip| format!("[{ip}]:80").into_bytes()),
            Just(b"10.1.2.3".to_vec()),
            Just(b",".to_vec()),
            Just(b" ".to_vec()),
            proptest::collection::vec(
                prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff],
                0..20,
            ),
        ];
        proptest::collection::vec(piece, 0..6)
            .prop_map(|pieces| pieces.join(&b','))
            .boxed()
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<std::net::Ipv4Addr>().prop_map(IpAddr::V4),
            any::<Ipv6Addr>().prop_map(IpAddr::V6),
            Just(ip("10.0.0.2")),
            Just(ip("::ffff:10.0.0.2")),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_x_forwarded_for_never_panics(
            lines in proptest::collection::vec(xff_bytes(), 0..4),
            from in any_ip(),
            v4 in 0u8..=40,
            v6 in 0u8..=140,
        ) {
            let x = behind(&["10.0.0.0/8", "::/0"]).ipv4_prefix(v4).ipv6_prefix(v6);
            let mut r = Request::new(());
            r.extensions_mut().insert(PeerAddr(SocketAddr::new(from, 1)));
            for line in &lines {
                r.headers_mut()
                    .append(X_FORWARDED_FOR, HeaderValue::from_bytes(line).unwrap());
            }
            match x.extract(&r) {
                Ok(key) => prop_assert!([4, 5, 16, 17].contains(&key.len())),
                Err(err) => prop_assert_eq!(err.kind(), KeyErrorKind::Invalid),
            }
        }

        #[test]
        fn whatever_a_client_forwards_the_proxy_appended_address_is_the_key(
            claimed in xff_bytes(),
            client in any::<std::net::Ipv4Addr>(),
            new_line in any::<bool>(),
        ) {
            let client = IpAddr::V4(client);
            let x = behind(&["10.0.0.0/8"]);
            prop_assume!(!x.is_trusted(client));
            let mut r = Request::new(());
            r.extensions_mut().insert(peer("10.0.0.2"));
            let appended = if new_line {
                r.headers_mut()
                    .append(X_FORWARDED_FOR, HeaderValue::from_bytes(&claimed).unwrap());
                client.to_string().into_bytes()
            } else {
                let mut line = claimed;
                line.extend_from_slice(format!(", {client}").as_bytes());
                line
            };
            r.headers_mut()
                .append(X_FORWARDED_FOR, HeaderValue::from_bytes(&appended).unwrap());
            let mut direct = Request::new(());
            direct.extensions_mut().insert(PeerAddr(SocketAddr::new(client, 1)));
            prop_assert_eq!(x.extract(&r).unwrap(), x.extract(&direct).unwrap());
        }

        #[test]
        fn an_untrusted_peer_is_the_key_whatever_the_header_says(
            line in xff_bytes(),
            from in any_ip(),
        ) {
            let x = behind(&["10.0.0.0/8"]).ipv6_prefix(128);
            prop_assume!(!x.is_trusted(from.to_canonical()));
            let mut r = Request::new(());
            r.extensions_mut().insert(PeerAddr(SocketAddr::new(from, 1)));
            r.headers_mut()
                .append(X_FORWARDED_FOR, HeaderValue::from_bytes(&line).unwrap());
            prop_assert_eq!(x.extract(&r).unwrap(), Key::from_ip(from));
        }
    }
}
