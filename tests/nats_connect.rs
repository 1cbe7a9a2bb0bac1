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

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it (rcgen, ECDSA P-256),
/// written as PEM files into `dir`. Returns (CA certificate, server certificate, server key).
fn certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "aether test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let ca = Issuer::new(ca_params, ca_key);

    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server certificate parameters");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.is_ca = IsCa::ExplicitNoCa;
    server_params.use_authority_key_identifier_extension = true;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().expect("server key");
    let server_cert = server_params
        .signed_by(&server_key, &ca)
        .expect("server certificate signed by the CA");

    let files = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&files.0, ca_cert.pem()).expect("write ca.pem");
    std::fs::write(&files.1, server_cert.pem()).expect("write server.pem");
    std::fs::write(&files.2, server_key.serialize_pem()).expect("write server.key");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_trusted_root_works_and_an_untrusted_certificate_is_a_typed_tls_error() {
    let dir = tempfile::Builder::new()
        .prefix("aether-tls-")
        .tempdir()
        .expect("create temp dir");
    let (ca, cert, key) = certificates(dir.path());
    let server = NatsServer::start_with(ServerSettings {
        tls: Some((cert, key)),
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
