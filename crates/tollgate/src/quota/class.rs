//! What quota class a request belongs to and what it costs.

use http::{Method, Request};

/// A request's quota class and cost.
///
/// The class selects the quotas (Google Chat counts reads and writes of a space apart);
/// requests of different classes of one key have separate state. The cost is how many
/// quota units the request takes (a Graph `$batch` of 20 sub-requests costs 20).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Classified {
    /// The class; `""` is the default class.
    pub class: &'static str,
    /// Quota units the request costs.
    pub cost: u32,
}

impl Classified {
    /// The default class, cost 1.
    pub const DEFAULT: Classified = Classified { class: "", cost: 1 };

    /// A request of `class` costing `cost`.
    pub fn new(class: &'static str, cost: u32) -> Self {
        Classified { class, cost }
    }
}

/// A request extension that sets the request's cost, read by the built-in
/// classifiers (`()` and [`ReadWrite`]).
///
/// ```
/// # use tollgate::quota::Cost;
/// let mut batch = http::Request::post("/v1.0/$batch").body(()).unwrap();
/// batch.extensions_mut().insert(Cost(20)); // 20 sub-requests
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cost(pub u32);

fn cost_of<B>(request: &Request<B>) -> u32 {
    request.extensions().get::<Cost>().map_or(1, |c| c.0)
}

/// Gives a request its quota class and cost.
///
/// Implemented by `()` (the default: one class, cost from the [`Cost`] extension or 1),
/// by [`ReadWrite`], and by closures `Fn(&R) -> Classified`.
pub trait Classify<R> {
    /// The request's class and cost.
    fn classify(&self, request: &R) -> Classified;
}

impl<B> Classify<Request<B>> for () {
    fn classify(&self, request: &Request<B>) -> Classified {
        Classified::new("", cost_of(request))
    }
}

impl<R, F> Classify<R> for F
where
    F: Fn(&R) -> Classified,
{
    fn classify(&self, request: &R) -> Classified {
        self(request)
    }
}

/// Reads and writes as two classes: `GET`, `HEAD` and `OPTIONS` are `"read"`, every
/// other method `"write"`. The cost comes from the [`Cost`] extension, or is 1.
///
/// ```
/// # use tollgate::quota::{Classify, ReadWrite};
/// let get = http::Request::get("/spaces/AAA/messages").body(()).unwrap();
/// let post = http::Request::post("/spaces/AAA/messages").body(()).unwrap();
/// assert_eq!(ReadWrite.classify(&get).class, "read");
/// assert_eq!(ReadWrite.classify(&post).class, "write");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadWrite;

impl<B> Classify<Request<B>> for ReadWrite {
    fn classify(&self, request: &Request<B>) -> Classified {
        let class = match *request.method() {
            Method::GET | Method::HEAD | Method::OPTIONS => "read",
            _ => "write",
        };
        Classified::new(class, cost_of(request))
    }
}
