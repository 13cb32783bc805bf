#!/usr/bin/env bash
# Route change under traffic in standalone mode: one HTTPRoute's backend (Service and port)
# and a request/response header filter flip every 200 ms, FLIPS times, under wrk plus a
# sequential prober. Last line: `routechange flips=N requests=M non200=K` (K counts non-200
# responses and socket errors of both; must be 0).
# Knobs: FLIPS (100), INTERVAL_MS (200), THREADS (2), CONNECTIONS (20), SLUICE_FLAGS (e.g. "--quiet").
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p sluice
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
exec python3 bench/lib/run_routechange.py
