#!/usr/bin/env bash
# Status at scale on the local cluster: 1000 HTTPRoutes applied at once, time until every
# one shows Accepted and ResolvedRefs True for our parent; then one spec change per route.
# Status writes per route change are counted from a watch (events whose status changed).
# Run it as
#   flock -o /work/cluster.lock bench/status-scale.sh
# Last line: `status-scale routes=1000 all_status_s=T after_last_apply_s=A writes_per_change=W`.
# Knobs: ROUTES (1000), QUIET_S (10), SLUICE_IMAGES_DIR (prebuilt images/build output),
# BENCH_LOG_DIR (keep the controllers' debug logs there; BENCH_CONTROLLER_LOG: their RUST_LOG).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/cluster.sh
bench_machine
bench_cluster_up status-scale
bench_controller_logs
bench_gateway 1
bench_api_env
python3 bench/lib/cluster_bench.py status-scale
