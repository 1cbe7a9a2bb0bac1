//! The production broker: NATS JetStream through async-nats (feature `nats`).
//!
//! Every [`Broker`] operation is one NATS operation:
//!
//! | operation | NATS |
//! |---|---|
//! | `ensure_stream` | stream create with allow-direct, deny-delete, deny-purge, duplicate window, max age, replicas |
//! | `append` | JetStream publish with `Nats-Expected-Last-Subject-Sequence` and `Nats-Msg-Id` |
//! | `last`, `next` | [`ReadFrom::AnyReplica`]: direct get (any replica answers; may trail the leader by a moment); [`ReadFrom::Leader`]: `STREAM.MSG.GET` |
//! | `read`, `read_each`, `read_batch`, `kv_entries` | batched direct gets (server 2.11+): pages of up to 512 messages, no consumer; a read with thousands of messages left after its first page continues with an ordered consumer that is deleted when the read ends |
//! | `publish` / `subscribe` / `request` | core NATS |
//! | `kv_*` | a KV bucket (history 1; the bucket's max age is the TTL) |
//!
//! NATS errors are mapped onto [`BrokerError`] in exactly one place, [`map_error`].
//!
//! aether needs nats-server **2.11 or newer**: 2.9 and 2.10 let several concurrent appends with the
//! same expected sequence win on a replicated stream (nats-server#4320), and async-nats KV does not
//! work against them. [`NatsBroker::connect`] checks the version and refuses older servers.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{HeaderMap, ServerAddr};
use bytes::Bytes;
use futures::StreamExt;

use super::memory::{check_user_headers, wire_size};
use super::subject::{validate_kv_key, validate_pattern, validate_subject};
use super::{
    AppendAck, AppendOptions, Broker, BrokerError, BrokerLimit, Headers, KvConfig, KvEntry,
    KvOperation, KvWatch, Message, ReadFrom, StorageKind, StoredMessage, StreamConfig,
    Subscription, SubscriptionSource,
};

/// The oldest nats-server release aether runs against, as (major, minor).
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 11);

/// How to authenticate to NATS. `Debug` never prints secrets.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A bearer token.
    Token(String),
    /// A `.creds` file (JWT plus nkey seed), as issued by `nsc`.
    CredentialsFile(PathBuf),
    /// An nkey seed (`SU...`).
    NKey {
        /// The seed.
        seed: String,
    },
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::CredentialsFile(path) => {
                f.debug_tuple("CredentialsFile").field(path).finish()
            }
            NatsAuth::NKey { .. } => f.write_str("NKey { seed: <redacted> }"),
        }
    }
}

/// TLS settings.
#[derive(Clone, Debug, Default)]
pub struct NatsTls {
    /// Refuse to talk to a server without TLS.
    pub required: bool,
    /// PEM file of root certificates to trust in addition to the system's.
    pub root_certificates: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for mutual TLS.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// Start TLS before the NATS `INFO` (server option `handshake_first`).
    pub handshake_first: bool,
}

/// How to reach NATS.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:4222`, `tls://…`); the client picks one and fails over to the
    /// others, and to servers the cluster advertises.
    pub urls: Vec<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS, if any.
    pub tls: Option<NatsTls>,
    /// Connection name shown in the server's monitoring.
    pub name: Option<String>,
    /// How long the initial connection may take per server.
    pub connection_timeout: Duration,
    /// How long a JetStream API call or publish acknowledgement may take before the operation
    /// fails with [`BrokerError::Timeout`] (ambiguous for appends).
    pub request_timeout: Duration,
    /// Give up reconnecting after this many attempts; `None` retries forever.
    pub max_reconnects: Option<usize>,
}

impl NatsOptions {
    /// Options for one or more comma-separated URLs, no credentials, 5 s timeouts.
    pub fn new(urls: impl AsRef<str>) -> Self {
        Self {
            urls: urls
                .as_ref()
                .split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            auth: NatsAuth::None,
            tls: None,
            name: None,
            connection_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_reconnects: None,
        }
    }

    /// Adds a server URL.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Authenticates with user and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = NatsAuth::UserPassword {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = NatsAuth::Token(token.into());
        self
    }

    /// Authenticates with a credentials file.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = NatsAuth::CredentialsFile(path.into());
        self
    }

    /// Authenticates with an nkey seed.
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.auth = NatsAuth::NKey { seed: seed.into() };
        self
    }

    /// Uses TLS.
    pub fn tls(mut self, tls: NatsTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the connection name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the JetStream request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the initial connection timeout.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }
}

/// Why [`NatsBroker::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// The options are unusable (no URL, a malformed URL, an unreadable credentials file).
    #[error("invalid NATS connection options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
    /// No server answered at any of the URLs.
    #[error("no NATS server answered at {urls}: {reason}")]
    NoServer {
        /// The URLs tried.
        urls: String,
        /// The last failure.
        reason: String,
    },
    /// The server refused the credentials.
    #[error("NATS server at {urls} refused the credentials: {reason}")]
    Authentication {
        /// The URLs tried.
        urls: String,
        /// What the server or client said.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS with the NATS server failed: {reason}")]
    Tls {
        /// What failed.
        reason: String,
    },
    /// The server is older than [`MIN_SERVER_VERSION`].
    #[error(
        "NATS server {server} runs version {version}, but aether needs 2.11 or newer \
         (older servers let concurrent appends on replicated streams both win, nats-server#4320, \
         and do not support async-nats key-value buckets); upgrade the server"
    )]
    UnsupportedServer {
        /// The server's name.
        server: String,
        /// The version it reported.
        version: String,
    },
    /// The server answered but JetStream is not enabled for this account.
    #[error("JetStream is not available on the NATS server: {reason}; start nats-server with -js")]
    JetStreamUnavailable {
        /// What the server said.
        reason: String,
    },
}

/// The NATS JetStream broker. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The JetStream API subject prefix the context uses (`$JS.API`).
    api_prefix: String,
    request_timeout: Duration,
    buckets: Arc<Mutex<BTreeMap<String, kv::Store>>>,
}

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("server", &self.client.server_info().server_name)
            .finish()
    }
}

