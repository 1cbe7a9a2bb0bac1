//! The broker host's answer to one request: the state machine's operation, on the leader's
//! state or — for reads any replica may answer in the replicated model — a lagging follower's;
//! KV writes logged for the checkers; subscriptions and watches wired to the connection.

use std::time::Duration;

use tokio::sync::mpsc;

use aether::broker::{BrokerError, BrokerState, KvEntry, Message, Now, ReadFrom};
use aether::clock::SharedRng;

use super::host::{BrokerHost, HostConn, HostSub, host_now};
use super::protocol::{Frame, Request, Response};
use super::replicas::{Replicas, Write};
use super::{PUSH_QUEUE_MAX, lock};

impl BrokerHost {
    pub(super) fn handle(&self, conn: &mut HostConn, sent_at: Duration, body: Request) -> Response {
        let now = host_now();
        let mut state = lock(&self.shared.state);
        let mut replicas = lock(&self.shared.replicas);
        // Direct gets: any replica answers (the leader's state, or a lagging follower's).
        let rng = &self.shared.rng;
        fn replica<'a>(
            replicas: &'a mut Option<Replicas>,
            now: Now,
            rng: &SharedRng,
        ) -> Option<(&'a mut BrokerState, Now)> {
            replicas.as_mut().and_then(|r| r.pick(now, rng))
        }
        let electing = replicas.as_mut().is_some_and(|r| r.electing(now.monotonic));
        let no_leader = || BrokerError::Unavailable {
            reason: "stream leader election in progress".into(),
        };
        let result: Result<Response, BrokerError> = match body {
            Request::Hello { .. } | Request::Ping => Ok(Response::Unit),
            Request::EnsureStream(config) => {
                let result = state.ensure_stream(config.clone());
                if let (Ok(()), Some(r)) = (&result, replicas.as_mut()) {
                    r.committed(now, Write::EnsureStream(config));
                }
                result.map(|()| Response::Unit)
            }
            Request::Append {
                subject,
                headers,
                payload,
                options,
            } => {
                let result = state.append(
                    &subject,
                    headers.clone(),
                    payload.clone(),
                    options.clone(),
                    now,
                );
                if let (Ok(ack), Some(r)) = (&result, replicas.as_mut()) {
                    r.committed(
                        now,
                        Write::Append {
                            subject,
                            headers,
                            payload,
                            options,
                            result: (ack.sequence, ack.duplicate),
                        },
                    );
                }
                result.map(|ack| Response::Ack {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                })
            }
            Request::Last {
                stream,
                subject,
                from: ReadFrom::AnyReplica,
            } => match replica(&mut replicas, now, rng) {
                Some((follower, as_of)) => follower.last(&stream, &subject, as_of),
                None => state.last(&stream, &subject, now),
            }
            .map(Response::Stored),
            Request::Next {
                stream,
                subject,
                from_sequence,
                from: ReadFrom::AnyReplica,
            } => match replica(&mut replicas, now, rng) {
                Some((follower, as_of)) => follower.next(&stream, &subject, from_sequence, as_of),
                None => state.next(&stream, &subject, from_sequence, now),
            }
            .map(Response::Stored),
            Request::Last { .. } | Request::Next { .. } if electing => Err(no_leader()),
            Request::Last {
                stream,
                subject,
                from: ReadFrom::Leader,
            } => state.last(&stream, &subject, now).map(Response::Stored),
            Request::Next {
                stream,
                subject,
                from_sequence,
                from: ReadFrom::Leader,
            } => state
                .next(&stream, &subject, from_sequence, now)
                .map(Response::Stored),
            Request::Read {
                stream,
                subject,
                from_sequence,
            } => match replica(&mut replicas, now, rng) {
                Some((follower, as_of)) => follower.read(&stream, &subject, from_sequence, as_of),
                None => state.read(&stream, &subject, from_sequence, now),
            }
            .map(Response::StoredList),
            Request::Publish {
                subject,
                headers,
                payload,
            } => state
                .publish(Message {
                    subject,
                    headers,
                    payload,
                    reply: None,
                })
                .map(|_| Response::Unit),
            Request::Subscribe { sid, pattern } => {
                let (sender, forwarder) = Self::forward_messages(&conn.tx, sid);
                match state.subscribe(&pattern, sender) {
                    Ok(id) => {
                        if let Some(old) = conn.subs.insert(
                            sid,
                            HostSub {
                                state_id: Some(id),
                                forwarder,
                            },
                        ) {
                            drop(state);
                            self.drop_sub(old);
                            return Response::Unit;
                        }
                        Ok(Response::Unit)
                    }
                    Err(e) => {
                        forwarder.abort();
                        Err(e)
                    }
                }
            }
            // Stop new deliveries; what the subscription already holds is still pushed before
            // the answer, as a NATS server delivers what it sent before the UNSUB arrived.
            Request::Unsubscribe { sid } => {
                if let Some(sub) = conn.subs.remove(&sid) {
                    match sub.state_id {
                        Some(id) => {
                            state.unsubscribe(id);
                            conn.flush_before_reply = Some(sub.forwarder);
                        }
                        None => sub.forwarder.abort(),
                    }
                }
                Ok(Response::Unit)
            }
            Request::Ask {
                sid,
                inbox,
                subject,
                headers,
                payload,
            } => {
                let (sender, forwarder) = Self::forward_messages(&conn.tx, sid);
                match state.subscribe(&inbox, sender) {
                    Ok(id) => {
                        let published = state.publish(Message {
                            subject: subject.clone(),
                            headers,
                            payload,
                            reply: Some(inbox),
                        });
                        match published {
                            Ok(matched) if matched > 0 => {
                                conn.subs.insert(
                                    sid,
                                    HostSub {
                                        state_id: Some(id),
                                        forwarder,
                                    },
                                );
                                Ok(Response::Unit)
                            }
                            other => {
                                state.unsubscribe(id);
                                forwarder.abort();
                                match other {
                                    Err(e) => Err(e),
                                    Ok(_) => Err(BrokerError::NoResponders { subject }),
                                }
                            }
                        }
                    }
                    Err(e) => {
                        forwarder.abort();
                        Err(e)
                    }
                }
            }
            Request::KvEnsure(config) => {
                let result = state.kv_ensure(config.clone());
                if let (Ok(()), Some(r)) = (&result, replicas.as_mut()) {
                    r.committed(now, Write::KvEnsure(config));
                }
                result.map(|()| Response::Unit)
            }
            Request::KvGet { bucket, key } => match replica(&mut replicas, now, rng) {
                Some((follower, as_of)) => follower.kv_get(&bucket, &key, as_of),
                None => state.kv_get(&bucket, &key, now),
            }
            .map(Response::Entry),
            Request::KvEntries { bucket } => match replica(&mut replicas, now, rng) {
                Some((follower, as_of)) => follower.kv_entries(&bucket, as_of),
                None => state.kv_entries(&bucket, now),
            }
            .map(Response::Entries),
            Request::KvCreate { bucket, key, value } => {
                let result = state.kv_create(&bucket, &key, value.clone(), now);
                if let Ok(revision) = &result {
                    self.log_kv_write(conn, sent_at, &bucket, &key, &value, *revision);
                    if let Some(r) = replicas.as_mut() {
                        let revision = *revision;
                        r.committed(
                            now,
                            Write::KvCreate {
                                bucket,
                                key,
                                value,
                                revision,
                            },
                        );
                    }
                }
                result.map(Response::Revision)
            }
            Request::KvUpdate {
                bucket,
                key,
                value,
                revision: expected,
            } => {
                let result = state.kv_update(&bucket, &key, value.clone(), expected, now);
                if let Ok(revision) = &result {
                    self.log_kv_write(conn, sent_at, &bucket, &key, &value, *revision);
                    if let Some(r) = replicas.as_mut() {
                        let revision = *revision;
                        r.committed(
                            now,
                            Write::KvUpdate {
                                bucket,
                                key,
                                value,
                                expected,
                                revision,
                            },
                        );
                    }
                }
                result.map(Response::Revision)
            }
            Request::KvPut { bucket, key, value } => {
                let result = state.kv_put(&bucket, &key, value.clone(), now);
                if let Ok(revision) = &result {
                    self.log_kv_write(conn, sent_at, &bucket, &key, &value, *revision);
                    if let Some(r) = replicas.as_mut() {
                        let revision = *revision;
                        r.committed(
                            now,
                            Write::KvPut {
                                bucket,
                                key,
                                value,
                                revision,
                            },
                        );
                    }
                }
                result.map(Response::Revision)
            }
            Request::KvDelete { bucket, key } => {
                let result = state.kv_delete(&bucket, &key, now);
                if result.is_ok() {
                    self.log_kv_write(conn, sent_at, &bucket, &key, &[], 0);
                    if let Some(r) = replicas.as_mut() {
                        r.committed(now, Write::KvDelete { bucket, key });
                    }
                }
                result.map(|()| Response::Unit)
            }
            Request::KvWatch {
                sid,
                bucket,
                pattern,
            } => {
                let (sender, mut receiver) = mpsc::channel::<KvEntry>(PUSH_QUEUE_MAX);
                match state.kv_watch(&bucket, &pattern, sender, now) {
                    Ok(_) => {
                        let tx = conn.tx.clone();
                        let forwarder = crate::engine::spawn_local(async move {
                            while let Some(entry) = receiver.recv().await {
                                if tx.send(Frame::Kv { sid, entry }).await.is_err() {
                                    break;
                                }
                            }
                        });
                        // A watcher has no unsubscribe: dropping the receiver retires it.
                        if let Some(old) = conn.subs.insert(
                            sid,
                            HostSub {
                                state_id: None,
                                forwarder,
                            },
                        ) {
                            drop(state);
                            self.drop_sub(old);
                            return Response::Unit;
                        }
                        Ok(Response::Unit)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(r) => r,
            Err(e) => Response::Error(e),
        }
    }
}
