//! Graph's JSON bodies, built with `serde_json::Value` (no derive).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The quota 429 body, as Graph sends it.
pub(crate) fn too_many_requests(request_id: &str, client_request_id: &str) -> Value {
    json!({
        "error": {
            "code": "TooManyRequests",
            "message": "Please retry again later.",
            "innerError": {
                "date": utc_now(),
                "request-id": request_id,
                "client-request-id": client_request_id,
            }
        }
    })
}

/// The MailboxConcurrency 429 body, as seen in the wild.
pub(crate) fn application_throttled() -> Value {
    json!({
        "error": {
            "code": "ApplicationThrottled",
            "message": "Application is over its MailboxConcurrency limit."
        }
    })
}

/// A Graph error envelope for the other failures.
pub(crate) fn error(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

/// The current UTC time as Graph writes `innerError.date`: `2026-11-22T07:21:00`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_formatted_like_graph_inner_errors() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(format_utc(1_797_924_061), "2026-12-22T07:21:01");
    }
}
