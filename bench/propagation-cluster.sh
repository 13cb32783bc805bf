#!/usr/bin/env bash
# Route propagation on the local cluster (probe semantics of howardjohn/gateway-api-bench):
# Sluice installed from its images by its chart (bench/lib/cluster.sh); with N HTTPRoutes
# already present, apply one new HTTPRoute at a time and poll its host through the
# Gateway's Service every 1 ms until 200. Run it as
#   flock -o /work/cluster.lock bench/propagation-cluster.sh
# One line per N; the last (the largest N):
#   `propagation-cluster preloaded=N p50_ms=A p99_ms=B max_ms=C errors=E`.
# Knobs: PRELOADS ("0 1000 5000"), PROBES (30), POLL_MS (1), TIMEOUT s (30), GAP_MS (200),
# SETTLE_MS (5000), SLUICE_IMAGES_DIR (prebuilt images/build output),
# BENCH_LOG_DIR (keep the controllers' debug logs there; BENCH_CONTROLLER_LOG: their RUST_LOG).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/cluster.sh
bench_machine
bench_cluster_up propagation-cluster
bench_controller_logs
bench_gateway 1
bench_api_env
python3 bench/lib/cluster_bench.py propagation "$gateway_address"
