//! The simulation harness on a user's own aggregate: a bank account whose balance must never go
//! negative, run on the simulated cluster under seeded faults. The correct account holds on
//! every seed; a variant with a bug (a fee charged on top of a withdrawal checked without it)
//! is caught, and the failure names the invariant, the actor, the event and the one line that
//! replays the seed.
//!
//! `cargo test -p aether-sim --test bank_sim -- --nocapture` prints the buggy account's report.

use aether::actor::CommandContext;
use aether::{Aggregate, DomainEvent};
use aether_sim::harness::Harness;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Command {
    Deposit(i64),
    Withdraw(i64),
}

/// Draws a command: deposits and withdrawals of 1–100, withdrawals twice as often, so that
/// refusals and withdrawals of the whole balance are common.
fn command(rng: &aether::SharedRng, _actor: &str) -> Command {
    let amount = 1 + (rng.next_u64() % 100) as i64;
    if rng.next_u64().is_multiple_of(3) {
        Command::Deposit(amount)
    } else {
        Command::Withdraw(amount)
    }
}

fn never_negative<const FEE: i64>(account: &Bank<FEE>) -> Result<(), String> {
    match account.balance {
        b if b < 0 => Err(format!("balance is {b}")),
        _ => Ok(()),
    }
}

/// A bank account charging `FEE` per withdrawal. A withdrawal is refused unless the balance
/// covers it — the amount only: with a fee, withdrawing the whole balance leaves it at -1.
#[derive(Default, Serialize, Deserialize)]
struct Bank<const FEE: i64> {
    balance: i64,
}

/// The correct account: no fee, so the check covers everything a withdrawal takes.
type Account = Bank<0>;
/// The bug: a fee of 1 the check ignores.
type FeeAccount = Bank<1>;

/// What happens to an account.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum BankEvent {
    Deposited { amount: i64 },
    Withdrawn { amount: i64, fee: i64 },
}

impl DomainEvent for BankEvent {}

impl<const FEE: i64> Aggregate for Bank<FEE> {
    const NAME: &'static str = "bank";
    type Command = Command;
    type Event = BankEvent;
    type Rejection = String;

    fn handle(&self, _: &CommandContext<'_>, command: &Command) -> Result<Vec<BankEvent>, String> {
        match *command {
            Command::Deposit(amount) => Ok(vec![BankEvent::Deposited { amount }]),
            Command::Withdraw(n) if n > self.balance => {
                Err(format!("balance {} cannot cover {n}", self.balance))
            }
            Command::Withdraw(amount) => Ok(vec![BankEvent::Withdrawn { amount, fee: FEE }]),
        }
    }

    fn apply(&mut self, event: &BankEvent) {
        match event {
            BankEvent::Deposited { amount } => self.balance += amount,
            BankEvent::Withdrawn { amount, fee } => self.balance -= amount + fee,
        }
    }
}

#[test]
fn the_correct_account_never_goes_negative_under_faults() {
    let harness = Harness::<Account>::new()
        .actors(3)
        .commands(command)
        .invariant("balance never negative", never_negative::<0>);
    // `AETHER_SIM_SEEDS=1000` sweeps more seeds.
    let passed = harness
        .check(aether_sim::runner::seeds_from_env(0, 4))
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(passed >= 1);
    // The runs did real work: commands answered, refusals among them.
    let report = harness.run(0);
    assert!(
        report.commands.ok > 20,
        "commands answered: {:?}",
        report.commands
    );
    assert!(report.commands.refused > 0, "{:?}", report.commands);
    assert!(!report.faults.is_empty(), "faults were injected");
}

/// The closure's commands as a proptest strategy: deposits and withdrawals of 1–100,
/// withdrawals twice as often.
fn commands_strategy() -> impl proptest::strategy::Strategy<Value = Command> {
    use proptest::prelude::*;
    prop_oneof![
        1 => (1..=100i64).prop_map(Command::Deposit),
        2 => (1..=100i64).prop_map(Command::Withdraw),
    ]
}

/// The same account driven by a proptest strategy instead of a closure: the harness seeds the
/// strategy's runner from the run's generator, so the run is still a function of its seed.
#[test]
fn commands_can_come_from_a_proptest_strategy() {
    let harness = Harness::<Account>::new()
        .actors(3)
        .strategy(commands_strategy())
        .invariant("balance never negative", never_negative::<0>);
    let passed = harness
        .check(aether_sim::runner::seeds_from_env(0, 2))
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(passed >= 1);
    let report = harness.run(0);
    assert!(report.commands.ok > 20, "{:?}", report.commands);
    assert!(report.commands.refused > 0, "{:?}", report.commands);
    assert_eq!(harness.run(0).trace_hash, report.trace_hash);
    // The fee bug shows through strategy-drawn commands too.
    let buggy = Harness::<FeeAccount>::new()
        .actors(3)
        .strategy(commands_strategy())
        .invariant("balance never negative", never_negative::<1>);
    let failure = buggy
        .check(0..10)
        .expect_err("the fee bug shows within 10 seeds");
    assert!(
        failure
            .report
            .violations
            .iter()
            .any(|v| v.invariant == "(yours)" && v.detail.contains("balance is -")),
        "{failure}"
    );
}

#[test]
fn the_fee_bug_is_caught_with_the_seed_that_replays_it() {
    let harness = Harness::<FeeAccount>::new()
        .actors(3)
        .commands(command)
        .invariant("balance never negative", never_negative::<1>);
    let failure = harness
        .check(0..10)
        .expect_err("a withdrawal of the whole balance is common: the bug shows within 10 seeds");
    println!("{failure}");
    let report = &failure.report;
    let violation = report
        .violations
        .iter()
        .find(|v| v.invariant == "(yours)")
        .expect("the user's invariant caught it");
    assert!(
        violation
            .detail
            .starts_with("balance never negative: acct-")
            && violation.detail.contains("balance is -"),
        "{}",
        violation.detail
    );
    let replay = report.replay_command();
    assert!(
        replay.starts_with(&format!("AETHER_SIM_SEED={} ", report.seed)),
        "{replay}"
    );
    // The run is a function of its seed: replaying it fails the same way.
    let again = harness.run(report.seed);
    assert_eq!(again.trace_hash, report.trace_hash);
    assert_eq!(again.violations.len(), report.violations.len());
}
