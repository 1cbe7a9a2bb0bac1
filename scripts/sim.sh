#!/usr/bin/env bash
# Runs the simulation sweeper on either engine: builds `aether-sim` in the sim profile
# (optimised, debug assertions on) and runs it with the remaining arguments.
#
#   scripts/sim.sh [--engine turmoil|madsim] [aether-sim options]
#   scripts/sim.sh --engine madsim --scenario store --seeds 10000
#   scripts/sim.sh --engine madsim --scenario cluster --seed 17 --trace
#   scripts/sim.sh --engine madsim --scenario store --seeds 100 --check-determinism
#
# turmoil (the default) builds into target/; madsim is a `RUSTFLAGS="--cfg madsim"` build of
# everything and goes to its own target directory, target/madsim. `aether-sim --help` lists
# the options.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
engine=turmoil
if [ "${1:-}" = "--engine" ]; then
  engine="${2:?--engine takes turmoil or madsim}"
  shift 2
fi
case "$engine" in
  turmoil)
    cargo build --quiet --profile sim -p aether-sim
    exec target/sim/aether-sim "$@"
    ;;
  madsim)
    RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/madsim \
      cargo build --quiet --profile sim -p aether-sim
    exec target/madsim/sim/aether-sim "$@"
    ;;
  *)
    echo "unknown engine $engine (turmoil or madsim)" >&2
    exit 2
    ;;
esac
