//! The simulation for your own aggregates: seeded fault runs of a user's [`Aggregate`] on a
//! simulated cluster, checked by aether's checkers and by the user's invariants.
//!
//! ```no_run
//! # use aether_sim::harness::Harness;
//! # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Account { balance: i64 }
//! # #[derive(serde::Serialize, serde::Deserialize)] enum Ev { Moved(i64) }
//! # impl aether::DomainEvent for Ev {}
//! # impl aether::Aggregate for Account {
//! #     const NAME: &'static str = "account";
//! #     type Command = i64; type Event = Ev; type Rejection = String;
//! #     fn handle(&self, _: &aether::actor::CommandContext<'_>, c: &i64) -> Result<Vec<Ev>, String> { Ok(vec![Ev::Moved(*c)]) }
//! #     fn apply(&mut self, Ev::Moved(n): &Ev) { self.balance += n }
//! # }
//! let harness = Harness::<Account>::new()
//!     .actors(4)
//!     .commands(|rng, _actor| rng.next_u64() as i64 % 100 - 40)
//!     .invariant("balance never negative", |account| {
//!         if account.balance < 0 { Err(format!("balance {}", account.balance)) } else { Ok(()) }
//!     });
//! harness.check(0..100).unwrap(); // a failure names the seed and the one line that replays it
//! ```
//!
//! Each run is the `cluster` scenario's world: three nodes plus one that joins and leaves, a
//! broker host, leader churn, partitions, held links, crashes and restarts, clock skew and
//! drift, lost replies, then a fault-free phase. Every node hosts the aggregate in an
//! [`ActorHost`] routed by its cluster node, serves remote commands, and sends commands drawn
//! from the user's generator to random actors through [`ActorHost::send`]. After the run:
//!
//! - aether's checkers: versions contiguous and unique, acknowledged writes kept, leadership
//!   and shard ownership, every command answered once the faults stop, and every answered
//!   command's events in the final stream at the versions it reported;
//! - the user's invariants, on every state of every actor: each actor's final stream is folded
//!   from `A::default()` with `apply`, and each invariant is checked after every event.
//!
//! A run is a pure function of its seed. [`Harness::check`] runs only the seed in
//! `AETHER_SIM_SEED` when it is set, so the replay line a failure prints is the same test
//! binary with that variable.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aether::actor::{ActorConfig, ActorHost, Aggregate};
use aether::clock::{Clock, SharedRng};
use aether::store::EventStore;

use crate::broker::SimBroker;
use crate::checkers::{CheckInput, Violation};
use crate::clock::{SimClock, sim_now};
use crate::history::{EventDigest, OpKind, Outcome};
use crate::runner::{RunOptions, RunReport, run};
use crate::scenarios::Scenario;
use crate::scenarios::cluster::CurrentCluster;
use crate::workload::{NodeContext, Recorder, below, command_failure};

/// What one node incarnation runs the user's aggregate with.
pub struct UserNode {
    /// The node's context (history, clock, name).
    pub ctx: NodeContext,
    /// The node's store.
    pub store: EventStore<SimBroker, SimClock>,
    /// Routes by the cluster instance the node runs now.
    pub router: CurrentCluster,
    /// The node's generator (forked).
    pub rng: SharedRng,
    /// Pause between commands.
    pub think: (Duration, Duration),
}

/// The future a node runs the user's part in.
pub type UserTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The user's checks of a run's final streams.
pub type UserCheck = Arc<dyn Fn(&CheckInput<'_>) -> Vec<Violation> + Send + Sync>;

/// A user's aggregate, type-erased so that a [`Scenario`] can carry it.
#[derive(Clone)]
pub struct UserPart {
    /// The actors commands go to (and whose streams are checked).
    pub actors: Vec<String>,
    /// The node's part: host, serve, send commands.
    pub node: Arc<dyn Fn(UserNode) -> UserTask + Send + Sync>,
    /// The user's checks of the final streams.
    pub check: UserCheck,
}

impl fmt::Debug for UserPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserPart")
            .field("actors", &self.actors)
            .finish_non_exhaustive()
    }
}

type Generator<A> = Arc<dyn Fn(&SharedRng, &str) -> <A as Aggregate>::Command + Send + Sync>;
type Invariant<A> = Arc<dyn Fn(&A) -> Result<(), String> + Send + Sync>;

/// Seeded fault runs of aggregate `A` (see the module docs).
pub struct Harness<A: Aggregate> {
    actors: usize,
    commands: Option<Generator<A>>,
    invariants: Vec<(String, Invariant<A>)>,
    options: RunOptions,
    seconds: Option<u64>,
}

impl<A: Aggregate> Default for Harness<A>
where
    A::Command: fmt::Debug,
{
    fn default() -> Self {
        Self::new()
    }
}

