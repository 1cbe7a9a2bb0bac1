//! Connecting to NATS: several URLs, credentials, and the clear errors for refused credentials,
//! no server, and servers older than 2.11.

mod support;

use std::time::Duration;

use aether::broker::{Broker, NatsConnectError};
use aether::{NatsBroker, NatsOptions};
use support::nats_server::{NatsServer, ServerSettings};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("nats://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_are_accepted_and_wrong_ones_are_a_typed_authentication_error() {
    let server = NatsServer::start_with(ServerSettings {
        user_password: Some(("ada".into(), "s3cret".into())),
        ..Default::default()
    });
    let broker = NatsBroker::connect(NatsOptions::new(server.url()).user_password("ada", "s3cret"))
        .await
        .expect("right credentials");
    assert!(aether::broker::server_version_supported(
        &broker.server_version()
    ));
    broker
        .kv_ensure(aether::broker::KvConfig::new("auth_ok"))
        .await
        .expect("JetStream usable with credentials");
    let err = NatsBroker::connect(NatsOptions::new(server.url()).user_password("ada", "wrong"))
        .await
        .expect_err("wrong password");
    assert!(
        matches!(err, NatsConnectError::Authentication { .. }),
        "{err:?}"
    );
    let err = NatsBroker::connect(NatsOptions::new(server.url()))
        .await
        .expect_err("no credentials");
    assert!(
        matches!(err, NatsConnectError::Authentication { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("refused the credentials"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_accepted_and_a_wrong_one_is_refused() {
    let server = NatsServer::start_with(ServerSettings {
        token: Some("t0ken".into()),
        ..Default::default()
    });
    NatsBroker::connect(NatsOptions::new(server.url()).token("t0ken"))
        .await
        .expect("right token");
    let err = NatsBroker::connect(NatsOptions::new(server.url()).token("nope"))
        .await
        .expect_err("wrong token");
    assert!(
        matches!(err, NatsConnectError::Authentication { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_answering_is_a_typed_error_naming_the_urls() {
    let url = dead_url();
    let err =
        NatsBroker::connect(NatsOptions::new(&url).connection_timeout(Duration::from_secs(2)))
            .await
            .expect_err("nothing listens");
    match &err {
        NatsConnectError::NoServer { urls, .. } => assert!(urls.contains(&url)),
        other => panic!("expected NoServer, got {other:?}"),
    }
    let err = NatsBroker::connect(NatsOptions::new("  "))
        .await
        .expect_err("no URL");
    assert!(
        matches!(err, NatsConnectError::InvalidOptions { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_connect_to_whichever_server_answers() {
    let server = NatsServer::start();
    let broker = NatsBroker::connect(NatsOptions::new(dead_url()).url(server.url()))
        .await
        .expect("the second URL answers");
    broker
        .publish("x.y", Default::default(), "hi".into())
        .await
        .expect("usable");
}

/// A fake server that announces itself as `version` and answers the client's PING.
async fn fake_server(version: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("nats://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let info = format!(
                    "INFO {{\"server_id\":\"FAKE\",\"server_name\":\"fake\",\"version\":\"{version}\",\
                     \"proto\":1,\"headers\":true,\"max_payload\":1048576,\"host\":\"127.0.0.1\",\"port\":4222}}\r\n"
                );
                if write.write_all(info.as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") && write.write_all(b"PONG\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_older_than_2_11_are_refused_at_connect_with_the_reason() {
    let url = fake_server("2.10.22").await;
    let err = NatsBroker::connect(NatsOptions::new(url))
        .await
        .expect_err("2.10 is too old");
    match &err {
        NatsConnectError::UnsupportedServer { version, .. } => assert_eq!(version, "2.10.22"),
        other => panic!("expected UnsupportedServer, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("2.11") && text.contains("4320"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_is_accepted_and_an_unknown_key_is_refused() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with(ServerSettings {
        nkey_user: Some(user.public_key()),
        ..Default::default()
    });
    let broker = NatsBroker::connect(NatsOptions::new(server.url()).nkey(user.seed().unwrap()))
        .await
        .expect("the allowed nkey");
    broker
        .kv_ensure(aether::broker::KvConfig::new("nkey_ok"))
        .await
        .expect("JetStream usable with an nkey");
    let stranger = nkeys::KeyPair::new_user();
    let err = NatsBroker::connect(NatsOptions::new(server.url()).nkey(stranger.seed().unwrap()))
        .await
        .expect_err("an unknown nkey");
    assert!(
        matches!(err, NatsConnectError::Authentication { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_trusted_root_works_and_an_untrusted_certificate_is_a_typed_tls_error() {
    let dir = tempfile::Builder::new()
        .prefix("aether-tls-")
        .tempdir()
        .expect("create temp dir");
    let certs = support::certs::certificates(dir.path(), "trusted");
    let ca = certs.ca;
    let server = NatsServer::start_with(ServerSettings {
        tls: Some(certs.server),
        ..Default::default()
    });
    let url = format!("tls://127.0.0.1:{}", server.port);
    let trusted = aether::broker::NatsTls::required().root_certificates(ca);
    let broker = NatsBroker::connect(NatsOptions::new(&url).tls(trusted))
        .await
        .expect("TLS with the CA as root");
    broker
        .kv_ensure(aether::broker::KvConfig::new("tls_ok"))
        .await
        .expect("JetStream usable over TLS");
    let untrusted = aether::broker::NatsTls::required();
    let err = NatsBroker::connect(
        NatsOptions::new(&url)
            .tls(untrusted)
            .connection_timeout(Duration::from_secs(3)),
    )
    .await
    .expect_err("a certificate from a CA nobody trusts");
    assert!(matches!(err, NatsConnectError::Tls { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // measures the time to the refusal, never asserts on it
async fn mutual_tls_accepts_a_client_certificate_and_refuses_none_or_a_strangers_with_a_tls_error()
{
    let dir = tempfile::Builder::new()
        .prefix("aether-mtls-")
        .tempdir()
        .expect("create temp dir");
    let certs = support::certs::certificates(dir.path(), "trusted");
    let server = NatsServer::start_with(ServerSettings {
        tls: Some(certs.server.clone()),
        tls_client_ca: Some(certs.ca.clone()),
        ..Default::default()
    });
    let url = format!("tls://127.0.0.1:{}", server.port);
    let tls = || aether::broker::NatsTls::required().root_certificates(&certs.ca);
    let (cert, key) = certs.client.clone();
    let broker =
        NatsBroker::connect(NatsOptions::new(&url).tls(tls().client_certificate(cert, key)))
            .await
            .expect("a client certificate signed by the server's CA");
    broker
        .kv_ensure(aether::broker::KvConfig::new("mtls_ok"))
        .await
        .expect("JetStream usable over mutual TLS");

    let started = std::time::Instant::now();
    let err = NatsBroker::connect(
        NatsOptions::new(&url)
            .tls(tls())
            .connection_timeout(Duration::from_secs(3)),
    )
    .await
    .expect_err("no client certificate");
    println!(
        "REFUSED mTLS without a client certificate -> {err:?} in {:?}",
        started.elapsed()
    );
    assert!(matches!(err, NatsConnectError::Tls { .. }), "{err:?}");

    let stranger = support::certs::certificates(dir.path(), "stranger");
    let (cert, key) = stranger.client;
    let started = std::time::Instant::now();
    let err = NatsBroker::connect(
        NatsOptions::new(&url)
            .tls(tls().client_certificate(cert, key))
            .connection_timeout(Duration::from_secs(3)),
    )
    .await
    .expect_err("a client certificate from a CA the server does not trust");
    println!(
        "REFUSED mTLS with a stranger's certificate -> {err:?} in {:?}",
        started.elapsed()
    );
    assert!(matches!(err, NatsConnectError::Tls { .. }), "{err:?}");
}
