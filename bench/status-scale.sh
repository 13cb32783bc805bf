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
# BENCH_LOG_DIR=DIR: the controllers run with RUST_LOG=${BENCH_CONTROLLER_LOG:-info,sluice_controller=debug}
# and their logs are copied to DIR/controller-POD.log when the script ends.
bench_controller_logs() {
    [[ -n ${BENCH_LOG_DIR:-} ]] || return 0
    mkdir -p "$BENCH_LOG_DIR"
    kubectl -n sluice-system set env deployment/sluice-controller \
        "RUST_LOG=${BENCH_CONTROLLER_LOG:-info,sluice_controller=debug}" >/dev/null
    kubectl -n sluice-system rollout status deployment/sluice-controller --timeout="${bench_timeout}s" >/dev/null ||
        bench_fail "controller rollout with debug logs failed"
    bench_dump_logs() {
        local pod
        for pod in $(kubectl -n sluice-system get pods -o name | grep sluice-controller); do
            kubectl -n sluice-system logs "$pod" >"$BENCH_LOG_DIR/controller-${pod#pod/}.log" 2>&1 || true
        done
    }
    trap 'bench_dump_logs; bench_cleanup' EXIT
}
bench_cluster_up status-scale
bench_controller_logs
bench_gateway 1
bench_api_env
python3 bench/lib/cluster_bench.py status-scale
