//! Placeholder: replaced by the full implementation.
use super::{Key, KeyError, KeyExtractor};
use http::Request;

/// The URI host as the key.
#[derive(Clone, Debug, Default)]
pub struct Host(());

impl Host {
    /// The host extractor.
    pub fn new() -> Self {
        Host(())
    }
}

impl<B> KeyExtractor<Request<B>> for Host {
    fn extract(&self, req: &Request<B>) -> Result<Key, KeyError> {
        Key::new(req.uri().host().ok_or(KeyError::missing("host"))?)
    }
}
