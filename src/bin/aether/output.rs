//! What the commands return (a verdict or a typed error) and small formatting helpers.

use std::time::SystemTime;

use aether::broker::{BrokerError, NatsConnectError};
use aether::codec::InvalidName;

/// How a command ended when it could look at everything it was asked to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing damaged was found (exit 0).
    Clean,
    /// Damage was found and reported (exit 1).
    Damaged,
}

impl Verdict {
    /// `Damaged` when `damaged`, else `Clean`.
    pub fn from_damage(damaged: bool) -> Self {
        if damaged {
            Verdict::Damaged
        } else {
            Verdict::Clean
        }
    }
}

/// Why a command could not do its job (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Flags or arguments that do not make sense.
    #[error("{0}")]
    Usage(String),
    /// The process could not set itself up.
    #[error("{0}")]
    Setup(String),
    /// No connection to NATS.
    #[error(transparent)]
    Connect(#[from] NatsConnectError),
    /// A namespace or actor id the library refuses.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The namespace's events stream does not exist.
    #[error("namespace {0:?} does not exist on this server (no stream AETHER_EV_{0})")]
    NoNamespace(String),
    /// The cluster's buckets do not exist.
    #[error("no cluster named {name:?} on this server ({reason})")]
    NoCluster {
        /// The cluster name.
        name: String,
        /// What was missing.
        reason: String,
    },
    /// A store read failed.
    #[error("{context}: {source}")]
    Store {
        /// What was being done.
        context: String,
        /// The failure.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The broker failed.
    #[error("{context}: {source}")]
    Broker {
        /// What was being done.
        context: String,
        /// The failure.
        source: BrokerError,
    },
}

impl CliError {
    /// A broker failure while doing `context`.
    pub fn broker(context: impl Into<String>) -> impl FnOnce(BrokerError) -> CliError {
        let context = context.into();
        move |source| CliError::Broker { context, source }
    }
}

impl CliError {
    /// A store failure while doing `context`.
    pub fn store<E: std::error::Error + Send + Sync + 'static>(
        context: impl Into<String>,
    ) -> impl FnOnce(E) -> CliError {
        let context = context.into();
        move |source| CliError::Store {
            context,
            source: Box::new(source),
        }
    }
}

/// `t` as RFC 3339 UTC with milliseconds (`2025-01-01T00:00:00.000Z`); times before 1970 are
/// shown as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// At most `max` characters of `text`, with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A printable preview of raw record bytes: the text if it is UTF-8, else hex.
pub fn preview(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) => clip(text, 80),
        Err(_) => {
            let hex: String = raw.iter().take(40).map(|b| format!("{b:02x}")).collect();
            if raw.len() > 40 {
                format!("0x{hex}…")
            } else {
                format!("0x{hex}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_735_689_600_123);
        assert_eq!(rfc3339(t), "2025-01-01T00:00:00.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661);
        assert_eq!(rfc3339(leap), "2000-02-29T01:01:01.000Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn previews_are_short_and_printable() {
        assert_eq!(preview(b"garbage"), "garbage");
        assert_eq!(preview(&[0xff, 0x00]), "0xff00");
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}