/// Parses `major.minor[.patch][-pre]`.
fn parse_version(version: &str) -> Option<(u64, u64)> {
    let core = version.trim_start_matches('v');
    let mut parts = core.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether `version` is at least [`MIN_SERVER_VERSION`]. Unparseable versions are refused.
pub fn server_version_supported(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v >= MIN_SERVER_VERSION)
}

impl NatsBroker {
    /// Connects, checks that the server is 2.11 or newer and that JetStream is available.
    ///
    /// # Errors
    /// [`NatsConnectError`] naming the cause: no server answered, credentials refused, TLS,
    /// server too old, JetStream disabled, or unusable options.
    pub async fn connect(options: NatsOptions) -> Result<Self, NatsConnectError> {
        if options.urls.is_empty() {
            return Err(NatsConnectError::InvalidOptions {
                reason: "no server URL given".into(),
            });
        }
        let urls = options.urls.join(",");
        let addrs = options
            .urls
            .iter()
            .map(|u| {
                u.parse::<ServerAddr>()
                    .map_err(|e| NatsConnectError::InvalidOptions {
                        reason: format!("bad server URL {u:?}: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut connect = async_nats::ConnectOptions::new();
        connect = match &options.auth {
            NatsAuth::None => connect,
            NatsAuth::UserPassword { user, password } => {
                connect.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => connect.token(token.clone()),
            NatsAuth::CredentialsFile(path) => {
                connect.credentials_file(path).await.map_err(|e| {
                    NatsConnectError::InvalidOptions {
                        reason: format!("cannot read credentials file {}: {e}", path.display()),
                    }
                })?
            }
            NatsAuth::NKey { seed } => connect.nkey(seed.clone()),
        };
        if let Some(tls) = &options.tls {
            connect = connect.require_tls(tls.required);
            if let Some(roots) = &tls.root_certificates {
                connect = connect.add_root_certificates(roots.clone());
            }
            if let Some((cert, key)) = &tls.client_certificate {
                connect = connect.add_client_certificate(cert.clone(), key.clone());
            }
            if tls.handshake_first {
                connect = connect.tls_first();
            }
        }
        if let Some(name) = &options.name {
            connect = connect.name(name);
        }
        connect = connect
            .connection_timeout(options.connection_timeout)
            .request_timeout(Some(options.request_timeout))
            .max_reconnects(options.max_reconnects);
        let client = connect.connect(addrs).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            let reason = e.to_string();
            match e.kind() {
                K::Authentication | K::AuthorizationViolation => NatsConnectError::Authentication {
                    urls: urls.clone(),
                    reason,
                },
                K::Tls => NatsConnectError::Tls { reason },
                // async-nats reports a refused server certificate (a rustls error inside the
                // handshake) as an I/O error; it is a TLS problem, not an absent server.
                K::Io if is_tls_failure(&reason) => NatsConnectError::Tls { reason },
                K::ServerParse => NatsConnectError::InvalidOptions { reason },
                _ => NatsConnectError::NoServer {
                    urls: urls.clone(),
                    reason,
                },
            }
        })?;
        let info = client.server_info();
        if !server_version_supported(&info.version) {
            return Err(NatsConnectError::UnsupportedServer {
                server: info.server_name.clone(),
                version: info.version.clone(),
            });
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .build(client.clone());
        js.query_account()
            .await
            .map_err(|e| NatsConnectError::JetStreamUnavailable {
                reason: e.to_string(),
            })?;
        Ok(Self {
            client,
            js,
            api_prefix: JS_API_PREFIX.to_owned(),
            request_timeout: options.request_timeout,
            buckets: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// The underlying async-nats client (for tooling and benchmarks).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context this broker uses.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The version the connected server reported.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    async fn bucket(&self, bucket: &str) -> Result<kv::Store, BrokerError> {
        if let Some(store) = self.lock_buckets().get(bucket) {
            return Ok(store.clone());
        }
        let store = self
            .js
            .get_key_value(bucket)
            .await
            .map_err(|e| map_error(&Op::KvBucket { bucket }, &e))?;
        self.lock_buckets().insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    fn lock_buckets(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, kv::Store>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `sink` the messages of `stream` matching `filter` from `from_sequence` on, in
    /// stream order, until the end of the stream or until `sink` returns `false`.
    ///
    /// Pages come from batched direct gets, which create nothing on the server. A read that
    /// still has more than [`CONSUMER_READ_MIN`] messages to go after a page continues with an
    /// ordered consumer (flow-controlled, faster for long reads), deleted when the read ends.
    async fn read_pages<F: FnMut(StoredMessage) -> bool + Send>(
        &self,
        op: &Op<'_>,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        mut sink: F,
    ) -> Result<(), BrokerError> {
        let mut from = from_sequence.max(1);
        // A short first page: most reads (an actor's history) end within it, and a long read
        // learns its length from it cheaply before moving on to a consumer.
        let mut batch = DIRECT_FIRST_BATCH_MAX;
        loop {
            let page = self
                .direct_page(op, stream, filter, from, batch, &mut sink)
                .await?;
            batch = DIRECT_BATCH_MAX;
            if page.unanswered {
                // No replica takes direct gets right now: read from the leader instead.
                return self.consume(op, stream, filter, from, sink).await;
            }
            let Some(last) = page.last_sequence else {
                return Ok(());
            };
            if page.stopped || page.pending == 0 {
                return Ok(());
            }
            from = last + 1;
            if page.pending > CONSUMER_READ_MIN {
                return self.consume(op, stream, filter, from, sink).await;
            }
        }
    }

    /// One batched direct get: up to `batch` messages of `filter` from `from_sequence`,
    /// answered by any replica, handed to `sink` as they arrive.
    async fn direct_page<F: FnMut(StoredMessage) -> bool + Send>(
        &self,
        op: &Op<'_>,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        batch: usize,
        sink: &mut F,
    ) -> Result<DirectPage, BrokerError> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| map_error(op, &e))?;
        let request = serde_json::json!({
            "seq": from_sequence,
            "next_by_subj": filter,
            "batch": batch,
            "max_bytes": DIRECT_BATCH_BYTES_MAX,
        });
        self.client
            .publish_with_reply(
                format!("{}.DIRECT.GET.{stream}", self.api_prefix),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| map_error(op, &e))?;
        let mut page = DirectPage::default();
        loop {
            let reply = match tokio::time::timeout(self.request_timeout, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    return Err(BrokerError::Unavailable {
                        reason: format!("connection closed while {op}"),
                    });
                }
                Err(_) => {
                    return Err(BrokerError::Timeout {
                        operation: op.to_string(),
                    });
                }
            };
            match reply.status.map(|s| s.as_u16()) {
                None => {
                    let message =
                        jetstream::message::StreamMessage::try_from(reply).map_err(|e| {
                            BrokerError::Other {
                                reason: format!("malformed direct get reply while {op}: {e}"),
                            }
                        })?;
                    page.last_sequence = Some(message.sequence);
                    let stored = StoredMessage {
                        subject: message.subject.to_string(),
                        sequence: message.sequence,
                        headers: from_header_map(Some(&message.headers)),
                        payload: message.payload,
                        time: SystemTime::from(message.time),
                    };
                    if !sink(stored) {
                        page.stopped = true;
                        return Ok(page);
                    }
                }
                // End of batch: how many matching messages follow.
                Some(204) => {
                    page.pending = reply
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(HEADER_NUM_PENDING))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(0);
                    return Ok(page);
                }
                // Nothing at or after `from_sequence`.
                Some(404) => return Ok(page),
                // Nobody answers direct gets for this stream: it does not exist, or no replica
                // serves direct gets right now (seen on a 3-node cluster for seconds at a time
                // on one connection while the others were answered).
                Some(503) => {
                    return match self.missing_stream(op, stream).await {
                        error @ BrokerError::NotFound { .. } => Err(error),
                        error => {
                            tracing::debug!(stream, %error, "direct get unanswered");
                            page.unanswered = true;
                            Ok(page)
                        }
                    };
                }
                Some(status) => {
                    return Err(BrokerError::Other {
                        reason: format!(
                            "direct get on {stream} answered {status} {} while {op}",
                            reply.description.unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }

    /// Why `stream` did not answer: `NotFound` when the server says it does not exist,
    /// `Unavailable` when that cannot be told (e.g. no stream or meta leader right now).
    async fn missing_stream(&self, op: &Op<'_>, stream: &str) -> BrokerError {
        match self.js.get_stream(stream).await {
            Err(e) if matches!(map_error(op, &e), BrokerError::NotFound { .. }) => {
                BrokerError::not_found(format!("stream {stream:?}"))
            }
            Err(e) => BrokerError::Unavailable {
                reason: format!("stream {stream:?} did not answer: {e}"),
            },
            Ok(_) => BrokerError::Unavailable {
                reason: format!("no replica of stream {stream:?} answered"),
            },
        }
    }

    /// Reads `filter` of `stream` from `from_sequence` with an ordered consumer until nothing is
    /// pending or `sink` returns `false`, then deletes the consumer.
    ///
    /// The consumer's `num_pending` at creation says whether there is anything to read; each
    /// delivered message says how many are still pending, and the read stops at 0. If the
    /// consumer goes quiet while messages should still be pending (they expired meanwhile, or
    /// the stream changed leader), it is replaced by one starting after the last delivered
    /// sequence, whose fresh `num_pending` tells the truth.
    async fn consume<F: FnMut(StoredMessage) -> bool + Send>(
        &self,
        op: &Op<'_>,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        mut sink: F,
    ) -> Result<(), BrokerError> {
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(op, &e))?;
        let mut from = from_sequence;
        let mut stalls = 0u32;
        loop {
            let ordered = handle
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: filter.to_owned(),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| map_error(op, &e))?;
            let name = ordered.cached_info().name.clone();
            let result = self.drain_consumer(op, ordered, &mut from, &mut sink).await;
            // Best effort: a consumer the delete misses (the process died, the connection broke)
            // expires by async-nats' 30 s inactive threshold.
            if let Err(error) = handle.delete_consumer(&name).await {
                tracing::debug!(stream, consumer = name, %error, "read consumer not deleted");
            }
            match result? {
                ConsumerEnd::Done => return Ok(()),
                ConsumerEnd::Stalled => {
                    stalls += 1;
                    if stalls * CONSUMER_IDLE_MAX.as_millis() as u32
                        > self.request_timeout.as_millis() as u32
                    {
                        return Err(BrokerError::Timeout {
                            operation: op.to_string(),
                        });
                    }
                }
            }
        }
    }

    /// Hands the messages of one ordered consumer to `sink`; `from` follows the last delivered
    /// sequence, so that a replacement consumer can carry on after a stall.
    async fn drain_consumer<F: FnMut(StoredMessage) -> bool + Send>(
        &self,
        op: &Op<'_>,
        ordered: consumer::Consumer<consumer::pull::OrderedConfig>,
        from: &mut u64,
        sink: &mut F,
    ) -> Result<ConsumerEnd, BrokerError> {
        if ordered.cached_info().num_pending == 0 {
            return Ok(ConsumerEnd::Done);
        }
        let mut messages = ordered.messages().await.map_err(|e| map_error(op, &e))?;
        loop {
            let next = tokio::time::timeout(CONSUMER_IDLE_MAX, messages.next()).await;
            let message = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(map_error(op, &e)),
                Ok(None) | Err(_) => return Ok(ConsumerEnd::Stalled),
            };
            let Some(stored) = stored_message(&message) else {
                continue;
            };
            let left = message.info().map(|i| i.pending).unwrap_or(0);
            *from = stored.sequence + 1;
            if !sink(stored) || left == 0 {
                return Ok(ConsumerEnd::Done);
            }
        }
    }
}

/// How a batched direct get ended.
#[derive(Debug, Default)]
struct DirectPage {
    /// Sequence of the last message delivered, if any.
    last_sequence: Option<u64>,
    /// Matching messages after the page, as the server counted them at its end.
    pending: u64,
    /// The sink asked to stop.
    stopped: bool,
    /// No replica answered (the stream exists): nothing was delivered.
    unanswered: bool,
}

/// How one ordered consumer ended.
enum ConsumerEnd {
    /// Nothing pending, or the sink asked to stop.
    Done,
    /// It went quiet while messages should be pending.
    Stalled,
}

/// The JetStream API prefix of the default domain.
const JS_API_PREFIX: &str = "$JS.API";
/// Header of a direct get's end-of-batch status: matching messages not sent.
const HEADER_NUM_PENDING: &str = "Nats-Num-Pending";
/// Messages in the first batched direct get of a read.
const DIRECT_FIRST_BATCH_MAX: usize = 128;
/// Messages per later batched direct get.
const DIRECT_BATCH_MAX: usize = 512;
/// Bytes per batched direct get (well under the server's slow-consumer limit).
const DIRECT_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// A read with more messages than this left after a page switches to an ordered consumer,
/// whose flow-controlled delivery is about twice as fast for long reads.
const CONSUMER_READ_MIN: u64 = 2_048;

/// Whether an I/O error's text is rustls refusing the TLS handshake.
fn is_tls_failure(reason: &str) -> bool {
    [
        "invalid peer certificate",
        "peer is incompatible",
        "peer misbehaved",
        "handshake",
    ]
    .iter()
    .any(|needle| reason.contains(needle))
}

/// How long a read's ordered consumer may deliver nothing while messages are still pending
/// before it is recreated.
const CONSUMER_IDLE_MAX: Duration = Duration::from_millis(500);

/// The broker operation an error happened in; gives the error mapping its context.
#[derive(Debug)]
enum Op<'a> {
    EnsureStream {
        stream: &'a str,
    },
    Append {
        subject: &'a str,
        expected: Option<u64>,
        size: usize,
    },
    Last {
        stream: &'a str,
    },
    Read {
        stream: &'a str,
    },
    Publish {
        subject: &'a str,
        size: usize,
    },
    Subscribe,
    Request {
        subject: &'a str,
        size: usize,
    },
    KvBucket {
        bucket: &'a str,
    },
    KvCreate {
        key: &'a str,
    },
    KvUpdate {
        key: &'a str,
        revision: u64,
    },
    KvWrite {
        key: &'a str,
        size: usize,
    },
    KvRead {
        bucket: &'a str,
    },
}

impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::EnsureStream { stream } => write!(f, "creating stream {stream}"),
            Op::Append { subject, .. } => {
                write!(f, "the acknowledgement of an append to {subject}")
            }
            Op::Last { stream } => write!(f, "the last message of a subject in {stream}"),
            Op::Read { stream } => write!(f, "reading {stream}"),
            Op::Publish { subject, .. } => write!(f, "publishing on {subject}"),
            Op::Subscribe => f.write_str("subscribing"),
            Op::Request { subject, .. } => write!(f, "a reply to {subject}"),
            Op::KvBucket { bucket } => write!(f, "KV bucket {bucket}"),
            Op::KvCreate { key } | Op::KvUpdate { key, .. } | Op::KvWrite { key, .. } => {
                write!(f, "writing KV key {key}")
            }
            Op::KvRead { bucket } => write!(f, "reading KV bucket {bucket}"),
        }
    }
}

/// JetStream error codes aether reacts to.
mod code {
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    pub const STREAM_NOT_FOUND: u64 = 10059;
    pub const NO_MESSAGE_FOUND: u64 = 10037;
    pub const STREAM_NAME_IN_USE: u64 = 10058;
    pub const SUBJECT_OVERLAP: u64 = 10065;
    pub const MESSAGE_TOO_LARGE: u64 = 10054;
    pub const BAD_REQUEST: u64 = 10003;
    pub const INVALID_CONFIG: u64 = 10052;
    pub const CLUSTER_NOT_AVAILABLE: u64 = 10008;
    pub const CLUSTER_NOT_LEADER: u64 = 10009;
    pub const INSUFFICIENT_RESOURCES: u64 = 10023;
    pub const NO_SUITABLE_PEERS: u64 = 10005;
    pub const DUPLICATE_IN_PROCESS: u64 = 10158;
    pub const TEMPORARILY_UNAVAILABLE: u64 = 10163;
    pub const IN_FLIGHT_WRITE: u64 = 10164;
    pub const KV_NOT_FOUND: u64 = 10059;
    pub const ACCOUNT_RESOURCES_EXCEEDED: u64 = 10002;
    pub const MAXIMUM_CONSUMERS: u64 = 10026;
    pub const MAXIMUM_STREAMS: u64 = 10027;
    pub const MEMORY_RESOURCES_EXCEEDED: u64 = 10028;
    pub const STORAGE_RESOURCES_EXCEEDED: u64 = 10047;
    pub const STREAM_BYTES_EXCEEDS_ACCOUNT: u64 = 10122;
    pub const TOO_MANY_REQUESTS: u64 = 10167;
}

/// Parses the actual sequence out of "wrong last sequence: 42 (code 400, error code 10071)".
fn actual_sequence(description: &str) -> Option<u64> {
    let description = description.split(" (code").next().unwrap_or(description);
    description
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

/// The JetStream API error carried by one layer of an error chain: either the layer itself or
/// the `JetStream(..)` variant of an async-nats error kind.
fn api_error(e: &(dyn std::error::Error + 'static)) -> Option<jetstream::Error> {
    macro_rules! kind_variant {
        ($($ty:ty => $kind:path),* $(,)?) => {
            $(
                if let Some(e) = e.downcast_ref::<$ty>()
                    && let $kind(api) = e.kind()
                {
                    return Some(api);
                }
            )*
        };
    }
    if let Some(api) = e.downcast_ref::<jetstream::Error>() {
        return Some(api.clone());
    }
    kind_variant!(
        stream::ConsumerError => stream::ConsumerErrorKind::JetStream,
        stream::LastRawMessageError => stream::LastRawMessageErrorKind::JetStream,
        jetstream::context::CreateStreamError => jetstream::context::CreateStreamErrorKind::JetStream,
        jetstream::context::GetStreamError => jetstream::context::GetStreamErrorKind::JetStream,
        jetstream::context::GetStreamByNameError => jetstream::context::GetStreamByNameErrorKind::JetStream,
        jetstream::context::ConsumerInfoError => jetstream::context::ConsumerInfoErrorKind::JetStream,
        jetstream::context::AccountError => jetstream::context::AccountErrorKind::JetStream,
    );
    None
}

/// Every NATS failure becomes a [`BrokerError`] here, and nowhere else.
///
/// The error chain is walked from the outside in: typed async-nats kinds that decide the outcome
/// (a KV create finding the key, a timeout, no responders) are taken first; a JetStream API error
/// (`err_code`) decides otherwise; anything unrecognised is `Other`.
fn map_error(op: &Op<'_>, error: &(dyn std::error::Error + 'static)) -> BrokerError {
    let reason = || {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            let s_text = s.to_string();
            if !text.contains(&s_text) {
                text.push_str(": ");
                text.push_str(&s_text);
            }
            source = s.source();
        }
        text
    };
    let timeout = || BrokerError::Timeout {
        operation: op.to_string(),
    };
    let unavailable = || BrokerError::Unavailable { reason: reason() };
    let too_large = |size: usize, max: usize| BrokerError::PayloadTooLarge { size, max };
    let limit = |limit: BrokerLimit, reason: String| BrokerError::LimitReached { limit, reason };
    let no_responders = || match op {
        Op::Request { subject, .. } => BrokerError::NoResponders {
            subject: (*subject).to_owned(),
        },
        Op::Append { subject, .. } => {
            BrokerError::not_found(format!("stream for subject {subject:?}"))
        }
        Op::Last { stream } | Op::Read { stream } => {
            BrokerError::not_found(format!("stream {stream:?}"))
        }
        Op::KvBucket { bucket } | Op::KvRead { bucket } => {
            BrokerError::not_found(format!("KV bucket {bucket:?}"))
        }
        _ => unavailable(),
    };
    let size_of = |op: &Op<'_>| match op {
        Op::Append { size, .. }
        | Op::Publish { size, .. }
        | Op::Request { size, .. }
        | Op::KvWrite { size, .. } => *size,
        _ => 0,
    };

    let mut layer: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = layer {
        if let Some(api) = api_error(e) {
            let description = api.to_string();
            return match api.error_code().0 {
                code::WRONG_LAST_SEQUENCE => match op {
                    Op::KvCreate { key } => BrokerError::AlreadyExists {
                        what: format!("key {key:?}"),
                    },
                    Op::KvUpdate { key, revision } => BrokerError::WrongRevision {
                        key: (*key).to_owned(),
                        expected: *revision,
                    },
                    Op::Append { expected, .. } => BrokerError::WrongLastSequence {
                        expected: expected.unwrap_or(0),
                        actual: actual_sequence(&description).unwrap_or(0),
                    },
                    _ => BrokerError::Other {
                        reason: description,
                    },
                },
                code::STREAM_NOT_FOUND => match op {
                    Op::KvBucket { bucket } | Op::KvRead { bucket } => {
                        BrokerError::not_found(format!("KV bucket {bucket:?}"))
                    }
                    Op::Last { stream } | Op::Read { stream } | Op::EnsureStream { stream } => {
                        BrokerError::not_found(format!("stream {stream:?}"))
                    }
                    _ => BrokerError::not_found(description),
                },
                code::NO_MESSAGE_FOUND => BrokerError::not_found(description),
                code::SUBJECT_OVERLAP | code::BAD_REQUEST | code::INVALID_CONFIG => {
                    BrokerError::InvalidArgument {
                        reason: description,
                    }
                }
                code::STREAM_NAME_IN_USE => BrokerError::AlreadyExists { what: description },
                code::MESSAGE_TOO_LARGE => too_large(size_of(op), 0),
                code::DUPLICATE_IN_PROCESS
                | code::TEMPORARILY_UNAVAILABLE
                | code::IN_FLIGHT_WRITE
                | code::CLUSTER_NOT_AVAILABLE
                | code::CLUSTER_NOT_LEADER => BrokerError::Unavailable {
                    reason: description,
                },
                code::NO_SUITABLE_PEERS => BrokerError::InvalidArgument {
                    reason: description,
                },
                code::MAXIMUM_CONSUMERS => limit(BrokerLimit::Consumers, description),
                code::MAXIMUM_STREAMS => limit(BrokerLimit::Streams, description),
                code::INSUFFICIENT_RESOURCES
                | code::MEMORY_RESOURCES_EXCEEDED
                | code::STORAGE_RESOURCES_EXCEEDED => limit(BrokerLimit::Storage, description),
                code::ACCOUNT_RESOURCES_EXCEEDED | code::STREAM_BYTES_EXCEEDS_ACCOUNT => {
                    limit(BrokerLimit::Account, description)
                }
                code::TOO_MANY_REQUESTS => limit(BrokerLimit::Requests, description),
                // 503 without an err_code: JetStream has no leader at the moment.
                _ if api.code() == 503 => BrokerError::Unavailable {
                    reason: description,
                },
                _ => BrokerError::Other {
                    reason: description,
                },
            };
        }
        if let Some(e) = e.downcast_ref::<jetstream::context::PublishError>() {
            use jetstream::context::PublishErrorKind as K;
            match e.kind() {
                K::TimedOut => return timeout(),
                K::BrokenPipe | K::MaxAckPending => return unavailable(),
                K::StreamNotFound => return no_responders(),
                K::MaxPayloadExceeded => return too_large(size_of(op), 0),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
            use async_nats::RequestErrorKind as K;
            match e.kind() {
                K::TimedOut => return timeout(),
                K::NoResponders => return no_responders(),
                K::InvalidSubject => return BrokerError::invalid(reason()),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<jetstream::context::RequestError>() {
            use jetstream::context::RequestErrorKind as K;
            match e.kind() {
                K::TimedOut => return timeout(),
                K::NoResponders => return no_responders(),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<async_nats::PublishError>() {
            use async_nats::client::PublishErrorKind as K;
            match e.kind() {
                K::MaxPayloadExceeded => return too_large(size_of(op), 0),
                K::InvalidSubject => return BrokerError::invalid(reason()),
                _ => return unavailable(),
            }
        }
        if let Some(e) = e.downcast_ref::<kv::CreateError>() {
            if e.kind() == kv::CreateErrorKind::AlreadyExists
                && let Op::KvCreate { key } = op
            {
                return BrokerError::AlreadyExists {
                    what: format!("key {key:?}"),
                };
            }
            if e.kind() == kv::CreateErrorKind::InvalidKey {
                return BrokerError::invalid(reason());
            }
        }
        if let Some(e) = e.downcast_ref::<kv::UpdateError>() {
            use kv::UpdateErrorKind as K;
            match (e.kind(), op) {
                (K::WrongLastRevision, Op::KvUpdate { key, revision }) => {
                    return BrokerError::WrongRevision {
                        key: (*key).to_owned(),
                        expected: *revision,
                    };
                }
                (K::TimedOut, _) => return timeout(),
                (K::InvalidKey, _) => return BrokerError::invalid(reason()),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<stream::DirectGetError>() {
            use stream::DirectGetErrorKind as K;
            match e.kind() {
                K::TimedOut => return timeout(),
                K::InvalidSubject => return BrokerError::invalid(reason()),
                K::ErrorResponse(status, _) if status.as_u16() == 503 => return no_responders(),
                K::ErrorResponse(status, _) if status.as_u16() == 408 => return timeout(),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            return match e.kind() {
                std::io::ErrorKind::TimedOut => timeout(),
                _ => unavailable(),
            };
        }
        layer = e.source();
    }
    // Dozens of async-nats kinds spell "timed out" and "no responders" in their own enums;
    // their text is the common denominator.
    let text = reason().to_ascii_lowercase();
    if text.contains("timed out") || text.contains("timeout") {
        timeout()
    } else if text.contains("no responders") {
        no_responders()
    } else if text.contains("disconnected")
        || text.contains("broken pipe")
        || text.contains("connection")
    {
        unavailable()
    } else {
        let _ = code::KV_NOT_FOUND;
        BrokerError::Other { reason: reason() }
    }
}

fn to_header_map(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(k.as_str(), v.as_str());
    }
    map
}

/// Headers as the publisher set them: the broker's own `Nats-*` headers are dropped.
fn from_header_map(map: Option<&HeaderMap>) -> Headers {
    let mut headers = Headers::new();
    if let Some(map) = map {
        for (name, values) in map.iter() {
            let name: &str = name.as_ref();
            if is_reserved_header(name) {
                continue;
            }
            if let Some(value) = values.last() {
                headers.insert(name.to_owned(), value.as_str().to_owned());
            }
        }
    }
    headers
}

fn is_reserved_header(name: &str) -> bool {
    name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-")
}

fn core_message(message: async_nats::Message) -> Message {
    Message {
        subject: message.subject.to_string(),
        headers: from_header_map(message.headers.as_ref()),
        payload: message.payload,
        reply: message.reply.map(|r| r.to_string()),
    }
}

fn stored_message(message: &jetstream::Message) -> Option<StoredMessage> {
    let info = message.info().ok()?;
    Some(StoredMessage {
        subject: message.subject.to_string(),
        sequence: info.stream_sequence,
        headers: from_header_map(message.headers.as_ref()),
        payload: message.payload.clone(),
        time: SystemTime::from(info.published),
    })
}

fn stream_message(m: jetstream::message::StreamMessage) -> StoredMessage {
    StoredMessage {
        subject: m.subject.to_string(),
        sequence: m.sequence,
        headers: from_header_map(Some(&m.headers)),
        payload: m.payload,
        time: SystemTime::from(m.time),
    }
}

/// Whether a direct get found nobody to answer it (status 503): the stream is missing, or no
/// replica serves direct gets right now; the leader read that follows tells which.
fn is_unanswered(error: &stream::DirectGetError) -> bool {
    matches!(error.kind(), stream::DirectGetErrorKind::ErrorResponse(status, _) if status.as_u16() == 503)
}

/// The header a KV bucket's stream marks deletions with (`DEL`, `PURGE`).
const HEADER_KV_OPERATION: &str = "KV-Operation";

/// A core subscription; draining is async-nats' drain (UNSUB, then what is in flight).
struct NatsSubscription(async_nats::Subscriber);

impl futures::Stream for NatsSubscription {
    type Item = Message;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|m| m.map(core_message))
    }
}

impl SubscriptionSource for NatsSubscription {
    fn drain(&mut self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.0.drain().await {
                tracing::debug!(%error, "drain of a subscription failed");
            }
        })
    }
}

fn storage(kind: StorageKind) -> stream::StorageType {
    match kind {
        StorageKind::File => stream::StorageType::File,
        StorageKind::Memory => stream::StorageType::Memory,
    }
}

fn kv_operation(op: kv::Operation) -> KvOperation {
    match op {
        kv::Operation::Put => KvOperation::Put,
        kv::Operation::Delete | kv::Operation::Purge => KvOperation::Delete,
    }
}

fn kv_entry(entry: kv::Entry) -> KvEntry {
    KvEntry {
        bucket: entry.bucket,
        key: entry.key,
        value: entry.value,
        revision: entry.revision,
        operation: kv_operation(entry.operation),
    }
}

impl Broker for NatsBroker {
    async fn ensure_stream(&self, config: StreamConfig) -> Result<(), BrokerError> {
        config.validate()?;
        let op = Op::EnsureStream {
            stream: &config.name,
        };
        match self.js.get_stream_no_info(&config.name).await {
            Ok(handle) => match handle.get_info().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let mapped = map_error(&op, &e);
                    if !matches!(mapped, BrokerError::NotFound { .. }) {
                        return Err(mapped);
                    }
                }
            },
            Err(e) => return Err(map_error(&op, &e)),
        }
        let native = stream::Config {
            name: config.name.clone(),
            subjects: config.subjects.clone(),
            max_age: config.max_age.unwrap_or(Duration::ZERO),
            max_messages_per_subject: config
                .max_messages_per_subject
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            max_message_size: config
                .max_message_size
                .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
            num_replicas: config.replicas.max(1),
            duplicate_window: config.duplicate_window,
            storage: storage(config.storage),
            deny_delete: config.deny_delete,
            deny_purge: config.deny_purge,
            allow_direct: true,
            ..Default::default()
        };
        match self.js.create_stream(native).await {
            Ok(_) => Ok(()),
            Err(e) => match map_error(&op, &e) {
                // Created concurrently by someone else: leave it as it is.
                BrokerError::AlreadyExists { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn append(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    ) -> Result<AppendAck, BrokerError> {
        validate_subject(subject)?;
        check_user_headers(&headers)?;
        let size = wire_size(&headers, &payload, &options);
        let max = self.client.server_info().max_payload;
        if max > 0 && size > max {
            return Err(BrokerError::PayloadTooLarge { size, max });
        }
        let op = Op::Append {
            subject,
            expected: options.expected_last_subject_sequence,
            size,
        };
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(to_header_map(&headers));
        if let Some(id) = &options.message_id {
            publish = publish.message_id(id);
        }
        if let Some(expected) = options.expected_last_subject_sequence {
            // Also for 0 ("the subject must be empty"): async-nats sends the header as given.
            publish = publish.expected_last_subject_sequence(expected);
        }
        let result = match self.js.send_publish(subject.to_owned(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(ack) => Ok(AppendAck {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(e) => match map_error(&op, &e) {
                BrokerError::NotFound { what } => {
                    // No responders: either no stream captures the subject (definite), or the
                    // stream exists and is between leaders (transient; nothing was stored).
                    // Only the server's definite "no stream captures it" is NotFound; a lookup
                    // that itself fails (the meta leader is moving too) leaves it transient.
                    use jetstream::context::GetStreamByNameErrorKind as K;
                    match self.js.stream_by_subject(subject.to_owned()).await {
                        Err(e) if e.kind() == K::NotFound => Err(BrokerError::NotFound { what }),
                        Ok(_) => Err(BrokerError::Unavailable {
                            reason: format!("stream for subject {subject:?} has no leader"),
                        }),
                        Err(e) => Err(BrokerError::Unavailable {
                            reason: format!(
                                "no answer for subject {subject:?}, and the stream lookup failed: {e}"
                            ),
                        }),
                    }
                }
                BrokerError::PayloadTooLarge { size, max: 0 } => {
                    let max = match self.js.stream_by_subject(subject.to_owned()).await {
                        Ok(name) => match self.js.get_stream(name).await {
                            Ok(s) => usize::try_from(s.cached_info().config.max_message_size)
                                .unwrap_or(0),
                            Err(_) => 0,
                        },
                        Err(_) => 0,
                    };
                    Err(BrokerError::PayloadTooLarge { size, max })
                }
                other => Err(other),
            },
        }
    }

    async fn last(
        &self,
        stream: &str,
        subject: &str,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        validate_subject(subject)?;
        let op = Op::Last { stream };
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(&op, &e))?;
        if from == ReadFrom::AnyReplica {
            match handle.direct_get_last_for_subject(subject).await {
                Ok(m) => return Ok(Some(stream_message(m))),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
                // No replica serves direct gets right now: ask the leader.
                Err(e) if is_unanswered(&e) => {}
                Err(e) => return Err(map_error(&op, &e)),
            }
        }
        match handle.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(stream_message(m))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(map_error(&op, &e)),
        }
    }

    async fn next(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        validate_subject(subject)?;
        let op = Op::Last { stream };
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(&op, &e))?;
        let from_sequence = from_sequence.max(1);
        if from == ReadFrom::AnyReplica {
            match handle
                .direct_get_next_for_subject(subject, Some(from_sequence))
                .await
            {
                Ok(m) => return Ok(Some(stream_message(m))),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) if is_unanswered(&e) => {}
                Err(e) => return Err(map_error(&op, &e)),
            }
        }
        match handle
            .get_first_raw_message_by_subject(subject, from_sequence)
            .await
        {
            Ok(m) => Ok(Some(stream_message(m))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(map_error(&op, &e)),
        }
    }

    async fn read(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        let mut out = Vec::new();
        self.read_each(stream, subject, from_sequence, |m| out.push(m))
            .await?;
        Ok(out)
    }

    async fn read_each<F: FnMut(StoredMessage) + Send>(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        mut visit: F,
    ) -> Result<(), BrokerError> {
        validate_pattern(subject)?;
        let op = Op::Read { stream };
        self.read_pages(&op, stream, subject, from_sequence, |m| {
            visit(m);
            true
        })
        .await
    }

    async fn read_batch(
        &self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        validate_pattern(filter)?;
        let op = Op::Read { stream };
        let mut out = Vec::new();
        let mut from = from_sequence.max(1);
        while out.len() < max {
            let page = self
                .direct_page(
                    &op,
                    stream,
                    filter,
                    from,
                    (max - out.len()).min(DIRECT_BATCH_MAX),
                    &mut |m| {
                        out.push(m);
                        true
                    },
                )
                .await?;
            if page.unanswered {
                let wanted = max - out.len();
                let mut taken = 0;
                self.consume(&op, stream, filter, from, |m| {
                    out.push(m);
                    taken += 1;
                    taken < wanted
                })
                .await?;
                break;
            }
            match page.last_sequence {
                Some(last) if page.pending > 0 => from = last + 1,
                _ => break,
            }
        }
        Ok(out)
    }

    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        validate_subject(subject)?;
        let size = wire_size(&headers, &payload, &AppendOptions::default());
        let max = self.client.server_info().max_payload;
        if max > 0 && size > max {
            return Err(BrokerError::PayloadTooLarge { size, max });
        }
        let op = Op::Publish { subject, size };
        let result = if headers.is_empty() {
            self.client.publish(subject.to_owned(), payload).await
        } else {
            self.client
                .publish_with_headers(subject.to_owned(), to_header_map(&headers), payload)
                .await
        };
        result.map_err(|e| map_error(&op, &e))
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BrokerError> {
        validate_pattern(pattern)?;
        let subscriber = self
            .client
            .subscribe(pattern.to_owned())
            .await
            .map_err(|e| map_error(&Op::Subscribe, &e))?;
        Ok(Subscription::from_source(NatsSubscription(subscriber)))
    }

    async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        validate_subject(subject)?;
        let size = wire_size(&headers, &payload, &AppendOptions::default());
        let max = self.client.server_info().max_payload;
        if max > 0 && size > max {
            return Err(BrokerError::PayloadTooLarge { size, max });
        }
        let op = Op::Request { subject, size };
        let mut request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        if !headers.is_empty() {
            request = request.headers(to_header_map(&headers));
        }
        self.client
            .send_request(subject.to_owned(), request)
            .await
            .map(core_message)
            .map_err(|e| map_error(&op, &e))
    }

    async fn kv_ensure(&self, config: KvConfig) -> Result<(), BrokerError> {
        config.validate()?;
        if self.bucket(&config.bucket).await.is_ok() {
            return Ok(());
        }
        let op = Op::KvBucket {
            bucket: &config.bucket,
        };
        let native = kv::Config {
            bucket: config.bucket.clone(),
            history: 1,
            max_age: config.ttl.unwrap_or(Duration::ZERO),
            num_replicas: config.replicas.max(1),
            max_value_size: config
                .max_value_size
                .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
            storage: storage(config.storage),
            ..Default::default()
        };
        match self.js.create_key_value(native).await {
            Ok(store) => {
                self.lock_buckets().insert(config.bucket.clone(), store);
                Ok(())
            }
            Err(e) => match self.bucket(&config.bucket).await {
                // Created concurrently by someone else.
                Ok(_) => Ok(()),
                Err(_) => Err(map_error(&op, &e)),
            },
        }
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BrokerError> {
        validate_kv_key(key)?;
        let store = self.bucket(bucket).await?;
        let entry = store
            .entry(key)
            .await
            .map_err(|e| map_error(&Op::KvRead { bucket }, &e))?;
        Ok(entry
            .map(kv_entry)
            .filter(|e| e.operation == KvOperation::Put))
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        validate_kv_key(key)?;
        let store = self.bucket(bucket).await?;
        store
            .create(key, value)
            .await
            .map_err(|e| map_error(&Op::KvCreate { key }, &e))
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        validate_kv_key(key)?;
        let store = self.bucket(bucket).await?;
        store
            .update(key, value, revision)
            .await
            .map_err(|e| map_error(&Op::KvUpdate { key, revision }, &e))
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        validate_kv_key(key)?;
        let size = value.len();
        let store = self.bucket(bucket).await?;
        store
            .put(key, value)
            .await
            .map_err(|e| map_error(&Op::KvWrite { key, size }, &e))
    }

    async fn kv_delete(&self, bucket: &str, key: &str) -> Result<(), BrokerError> {
        validate_kv_key(key)?;
        let store = self.bucket(bucket).await?;
        store
            .delete(key)
            .await
            .map_err(|e| map_error(&Op::KvWrite { key, size: 0 }, &e))
    }

    async fn kv_entries(&self, bucket: &str) -> Result<Vec<KvEntry>, BrokerError> {
        // Check the bucket exists (and is a KV bucket) before reading its stream.
        self.bucket(bucket).await?;
        let op = Op::KvRead { bucket };
        let prefix = format!("$KV.{bucket}.");
        // Buckets keep one message per key (history 1): reading the bucket's stream from the
        // start gives each key's latest entry, tombstones included — with batched direct gets,
        // so a poll leaves nothing behind on the server.
        let mut entries: BTreeMap<String, KvEntry> = BTreeMap::new();
        self.read_pages(
            &op,
            &format!("KV_{bucket}"),
            &format!("{prefix}>"),
            1,
            |message| {
                if let Some(key) = message.subject.strip_prefix(&prefix) {
                    let deleted = message
                        .headers
                        .get(HEADER_KV_OPERATION)
                        .is_some_and(|v| v == "DEL" || v == "PURGE");
                    if deleted {
                        entries.remove(key);
                    } else {
                        entries.insert(
                            key.to_owned(),
                            KvEntry {
                                bucket: bucket.to_owned(),
                                key: key.to_owned(),
                                value: message.payload,
                                revision: message.sequence,
                                operation: KvOperation::Put,
                            },
                        );
                    }
                }
                true
            },
        )
        .await?;
        Ok(entries.into_values().collect())
    }

    async fn kv_watch(&self, bucket: &str, key_pattern: &str) -> Result<KvWatch, BrokerError> {
        validate_pattern(key_pattern)?;
        let store = self.bucket(bucket).await?;
        // Buckets are created with history 1, so "all history" is exactly the current entry
        // of every key (tombstones included) followed by every later write.
        let watch = store
            .watch_with_history(key_pattern)
            .await
            .map_err(|e| map_error(&Op::KvRead { bucket }, &e))?;
        Ok(KvWatch::new(watch.filter_map(|entry| async move {
            entry.ok().map(kv_entry)
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_below_2_11_are_refused() {
        assert!(server_version_supported("2.15.1"));
        assert!(server_version_supported("2.11.0"));
        assert!(server_version_supported("v2.12.0-beta.1"));
        assert!(server_version_supported("3.0.0"));
        assert!(!server_version_supported("2.10.24"));
        assert!(!server_version_supported("2.9.10"));
        assert!(!server_version_supported("garbage"));
    }

    #[test]
    fn actual_sequence_is_parsed_from_the_server_description() {
        assert_eq!(
            actual_sequence("wrong last sequence: 42 (code 400, error code 10071)"),
            Some(42)
        );
        assert_eq!(actual_sequence("wrong last sequence: 42"), Some(42));
    }

    #[test]
    fn reserved_headers_are_recognised_case_insensitively() {
        assert!(is_reserved_header("Nats-Msg-Id"));
        assert!(is_reserved_header("nats-expected-stream"));
        assert!(!is_reserved_header("Aether-Commit-Id"));
        assert!(!is_reserved_header("Nat"));
    }

    #[test]
    fn auth_debug_never_prints_secrets() {
        let text = format!(
            "{:?}",
            NatsOptions::new("nats://x:4222").user_password("ada", "s3cret")
        );
        assert!(text.contains("ada"));
        assert!(!text.contains("s3cret"));
        let text = format!("{:?}", NatsAuth::Token("t0ken".into()));
        assert!(!text.contains("t0ken"));
    }
}
