//! Planted bugs: deliberate defects the simulation must catch.
//!
//! They prove the simulation has teeth: each switch re-introduces a classic distributed-systems
//! mistake, and the `aether-sim` crate's tests assert that the checkers find every one. The
//! switches travel in the [`Runtime`](crate::Runtime) — no global state. They exist only with the
//! internal `sim` feature, which only `aether-sim` (a dev-dependency) turns on: without it the
//! `planted!` checks compile to `false` and this module is private.

/// Which planted bugs are switched on. All off by default.
#[cfg(feature = "sim")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// The store appends without `expected_last_subject_sequence` (no server-side CAS).
    pub append_without_expected_sequence: bool,
    /// The store retries an ambiguous append under a fresh commit id (defeats dedupe).
    pub retry_with_fresh_commit_id: bool,
    /// Replay skips damaged records silently instead of reporting them.
    pub skip_damaged_records: bool,
    /// The leader keeps acting until the server-side lease expires instead of stepping down
    /// early on its own monotonic timer.
    pub leader_ignores_lease_deadline: bool,
    /// A node applies any assignment it sees, even one with an older epoch.
    pub apply_assignment_out_of_order: bool,
}

/// `planted!(runtime, field)`: whether planted bug `field` is on. Always `false` without the
/// `sim` feature, so production code pays nothing.
macro_rules! planted {
    ($rt:expr, $bug:ident) => {{
        #[cfg(feature = "sim")]
        {
            $rt.planted_bugs().$bug
        }
        #[cfg(not(feature = "sim"))]
        {
            let _ = &$rt;
            false
        }
    }};
}
pub(crate) use planted;
