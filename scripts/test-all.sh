#!/usr/bin/env bash
# Runs every test aether has: unit, integration, property, fuzz-corpus, real-NATS (single node
# and 3-node cluster) and the deterministic simulation's fixed seed set.
#
# It first installs the pinned nats-server (2.15.1) into .tools/nats (idempotent, project-local),
# so it works on a fresh machine with Rust and Python 3 + pip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

AETHER_NATS_SERVER="${AETHER_NATS_SERVER:-$("$ROOT/scripts/install-nats-server.sh")}"
export AETHER_NATS_SERVER
echo "using nats-server: $AETHER_NATS_SERVER"

# Unit, integration and doc tests; examples are built. Benchmarks are not run here.
cargo test --all-features "$@"
