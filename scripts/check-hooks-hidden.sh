#!/usr/bin/env bash
# Checks that a crate depending on aether with default features sees none of the simulation
# hooks: tests/downstream builds, and with its `probe` feature fails on each hook by name.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/downstream"
manifest=tests/downstream/Cargo.toml
cargo check --quiet --manifest-path "$manifest"
if out=$(cargo check --quiet --manifest-path "$manifest" --features probe 2>&1); then
    echo "check-hooks-hidden: a default-features dependent can use the simulation hooks" >&2
    exit 1
fi
for hook in planted BrokerState Now start_with_observer with_planted_bugs; do
    if ! grep -q "$hook" <<<"$out"; then
        echo "check-hooks-hidden: the probe did not fail on $hook:" >&2
        echo "$out" >&2
        exit 1
    fi
done
echo "simulation hooks hidden from default-features dependents: planted, BrokerState, Now, start_with_observer, with_planted_bugs"
