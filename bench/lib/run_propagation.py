#!/usr/bin/env python3
"""Route propagation in standalone mode (probe semantics of howardjohn/gateway-api-bench).

For each preload count N: `sluice run` on a fresh directory holding a GatewayClass, a
Gateway, an echo Service and N HTTPRoutes (one file, host pre-I.example.com). Once a
preloaded route answers, PROBES new HTTPRoutes are added one at a time, each in its own
file written atomically (hidden temp file, rename) with host probe-I.example.com. Right
after the rename, GET / with that Host every 5 ms on a keep-alive connection until 200;
the figure is rename -> first 200. Every response other than 404 before the 200, every
connection error and every probe with no 200 within TIMEOUT seconds counts as an error.
"""
import http.client, math, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

from common import SLUICE, free_port, rss_mb, stop_sluice as stop, write_atomically

PRELOADS = [int(n) for n in os.environ.get("PRELOADS", "0 1000 5000").split()]
PROBES = int(os.environ.get("PROBES", "50"))
POLL = float(os.environ.get("POLL_MS", "5")) / 1000
TIMEOUT = float(os.environ.get("TIMEOUT", "10"))
GAP = float(os.environ.get("GAP_MS", "100")) / 1000
# Steady state first: the preload's start-up work (first status file write) is over.
SETTLE = float(os.environ.get("SETTLE_MS", "3000")) / 1000
FLAGS = os.environ.get("SLUICE_FLAGS", "").split()  # e.g. "--quiet"

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
        - name: echo
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


def probe(conn_holder, port, host, renamed_at):
    """Polls until 200; returns (seconds or None, error count, what went wrong)."""
    errors, bad = 0, []
    deadline = renamed_at + TIMEOUT
    while True:
        now = time.perf_counter()
        if now > deadline:
            return None, errors + 1, bad + ["no 200 within %gs" % TIMEOUT]
        try:
            conn = conn_holder[0]
            conn.request("GET", "/", headers={"Host": host})
            response = conn.getresponse()
            response.read()
            code = response.status
        except (OSError, http.client.HTTPException) as error:
            errors += 1
            bad.append(type(error).__name__)
            conn_holder[0].close()
            conn_holder[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            time.sleep(POLL)
            continue
        if code == 200:
            return time.perf_counter() - renamed_at, errors, bad
        if code != 404:
            errors += 1
            bad.append(str(code))
        time.sleep(POLL)


def percentile(values, q):
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run(preload):
    work = tempfile.mkdtemp(prefix="sluice-propagation-")
    manifests = os.path.join(work, "manifests")
    os.mkdir(manifests)
    port, echo_port = free_port(), free_port()
    write_atomically(os.path.join(manifests, "base.yaml"), BASE.format(gateway_port=port, echo_port=echo_port))
    if preload:
        docs = "---\n".join(ROUTE.format(name=f"pre-{i}") for i in range(preload))
        write_atomically(os.path.join(manifests, "preload.yaml"), docs)
    log = open(os.path.join(work, "sluice.log"), "w")
    started = time.perf_counter()
    proc = subprocess.Popen([SLUICE, "run", manifests, "--status-file", os.path.join(work, "status.yaml")] + FLAGS,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The listener binds once the first snapshot is applied: a 404 for an unknown host
        # with no preload, a 200 from the last preloaded route otherwise.
        ready_host, want = (f"pre-{preload - 1}.example.com", 200) if preload else ("none.example.com", 404)
        if not wait_for(port, ready_host, want, 120):
            log.flush()
            sys.exit(f"sluice did not serve {ready_host} with {want}:\n" + open(log.name).read()[-3000:])
        startup = time.perf_counter() - started
        time.sleep(SETTLE)
        rss_before = rss_mb(proc.pid)
        latencies, errors, problems = [], 0, []
        for i in range(PROBES):
            host = f"probe-{i}.example.com"
            conn_holder = [http.client.HTTPConnection("127.0.0.1", port, timeout=2)]
            conn_holder[0].connect()
            path = os.path.join(manifests, f"probe-{i}.yaml")
            tmp = os.path.join(manifests, f".probe-{i}.yaml.tmp")
            with open(tmp, "w") as f:
                f.write(ROUTE.format(name=f"probe-{i}"))
            os.rename(tmp, path)
            renamed_at = time.perf_counter()
            seconds, bad_count, bad = probe(conn_holder, port, host, renamed_at)
            conn_holder[0].close()
            errors += bad_count
            problems += bad
            if seconds is not None:
                latencies.append(seconds * 1000)
            time.sleep(GAP)
        rss_after = rss_mb(proc.pid)
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    if problems:
        print(f"  preloaded={preload} problems: {', '.join(sorted(set(problems)))}", flush=True)
    print(f"  preloaded={preload} startup_to_ready_ms={startup * 1000:.0f} rss_mb(sluice+dataplane)="
          f"{rss_before:.0f}->{rss_after:.0f} min_ms={min(latencies or [0]):.1f} "
          f"mean_ms={statistics.mean(latencies or [0]):.1f} answered={len(latencies)}/{PROBES}", flush=True)
    if os.environ.get("VERBOSE"):
        print("  latencies_ms (in probe order): " + " ".join(f"{v:.0f}" for v in latencies), flush=True)
    p50 = percentile(latencies, 0.5) if latencies else float("nan")
    p99 = percentile(latencies, 0.99) if latencies else float("nan")
    worst = max(latencies) if latencies else float("nan")
    return f"propagation preloaded={preload} p50_ms={p50:.1f} p99_ms={p99:.1f} max_ms={worst:.1f} errors={errors}"


def main():
    if not os.access(SLUICE, os.X_OK):
        sys.exit(f"{SLUICE} is missing: cargo build --release -p sluice")
    command = " ".join(["sluice run DIR"] + FLAGS)
    print(f"method: standalone `{command}`; per preload N in {PRELOADS}: {PROBES} new HTTPRoutes, one file "
          f"each (atomic rename), poll the Host every {POLL * 1000:g} ms on keep-alive until 200; time = rename -> "
          f"first 200; errors = non-404 codes, socket errors, no 200 in {TIMEOUT:g}s; {GAP * 1000:g} ms between probes, probing starts {SETTLE * 1000:g} ms after the preload serves",
          flush=True)
    for preload in sorted(PRELOADS):
        print(run(preload), flush=True)


if __name__ == "__main__":
    main()
