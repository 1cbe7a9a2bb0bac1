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
    /// After a conflict, the actor host decides again at the reported version on its stale
    /// state instead of reloading (a lost update).
    pub host_retries_without_reload: bool,
    /// The actor host appends with `ExpectedVersion::Any` instead of the version it decided on.
    pub host_appends_with_any: bool,
    /// The actor host executes commands for actors it does not own.
    pub host_skips_owner_check: bool,
    /// The leader checks its lease once per round of its loop, not before each write: it
    /// publishes assignments on a lease whose deadline passed during the round.
    pub leader_publishes_after_deadline: bool,
    /// The leader publishes even over an assignment of a newer leader (no fencing token check).
    pub leader_skips_token_check: bool,
    /// The leader renews its lease with an unconditional write instead of update-at-revision.
    pub leader_renews_without_cas: bool,
    /// Replay accepts a commit that does not continue the versions before it.
    pub replay_skips_contiguity_check: bool,
    /// `events(actor, from)` starts one version late.
    pub read_from_off_by_one: bool,
    /// A projector moves its checkpoint before its handler has run.
    pub checkpoint_before_handling: bool,
    /// A projector moves its checkpoint with an unconditional write (no fencing between
    /// instances).
    pub projector_skips_fencing: bool,
    /// After an ambiguous attempt, the store takes a refusal as moved at its word even when
    /// nothing follows the tip on the stream leader (a cut-off leader counting its own
    /// uncommitted proposal): it reports a conflict for a commit that may still be stored.
    pub refusal_after_ambiguity_is_moved: bool,
    /// The store takes a refusal as moved at its word without asking the stream leader what
    /// follows the tip (a deposed leader's answer for a commit the real one stored).
    pub refusal_taken_at_its_word: bool,
    /// The store reads an actor's tip from whichever replica answers, without the handle's own
    /// tip as a floor (no read-your-writes on a replicated stream).
    pub tip_without_floor: bool,
    /// A policy sends its commands without the key derived from the triggering event: a
    /// redelivered event runs its command again.
    pub policy_sends_unkeyed: bool,
    /// The bus does not tell subscribers about gaps in other nodes' numbering.
    pub bus_hides_gaps: bool,
    /// Under retention, the snapshots stream ages out like the events stream (the old
    /// default): an actor whose events expired loses the snapshot that covered them.
    pub snapshots_expire_with_events: bool,
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
