//! How items look on stdout: payloads as text for people and pipes, and as JSON objects for
//! scripts (UTF-8 as a string, anything else in base64, so no byte is ever lost).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use serde_json::{json, Value};
use taskmill::Task;
use taskmill_cli::tell;

/// A payload as text: itself when it is UTF-8. Otherwise the bytes that are not become U+FFFD,
/// and a warning (once per run) points to `--json`, which keeps them.
pub fn text(payload: &[u8]) -> Cow<'_, str> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let text = String::from_utf8_lossy(payload);
    if matches!(text, Cow::Owned(_)) && !WARNED.swap(true, Ordering::Relaxed) {
        tell(
            "taskmill: a payload is not UTF-8 text: printed with U+FFFD for the bytes that are \
             not (--json gives them exactly, in base64)",
        );
    }
    text
}

/// `n` and `noun`, made plural unless `n` is 1 ("1 item", "2 items").
pub fn count(n: u64, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// `text`, with backslashes, tabs and line breaks escaped, for columns that must stay on one
/// line (a dead letter's reason may be the tail of a program's stderr).
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.contains(['\\', '\t', '\n', '\r']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The `payload` and `encoding` fields of a JSON object: the payload as a string and
/// `"utf-8"` when it is UTF-8, else its standard base64 and `"base64"`.
pub fn payload_fields(payload: &[u8]) -> (Value, &'static str) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Value::from(text), "utf-8"),
        Err(_) => (
            Value::from(base64::engine::general_purpose::STANDARD.encode(payload)),
            "base64",
        ),
    }
}

/// An item as one JSON object: id, attempt (the delivery this is, or would be), reply queue
/// (`null` without one), payload and its encoding.
pub fn task_json(task: &Task) -> Value {
    let (payload, encoding) = payload_fields(&task.payload);
    json!({
        "id": task.id,
        "attempt": task.attempt,
        "reply_to": task.reply_queue(),
        "payload": payload,
        "encoding": encoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_payloads_are_strings_and_others_base64() {
        let task = Task::new(7, 2, "héllo".into());
        let json = task_json(&task);
        assert_eq!(json["payload"], "héllo");
        assert_eq!(json["encoding"], "utf-8");
        assert_eq!(json["reply_to"], Value::Null);
        assert_eq!(json["attempt"], 2);
        let (payload, encoding) = payload_fields(&[0xff, 0x00, 0x41]);
        assert_eq!((payload.as_str(), encoding), (Some("/wBB"), "base64"));
        assert_eq!(text(b"plain"), "plain");
        assert_eq!(text(&[b'a', 0xff]), "a\u{fffd}");
    }

    #[test]
    fn one_line_escapes_only_what_breaks_a_line() {
        assert_eq!(one_line("exit 3: boom"), "exit 3: boom");
        assert_eq!(one_line("a\tb\nc\\d\r"), "a\\tb\\nc\\\\d\\r");
        assert_eq!(count(1, "item"), "1 item");
        assert_eq!(count(0, "dead letter"), "0 dead letters");
    }
}
