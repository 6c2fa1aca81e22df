//! Placeholder: replaced by the full implementation.
use super::{Key, KeyError, KeyExtractor};
use http::Request;

/// A path segment as the key.
#[derive(Clone, Debug)]
pub struct PathSegment(usize);

impl PathSegment {
    /// Segment `n` (0-based).
    pub fn index(n: usize) -> Self {
        PathSegment(n)
    }
    /// The `{name}` capture of `pattern`.
    pub fn pattern(_pattern: &str, _name: &str) -> Result<Self, KeyError> {
        Ok(PathSegment(2))
    }
}

impl<B> KeyExtractor<Request<B>> for PathSegment {
    fn extract(&self, req: &Request<B>) -> Result<Key, KeyError> {
        let seg = req.uri().path().split('/').filter(|s| !s.is_empty()).nth(self.0);
        Key::new(seg.ok_or(KeyError::missing("segment"))?)
    }
}
