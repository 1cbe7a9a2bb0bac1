//! Trace context that travels with a command: W3C Trace Context (`traceparent`) without an
//! OpenTelemetry dependency.
//!
//! A command sent with [`ActorHost::send`](crate::ActorHost::send) carries a `traceparent`
//! header to its owner; the owner runs it inside the same trace, and the events it appends have
//! their metadata's `trace_id`/`span_id` filled from that context when the caller has not set
//! them — so one trace id joins the caller's log lines, the owner's and the stored events.
//!
//! The context of the running task is a tokio task-local: [`scope`] runs a future inside one,
//! [`current`] reads it. An application that receives a `traceparent` (an HTTP request, a
//! message) hands it on with `trace::scope(TraceContext::parse(header)?, work)`. Without a
//! context, a command starts a new trace whose ids come from the runtime's seeded generator
//! (so simulation runs stay a function of their seed). Every span aether opens for a command
//! carries the `trace_id` field, which is what an operator filters on.

use std::fmt;
use std::future::Future;

use crate::clock::SharedRng;

/// The header that carries a [`TraceContext`] on a command request.
pub const TRACEPARENT: &str = "traceparent";

/// A W3C trace context: the trace, the span that is the parent of what happens next, and the
/// sampled flag.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// A new trace (sampled), with ids drawn from `rng`.
    pub fn new_root(rng: &SharedRng) -> Self {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&nonzero(rng).to_be_bytes());
        trace_id[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
        Self {
            trace_id,
            span_id: nonzero(rng).to_be_bytes(),
            flags: 1,
        }
    }

    /// The same trace with a new span id drawn from `rng`: the context handed to the next hop.
    pub fn child(&self, rng: &SharedRng) -> Self {
        Self {
            span_id: nonzero(rng).to_be_bytes(),
            ..*self
        }
    }

    /// Parses a `traceparent` header value (`00-<32 hex>-<16 hex>-<2 hex>`). `None` for
    /// anything malformed, an all-zero id, or the reserved version `ff` — the W3C rule is to
    /// start a new trace then, never to fail the request.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; later versions may append more.
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(trace)?;
        let span_id: [u8; 8] = hex_bytes(span)?;
        let [flags] = hex_bytes::<1>(flags)?;
        hex_bytes::<1>(version)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            // Version 00 defines only the sampled bit; what this hop sends is version 00.
            flags: flags & 1,
        })
    }

    /// The `traceparent` header value (version 00).
    pub fn to_traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id(),
            self.span_id(),
            self.flags
        )
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span_id)
    }

    /// Whether the caller sampled this trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `future` with `context` as the current trace context (what [`current`] returns inside
/// it, and what commands sent from it carry).
pub async fn scope<F: Future>(context: TraceContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// The trace context of the running task, if it runs inside [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// The context of a new span: a child of the current context, or the first span of a new trace
/// when there is none.
pub(crate) fn next_span(rng: &SharedRng) -> TraceContext {
    match current() {
        Some(parent) => parent.child(rng),
        None => TraceContext::new_root(rng),
    }
}

fn nonzero(rng: &SharedRng) -> u64 {
    rng.next_u64().max(1)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Lowercase hex only: W3C Trace Context says to ignore a `traceparent` with uppercase digits.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_renders_the_w3c_example() {
        let ctx = TraceContext::parse(SAMPLE).expect("the spec's example parses");
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id(), "00f067aa0ba902b7");
        assert!(ctx.sampled());
        assert_eq!(ctx.to_traceparent(), SAMPLE);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields; it is passed on as version 00, with only the
        // flags version 00 defines.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff-more";
        assert_eq!(
            TraceContext::parse(later).map(|c| c.to_traceparent()),
            Some(SAMPLE.to_owned())
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let rng = SharedRng::from_seed(7);
        let root = TraceContext::new_root(&rng);
        let child = root.child(&rng);
        assert_eq!(root.trace_id(), child.trace_id());
        assert_ne!(root.span_id(), child.span_id());
        assert_eq!(TraceContext::parse(&child.to_traceparent()), Some(child));
    }

    #[tokio::test]
    async fn scope_sets_the_current_context() {
        assert_eq!(current(), None);
        let ctx = TraceContext::parse(SAMPLE).unwrap();
        let seen = scope(ctx, async { current() }).await;
        assert_eq!(seen, Some(ctx));
        assert_eq!(current(), None);
    }
}
