#!/usr/bin/env bash
# Route propagation in standalone mode (probe semantics of howardjohn/gateway-api-bench):
# with N routes preloaded, add one HTTPRoute at a time and poll its host every 5 ms until
# 200. Last line (the largest N): `propagation preloaded=N p50_ms=A p99_ms=B max_ms=C errors=E`.
# Knobs: PRELOADS ("0 1000 5000"), PROBES (50), POLL_MS (5), TIMEOUT s (10), GAP_MS (100),
# SLUICE_FLAGS (extra `sluice run` flags, e.g. "--quiet").
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sluice
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
exec python3 bench/lib/run_propagation.py
