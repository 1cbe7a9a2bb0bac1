//! What the security tests share: a server in operator mode with one account of tenants,
//! users with a role's generated permissions, and the check that an operation is refused with
//! `PermissionDenied` on the expected subject (printed with the time it took).
#![allow(clippy::disallowed_methods)] // measures real time-to-error, never asserts on it

use std::time::Instant;

use aether::broker::{BrokerError, PermissionAction};
use aether::cluster::NodeId;
use aether::permissions::{Role, for_role};
use aether::{NatsBroker, NatsOptions, NewEvent, Runtime, SharedRng, SystemClock};
use serde_json::json;
use tempfile::TempDir;

use super::jwt::{Account, Operator, user};
use super::nats_server::{NatsServer, ServerSettings};

/// The namespace tenant A works in, and the one of tenant B.
pub const A: &str = "shop";
pub const B: &str = "bank";

/// One server in operator mode with one account, and a directory for `.creds` files.
pub struct Tenancy {
    pub server: NatsServer,
    pub account: Account,
    pub dir: TempDir,
}

impl Tenancy {
    pub fn start() -> Self {
        let operator = Operator::new();
        let account = operator.account("tenants");
        let server = NatsServer::start_with(ServerSettings {
            extra: Some(operator.server_config(&[&account])),
            ..Default::default()
        });
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            server,
            account,
            dir,
        }
    }

    /// A user of the account with `role` in `namespace` (`None`: allowed everything), connected
    /// with the role's inbox prefix.
    pub async fn connect(&self, name: &str, role: Option<(&str, Role)>) -> NatsBroker {
        let permissions = role.map(|(ns, role)| for_role(ns, &role).expect("valid names"));
        let user = user(
            &self.account,
            name,
            permissions.as_ref(),
            None,
            self.dir.path(),
        );
        let mut options = NatsOptions::new(self.server.url()).credentials_file(&user.creds);
        if let Some(p) = &permissions {
            options = options.inbox_prefix(&p.inbox_prefix);
        }
        NatsBroker::connect(options)
            .await
            .unwrap_or_else(|e| panic!("{name} connects: {e}"))
    }
}

pub fn runtime(broker: &NatsBroker, node: &str) -> Runtime<NatsBroker, SystemClock> {
    Runtime::new(
        broker.clone(),
        SystemClock::new(),
        SharedRng::from_seed(node.len() as u64),
    )
    .with_node(NodeId::new(node).expect("node id"))
}

pub fn event(n: u64) -> Vec<NewEvent> {
    vec![NewEvent::new("Added", json!({ "n": n }))]
}

/// Runs `operation`, expects a `PermissionDenied` for `action` on `subject`, and prints it with
/// the time it took.
pub async fn refused<T: std::fmt::Debug, E: std::fmt::Debug>(
    who: &str,
    what: &str,
    action: PermissionAction,
    subject: &str,
    operation: impl std::future::Future<Output = Result<T, E>>,
    broker_error: impl Fn(&E) -> Option<&BrokerError>,
) {
    let started = Instant::now();
    let result = operation.await;
    let took = started.elapsed();
    let error = result.expect_err(&format!("{who}: {what} must be refused"));
    match broker_error(&error) {
        Some(BrokerError::PermissionDenied {
            action: a,
            subject: s,
            ..
        }) if *a == action && s == subject => {
            println!("REFUSED {who}: {what} -> PermissionDenied({a} {s:?}) in {took:?}");
        }
        _ => {
            panic!("{who}: {what}: expected PermissionDenied({action} {subject:?}), got {error:?}")
        }
    }
}

pub fn direct(e: &BrokerError) -> Option<&BrokerError> {
    Some(e)
}
