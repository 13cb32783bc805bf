#!/usr/bin/env bash
# Endpoint churn on the local cluster: a 10-replica echo-basic Deployment behind a Gateway
# route, rolled three times (pod-template change, maxSurge 1) under constant load through
# the Gateway's Service (paced keep-alive load plus a sequential prober); counts requests
# and non-2xx, and the latency from an EndpointSlice change seen by a watch to the data
# plane serving tables that reflect it (its admin `/config/endpoints`). Run it as
#   flock -o /work/cluster.lock bench/rollout.sh
# Last line: `rollout restarts=3 requests=N non2xx=K endpoint_p99_ms=L`.
# Knobs: RESTARTS (3), RATE req/s (200), CONNECTIONS (4), PAUSE_S (5), POLL_MS (5),
# SLUICE_IMAGES_DIR (prebuilt images/build output).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/cluster.sh
bench_machine
bench_cluster_up rollout
bench_gateway 10
bench_api_env
python3 bench/lib/cluster_bench.py rollout "$gateway_address"
