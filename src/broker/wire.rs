//! NATS's wire rules that every broker applies the same way: message sizes as the server counts
//! them, the header names reserved for the server, and the server's defaults aether relies on.
//! The memory broker (the model) and the NATS broker both take them from here.

use std::time::Duration;

use bytes::Bytes;

use super::error::BrokerError;
use super::message::{AppendOptions, Headers};

/// The largest message a NATS server accepts by default (`max_payload`), headers included.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// JetStream's default duplicate window.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The prefix of header names the server owns (`Nats-Msg-Id`, `Nats-Expected-…`, and the ones
/// it adds to stored messages).
pub const RESERVED_HEADER_PREFIX: &str = "Nats-";

/// Size of a message on the wire as NATS counts it against `max_payload`: the payload plus the
/// header block (`NATS/1.0\r\n`, one `Name: value\r\n` per header, `\r\n`), including the
/// `Nats-Msg-Id` and `Nats-Expected-Last-Subject-Sequence` headers an append's options add.
pub fn wire_size(headers: &Headers, payload: &Bytes, options: &AppendOptions) -> usize {
    let mut fields: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut count = headers.len();
    if let Some(id) = &options.message_id {
        fields += "Nats-Msg-Id".len() + id.len() + 4;
        count += 1;
    }
    if let Some(expected) = options.expected_last_subject_sequence {
        fields += "Nats-Expected-Last-Subject-Sequence".len() + expected.to_string().len() + 4;
        count += 1;
    }
    let headers_len = if count == 0 { 0 } else { 12 + fields };
    headers_len + payload.len()
}

/// The size of a core message (no append options).
pub fn message_size(headers: &Headers, payload: &Bytes) -> usize {
    wire_size(headers, payload, &AppendOptions::default())
}

/// Whether a header name belongs to the server (`Nats-*`, any case).
pub fn is_reserved_header(name: &str) -> bool {
    let prefix = RESERVED_HEADER_PREFIX.len();
    name.len() >= prefix && name[..prefix].eq_ignore_ascii_case(RESERVED_HEADER_PREFIX)
}

/// Headers named `Nats-*` are reserved: on NATS they steer JetStream (dedupe, expectations) and
/// the server adds its own when messages are read back, so user headers may not use the prefix.
///
/// # Errors
/// `InvalidArgument` naming the first reserved header.
pub fn check_user_headers(headers: &Headers) -> Result<(), BrokerError> {
    match headers.keys().find(|k| is_reserved_header(k)) {
        Some(k) => Err(BrokerError::invalid(format!(
            "header {k:?} is reserved: Nats-* headers are set by the broker from AppendOptions"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_are_recognised_case_insensitively() {
        assert!(is_reserved_header("Nats-Msg-Id"));
        assert!(is_reserved_header("nats-expected-stream"));
        assert!(!is_reserved_header("Aether-Commit-Id"));
        assert!(!is_reserved_header("Nat"));
    }

    #[test]
    fn sizes_count_the_header_block_and_the_options() {
        let payload = Bytes::from_static(b"12345");
        assert_eq!(message_size(&Headers::new(), &payload), 5);
        let mut headers = Headers::new();
        headers.insert("A".into(), "b".into());
        // "NATS/1.0\r\n" + "A: b\r\n" + "\r\n" = 10 + 6 + 2.
        assert_eq!(message_size(&headers, &payload), 12 + 6 + 5);
        let options = AppendOptions {
            expected_last_subject_sequence: Some(42),
            message_id: Some("id".into()),
        };
        assert_eq!(
            wire_size(&headers, &payload, &options),
            12 + 6
                + ("Nats-Msg-Id".len() + 2 + 4)
                + ("Nats-Expected-Last-Subject-Sequence".len() + 2 + 4)
                + 5
        );
    }
}
