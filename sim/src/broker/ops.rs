//! Every [`Broker`] operation of [`SimBroker`] as one protocol request.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use aether::broker::{
    AppendAck, AppendOptions, Broker, BrokerError, Headers, KvConfig, KvEntry, KvWatch, Message,
    ReadFrom, StoredMessage, StreamConfig, Subscription,
};
use aether::clock::Clock;

use super::client::{ClientSub, SimBroker, SimSubscription};
use super::protocol::{Request, Response};
use super::{PUSH_QUEUE_MAX, lock, unexpected};

impl Broker for SimBroker {
    async fn ensure_stream(&self, config: StreamConfig) -> Result<(), BrokerError> {
        match self.call(Request::EnsureStream(config)).await? {
            Response::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn append(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    ) -> Result<AppendAck, BrokerError> {
        let request = Request::Append {
            subject: subject.to_owned(),
            headers,
            payload,
            options,
        };
        match self.call(request).await? {
            Response::Ack {
                sequence,
                duplicate,
            } => Ok(AppendAck {
                sequence,
                duplicate,
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn last(
        &self,
        stream: &str,
        subject: &str,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        let request = Request::Last {
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            from,
        };
        match self.call(request).await? {
            Response::Stored(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    async fn next(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        let request = Request::Next {
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            from_sequence,
            from,
        };
        match self.call(request).await? {
            Response::Stored(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    async fn read(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        let request = Request::Read {
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            from_sequence,
        };
        match self.call(request).await? {
            Response::StoredList(ms) => Ok(ms),
            other => Err(unexpected(other)),
        }
    }

    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        let request = Request::Publish {
            subject: subject.to_owned(),
            headers,
            payload,
        };
        match self.call(request).await? {
            Response::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BrokerError> {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::SeqCst);
        let (sender, receiver) = mpsc::channel(PUSH_QUEUE_MAX);
        lock(&self.inner.subs).insert(
            sid,
            ClientSub::Core {
                pattern: pattern.to_owned(),
                sender,
            },
        );
        let request = Request::Subscribe {
            sid,
            pattern: pattern.to_owned(),
        };
        match self.call(request).await {
            Ok(_) => {
                self.start_pinger();
                Ok(Subscription::from_source(SimSubscription {
                    messages: ReceiverStream::new(receiver),
                    client: self.clone(),
                    sid,
                }))
            }
            Err(e) => {
                self.forget_sub(sid);
                Err(e)
            }
        }
    }

    async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::SeqCst);
        let inbox = format!("{}.{sid}", self.inner.config.inbox_prefix);
        let (sender, mut receiver) = mpsc::channel(1);
        lock(&self.inner.subs).insert(sid, ClientSub::Inbox { sender });
        let request = Request::Ask {
            sid,
            inbox,
            subject: subject.to_owned(),
            headers,
            payload,
        };
        let result = match self.call(request).await {
            Err(e) => Err(e),
            Ok(_) => {
                tokio::select! {
                    biased;
                    reply = receiver.recv() => reply.ok_or_else(|| BrokerError::Timeout {
                        operation: format!("a reply to {subject:?}"),
                    }),
                    _ = self.inner.clock.sleep(timeout) => Err(BrokerError::Timeout {
                        operation: format!("a reply to {subject:?}"),
                    }),
                }
            }
        };
        self.forget_sub(sid);
        result
    }

    async fn kv_ensure(&self, config: KvConfig) -> Result<(), BrokerError> {
        match self.call(Request::KvEnsure(config)).await? {
            Response::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BrokerError> {
        let request = Request::KvGet {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        };
        match self.call(request).await? {
            Response::Entry(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        let request = Request::KvCreate {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            value,
        };
        match self.call(request).await? {
            Response::Revision(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        let request = Request::KvUpdate {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            value,
            revision,
        };
        match self.call(request).await? {
            Response::Revision(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        let request = Request::KvPut {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            value,
        };
        match self.call(request).await? {
            Response::Revision(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_delete(&self, bucket: &str, key: &str) -> Result<(), BrokerError> {
        let request = Request::KvDelete {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        };
        match self.call(request).await? {
            Response::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_entries(&self, bucket: &str) -> Result<Vec<KvEntry>, BrokerError> {
        let request = Request::KvEntries {
            bucket: bucket.to_owned(),
        };
        match self.call(request).await? {
            Response::Entries(es) => Ok(es),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_watch(&self, bucket: &str, key_pattern: &str) -> Result<KvWatch, BrokerError> {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::SeqCst);
        let (sender, receiver) = mpsc::channel(PUSH_QUEUE_MAX);
        lock(&self.inner.subs).insert(
            sid,
            ClientSub::Watch {
                bucket: bucket.to_owned(),
                pattern: key_pattern.to_owned(),
                sender,
                last_revision: 0,
            },
        );
        let request = Request::KvWatch {
            sid,
            bucket: bucket.to_owned(),
            pattern: key_pattern.to_owned(),
        };
        match self.call(request).await {
            Ok(_) => {
                self.start_pinger();
                Ok(KvWatch::new(ReceiverStream::new(receiver)))
            }
            Err(e) => {
                self.forget_sub(sid);
                Err(e)
            }
        }
    }
}
