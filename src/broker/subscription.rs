//! Live subscriptions and KV watches: streams of messages a broker pushes.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use super::message::{KvEntry, Message};

/// A source of core messages behind a [`Subscription`]: a stream that can also be drained.
pub trait SubscriptionSource: Stream<Item = Message> + Send + Unpin + 'static {
    /// Stops new deliveries: messages already on their way to this subscriber are still
    /// yielded, then the stream ends.
    fn drain(&mut self) -> futures::future::BoxFuture<'_, ()>;
}

/// A plain stream as a subscription source whose drain stops nothing (the stream ends when its
/// producer ends it). For wrappers and tests.
struct Plain(Pin<Box<dyn Stream<Item = Message> + Send>>);

impl Stream for Plain {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl SubscriptionSource for Plain {
    fn drain(&mut self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A live subscription: a stream of core messages. Dropping it unsubscribes.
pub struct Subscription {
    inner: Box<dyn SubscriptionSource>,
}

impl Subscription {
    /// Wraps any stream of messages (its [`drain`](Self::drain) does nothing).
    pub fn new(inner: impl Stream<Item = Message> + Send + 'static) -> Self {
        Self::from_source(Plain(Box::pin(inner)))
    }

    /// Wraps a source that can be drained.
    pub fn from_source(source: impl SubscriptionSource) -> Self {
        Self {
            inner: Box::new(source),
        }
    }

    /// The next message; `None` once the broker closed the subscription.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is only taken when the future completes.
    pub async fn next(&mut self) -> Option<Message> {
        futures::StreamExt::next(&mut self.inner).await
    }

    /// Unsubscribes without losing what is already on its way: no new message is delivered to
    /// this subscription, the ones in flight still are, and then [`next`](Self::next) returns
    /// `None`. Used to leave without dropping requests a node has already been sent.
    pub async fn drain(&mut self) {
        self.inner.drain().await;
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

/// A live KV watch: the current entries matching the pattern, then every later write. Dropping it
/// stops the watch.
pub struct KvWatch {
    inner: Pin<Box<dyn Stream<Item = KvEntry> + Send>>,
}

impl KvWatch {
    /// Wraps any stream of entries.
    pub fn new(inner: impl Stream<Item = KvEntry> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(inner),
        }
    }

    /// The next entry; `None` once the broker closed the watch.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next(&mut self) -> Option<KvEntry> {
        futures::StreamExt::next(&mut self.inner).await
    }
}

impl Stream for KvWatch {
    type Item = KvEntry;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<KvEntry>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for KvWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KvWatch")
    }
}
