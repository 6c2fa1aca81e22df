//! The Bot API's JSON bodies, built with `serde_json::Value` (no derive).

use serde_json::{Value, json};

/// The `429` body, as the Bot API server writes it.
pub(crate) fn too_many_requests(retry_after: u64) -> Value {
    json!({
        "ok": false,
        "error_code": 429,
        "description": format!("Too Many Requests: retry after {retry_after}"),
        "parameters": { "retry_after": retry_after },
    })
}

/// Any other error: `{"ok":false,"error_code":N,"description":"..."}`.
pub(crate) fn error(code: u16, description: &str) -> Value {
    json!({ "ok": false, "error_code": code, "description": description })
}

/// A successful `sendMessage`: the sent message.
pub(crate) fn sent(message_id: u64, date: u64, chat: &Value, chat_type: &str, text: &str) -> Value {
    json!({
        "ok": true,
        "result": {
            "message_id": message_id,
            "date": date,
            "chat": { "id": chat, "type": chat_type },
            "text": text,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_429_body_is_exactly_the_bot_api_one() {
        assert_eq!(
            too_many_requests(7).to_string(),
            r#"{"description":"Too Many Requests: retry after 7","error_code":429,"ok":false,"parameters":{"retry_after":7}}"#
        );
    }
}
