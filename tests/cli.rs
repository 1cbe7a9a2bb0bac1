//! The `aether` binary against a real nats-server: data written with the library, damage planted
//! with raw broker appends (as `tests/support/bodies/store.rs` does), and every subcommand's
//! output and exit code (0 ok, 1 damage, 2 usage or connection errors).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use aether::broker::{AppendOptions, Broker, Headers};
use aether::codec::{self, Commit, HEADER_COMMIT_ID, HEADER_FIRST_VERSION, HEADER_FORMAT};
use aether::codec::{HEADER_LAST_VERSION, encode_actor_id};
use aether::{Event, EventStore, ExpectedVersion, NatsBroker, NewEvent, Runtime, Snapshot};
use aether::{StoreConfig, cluster};
use bytes::Bytes;
use serde_json::{Value, json};
use support::nats_server::{NatsServer, ServerSettings};

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// The binary, with none of the `nats` CLI's environment variables from the caller's shell.
fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aether"));
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("NATS_") {
            command.env_remove(var);
        }
    }
    command
}

/// Runs `aether -s <url> <args>`.
fn aether(url: &str, args: &[&str]) -> Run {
    let output = command()
        .arg("-s")
        .arg(url)
        .args(args)
        .output()
        .expect("run the aether binary");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn store(broker: &NatsBroker, ns: &str) -> EventStore<NatsBroker> {
    EventStore::open(Runtime::system(broker.clone()), StoreConfig::new(ns))
        .await
        .expect("open store")
}

fn ev(kind: &str, n: i64) -> NewEvent {
    NewEvent::new(kind, json!({ "n": n }))
}

/// Appends a record to `actor`'s subject as something other than the store would.
async fn plant(
    broker: &NatsBroker,
    ns: &str,
    actor_token: &str,
    headers: Headers,
    payload: Vec<u8>,
) -> u64 {
    broker
        .append(
            &format!("aether.ev.{ns}.{actor_token}"),
            headers,
            Bytes::from(payload),
            AppendOptions::default(),
        )
        .await
        .expect("raw append")
        .sequence
}

/// A well-formed commit of `actor` at `versions`, with headers that agree with it.
fn forged(
    commit_id: &str,
    actor: &str,
    versions: std::ops::RangeInclusive<u64>,
) -> (Headers, Vec<u8>) {
    let events = versions
        .clone()
        .map(|v| Event::new(format!("{commit_id}-{v}"), "Forged", actor, v, json!({})))
        .collect();
    let commit = Commit {
        commit_id: commit_id.to_owned(),
        actor_id: actor.to_owned(),
        events,
    };
    let headers = [
        (HEADER_COMMIT_ID, commit_id.to_owned()),
        (HEADER_FIRST_VERSION, versions.start().to_string()),
        (HEADER_LAST_VERSION, versions.end().to_string()),
        (HEADER_FORMAT, codec::COMMIT_FORMAT.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    (headers, codec::encode_commit(&commit))
}

#[test]
fn help_lists_every_command_and_the_connection_flags() {
    let output = command().arg("--help").output().expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "events",
        "tail",
        "actors",
        "commit",
        "snapshot",
        "cluster",
        "verify",
        "--server",
        "NATS_URL",
        "--creds",
        "--user",
        "--password",
        "--token",
        "--nkey",
        "--tlscert",
        "--tlskey",
        "--tlsca",
        "--json",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    let output = command().args(["verify", "--help"]).output().expect("run");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("<NAMESPACE>"));
}

#[test]
fn bad_input_and_no_server_exit_2_with_a_clear_message() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("nats://127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    let run = aether(&dead, &["actors", "bank"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no NATS server answered"), "{run:?}");
    let run = aether(&dead, &["events", "not.a.namespace", "a"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("namespace"), "{run:?}");
    let run = aether(&dead, &["--user", "ada", "actors", "bank"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--user needs --password"), "{run:?}");
    let run = aether(&dead, &["frobnicate"]);
    assert_eq!(run.code, 2, "clap's usage error: {run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_actors_commit_and_snapshot_read_what_the_library_wrote() {
    let server = NatsServer::start();
    let url = server.url();
    let broker = server.broker().await;
    let store = store(&broker, "bank").await;
    store
        .append("acct-1", ExpectedVersion::NoStream, vec![ev("Opened", 1)])
        .await
        .unwrap();
    let second = store
        .append(
            "acct-1",
            ExpectedVersion::Exact(1),
            vec![ev("Deposited", 2), ev("Deposited", 3)],
        )
        .await
        .unwrap();
    store
        .append("odd id/ä", ExpectedVersion::NoStream, vec![ev("Opened", 1)])
        .await
        .unwrap();
    store
        .save_snapshot(&Snapshot::new("acct-1", 3, json!({ "balance": 5 })))
        .await
        .unwrap();

    let run = aether(&url, &["events", "bank", "acct-1"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run:?}");
    assert!(
        lines[0].starts_with("v1  ") && lines[0].contains("Opened"),
        "{run:?}"
    );
    assert!(
        lines[2].starts_with("v3  ") && lines[2].contains(r#"{"n":3}"#),
        "{run:?}"
    );
    let run = aether(&url, &["events", "bank", "acct-1", "--from", "2", "--json"]);
    let versions: Vec<u64> = run.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![2, 3], "{run:?}");

    let run = aether(&url, &["actors", "bank"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "acct-1  2\nodd id/ä  1\n", "{run:?}");
    let run = aether(&url, &["actors", "bank", "--json"]);
    assert_eq!(
        run.json()["actors"],
        json!([{"actor": "acct-1", "records": 2}, {"actor": "odd id/ä", "records": 1}])
    );

    let run = aether(&url, &["commit", "bank", "acct-1", &second.commit_id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "stored at versions 2..=3 (sequence {})",
            second.sequence
        )),
        "{run:?}"
    );
    let run = aether(
        &url,
        &["commit", "bank", "acct-1", "no-such-commit", "--json"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["status"], "not_stored");

    let run = aether(&url, &["snapshot", "bank", "acct-1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("at version 3 (actor at version 3)"),
        "{run:?}"
    );
    assert!(run.stdout.contains(r#""balance": 5"#), "{run:?}");
    let run = aether(&url, &["snapshot", "bank", "odd id/ä", "--json"]);
    assert_eq!(run.json()["snapshot"], Value::Null, "{run:?}");

    let run = aether(&url, &["verify", "bank"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("2 actors, 3 records") && run.stdout.contains("no damage"),
        "{run:?}"
    );

    // Nothing is created for a namespace that does not exist.
    let run = aether(&url, &["actors", "nowhere"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("does not exist"), "{run:?}");
    assert!(matches!(
        broker.stream_state("AETHER_EV_nowhere").await,
        Err(aether::BrokerError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_every_kind_of_damage_and_exits_1() {
    let server = NatsServer::start();
    let url = server.url();
    let broker = server.broker().await;
    let store = store(&broker, "vault").await;
    let first = store
        .append("gap", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let (headers, body) = forged("c-gap", "gap", 7..=7);
    let gap = plant(&broker, "vault", "gap", headers, body).await;
    store
        .append("dup", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let original = broker
        .read("AETHER_EV_vault", "aether.ev.vault.dup", 1)
        .await
        .unwrap()
        .remove(0);
    let dup_id = original.headers[HEADER_COMMIT_ID].clone();
    let dup = plant(
        &broker,
        "vault",
        "dup",
        original.headers,
        original.payload.to_vec(),
    )
    .await;
    store
        .append("junk", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let junk = plant(
        &broker,
        "vault",
        "junk",
        Headers::new(),
        b"garbage".to_vec(),
    )
    .await;
    let (headers, body) = forged("c-foreign", "someone-else", 2..=2);
    let foreign = plant(&broker, "vault", "junk", headers, body).await;
    // Retention took versions 1 and 2 of `old`: its first commit left starts at 3.
    let (headers, body) = forged("c-old-3", "old", 3..=4);
    plant(&broker, "vault", "old", headers, body).await;
    let (headers, body) = forged("c-old-5", "old", 5..=5);
    plant(&broker, "vault", "old", headers, body).await;
    // After the expired prefix, replay's rules still hold: a second copy is a duplicate.
    let (headers, body) = forged("c-old-3", "old", 3..=4);
    let old_copy = plant(&broker, "vault", "old", headers, body).await;
    plant(&broker, "vault", "bad_ZZ", Headers::new(), b"{}".to_vec()).await;
    // Every event of `gone` expired; its snapshot outlived them.
    broker
        .append(
            "aether.snap.vault.gone",
            Headers::new(),
            Bytes::from(serde_json::to_vec(&Snapshot::new("gone", 4, json!({}))).unwrap()),
            AppendOptions::default(),
        )
        .await
        .unwrap();
    let bad_snapshot = broker
        .append(
            &format!("aether.snap.vault.{}", encode_actor_id("junk").unwrap()),
            Headers::new(),
            Bytes::from_static(b"not a snapshot"),
            AppendOptions::default(),
        )
        .await
        .unwrap()
        .sequence;

    let run = aether(&url, &["verify", "vault"]);
    assert_eq!(run.code, 1, "{run:?}");
    let out = &run.stdout;
    // `--nocapture` shows the report as an operator sees it.
    println!("$ aether verify vault\n{out}(exit code {})", run.code);
    for line in [
        format!("gap  seq {gap}  version gap: commit starts at version 7, expected 2"),
        format!("dup  seq {dup}  duplicate commit: commit id {dup_id} appears twice"),
        format!("junk  seq {junk}  undecodable record: "),
        format!("junk  seq {foreign}  wrong actor: "),
        format!("junk  snapshot seq {bad_snapshot}  damaged snapshot: snapshot cannot be read"),
        "undecodable subject: subject \"aether.ev.vault.bad_ZZ\"".to_owned(),
        "old  expired prefix: versions 1..=2 are gone, not covered by a snapshot".to_owned(),
        format!("old  seq {old_copy}  duplicate commit: commit id c-old-3 appears twice"),
        "DAMAGE: 7 in 4 actors".to_owned(),
        "gone  expired prefix: versions 1..=4 are gone, covered by the snapshot at version 4"
            .to_owned(),
        "verify vault: 5 actors, 10 records".to_owned(),
        "2 actors with an expired prefix (not damage)".to_owned(),
    ] {
        assert!(out.contains(&line), "verify output lacks {line:?}:\n{out}");
    }
    assert_eq!(
        out.matches("old  seq").count(),
        1,
        "the expired prefix is not damage:\n{out}"
    );
    let report = aether(&url, &["verify", "vault", "--json"]);
    assert_eq!(report.code, 1, "{report:?}");
    let report = report.json();
    assert_eq!(
        report["damage_counts"],
        json!({
            "version gap": 1, "duplicate commit": 2, "undecodable record": 1, "wrong actor": 1,
            "undecodable subject": 1, "damaged snapshot": 1,
        })
    );
    assert_eq!(report["expired_prefixes"], 2);
    let old = report["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["actor"] == "old")
        .unwrap();
    assert_eq!(
        (old["expired_before"].clone(), old["last_version"].clone()),
        (json!(3), json!(5))
    );

    // The other commands see the same damage, and say so in their exit code.
    let run = aether(&url, &["events", "vault", "gap"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("DAMAGED seq {gap}  version gap")),
        "{run:?}"
    );
    let run = aether(&url, &["events", "vault", "old"]);
    assert_eq!(
        run.code, 1,
        "the duplicate, not the expired prefix: {run:?}"
    );
    assert!(
        run.stdout.starts_with("(versions 1..=2 expired)\nv3  "),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains(&format!("DAMAGED seq {old_copy}  duplicate commit")),
        "{run:?}"
    );
    let run = aether(&url, &["commit", "vault", "dup", &dup_id]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("stored at versions 1..=1"), "{run:?}");
    assert!(
        run.stdout.contains(&format!("DAMAGED copy at seq {dup}")),
        "{run:?}"
    );
    let run = aether(&url, &["commit", "vault", "gap", &first.commit_id]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = aether(&url, &["snapshot", "vault", "junk"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("DAMAGED snapshot"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_new_commits_from_the_current_end() {
    let server = NatsServer::start();
    let url = server.url();
    let broker = server.broker().await;
    let store = store(&broker, "live").await;
    store
        .append("before", ExpectedVersion::NoStream, vec![ev("Old", 0)])
        .await
        .unwrap();
    let mut child = command()
        .args(["-s", &url, "tail", "live", "--max", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    // It says where it starts once it knows the end; what is appended after that is followed.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).expect("tail's first line");
    assert!(
        line.starts_with("following AETHER_EV_live from position 2"),
        "{line:?}"
    );
    let a = store
        .append(
            "a",
            ExpectedVersion::NoStream,
            vec![ev("One", 1), ev("Two", 2)],
        )
        .await
        .unwrap();
    let b = store
        .append("b", ExpectedVersion::NoStream, vec![ev("Three", 3)])
        .await
        .unwrap();
    // A guard against hanging the suite, not a speed requirement.
    let mut waited = 0;
    while child.try_wait().expect("poll tail").is_none() {
        if waited == 600 {
            child.kill().expect("kill tail");
            panic!("tail did not stop after --max 2 commits within 60 s");
        }
        waited += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("tail's output");
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout,
        format!(
            "{}  a  v1..=2  commit {}  One,Two\n{}  b  v1..=1  commit {}  Three\n",
            a.sequence, a.commit_id, b.sequence, b.commit_id
        )
    );
    // From a given position, as JSON lines.
    let run = aether(
        &url,
        &["tail", "live", "--from", "1", "--max", "3", "--json"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let actors: Vec<String> = run
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["actor"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(actors, vec!["before", "a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shows_members_leader_token_epoch_and_shards_per_node() {
    let server = NatsServer::start();
    let url = server.url();
    let config = cluster::ClusterConfig::new()
        .name("inspected")
        .shards(cluster::ShardConfig::with_shard_count(64));
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let rt =
            Runtime::system(server.broker().await).with_node(aether::NodeId::new(name).unwrap());
        nodes.push(cluster::Cluster::start(rt, config.clone()).await.unwrap());
    }
    // Both nodes applied and acknowledged one epoch that places shards on both.
    let epoch = loop {
        let acks = nodes[0].acknowledgements().await.unwrap();
        let epochs: Vec<u64> = acks.values().copied().collect();
        let applied = nodes[0]
            .assignment()
            .filter(|a| a.placement().members().len() == 2);
        if let Some(applied) = applied
            && epochs == [applied.epoch(), applied.epoch()]
        {
            break epochs[0];
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let leader = nodes[0].leader().expect("a leader");
    let run = aether(&url, &["cluster", "--name", "inspected"]);
    assert_eq!(run.code, 0, "{run:?}");
    for line in [
        "members (2): n1 n2".to_owned(),
        format!("leader: {} (token {})", leader.node, leader.token),
        format!(
            "assignment: epoch {epoch} (published under token {}), 64 shards",
            leader.token
        ),
        format!("n1  primaries 32  standbys 0  acknowledged epoch {epoch}"),
        format!("n2  primaries 32  standbys 0  acknowledged epoch {epoch}"),
    ] {
        assert!(
            run.stdout.contains(&line),
            "cluster output lacks {line:?}:\n{}",
            run.stdout
        );
    }
    let run = aether(&url, &["cluster", "--name", "inspected", "--json"]).json();
    assert_eq!(run["leader"]["token"], leader.token);
    assert_eq!(run["assignment"]["epoch"], epoch);
    assert_eq!(run["members"], json!(["n1", "n2"]));
    let run = aether(&url, &["cluster", "--name", "elsewhere"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("no cluster named \"elsewhere\""),
        "{run:?}"
    );
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_passed_on_and_nats_url_is_the_default_server() {
    let server = NatsServer::start_with(ServerSettings {
        user_password: Some(("ada".into(), "s3cret".into())),
        ..Default::default()
    });
    let broker =
        NatsBroker::connect(aether::NatsOptions::new(server.url()).user_password("ada", "s3cret"))
            .await
            .unwrap();
    store(&broker, "auth")
        .await
        .append("a", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let run = |args: &[&str]| {
        let output = command()
            .env("NATS_URL", server.url())
            .args(args)
            .output()
            .expect("run");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(&["--user", "ada", "--password", "s3cret", "actors", "auth"]);
    assert_eq!((code, stdout.as_str()), (Some(0), "a  1\n"));
    let (code, _, stderr) = run(&["--user", "ada", "--password", "wrong", "actors", "auth"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("refused the credentials"), "{stderr}");
}
