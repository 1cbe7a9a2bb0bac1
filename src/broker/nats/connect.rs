//! Connecting to NATS: URLs, credentials, TLS, timeouts, and the checks made at connect time
//! (server version, JetStream available).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream;

use super::violations::{Concern, Violations};
use super::{JS_API_PREFIX, NatsBroker};
use crate::broker::BrokerError;

/// NATS's default prefix of reply subjects.
const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

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
#[non_exhaustive]
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

impl NatsTls {
    /// TLS that must be used: a server without it is refused.
    pub fn required() -> Self {
        Self {
            required: true,
            ..Self::default()
        }
    }

    /// Trusts the root certificates in the PEM file `path` (besides the system's).
    pub fn root_certificates(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_certificates = Some(path.into());
        self
    }

    /// Presents the certificate and key in PEM files `cert` and `key` (mutual TLS).
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self
    }

    /// Starts TLS before the NATS `INFO` (server option `handshake_first`).
    pub fn handshake_first(mut self) -> Self {
        self.handshake_first = true;
        self
    }
}

/// How to reach NATS.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// fails with [`BrokerError::Timeout`](crate::broker::BrokerError::Timeout) (ambiguous for appends).
    pub request_timeout: Duration,
    /// Give up reconnecting after this many attempts; `None` retries forever.
    pub max_reconnects: Option<usize>,
    /// The prefix of the connection's reply subjects; `None` is NATS's `_INBOX`. Give each
    /// tenant its own (the permission sets of [`crate::permissions`] use
    /// [`crate::names::inbox_prefix`]), so that no tenant may subscribe to another's replies.
    pub inbox_prefix: Option<String>,
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
            inbox_prefix: None,
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

    /// Sets the prefix of the connection's reply subjects (see [`NatsOptions::inbox_prefix`]).
    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inbox_prefix = Some(prefix.into());
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
#[non_exhaustive]
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
    /// The credentials may not use a subject that connecting needs (`$JS.API.INFO`, to check
    /// JetStream, or the reply inbox).
    #[error("the NATS credentials may not {action} {subject:?}, which connecting needs")]
    PermissionDenied {
        /// Publishing or subscribing.
        action: crate::broker::PermissionAction,
        /// The refused subject.
        subject: String,
    },
    /// The server answered but JetStream is not enabled for this account.
    #[error("JetStream is not available on the NATS server: {reason}; start nats-server with -js")]
    JetStreamUnavailable {
        /// What the server said.
        reason: String,
    },
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
        let inbox_prefix = options
            .inbox_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_INBOX_PREFIX.to_owned());
        if options.inbox_prefix.is_some() {
            connect = connect.custom_inbox_prefix(&inbox_prefix);
        }
        let violations = Violations::new(&inbox_prefix);
        let events = violations.clone();
        let log = EventLog {
            urls: urls.clone(),
            name: options.name.clone(),
            server: Arc::new(Mutex::new(None)),
            draining: Arc::default(),
        };
        let connected = log.clone();
        connect = connect.event_callback(move |event| {
            log.on_event(&event);
            events.on_event(&event);
            std::future::ready(())
        });
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
        connected.first_server(&info);
        if !server_version_supported(&info.version) {
            return Err(NatsConnectError::UnsupportedServer {
                server: info.server_name.clone(),
                version: info.version.clone(),
            });
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .build(client.clone());
        let broker = Self {
            client,
            js,
            api_prefix: JS_API_PREFIX.to_owned(),
            inbox_prefix,
            request_timeout: options.request_timeout,
            buckets: Arc::new(Mutex::new(BTreeMap::new())),
            violations,
        };
        let concern = Concern {
            account_info: true,
            ..broker.concern()
        };
        let op = "checking JetStream";
        let check = async {
            broker
                .js
                .query_account()
                .await
                .map_err(|e| BrokerError::Other {
                    reason: e.to_string(),
                })
        };
        match broker.violations.guard(concern, &op, Box::pin(check)).await {
            Ok(_) => Ok(broker),
            Err(BrokerError::PermissionDenied {
                action, subject, ..
            }) => Err(NatsConnectError::PermissionDenied { action, subject }),
            Err(e) => Err(NatsConnectError::JetStreamUnavailable {
                reason: e.to_string(),
            }),
        }
    }
}

