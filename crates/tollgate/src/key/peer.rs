//! Placeholder: replaced by the full implementation.
use super::{Key, KeyError, KeyExtractor};
use http::Request;
use std::net::SocketAddr;

/// The peer address, as a request extension.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The client IP as the key.
#[derive(Clone, Debug, Default)]
pub struct PeerIp(());

impl PeerIp {
    /// The extractor.
    pub fn new() -> Self {
        PeerIp(())
    }
}

impl<B> KeyExtractor<Request<B>> for PeerIp {
    fn extract(&self, req: &Request<B>) -> Result<Key, KeyError> {
        let p = req.extensions().get::<PeerAddr>().ok_or(KeyError::missing("peer"))?;
        Ok(Key::from_ip(p.0.ip()))
    }
}