/// Why [`Harness::check`] failed: the first failing seed's report.
#[derive(Debug)]
pub struct HarnessFailure {
    /// Seeds that passed before it.
    pub passed: u64,
    /// The failing run (its `Display` names the violations, the faults and the replay line).
    pub report: Box<RunReport>,
}

impl fmt::Display for HarnessFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (after {} passing seeds)", self.report, self.passed)
    }
}

impl std::error::Error for HarnessFailure {}

impl<A: Aggregate> Harness<A>
where
    A::Command: fmt::Debug,
{
    /// A harness with 4 actors, no invariants and no command generator yet (one is required).
    pub fn new() -> Self {
        Self {
            actors: 4,
            commands: None,
            invariants: Vec::new(),
            options: RunOptions::default(),
            seconds: None,
        }
    }

    /// How many actors (`acct-0` … ) commands go to. Few actors mean more contention.
    pub fn actors(mut self, actors: usize) -> Self {
        self.actors = actors.max(1);
        self
    }

    /// The command generator: a command for `actor`, drawn from the node's seeded generator
    /// (use only it for randomness, or runs stop being a function of their seed).
    pub fn commands(
        mut self,
        generate: impl Fn(&SharedRng, &str) -> A::Command + Send + Sync + 'static,
    ) -> Self {
        self.commands = Some(Arc::new(generate));
        self
    }

    /// Commands drawn from a proptest strategy (instead of [`Harness::commands`]): each command
    /// is a value of `strategy` generated by a proptest runner seeded from the node's seeded
    /// generator, so runs stay a function of their seed. No shrinking: a failing seed is
    /// replayed as it ran.
    ///
    /// ```no_run
    /// # use aether_sim::harness::Harness;
    /// # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Account { balance: i64 }
    /// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)] enum Command { Deposit(i64), Withdraw(i64) }
    /// # #[derive(serde::Serialize, serde::Deserialize)] enum Ev { Moved(i64) }
    /// # impl aether::DomainEvent for Ev {}
    /// # impl aether::Aggregate for Account {
    /// #     const NAME: &'static str = "account";
    /// #     type Command = Command; type Event = Ev; type Rejection = String;
    /// #     fn handle(&self, _: &aether::actor::CommandContext<'_>, c: &Command) -> Result<Vec<Ev>, String> { Ok(vec![]) }
    /// #     fn apply(&mut self, _: &Ev) {}
    /// # }
    /// use proptest::prelude::*;
    /// let harness = Harness::<Account>::new().strategy(prop_oneof![
    ///     1 => (1..=100i64).prop_map(Command::Deposit),
    ///     2 => (1..=100i64).prop_map(Command::Withdraw),
    /// ]);
    /// ```
    pub fn strategy<S>(self, strategy: S) -> Self
    where
        S: proptest::strategy::Strategy<Value = A::Command> + Send + Sync + 'static,
    {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        self.commands(move |rng, _actor| {
            let mut seed = [0u8; 32];
            for chunk in seed.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            let mut runner = TestRunner::new_with_rng(
                Config::default(),
                TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
            );
            match strategy.new_tree(&mut runner) {
                Ok(tree) => tree.current(),
                Err(reason) => panic!("the command strategy generated nothing: {reason}"),
            }
        })
    }

    /// An invariant over the aggregate's state, checked on every state every actor passes
    /// through in the final streams.
    pub fn invariant(
        mut self,
        name: impl Into<String>,
        holds: impl Fn(&A) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.invariants.push((name.into(), Arc::new(holds)));
        self
    }

    /// Runs on the replicated broker model (lagging followers, stream-leader elections).
    pub fn replicated(mut self, replicated: bool) -> Self {
        self.options.replicated = replicated;
        self
    }

    /// Total simulated seconds per run (default: the cluster scenario's 40).
    pub fn seconds(mut self, seconds: u64) -> Self {
        self.seconds = Some(seconds);
        self
    }

    /// The scenario a run uses.
    ///
    /// # Panics
    /// Without a command generator.
    pub fn scenario(&self) -> Scenario {
        let generate = self
            .commands
            .clone()
            .expect("Harness::commands: the harness needs a command generator");
        let actors: Vec<String> = (0..self.actors).map(|i| format!("acct-{i}")).collect();
        let node_actors = actors.clone();
        let node = Arc::new(move |node: UserNode| -> UserTask {
            Box::pin(user_node::<A>(node, node_actors.clone(), generate.clone()))
        });
        let invariants = self.invariants.clone();
        let check_actors = actors.clone();
        let check = Arc::new(move |input: &CheckInput<'_>| {
            check_user::<A>(input, &check_actors, &invariants)
        });
        let scenario = Scenario::user(UserPart {
            actors,
            node,
            check,
        });
        match self.seconds {
            Some(seconds) => {
                let safety = Duration::from_secs(seconds).saturating_sub(scenario.liveness);
                scenario.with_safety(safety)
            }
            None => scenario,
        }
    }

    /// Runs one seed.
    pub fn run(&self, seed: u64) -> RunReport {
        run(&self.scenario(), seed, &self.options)
    }

    /// Runs `seeds` (or only `AETHER_SIM_SEED`, when set) and stops at the first failure.
    /// Returns how many seeds passed.
    ///
    /// # Errors
    /// The first failing seed, with its report (violations, faults, the replay line).
    pub fn check(&self, seeds: impl IntoIterator<Item = u64>) -> Result<u64, HarnessFailure> {
        let scenario = self.scenario();
        let only: Option<u64> = std::env::var("AETHER_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok());
        let seeds: Vec<u64> = match only {
            Some(seed) => vec![seed],
            None => seeds.into_iter().collect(),
        };
        let mut passed = 0;
        for seed in seeds {
            let report = run(&scenario, seed, &self.options);
            if !report.passed() {
                return Err(HarnessFailure {
                    passed,
                    report: Box::new(report),
                });
            }
            passed += 1;
        }
        Ok(passed)
    }
}

