//! The `RateLimit-Policy` and `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-10,
//! and the de-facto `X-RateLimit-*` trio, written with `sfv`.
//!
//! - Each quota of a key's set is one policy, named `"{limit}-per-{w}s"` (with `-{i}`
//!   appended if two quotas of the set share that name), with `q` its limit and `w` its
//!   window in whole seconds rounded up.
//! - `RateLimit` lists each policy with `r` the units remaining after this request and
//!   `t` the seconds, rounded up, until more is available (when `r` is 0: until the
//!   request would be admitted, never earlier than `Retry-After`) or until the window
//!   has fully refilled (when `r` > 0).
//! - `X-RateLimit-Limit/Remaining/Reset` describe the most constrained policy (least
//!   remaining), `Reset` as delta seconds (not an epoch).

use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use sfv::{Integer, KeyRef, ListSerializer, StringRef};

use super::Quota;
use crate::store::{QuotaSet, QuotaUsage};

/// `RateLimit-Policy`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up.
fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn integer(n: u64) -> Integer {
    // sfv integers hold 15 decimal digits; every value here is far below.
    Integer::try_from(n.min(999_999_999_999_999)).unwrap_or(Integer::constant(0))
}

/// What a set's fields take from the set alone: the policy names and the whole
/// `RateLimit-Policy` value. Made once per set (see [`QuotaSet::policy_fields`]), not
/// on every response.
#[derive(Debug)]
pub(crate) struct PolicyFields {
    names: Box<[String]>,
    policy: Option<HeaderValue>,
}

impl PolicyFields {
    pub(crate) fn new(quotas: &[Quota]) -> Self {
        let names = policy_names(quotas);
        let policy = policy(quotas, &names);
        PolicyFields {
            names: names.into(),
            policy,
        }
    }
}

fn policy_names(quotas: &[Quota]) -> Vec<String> {
    let mut names: Vec<String> = quotas
        .iter()
        .map(|q| format!("{}-per-{}s", q.limit(), secs_up(q.window())))
        .collect();
    for i in 0..names.len() {
        if names[..i].contains(&names[i]) || names[i + 1..].contains(&names[i]) {
            names[i] = format!("{}-{i}", names[i]);
        }
    }
    names
}

fn value(text: String) -> Option<HeaderValue> {
    HeaderValue::try_from(text).ok()
}

/// The `RateLimit-Policy` field of a quota set whose policies are named `names`.
fn policy(quotas: &[Quota], names: &[String]) -> Option<HeaderValue> {
    let mut list = ListSerializer::new();
    for (name, quota) in names.iter().zip(quotas) {
        let _ = list
            .bare_item(StringRef::from_str(name).ok()?)
            .parameter(KeyRef::constant("q"), integer(u64::from(quota.limit())))
            .parameter(KeyRef::constant("w"), integer(secs_up(quota.window())));
    }
    value(list.finish()?)
}

/// The `RateLimit` field for the usage of the quotas at the given indices.
pub(crate) fn state(quotas: &QuotaSet, usage: &[(usize, QuotaUsage)]) -> Option<HeaderValue> {
    let names = &quotas.policy_fields().names;
    let mut list = ListSerializer::new();
    for (index, usage) in usage {
        let _ = list
            .bare_item(StringRef::from_str(names.get(*index)?).ok()?)
            .parameter(KeyRef::constant("r"), integer(u64::from(usage.remaining)))
            .parameter(KeyRef::constant("t"), integer(secs_up(usage.reset_after)));
    }
    value(list.finish()?)
}

/// Sets the fields on `headers`: `RateLimit-Policy` for the whole set, `RateLimit` for
/// the quotas in `usage`, and with `x` the `X-RateLimit-*` trio of the most
/// constrained of those.
pub(crate) fn insert(
    headers: &mut HeaderMap,
    quotas: &QuotaSet,
    usage: &[(usize, QuotaUsage)],
    x: bool,
) {
    if let Some(v) = &quotas.policy_fields().policy {
        headers.insert(RATELIMIT_POLICY.clone(), v.clone());
    }
    if let Some(v) = state(quotas, usage) {
        headers.insert(RATELIMIT.clone(), v);
    }
    if x {
        let tightest = usage
            .iter()
            .min_by_key(|(_, u)| (u.remaining, std::cmp::Reverse(u.reset_after)));
        if let Some((index, usage)) = tightest {
            if let Some(quota) = quotas.get(*index) {
                headers.insert(X_LIMIT.clone(), HeaderValue::from(quota.limit()));
                headers.insert(X_REMAINING.clone(), HeaderValue::from(usage.remaining));
                headers.insert(
                    X_RESET.clone(),
                    HeaderValue::from(secs_up(usage.reset_after)),
                );
            }
        }
    }
}
