//! Connection flags, named as the `nats` CLI names them (and read from the same environment
//! variables), mapped onto the library's `NatsOptions`.

use std::path::PathBuf;
use std::time::Duration;

use aether::NatsOptions;
use aether::broker::NatsTls;
use clap::Args;

use crate::output::CliError;

/// Where the server is and how to authenticate.
#[derive(Args, Debug)]
pub struct ConnectionArgs {
    /// NATS server URLs, comma-separated.
    #[arg(
        short = 's',
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true,
        value_name = "URL"
    )]
    server: String,
    /// User credentials file (JWT and nkey seed, as `nsc` issues them).
    #[arg(long, env = "NATS_CREDS", global = true, value_name = "FILE")]
    creds: Option<PathBuf>,
    /// User name (with --password).
    #[arg(long, env = "NATS_USER", global = true)]
    user: Option<String>,
    /// Password (with --user).
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// Authentication token.
    #[arg(long, env = "NATS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// File holding a user nkey seed (`SU...`).
    #[arg(long, env = "NATS_NKEY", global = true, value_name = "FILE")]
    nkey: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --tlskey).
    #[arg(long, env = "NATS_CERT", global = true, value_name = "FILE")]
    tlscert: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[arg(long, env = "NATS_KEY", global = true, value_name = "FILE")]
    tlskey: Option<PathBuf>,
    /// CA certificates (PEM) to trust besides the system's.
    #[arg(long, env = "NATS_CA", global = true, value_name = "FILE")]
    tlsca: Option<PathBuf>,
    /// Start TLS before the server's INFO (server option `handshake_first`).
    #[arg(long, global = true)]
    tlsfirst: bool,
    /// Time allowed for connecting and for each request, in seconds.
    #[arg(
        long,
        env = "NATS_TIMEOUT",
        default_value_t = 5.0,
        global = true,
        value_name = "SECONDS"
    )]
    timeout: f64,
}

impl ConnectionArgs {
    /// The library's connection options for these flags.
    ///
    /// # Errors
    /// [`CliError::Usage`] for flags that do not go together or an unreadable nkey file.
    pub fn options(&self) -> Result<NatsOptions, CliError> {
        let usage = |m: &str| Err(CliError::Usage(m.to_owned()));
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout < 3600.0) {
            return usage("--timeout must be a number of seconds between 0 and 3600");
        }
        let timeout = Duration::from_secs_f64(self.timeout);
        let mut options = NatsOptions::new(&self.server)
            .name("aether-cli")
            .connection_timeout(timeout)
            .request_timeout(timeout);
        if options.urls.is_empty() {
            return usage("--server names no URL");
        }
        let methods = [
            self.creds.is_some(),
            self.user.is_some(),
            self.token.is_some(),
            self.nkey.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return usage("give one of --creds, --user/--password, --token and --nkey");
        }
        options = match (&self.user, &self.password) {
            (Some(user), Some(password)) => options.user_password(user, password),
            (Some(_), None) => return usage("--user needs --password"),
            (None, Some(_)) => return usage("--password needs --user"),
            (None, None) => options,
        };
        if let Some(creds) = &self.creds {
            options = options.credentials_file(creds);
        }
        if let Some(token) = &self.token {
            options = options.token(token);
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!("cannot read nkey file {}: {e}", path.display()))
            })?;
            options = options.nkey(seed.trim());
        }
        // As the `nats` CLI: any TLS flag means TLS is required.
        let tls_wanted = self.tlscert.is_some()
            || self.tlskey.is_some()
            || self.tlsca.is_some()
            || self.tlsfirst;
        if tls_wanted {
            let mut tls = NatsTls::required();
            if let Some(ca) = &self.tlsca {
                tls = tls.root_certificates(ca);
            }
            match (&self.tlscert, &self.tlskey) {
                (Some(cert), Some(key)) => tls = tls.client_certificate(cert, key),
                (None, None) => {}
                _ => return usage("--tlscert and --tlskey go together"),
            }
            if self.tlsfirst {
                tls = tls.handshake_first();
            }
            options = options.tls(tls);
        }
        Ok(options)
    }
}
