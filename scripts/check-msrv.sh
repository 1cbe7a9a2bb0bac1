#!/usr/bin/env bash
# Checks that the declared rust-version (MSRV) holds without installing another toolchain:
# every package in the build graph must declare a rust-version no newer than ours (cargo's
# resolver picks such versions, and this catches a dependency bump that would break it), and
# clippy (msrv in clippy.toml) flags std APIs newer than the MSRV in our own code.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 - <<'PY'
import json, subprocess, sys
meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"]))
ours = next(p for p in meta["packages"] if p["name"] == "aether")["rust_version"]
def key(v): return tuple(int(x) for x in (v.split(".") + ["0", "0"])[:3])
used = {n["id"] for n in meta["resolve"]["nodes"]}
bad = [(p["name"], p["version"], p["rust_version"]) for p in meta["packages"]
       if p["id"] in used and p.get("rust_version") and key(p["rust_version"]) > key(ours)]
if bad:
    for name, version, rv in bad:
        print(f"{name} {version} needs Rust {rv}, newer than aether's rust-version {ours}")
    sys.exit(1)
print(f"MSRV {ours}: every package in the build graph declares {ours} or older (or nothing)")
PY
