#!/usr/bin/env bash
# Scale in standalone mode: controller and data-plane RSS with 5000 and 10000 HTTPRoutes
# present, and the snapshot size. Prints a table, then (last lines, 5000 then 10000):
# `scale routes=N controller_rss_mb=A dataplane_rss_mb=B snapshot_kb=C`
# (RSS: the larger of idle and after CHANGES route additions).
# Knobs: ROUTES ("5000 10000"), CHANGES (10), SETTLE_MS (3000), DATAPLANE (sluice-dataplane:
# the binary deployed in a cluster; sluice: `sluice dataplane`, standalone's default).
set -euo pipefail
cd "$(dirname "$0")/.."
# The data plane with the profile images ship it with (fat LTO); the controller: release.
nice cargo build --release -q -p sluice
nice cargo build --profile dataplane -q -p sluice-dataplane
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none), load $(cut -d' ' -f1-3 /proc/loadavg)"
exec python3 bench/lib/run_scale.py