/// The replay line of a harness run: this very process's command line (the test binary and
/// its arguments, which run the same harness) with `AETHER_SIM_SEED`.
pub(crate) fn replay_line(seed: u64) -> String {
    let args: Vec<String> = std::env::args().collect();
    format!("AETHER_SIM_SEED={seed} {}", args.join(" "))
}

/// One node incarnation's part: the aggregate's host (serving remote commands) and a sender of
/// generated commands.
async fn user_node<A: Aggregate>(node: UserNode, actors: Vec<String>, generate: Generator<A>)
where
    A::Command: fmt::Debug,
{
    let UserNode {
        ctx,
        store,
        router,
        rng,
        think,
    } = node;
    let host: ActorHost<A, SimBroker, SimClock, CurrentCluster> =
        ActorHost::new(store, router, ActorConfig::new());
    while let Err(e) = host.serve().await {
        ctx.history.note(
            sim_now(),
            format!("{} user host serve failed: {e}", ctx.name),
        );
        ctx.clock.sleep(Duration::from_millis(500)).await;
    }
    loop {
        ctx.clock
            .sleep(rng.duration_between(think.0, think.1))
            .await;
        let actor = actors[below(&rng, actors.len())].clone();
        let command = generate(&rng, &actor);
        let op = ctx.invoke(OpKind::UserCommand {
            actor: actor.clone(),
            command: format!("{command:?}"),
        });
        let outcome = match host.send(&actor, &command).await {
            Ok(done) => Outcome::Commanded {
                version: done.version,
                node: done.node_id.to_string(),
                events: done.events.iter().map(EventDigest::of).collect(),
            },
            Err(e) => command_failure(e, |why| Outcome::Rejected(format!("{why:?}"))),
        };
        ctx.complete(op, outcome);
    }
}

const ANSWERED: &str = "2/3 an answered command is stored at the version it reported";
const USER: &str = "(yours)";

/// The user's checks: every answered command's events are in the final stream at the versions
/// it reported, and every invariant holds on every state of every actor.
fn check_user<A: Aggregate>(
    input: &CheckInput<'_>,
    actors: &[String],
    invariants: &[(String, Invariant<A>)],
) -> Vec<Violation> {
    let mut out = Vec::new();
    let finals = input.final_events();
    for op in input.ops {
        let (OpKind::UserCommand { actor, command }, Outcome::Commanded { events, node, .. }) =
            (&op.kind, &op.outcome)
        else {
            continue;
        };
        for event in events {
            let stored = finals
                .get(actor.as_str())
                .and_then(|s| s.get(&event.version));
            if stored != Some(event) {
                out.push(Violation {
                    invariant: ANSWERED,
                    detail: format!(
                        "{actor}: command {command} (op #{} from {}) ran on {node} and answered event {} at v{}, but the final stream holds {stored:?} there",
                        op.id, op.node, event.id, event.version
                    ),
                });
            }
        }
    }
    let upcasters = A::upcasters();
    for actor in actors {
        let mut state = A::default();
        'events: for (_, commit) in input.chain(actor) {
            for event in &commit.events {
                match upcasters.decode::<A::Event>(event) {
                    Ok(typed) => state.apply(&typed),
                    Err(error) => {
                        out.push(Violation {
                            invariant: USER,
                            detail: format!("{actor}: {error}"),
                        });
                        break 'events;
                    }
                }
                for (name, holds) in invariants {
                    if let Err(why) = holds(&state) {
                        out.push(Violation {
                            invariant: USER,
                            detail: format!(
                                "{name}: {actor} after v{} ({} {}): {why}",
                                event.version, event.event_type, event.data
                            ),
                        });
                        break 'events;
                    }
                }
            }
        }
    }
    out
}
