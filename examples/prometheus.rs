//! Operating aether: its metrics in the Prometheus text format, and its traces in the log.
//!
//! Two nodes of a cluster on the embedded memory broker; commands sent from n1 run on their
//! shard's owner. The application installs the exporter (aether only records through the
//! `metrics` facade) and a `tracing` subscriber; a command sent under the application's trace
//! context is logged with one `trace_id` on both nodes and stored with it.
//!
//! ```text
//! cargo run --example prometheus                              # prints /metrics once
//! RUST_LOG=aether=debug cargo run --example prometheus        # and the spans of each command
//! cargo run --example prometheus -- --serve 127.0.0.1:9464    # then serves GET /metrics
//! ```

use std::time::Duration;

use aether::actor::CommandContext;
use aether::cluster::{Cluster, ClusterConfig, NodeId};
use aether::trace::{self, TraceContext};
use aether::{
    ActorConfig, ActorHost, Aggregate, DomainEvent, EventStore, MemoryBroker, Runtime, SharedRng,
    StoreConfig, SystemClock,
};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Serialize, Deserialize)]
enum AccountEvent {
    Moved { amount: i64 },
}

impl DomainEvent for AccountEvent {}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Command = i64;
    type Event = AccountEvent;
    type Rejection = String;

    fn handle(&self, _: &CommandContext<'_>, amount: &i64) -> Result<Vec<AccountEvent>, String> {
        if self.balance + amount < 0 {
            return Err(format!("balance {} cannot pay {}", self.balance, -amount));
        }
        Ok(vec![AccountEvent::Moved { amount: *amount }])
    }

    fn apply(&mut self, AccountEvent::Moved { amount }: &AccountEvent) {
        self.balance += amount;
    }
}

type Node = Cluster<MemoryBroker, SystemClock>;
type Host = ActorHost<Account, MemoryBroker, SystemClock, Node>;

async fn node(broker: &MemoryBroker, id: &str) -> Result<(Node, Host), Box<dyn std::error::Error>> {
    let rt = Runtime::new(broker.clone(), SystemClock::new(), SharedRng::from_os())
        .with_node(NodeId::new(id)?);
    let cluster = Cluster::start(rt.clone(), ClusterConfig::new()).await?;
    let store = EventStore::open(rt, StoreConfig::new("accounts")).await?;
    let host = ActorHost::new(store, cluster.clone(), ActorConfig::new());
    host.serve().await?;
    Ok((cluster, host))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("aether=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    aether::telemetry::describe();

    let broker = MemoryBroker::new();
    let (c1, h1) = node(&broker, "n1").await?;
    let (c2, _h2) = node(&broker, "n2").await?;
    while [&c1, &c2]
        .iter()
        .any(|c| c.view().members.len() < 2 || c.view().epoch() != c1.view().epoch())
        || c1.view().epoch().is_none()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A request that arrived with a W3C traceparent (from an HTTP handler, say): the command
    // runs on its owner inside that trace, and its events are stored with the trace id.
    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let context = TraceContext::parse(incoming).expect("a valid traceparent");
    let actor = (0..)
        .map(|i| format!("acct-{i}"))
        .find(|a| c1.owner_of(a).is_some_and(|o| o.as_str() == "n2"))
        .expect("n2 owns some actor");
    let done = trace::scope(context, h1.send(&actor, &100)).await?;
    eprintln!(
        "{actor}: v{} on {}, stored with trace_id={:?}",
        done.version,
        done.node_id,
        done.events[0].metadata.trace_id()
    );

    for i in 0..100 {
        h1.send(&format!("acct-{i}"), &10).await?;
    }
    let refused = h1.send(&actor, &-1_000_000).await;
    eprintln!("refused as expected: {}", refused.is_err());

    let exposition = prometheus.render();
    println!("{exposition}");

    let mut args = std::env::args().skip(1);
    if let (Some(flag), Some(addr)) = (args.next(), args.next())
        && flag == "--serve"
    {
        serve(&addr, prometheus).await?;
    }
    c1.stop().await;
    c2.stop().await;
    Ok(())
}

/// A minimal `GET /metrics` endpoint (the exporter's own HTTP listener is a feature of the
/// crate this example leaves off to stay small).
async fn serve(
    addr: &str,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("serving http://{addr}/metrics (Ctrl-C to stop)");
    loop {
        let (mut socket, _) = listener.accept().await?;
        let mut request = [0u8; 1024];
        let _ = socket.read(&mut request).await?;
        let body = prometheus.render();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).await?;
    }
}
