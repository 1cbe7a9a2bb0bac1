//! The nemesis in CI: the store workload and the simulation's checkers on a real three-server
//! nats-server cluster (R3) under real faults — one short seeded run that must pass, and one
//! with a planted bug that the same checkers must catch on the real server. Needs nats-server
//! (`scripts/install-nats-server.sh`, or `AETHER_NATS_SERVER`): without it the test fails with
//! the install hint. The long run is one command (docs/nemesis.md).

#![cfg(all(feature = "nemesis", not(madsim)))]

use std::time::Duration;

use aether::planted::PlantedBugs;
use aether_sim::nemesis::schedule::{FaultKind, Role, schedule};
use aether_sim::nemesis::{NemesisOptions, NemesisReport, NemesisWorkload, run};

/// The first seed whose 40 s timeline kills the stream leader, isolates a server, faults a
/// single route link, cuts or holds a node's client connections and crashes an aether node —
/// with the cluster workload, its leader (`AETHER_NEMESIS_SEED` picks another).
fn ci_seed(safety: Duration, cluster: bool) -> u64 {
    if let Some(seed) = std::env::var("AETHER_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed;
    }
    (0..)
        .find(|seed| {
            let kinds: Vec<FaultKind> = schedule(*seed, safety, 3, cluster)
                .iter()
                .map(|f| f.kind)
                .collect();
            let has = |p: &dyn Fn(&FaultKind) -> bool| kinds.iter().any(p);
            has(&|k| *k == FaultKind::Kill(Role::StreamLeader))
                && has(&|k| matches!(k, FaultKind::Isolate(_)))
                && has(&|k| {
                    matches!(
                        k,
                        FaultKind::CutLink(_)
                            | FaultKind::HoldLink(_)
                            | FaultKind::HoldOneWay(_)
                            | FaultKind::SlowLink(_)
                    )
                })
                && has(&|k| matches!(k, FaultKind::CutClient(_) | FaultKind::HoldClient(_)))
                && has(&|k| {
                    if cluster {
                        *k == FaultKind::CrashLeader
                    } else {
                        matches!(k, FaultKind::CrashNode(_))
                    }
                })
        })
        .expect("some seed draws every kind")
}

fn short_run(workload: NemesisWorkload, nodes: usize) -> NemesisReport {
    let safety = Duration::from_secs(40);
    let cluster = matches!(workload, NemesisWorkload::Cluster(_));
    let options = NemesisOptions {
        seed: ci_seed(safety, cluster),
        safety,
        liveness: Duration::from_secs(20),
        nodes,
        workload,
        ..NemesisOptions::default()
    };
    let report = run(&options);
    println!("{report}");
    assert!(
        report.passed(),
        "{report}\nreplay: {}",
        report.replay_command(&options)
    );
    // The run did what it says: every planned fault fired, under load, and the kill of the
    // stream leader found it (the servers named it; a leader killed for a few seconds may win
    // the next election again, so a change of leader is not asserted).
    let totals = report.totals();
    assert_eq!(totals.faults as usize, report.planned.len());
    assert!(report.operations > 1000, "{} operations", report.operations);
    assert!(totals.acknowledged > 300, "{totals:?}");
    assert_eq!(totals.lost, 0);
    assert_eq!(totals.duplicated, 0);
    assert!(
        report
            .timeline
            .iter()
            .any(|(_, line)| line.starts_with("kill -9") && line.ends_with("(stream leader)")),
        "the stream leader was found and killed: {:?}",
        report.timeline
    );
    report
}

#[test]
fn the_store_workload_on_a_real_cluster_under_faults_holds_every_invariant() {
    short_run(NemesisWorkload::Store(Default::default()), 3);
}

/// The cluster layer on R3 KV buckets: membership, lease election with fencing tokens and
/// assignment through server kills, pauses and a crash of the cluster's leader mid-lease; the
/// leadership, ownership, decisions and liveness checkers judge it.
#[test]
fn the_cluster_workload_on_a_real_cluster_under_faults_holds_every_invariant() {
    let report = short_run(NemesisWorkload::cluster(), 4);
    assert!(
        report
            .timeline
            .iter()
            .any(|(_, line)| line.contains("crashed")),
        "a node crashed"
    );
}

/// Teeth: appends that skip the server's expected-sequence check let two writers win one
/// version; on the real server the checkers must see it too.
#[test]
fn the_checkers_catch_a_planted_bug_on_the_real_cluster() {
    let options = NemesisOptions {
        seed: 11,
        safety: Duration::from_secs(8),
        liveness: Duration::from_secs(4),
        planted: PlantedBugs {
            append_without_expected_sequence: true,
            ..PlantedBugs::default()
        },
        ..NemesisOptions::default()
    };
    let report = run(&options);
    println!("{report}");
    assert!(!report.passed(), "the planted bug went unnoticed");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.invariant.starts_with('4') || v.invariant.starts_with('1')),
        "expected a version violation: {:?}",
        report.violations
    );
}
