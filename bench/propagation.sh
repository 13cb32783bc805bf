#!/usr/bin/env bash
# Route propagation in standalone mode (probe semantics of howardjohn/gateway-api-bench):
# with N routes preloaded, add one HTTPRoute at a time and poll its host every 1 ms until
# 200. First the peer, Envoy Gateway's standalone mode (`propagation-envoy-gateway ...`
# lines; `--peer none` skips it), then Sluice. Last lines (N = 0, 1000, 5000, 10000):
# `propagation preloaded=N p50_ms=A p99_ms=B max_ms=C errors=E`.
# Knobs: PRELOADS ("0 1000 5000 10000"), PROBES (50), PEER_PROBES (5), POLL_MS (1),
# TIMEOUT s (10), PEER_TIMEOUT s (300), PEER_SKIP_MS (30000: larger peer preloads are
# skipped once a change took longer), GAP_MS (100), SLUICE_FLAGS (extra `sluice run`
# flags, e.g. "--quiet"), ENVOY_GATEWAY_VERSION (latest v1.9.x), BENCH_LOG_DIR (keep each
# run's log there; with RUST_LOG=sluice_controller=debug it has each change's timings).
# `--peer none` is also written `--peer=none`.
set -euo pipefail
cd "$(dirname "$0")/.."
nice cargo build --release -q -p sluice
peer=yes
for arg in "$@"; do [[ $arg == none || $arg == --peer=none ]] && peer=no; done
if [[ $peer == yes ]]; then
    source bench/lib/envoy-gateway.sh
    envoy_gateway_build
    [[ -n ${ENVOY_GATEWAY_UNAVAILABLE:-} ]] && export ENVOY_GATEWAY_UNAVAILABLE
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none), load $(cut -d' ' -f1-3 /proc/loadavg)"
exec python3 bench/lib/run_propagation.py "$@"
