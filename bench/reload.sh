#!/usr/bin/env bash
# Config reloads under load: Sluice swaps its snapshot SWAPS times (default 100, every
# 100 ms) under wrk; nginx reloading with HUP runs the same as a peer. Last line:
# `reload swaps=N requests=M errors=E` (Sluice's figures; E counts non-2xx and socket errors).
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
for tool in nginx:nginx-light wrk:wrk taskset:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
cargo build --profile dataplane -q -p sluice-dataplane
exec python3 bench/lib/run_reload.py
