#!/usr/bin/env bash
# Measures how often each planted bug is caught: runs N seeds (default 300) of its scenario at
# the scenario's CI length with the bug switched on, and prints a markdown table row per bug:
# failing seeds out of N, and the seed budget that catches it with probability >= 99.9 %.
# The teeth tests in sim/tests/sim.rs take their budgets from these numbers.
#
#   scripts/teeth-sweep.sh [N] [turmoil|madsim] [bug]     (bug: only that one)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-300}"
engine="${2:-turmoil}"
only="${3:-}"
# Builds the engine's binary (and checks the engine's name) without running a seed.
scripts/sim.sh --engine "$engine" --help >/dev/null
case "$engine" in
  madsim) sim=target/madsim/sim/aether-sim ;;
  *) sim=target/sim/aether-sim ;;
esac
# bug;scenario;seconds[;invariant[;replicated]]: the scenario's CI length (safety + liveness
# phase); the invariant whose violations count (a prefix of its name; `-` or none for any), for
# a bug another invariant would also catch; `replicated` to run on the replicated broker model.
bugs=(
  "append_without_expected_sequence;store;35"
  "retry_with_fresh_commit_id;store;35"
  "skip_damaged_records;store;35"
  "replay_skips_contiguity_check;store;35"
  "read_from_off_by_one;store;35"
  "leader_ignores_lease_deadline;cluster;40"
  "leader_publishes_after_deadline;cluster;40"
  "leader_renews_without_cas;cluster;40"
  "leader_skips_token_check;cluster-beyond-margin;40;11 assignment writes are fenced"
  "apply_assignment_out_of_order;cluster;40"
  "host_retries_without_reload;cluster;40"
  "host_appends_with_any;cluster;40"
  "host_skips_owner_check;cluster;40"
  "checkpoint_before_handling;readside;35"
  "projector_skips_fencing;readside;35"
  "bus_hides_gaps;readside;35"
  "policy_sends_unkeyed;policy;40;16 every trigger has at most one effect"
  "tip_without_floor;store;35;-;replicated"
  "refusal_after_ambiguity_is_moved;store;35;-;replicated"
  "refusal_taken_at_its_word;store;35;-;replicated"
  "snapshots_expire_with_events;retention;35"
)
echo "| planted bug | scenario | failing seeds of $n on $engine | 99.9 % budget |"
echo "|---|---|---|---|"
for entry in "${bugs[@]}"; do
  IFS=';' read -r bug scenario seconds invariant model <<<"$entry"
  [ -n "$only" ] && [ "$bug" != "$only" ] && continue
  [ "${invariant:-}" = "-" ] && invariant=""
  flags=()
  [ "${model:-}" = "replicated" ] && flags=(--replicated)
  # Count the failing seeds (those with a violation of `invariant`, when given).
  failing=$({ RUST_BACKTRACE=0 "$sim" --scenario "$scenario" --seconds "$seconds" --seeds "$n" \
      --planted "$bug" "${flags[@]}" 2>/dev/null || true; } |
    awk -v want="${invariant:-}" '
      /^SIMULATION FAILED/ { match($0, /seed [0-9]+/); seed = substr($0, RSTART + 5, RLENGTH - 5); next }
      /^  invariant / && seed != "" && index($0, "  invariant " want) == 1 { hit[seed] = 1 }
      END { print length(hit) }')
  budget=$(python3 -c "import math; p=$failing/$n; print('-' if p == 0 else 1 if p >= 1 else math.ceil(math.log(0.001)/math.log(1-p)))")
  echo "| $bug | $scenario | $failing | $budget |"
done
