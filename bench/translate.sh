#!/usr/bin/env bash
# Full-recompute time of the translator for 1k, 10k and (last line) 5000 HTTPRoutes over
# 100 namespaces, one Gateway. Prints `translate routes=N full_ms=T snapshot_kb=S`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Cargo puts the binary under CARGO_TARGET_DIR when it is set (as .ci/run does).
target=${CARGO_TARGET_DIR:-target}
nice cargo build --release -q -p sluice-translate --example translate_bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo none), load $(cut -d" " -f1-3 /proc/loadavg)"
exec "$target/release/examples/translate_bench" 1000 10000 5000
