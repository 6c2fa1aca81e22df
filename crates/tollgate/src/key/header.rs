//! Placeholder: replaced by the full implementation.
use super::{Key, KeyError, KeyExtractor};
use http::{HeaderName, Request};

/// A header's value as the key.
#[derive(Clone, Debug)]
pub struct Header(HeaderName);

impl Header {
    /// The value of header `name`.
    pub fn new(name: &'static str) -> Self {
        Header(HeaderName::from_static(name))
    }
}

impl<B> KeyExtractor<Request<B>> for Header {
    fn extract(&self, req: &Request<B>) -> Result<Key, KeyError> {
        let v = req.headers().get(&self.0).ok_or(KeyError::missing("header"))?;
        Key::new(v.as_bytes())
    }
}