/// Logs a connection's events with `tracing`: `info!` when it (re)connects, drains or closes
/// after a drain; `warn!` when it closes without one (reconnects exhausted),
/// when it loses its server, the server enters lame-duck mode (it is shutting down and
/// asks clients to move), a subscription falls behind (slow consumer: the client dropped
/// messages), or the server or client reports an error. Permission violations are logged by
/// [`Violations`], which also turns them into errors.
#[derive(Clone, Debug)]
struct EventLog {
    /// The configured server URLs.
    urls: String,
    /// The connection's name, if configured.
    name: Option<String>,
    /// The server the connection first reached: name, `host:port` and version (async-nats does
    /// not say which server a reconnect reached).
    server: Arc<Mutex<Option<String>>>,
    /// The application drained the connection: its closing is expected.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl EventLog {
    fn first_server(&self, info: &async_nats::ServerInfo) {
        let server = format!(
            "{} at {}:{} (nats-server {})",
            info.server_name, info.host, info.port, info.version
        );
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
    }

    fn on_event(&self, event: &async_nats::Event) {
        use async_nats::{Event, ServerError};
        let server = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "not connected yet".to_owned());
        let (urls, name) = (&self.urls, self.name.as_deref().unwrap_or(""));
        let kind = match event {
            Event::Connected => "connected",
            Event::Disconnected => "disconnected",
            Event::LameDuckMode => "lame_duck",
            Event::SlowConsumer(_) => "slow_consumer",
            Event::ServerError(_) => "server_error",
            Event::ClientError(_) => "client_error",
            Event::Draining => "draining",
            Event::Closed => "closed",
        };
        metrics::counter!(crate::telemetry::NATS_CONNECTION_EVENTS, "event" => kind).increment(1);
        match event {
            Event::Connected => {
                tracing::info!(urls, first_server = %server, name, "NATS connection established")
            }
            Event::Disconnected => tracing::warn!(
                urls, first_server = %server, name,
                "NATS connection lost; reconnecting (operations wait or time out meanwhile)"
            ),
            Event::LameDuckMode => tracing::warn!(
                urls, first_server = %server, name,
                "NATS server entered lame-duck mode (shutting down); the client will move to another server"
            ),
            Event::SlowConsumer(sid) => tracing::warn!(
                urls, first_server = %server, name, subscription = sid,
                "NATS slow consumer: messages for a subscription were dropped"
            ),
            Event::ServerError(ServerError::Other(text))
                if super::violations::parse(text).is_some() => {}
            Event::ServerError(error) => tracing::warn!(
                urls, first_server = %server, name, %error,
                "NATS server reported an error"
            ),
            Event::ClientError(error) => tracing::warn!(
                urls, first_server = %server, name, %error,
                "NATS client error"
            ),
            Event::Draining => {
                self.draining
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(urls, first_server = %server, name, "NATS connection draining")
            }
            Event::Closed if self.draining.load(std::sync::atomic::Ordering::Relaxed) => {
                tracing::info!(urls, first_server = %server, name, "NATS connection closed")
            }
            // Closed without a drain: the client gave up reconnecting.
            Event::Closed => tracing::warn!(
                urls, first_server = %server, name,
                "NATS connection closed without a drain (reconnect attempts exhausted?)"
            ),
        }
    }
}

/// Whether an I/O error's text is rustls refusing the TLS handshake, or the server refusing it
/// with a TLS alert (with TLS 1.3 a server that requires a client certificate and gets none,
/// or one it does not trust, says so after the client finished its half of the handshake:
/// `received fatal alert: CertificateRequired`, `… UnknownCA`, `… BadCertificate`).
fn is_tls_failure(reason: &str) -> bool {
    [
        "fatal alert",
        "invalid peer certificate",
        "peer is incompatible",
        "peer misbehaved",
        "handshake",
    ]
    .iter()
    .any(|needle| reason.contains(needle))
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
