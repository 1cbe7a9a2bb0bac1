//! Permission violations: the server's refusals of a publish or a subscription, turned into
//! [`BrokerError::PermissionDenied`] for the operation that needed the subject.
//!
//! A NATS server does not answer a refused publish or subscription: it drops it and sends the
//! connection an asynchronous `-ERR 'Permissions Violation for Publish to "<subject>"'` (or
//! `… for Subscription to "<subject>"`), which async-nats hands to the connection's event
//! callback. Left alone, a refused JetStream API call or request would end in a timeout after
//! `request_timeout`, indistinguishable from a slow server. So the broker:
//!
//! - listens to the connection's events and broadcasts every violation ([`Violations`]);
//! - races each operation against the violations that name a subject the operation uses
//!   ([`Concern`]): the first such violation fails the operation at once, with the subject;
//! - confirms a subscription by round trips to the server: the server handles a connection's
//!   messages in order, so a refusal of the subscription reaches the client before the answer
//!   to a request sent after it ([`CONFIRM_ROUND_TRIPS`]);
//! - remembers refused publish subjects (bounded, forgotten on reconnect, when new credentials
//!   may apply): a core publish is fire-and-forget, so the first one to a refused subject returns
//!   before the refusal arrives, and the next ones are refused at once, unsent;
//! - remembers a refused subscription to its own inbox: every reply would be lost, so each later
//!   request fails at once instead of timing out.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_nats::{Event, ServerError};
use tokio::sync::broadcast;

use crate::broker::{BrokerError, PermissionAction};

/// How many violations can wait for operations to look at them before the oldest are dropped.
const VIOLATION_QUEUE_MAX: usize = 256;

/// How many refused publish subjects are remembered; past it the set starts afresh.
pub(super) const DENIED_SUBJECTS_MAX: usize = 1024;

/// How many round trips confirm a subscription. The refusal of a subscription arrives before
/// the answer to the first, but it reaches the broker through the connection's event task,
/// which runs apart from the task that routes answers and can stay queued for milliseconds
/// while this task and the connection task wake each other (seen: 6 of 300 refusals missed
/// after one round trip and a few yields). Each round trip that finds nothing is followed by a
/// pause of [`CONFIRM_PAUSE`]; with two, no refusal was missed in 900 tries.
pub(super) const CONFIRM_ROUND_TRIPS: usize = 2;

/// How long a subscription's confirmation steps aside after a round trip that found no
/// refusal, so that the event task reports one that is queued.
const CONFIRM_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// One refusal the server reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Violation {
    pub(super) action: PermissionAction,
    pub(super) subject: String,
}

/// Parses the text of a server `-ERR` into a violation, if it is one.
///
/// The server's forms (nats-server 2.15, `server/client.go`): `Permissions Violation for
/// Publish to "<s>"`, `… for Subscription to "<s>"`, optionally followed by ` using queue "<q>"`,
/// `, too many tokens` or ` (sid "<n>")`; and `… for Publish with Reply of "<s>"`.
pub(super) fn parse(text: &str) -> Option<Violation> {
    let rest = text.trim().strip_prefix("Permissions Violation for ")?;
    let (action, rest) = if let Some(rest) = rest.strip_prefix("Publish with Reply of ") {
        (PermissionAction::Publish, rest)
    } else if let Some(rest) = rest.strip_prefix("Publish to ") {
        (PermissionAction::Publish, rest)
    } else if let Some(rest) = rest.strip_prefix("Subscription to ") {
        (PermissionAction::Subscribe, rest)
    } else {
        return None;
    };
    // Subjects never contain a quote or whitespace: the subject is the first quoted word.
    let subject = rest.strip_prefix('"')?.split('"').next()?;
    (!subject.is_empty()).then(|| Violation {
        action,
        subject: subject.to_owned(),
    })
}

/// The violations of one connection, shared by the broker's clones.
#[derive(Clone)]
pub(super) struct Violations {
    inner: Arc<Inner>,
}

struct Inner {
    sender: broadcast::Sender<Violation>,
    /// The connection's inbox prefix.
    inbox_prefix: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Publish subjects refused since the connection (re)connected.
    denied_publish: BTreeSet<String>,
    /// A refused subscription to the connection's own inbox, if any since it (re)connected.
    denied_inbox: Option<Violation>,
}

