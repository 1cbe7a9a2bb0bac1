#!/usr/bin/env bash
# Runs every test aether has: unit, integration, property, fuzz-corpus, real-NATS (single node
# and 3-node cluster) and the deterministic simulation's fixed seed set — on turmoil, then again
# on madsim (a `--cfg madsim` build in its own target directory, target/madsim).
#
# It first installs the pinned nats-server (2.15.1) into .tools/nats (idempotent, project-local),
# so it works on a fresh machine with Rust and Python 3 + pip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

AETHER_NATS_SERVER="${AETHER_NATS_SERVER:-$("$ROOT/scripts/install-nats-server.sh")}"
export AETHER_NATS_SERVER
echo "using nats-server: $AETHER_NATS_SERVER"

# Unit, integration and doc tests; examples are built. Benchmarks are not run here. The
# simulation's tests run here on turmoil.
cargo test --all-features "$@"

# The simulation's tests on the second engine, madsim: the seed sets, the teeth tests (with
# madsim's own catch rates), madsim's determinism check, the conformance suite over madsim's
# TCP, the timeline and the harness example. Optimised (profile `sim`, debug assertions on):
# the build costs about as much as a debug one, the seeds run several times faster.
echo "== the simulation on madsim"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/madsim \
  cargo test --profile sim -p aether-sim --features sim --tests
