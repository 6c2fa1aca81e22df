//! Google's JSON bodies, built with `serde_json::Value` (no derive).

use std::time::Duration;

use serde_json::{Value, json};

/// The `429` body, with `google.rpc.RetryInfo` carrying `wait`.
pub(crate) fn resource_exhausted(wait: Duration) -> Value {
    json!({
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": retry_delay(wait),
            }],
        }
    })
}

/// Any other error in Google's envelope.
pub(crate) fn error(code: u16, status: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message, "status": status } })
}

/// `wait` rounded up to the millisecond, as a proto3 JSON duration: `"31s"` for whole
/// seconds, otherwise three fractional digits (`"0.500s"`).
pub(crate) fn retry_delay(wait: Duration) -> String {
    let millis = wait.as_nanos().div_ceil(1_000_000);
    let (secs, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        format!("{secs}s")
    } else {
        format!("{secs}.{frac:03}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_are_proto_durations_rounded_up_to_the_millisecond() {
        let ms = Duration::from_millis;
        assert_eq!(retry_delay(Duration::from_secs(31)), "31s");
        assert_eq!(retry_delay(ms(500)), "0.500s");
        assert_eq!(retry_delay(ms(12_345)), "12.345s");
        assert_eq!(retry_delay(Duration::from_nanos(1)), "0.001s");
        assert_eq!(retry_delay(Duration::from_nanos(999_000_001)), "1s");
        assert_eq!(retry_delay(ms(1000) + Duration::from_nanos(1)), "1.001s");
    }

    #[test]
    fn the_429_body_is_the_google_envelope_with_retry_info() {
        assert_eq!(
            resource_exhausted(Duration::from_secs(2)),
            json!({"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2s"}]}})
        );
    }
}
