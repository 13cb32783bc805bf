# Sourced by the cluster benchmarks (propagation-cluster.sh, rollout.sh, status-scale.sh):
# the local cluster of conformance/cluster with Sluice installed from its own images by its
# chart, as conformance/run and conformance/e2e-helm do it (their scripts do the work:
# images/build, charts/helm, charts/sync-crds, conformance/cluster/{build,up,down}).
#
#   source bench/lib/cluster.sh
#   bench_cluster_up NAME          build (cached), up, CRDs + helm install, GatewayClass Accepted;
#                                  tears everything down on EXIT
#   bench_gateway REPLICAS         Gateway `bench` (ns bench-infra, HTTP :80, routes from All)
#                                  and an echo-basic Deployment + Service `echo` (ns bench-app,
#                                  port 8080); waits for Programmed; sets $gateway_address
#   kubectl ...                    the built kubectl on the cluster
#   bench_api_env                  exports BENCH_KUBE_SERVER, BENCH_KUBE_TOKEN, BENCH_KUBE_CA for
#                                  bench/lib/cluster_bench.py
#
# Run a benchmark wrapped in `flock -o /work/cluster.lock` (one cluster per host).
# Environment: SLUICE_IMAGES_DIR (Sluice's image archives already built by images/build;
# default: built beside the state dir), SLUICE_CLUSTER_STATE, BENCH_TIMEOUT (s, 180).

bench_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench_timeout=${BENCH_TIMEOUT:-180}
bench_push_ip=198.19.0.10
bench_echo_image=gcr.io/k8s-staging-gateway-api/echo-basic:v20260204-monthly-2026.01-60-g28382302

bench_log() { echo "$bench_name: $*" >&2; }
bench_fail() {
    echo "$bench_name: FAILED: $*" >&2
    if [[ -n ${kubeconfig:-} ]]; then
        kubectl get pods -A -o wide >&2 || true
        kubectl get gatewayclass,gateway -A >&2 || true
    fi
    exit 1
}

bench_cleanup() {
    local pid
    for pid in ${bench_pids:-}; do kill "$pid" 2>/dev/null || true; done
    "$bench_repo/conformance/cluster/down" >&2 || echo "$bench_name: down failed" >&2
    [[ -z ${bench_built_images:-} ]] || rm -rf "$bench_built_images"
}

# Polls "$@" until it prints something non-empty; prints that.
bench_wait_for() {
    local what=$1 out deadline=$((SECONDS + bench_timeout))
    shift
    while true; do
        out=$("$@" 2>/dev/null || true)
        [[ -n $out ]] && { echo "$out"; return 0; }
        ((SECONDS < deadline)) || bench_fail "timed out after ${bench_timeout}s waiting for $what"
        sleep 0.5
    done
}

bench_machine() {
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), commit $(cd "$bench_repo" && git rev-parse --short HEAD 2>/dev/null || echo none), $(date -u +%Y-%m-%dT%H:%MZ)"
}

bench_cluster_up() {
    bench_name=$1
    export SLUICE_CLUSTER_STATE=${SLUICE_CLUSTER_STATE:-/tmp/sluice-bench-$$}
    # Gateway API v1.7 (echo-basic's module) needs Go 1.27; the module proxy serves it.
    export GOTOOLCHAIN=${GOTOOLCHAIN:-go1.27.3}
    trap bench_cleanup EXIT
    bench_log "build (cargo, images, helm, CRDs, cluster binaries)"
    (cd "$bench_repo" && cargo build --quiet --locked -p sluice-nodeagent) >&2
    local target=${CARGO_TARGET_DIR:-$bench_repo/target}/debug images_dir=${SLUICE_IMAGES_DIR:-}
    if [[ -z $images_dir ]]; then
        # Beside the cluster state dir, not in it: `up` only takes a new or empty state dir.
        images_dir=$SLUICE_CLUSTER_STATE-images
        bench_built_images=$images_dir
        "$bench_repo/images/build" --out "$images_dir" >&2
    fi
    bench_helm=$("$bench_repo/charts/helm" --path)
    local chart
    chart=$("$bench_repo/charts/sync-crds" | tail -n 1)
    bench_bin=$("$bench_repo/conformance/cluster/build" | tail -n 1)

    bench_log "up (state $SLUICE_CLUSTER_STATE)"
    export SLUICE_NODEAGENT_BIN=$target/sluice-nodeagent
    export SLUICE_NODE_IMAGES="sluice-controller=$images_dir/sluice-controller.tar sluice-dataplane=$images_dir/sluice-dataplane.tar"
    kubeconfig=$("$bench_repo/conformance/cluster/up" | tail -n 1)

    bench_log "helm install (the chart's crds/ brings the Gateway API CRDs)"
    "$bench_helm" install sluice "$chart" --kubeconfig "$kubeconfig" --namespace sluice-system --create-namespace \
        --set controller.image.repository=sluice-controller,controller.image.tag=dev \
        --set dataPlane.image.repository=sluice-dataplane,dataPlane.image.tag=dev \
        --set controller.pushServiceClusterIP=$bench_push_ip,controller.pushURL=https://$bench_push_ip:9443 \
        --set gatewayClass.proxyConfig.serviceType=ClusterIP \
        --wait --timeout "${bench_timeout}s" >&2 || bench_fail "helm install failed"
    bench_class_accepted() {
        kubectl get gatewayclass sluice -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}' | grep True
    }
    bench_wait_for "GatewayClass sluice Accepted" bench_class_accepted >/dev/null
}

kubectl() { "$bench_bin/kubectl" --kubeconfig="$kubeconfig" "$@"; }

bench_gateway() {
    local replicas=$1
    kubectl create namespace bench-infra >/dev/null
    kubectl create namespace bench-app >/dev/null
    kubectl apply -f - >/dev/null <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bench, namespace: bench-infra}
spec:
  gatewayClassName: sluice
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: bench-app}
spec:
  replicas: $replicas
  selector: {matchLabels: {app: echo}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: echo
        image: $bench_echo_image
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        readinessProbe:
          httpGet: {path: /, port: 3000}
          periodSeconds: 1
        lifecycle:
          # What a workload behind any proxy does so that requests already routed to a
          # terminating pod still find it serving.
          preStop: {sleep: {seconds: 3}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: bench-app}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080, targetPort: 3000}]
EOF
    bench_programmed() {
        kubectl -n bench-infra get gateway bench -o jsonpath='{.status.conditions[?(@.type=="Programmed")].status}' | grep True
    }
    bench_wait_for "Gateway bench Programmed" bench_programmed >/dev/null
    gateway_address=$(kubectl -n bench-infra get gateway bench -o jsonpath='{.status.addresses[0].value}')
    [[ $gateway_address == 198.19.* ]] || bench_fail "Gateway address '$gateway_address' is not a ClusterIP of the test range"
    kubectl -n bench-app rollout status deployment/echo --timeout="${bench_timeout}s" >/dev/null ||
        bench_fail "echo Deployment not ready"
    bench_log "Gateway bench at $gateway_address, echo with $replicas replicas"
}

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

bench_api_env() {
    BENCH_KUBE_SERVER=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
    BENCH_KUBE_TOKEN=$(kubectl config view --raw -o jsonpath='{.users[0].user.token}')
    BENCH_KUBE_CA=$SLUICE_CLUSTER_STATE/bench-ca.crt
    kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$BENCH_KUBE_CA"
    export BENCH_KUBE_SERVER BENCH_KUBE_TOKEN BENCH_KUBE_CA
}
