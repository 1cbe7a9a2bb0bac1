//! Ambiguous writes on a real nats-server: a loopback TCP proxy between the client and the
//! server cuts the connection around an event-store publish. Whether the server committed the
//! publish (reply lost) or never saw it, the store's retry yields exactly one commit.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use aether::broker::Broker;
use aether::codec::{HEADER_COMMIT_ID, encode_actor_id};
use aether::{
    EventStore, ExpectedVersion, NatsBroker, NatsOptions, NewEvent, Runtime, StoreConfig,
};
use support::nats_server::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with the first client chunk that publishes to the event store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Forward the publish, drop the server's reply, then cut the connection.
    AfterForwarding,
    /// Cut the connection without forwarding the publish.
    BeforeForwarding,
}

/// A one-shot connection cutter on 127.0.0.1.
struct Proxy {
    port: u16,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicU32>,
}

const TRIGGER: &[u8] = b"PUB aether.ev.";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Proxy {
    async fn start(upstream: u16, cut: Cut) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU32::new(0));
        let (armed_c, cuts_c) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .expect("proxy reaches the server");
                tokio::spawn(pipe(client, server, cut, armed_c.clone(), cuts_c.clone()));
            }
        });
        Self { port, armed, cuts }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    cut: Cut,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicU32>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let cutting = Arc::new(AtomicBool::new(false));
    let cutting_down = cutting.clone();
    let downstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cutting_down.load(Ordering::SeqCst) {
                return; // the reply to the cut publish is lost
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if contains(chunk, TRIGGER) && armed.swap(false, Ordering::SeqCst) {
            cutting.store(true, Ordering::SeqCst);
            if cut == Cut::AfterForwarding {
                let _ = server_write.write_all(chunk).await;
                let _ = server_write.flush().await;
                // Let the server commit before the connection goes away.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if server_write.write_all(chunk).await.is_err() {
            break;
        }
    }
    downstream.abort();
    // Dropping the halves closes both connections.
}

async fn ambiguous_append_yields_one_commit(cut: Cut) {
    let server = NatsServer::start();
    let proxy = Proxy::start(server.port, cut).await;
    let broker =
        NatsBroker::connect(NatsOptions::new(proxy.url()).request_timeout(Duration::from_secs(1)))
            .await
            .expect("connect through the proxy");
    let namespace = "amb";
    let store = EventStore::open(Runtime::system(broker), StoreConfig::new(namespace))
        .await
        .expect("store");
    store
        .append(
            "a",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Opened", serde_json::json!({}))],
        )
        .await
        .expect("first append");
    proxy.arm();
    let outcome = store
        .append(
            "a",
            ExpectedVersion::Exact(1),
            vec![
                NewEvent::new("Deposited", serde_json::json!({"amount": 5})),
                NewEvent::new("Deposited", serde_json::json!({"amount": 7})),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{cut:?}: the retry must resolve the cut: {e}"));
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "{cut:?}: the proxy cut once"
    );
    assert_eq!((outcome.first_version(), outcome.last_version()), (2, 3));

    // Check on a direct connection, not through the proxy.
    let direct = server.broker().await;
    let subject = format!("aether.ev.{namespace}.{}", encode_actor_id("a").unwrap());
    let records = direct
        .read(&format!("AETHER_EV_{namespace}"), &subject, 1)
        .await
        .expect("read");
    assert_eq!(
        records.len(),
        2,
        "{cut:?}: exactly one commit after the first"
    );
    assert_eq!(
        records[1].headers.get(HEADER_COMMIT_ID),
        Some(&outcome.commit_id),
        "{cut:?}: the stored commit is the acknowledged one"
    );
    let check = EventStore::open(Runtime::system(direct), StoreConfig::new(namespace))
        .await
        .expect("store");
    let events = check.events("a", 1).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_lost_after_the_server_committed_is_retried_into_exactly_one_commit() {
    ambiguous_append_yields_one_commit(Cut::AfterForwarding).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_lost_before_the_server_saw_it_is_retried_into_exactly_one_commit() {
    ambiguous_append_yields_one_commit(Cut::BeforeForwarding).await;
}
