//! # aether-sim: the deterministic simulation of aether
//!
//! The very store, bus and cluster code that runs on NATS runs here inside a simulated world —
//! [turmoil](https://docs.rs/turmoil)'s, or [madsim](https://docs.rs/madsim)'s in a
//! `RUSTFLAGS="--cfg madsim"` build ([`engine`]): one host per node plus a broker host running the
//! [`BrokerState`](aether::broker::BrokerState) state machine behind a TCP protocol
//! ([`broker`]). Faults drawn from the seed ([`faults`]) hit that traffic — partitions both ways
//! and one way, held links, latency, crashes and restarts, broker bounces, clock skew and drift
//! ([`clock`]), replies dropped after a commit. Workloads ([`workload`], [`scenarios`]) record
//! every operation in a [`history`]; after a safety phase with faults and a fault-free liveness
//! phase, [`checkers`] prove the invariants of `docs/design.md` on the history and the broker's final
//! state.
//!
//! A run is a pure function of its seed: the engine's RNG, every node's [`SharedRng`], the fault
//! schedule and the broker's random choices all derive from it; time is virtual from a fixed
//! epoch; collections are ordered. [`run`] returns a [`RunReport`] whose trace hash is equal for
//! two runs of one seed.
//!
//! A failing seed can also be drawn: [`timeline`] renders a run as a self-contained HTML page,
//! which the runner writes next to the run's trace when asked to
//! ([`RunOptions::artifacts`], `AETHER_SIM_ARTIFACTS`).
//!
//! See `docs/sim.md` for how to run, replay and read a failing seed.

pub mod artifacts;
pub mod broker;
pub mod checkers;
pub mod churn;
pub mod clock;
pub(crate) mod driver;
pub mod engine;
pub mod faults;
pub mod harness;
pub mod history;
#[cfg(all(feature = "nemesis", not(madsim)))]
pub mod nemesis;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod timeline;
pub mod usage;
pub mod workload;

pub use runner::{RunOptions, RunReport, run};
pub use scenarios::Scenario;

use aether::clock::SharedRng;

/// Mixes a seed with a stream number into an independent seed (SplitMix64 finaliser).
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A generator for stream `stream` of run `seed`.
pub fn rng_for(seed: u64, stream: u64) -> SharedRng {
    SharedRng::from_seed(derive_seed(seed, stream))
}