impl Violations {
    /// Violations of a connection whose inboxes start with `inbox_prefix`.
    pub(super) fn new(inbox_prefix: &str) -> Self {
        let (sender, _) = broadcast::channel(VIOLATION_QUEUE_MAX);
        Self {
            inner: Arc::new(Inner {
                sender,
                inbox_prefix: inbox_prefix.to_owned(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in one connection event (the async-nats event callback calls this).
    pub(super) fn on_event(&self, event: &Event) {
        match event {
            Event::ServerError(ServerError::Other(text)) => {
                let Some(violation) = parse(text) else { return };
                tracing::warn!(
                    action = %violation.action,
                    subject = %violation.subject,
                    "the NATS server refused a subject: permissions violation"
                );
                {
                    let mut state = self.state();
                    match violation.action {
                        PermissionAction::Publish => {
                            if state.denied_publish.len() >= DENIED_SUBJECTS_MAX {
                                state.denied_publish.clear();
                            }
                            state.denied_publish.insert(violation.subject.clone());
                        }
                        PermissionAction::Subscribe => {
                            if is_under(&violation.subject, &self.inner.inbox_prefix) {
                                state.denied_inbox = Some(violation.clone());
                            }
                        }
                    }
                }
                let _ = self.inner.sender.send(violation);
            }
            // New connection, possibly new credentials: what was refused may be allowed now.
            Event::Connected => *self.state() = State::default(),
            _ => {}
        }
    }

    /// Whether a publish to `subject` was refused before on this connection.
    pub(super) fn publish_denied(&self, subject: &str) -> bool {
        self.state().denied_publish.contains(subject)
    }

    /// The refused subscription to the connection's own inbox, if any.
    pub(super) fn denied_inbox(&self) -> Option<Violation> {
        self.state().denied_inbox.clone()
    }

    /// A receiver of the violations reported from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Violation> {
        self.inner.sender.subscribe()
    }

    /// Runs `run`, failing it as soon as the server refuses a subject it uses. The operation
    /// comes boxed: held inline, it would double the size of every broker future (they live on
    /// the caller's stack until spawned).
    pub(super) async fn guard<T>(
        &self,
        concern: Concern<'_>,
        operation: &(dyn fmt::Display + Sync),
        mut run: Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + '_>>,
    ) -> Result<T, BrokerError> {
        if concern.replies
            && let Some(violation) = self.denied_inbox()
        {
            return Err(denied(violation, operation));
        }
        let mut violations = self.subscribe();
        loop {
            tokio::select! {
                biased;
                result = &mut run => return result,
                violation = violations.recv() => match violation {
                    Ok(violation) if concern.matches(&violation) => {
                        return Err(denied(violation, operation));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    // The connection is gone; the operation ends on its own.
                    Err(broadcast::error::RecvError::Closed) => return run.await,
                },
            }
        }
    }

    /// After a subscription to `pattern` and a round trip to the server that followed it,
    /// whether the server refused the subscription (as far as reported yet). `violations` must
    /// have been taken before the subscription was sent.
    pub(super) async fn refused_subscription(
        &self,
        violations: &mut broadcast::Receiver<Violation>,
        pattern: &str,
    ) -> Option<Violation> {
        let mut seen = || loop {
            match violations.try_recv() {
                Ok(v) if v.action == PermissionAction::Subscribe && v.subject == pattern => {
                    return Some(v);
                }
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        };
        if let Some(v) = seen() {
            return Some(v);
        }
        // Step aside: with this task and the connection task waking each other, the scheduler
        // can leave the event task queued for milliseconds; a short sleep lets it run.
        crate::rt::sleep(CONFIRM_PAUSE).await;
        seen()
    }
}

/// The error for `violation` refusing `operation`.
pub(super) fn denied(violation: Violation, operation: &(dyn fmt::Display + Sync)) -> BrokerError {
    BrokerError::PermissionDenied {
        action: violation.action,
        subject: violation.subject,
        operation: operation.to_string(),
    }
}

/// Whether `subject` is `prefix` or lies under it (`prefix.…`).
fn is_under(subject: &str, prefix: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The subjects an operation uses, to tell which refusals are its own.
#[derive(Debug, Default)]
pub(super) struct Concern<'a> {
    /// The JetStream API prefix (`$JS.API`).
    pub(super) api_prefix: &'a str,
    /// The connection's inbox prefix: a refused subscription under it loses every reply.
    pub(super) inbox_prefix: &'a str,
    /// The operation waits for replies in the inbox.
    pub(super) replies: bool,
    /// Subjects it publishes to.
    pub(super) publishes: Vec<String>,
    /// Streams whose JetStream API subjects it uses (info, create, direct and message gets,
    /// consumers).
    pub(super) streams: Vec<String>,
    /// It may ask for the account's JetStream info (`$JS.API.INFO`).
    pub(super) account_info: bool,
    /// It may look streams up by subject (`$JS.API.STREAM.NAMES`).
    pub(super) stream_names: bool,
}

/// The JetStream API verbs aether uses that name a stream right after them.
const STREAM_VERBS: [&str; 8] = [
    "STREAM.INFO.",
    "STREAM.CREATE.",
    "STREAM.MSG.GET.",
    "DIRECT.GET.",
    "CONSUMER.CREATE.",
    "CONSUMER.MSG.NEXT.",
    "CONSUMER.DELETE.",
    "CONSUMER.INFO.",
];

impl Concern<'_> {
    fn matches(&self, violation: &Violation) -> bool {
        let subject = violation.subject.as_str();
        match violation.action {
            PermissionAction::Subscribe => self.replies && is_under(subject, self.inbox_prefix),
            PermissionAction::Publish => {
                if self.publishes.iter().any(|p| p == subject) {
                    return true;
                }
                let Some(api) = subject
                    .strip_prefix(self.api_prefix)
                    .and_then(|rest| rest.strip_prefix('.'))
                else {
                    return false;
                };
                (self.account_info && api == "INFO")
                    || (self.stream_names && api == "STREAM.NAMES")
                    || STREAM_VERBS.iter().any(|verb| {
                        api.strip_prefix(verb).is_some_and(|rest| {
                            self.streams.iter().any(|stream| is_under(rest, stream))
                        })
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_violation_texts_are_parsed() {
        let v = parse(r#"Permissions Violation for Publish to "aether.ev.b.x""#).unwrap();
        assert_eq!(v.action, PermissionAction::Publish);
        assert_eq!(v.subject, "aether.ev.b.x");
        let v =
            parse(r#"Permissions Violation for Subscription to "aether.bus.b" (sid "3")"#).unwrap();
        assert_eq!(v.action, PermissionAction::Subscribe);
        assert_eq!(v.subject, "aether.bus.b");
        let v =
            parse(r#"Permissions Violation for Subscription to "a.>" using queue "q""#).unwrap();
        assert_eq!(v.subject, "a.>");
        let v = parse(r#"Permissions Violation for Publish with Reply of "_R_.x""#).unwrap();
        assert_eq!(v.subject, "_R_.x");
        assert_eq!(parse("Authorization Violation"), None);
        assert_eq!(parse("Maximum Payload Violation"), None);
    }

    #[test]
    fn an_operation_claims_only_refusals_of_its_own_subjects() {
        let concern = Concern {
            api_prefix: "$JS.API",
            inbox_prefix: "_INBOX_a",
            replies: true,
            publishes: vec!["aether.ev.a.x".into()],
            streams: vec!["AETHER_EV_a".into()],
            ..Concern::default()
        };
        let publish = |s: &str| Violation {
            action: PermissionAction::Publish,
            subject: s.into(),
        };
        let subscribe = |s: &str| Violation {
            action: PermissionAction::Subscribe,
            subject: s.into(),
        };
        assert!(concern.matches(&publish("aether.ev.a.x")));
        assert!(!concern.matches(&publish("aether.ev.a.y")));
        assert!(concern.matches(&publish("$JS.API.STREAM.INFO.AETHER_EV_a")));
        assert!(concern.matches(&publish("$JS.API.DIRECT.GET.AETHER_EV_a.aether.ev.a.x")));
        assert!(concern.matches(&publish("$JS.API.CONSUMER.MSG.NEXT.AETHER_EV_a.c1")));
        assert!(!concern.matches(&publish("$JS.API.STREAM.INFO.AETHER_EV_ab")));
        assert!(!concern.matches(&publish("$JS.API.INFO")));
        assert!(concern.matches(&subscribe("_INBOX_a.abc.*")));
        assert!(!concern.matches(&subscribe("_INBOX_ab.abc.*")));
        assert!(!concern.matches(&subscribe("aether.ev.a.x")));
    }
}
