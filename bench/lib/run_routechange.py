#!/usr/bin/env python3
"""Route change under traffic in standalone mode.

`sluice run` serves one Gateway, two echo Services (echo-a: service port 80, endpoint
port A; echo-b: service port 8080, endpoint port B) and one HTTPRoute, flip.example.com.
Every INTERVAL seconds the route file is rewritten atomically (hidden temp file, rename):
generation G sends to echo-a when G is even and echo-b when odd, and a RequestHeaderModifier
and a ResponseHeaderModifier both set `x-flip: G`. Meanwhile wrk (THREADS threads,
CONNECTIONS connections) and a sequential keep-alive prober send GET / to the route.
Every non-200 response and every socket error counts (must be 0). The prober also checks
that each answer is of one generation (backend, request header and response header agree)
and how long each flip takes to reach it.
"""
import http.client, json, math, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile
import threading, time

from common import SLUICE, free_port, stop_sluice as stop, write_atomically

FLIPS = int(os.environ.get("FLIPS", "100"))
INTERVAL = float(os.environ.get("INTERVAL_MS", "200")) / 1000
THREADS = int(os.environ.get("THREADS", "2"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "20"))
HOST = "flip.example.com"
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
"""

SERVICE = """---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations:
    standalone.sluice.dev/echo: "true"
spec:
  ports:
    - name: http
      port: {service_port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-static
  namespace: default
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
  - name: http
    port: {endpoint_port}
endpoints:
  - addresses: ["127.0.0.1"]
    conditions:
      ready: true
"""

ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: flip
  namespace: default
spec:
  parentRefs:
    - name: bench
  hostnames: ["{host}"]
  rules:
    - matches:
        - path: {{type: PathPrefix, value: /}}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{{name: x-flip, value: "{generation}"}}]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{{name: x-flip, value: "{generation}"}}]
      backendRefs:
        - name: {service}
          port: {service_port}
"""

BACKENDS = [("echo-a", 80), ("echo-b", 8080)]


def write_route(path, generation):
    service, service_port = BACKENDS[generation % 2]
    write_atomically(path, ROUTE.format(host=HOST, generation=generation, service=service, service_port=service_port))


def get(conn):
    conn.request("GET", "/", headers={"Host": HOST})
    response = conn.getresponse()
    return response.status, response.getheader("x-flip"), response.read()


class Prober(threading.Thread):
    """Sequential GETs on one keep-alive connection until stopped."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.done = port, threading.Event()
        self.requests = self.non200 = self.errors = self.inconsistent = self.transitions = 0
        self.first_seen = {}  # generation -> perf_counter of its first answer
        self.problems = []

    def run(self):
        conn, last_service = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5), None
        while not self.done.is_set():
            self.requests += 1
            try:
                code, response_flip, body = get(conn)
            except (OSError, http.client.HTTPException) as error:
                self.errors += 1
                self.problems.append(type(error).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                continue
            now = time.perf_counter()
            if code != 200:
                self.non200 += 1
                self.problems.append(str(code))
                continue
            try:
                echo = json.loads(body)
                service = echo.get("service")
                request_flip = (echo.get("headers", {}).get("X-Flip") or [None])[0]
                generation = int(request_flip)
            except (ValueError, TypeError, AttributeError):
                self.inconsistent += 1
                continue
            if service != BACKENDS[generation % 2][0] or response_flip != request_flip:
                self.inconsistent += 1
            self.first_seen.setdefault(generation, now)
            if last_service is not None and service != last_service:
                self.transitions += 1
            last_service = service
        conn.close()


def wrk_counts(out):
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    socket_errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    return requests, non2xx, socket_errors


def main():
    if not os.access(SLUICE, os.X_OK):
        sys.exit(f"{SLUICE} is missing: cargo build --release -p sluice")
    command = " ".join(["sluice run DIR"] + FLAGS)
    print(f"method: standalone `{command}`; one HTTPRoute rewritten (atomic rename) every {INTERVAL * 1000:g} ms, "
          f"{FLIPS} times: backend echo-a:80 <-> echo-b:8080 and x-flip request+response header value; under "
          f"wrk -t{THREADS} -c{CONNECTIONS} plus a sequential keep-alive prober; every non-200 and socket error counts",
          flush=True)
    work = tempfile.mkdtemp(prefix="sluice-routechange-")
    manifests = os.path.join(work, "manifests")
    os.mkdir(manifests)
    port = free_port()
    base = BASE.format(gateway_port=port) + "".join(
        SERVICE.format(name=name, service_port=service_port, endpoint_port=free_port())
        for name, service_port in BACKENDS)
    with open(os.path.join(manifests, ".base.yaml.tmp"), "w") as f:
        f.write(base)
    os.rename(os.path.join(manifests, ".base.yaml.tmp"), os.path.join(manifests, "base.yaml"))
    route = os.path.join(manifests, "route.yaml")
    write_route(route, 0)
    log = open(os.path.join(work, "sluice.log"), "w")
    proc = subprocess.Popen([SLUICE, "run", manifests, "--status-file", os.path.join(work, "status.yaml")] + FLAGS,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                code, _, body = get(conn)
                conn.close()
                if code == 200 and json.loads(body).get("service") == "echo-a":
                    break
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                log.flush()
                sys.exit("sluice did not serve the route:\n" + open(log.name).read()[-3000:])
            time.sleep(0.05)

        seconds = math.ceil(FLIPS * INTERVAL) + 3
        load = subprocess.Popen(["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "-H", f"Host: {HOST}",
                                 f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
        prober = Prober(port)
        prober.start()
        time.sleep(1)
        renamed = {}
        start = time.perf_counter()
        for generation in range(1, FLIPS + 1):
            pause = start + (generation - 1) * INTERVAL - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            write_route(route, generation)
            renamed[generation] = time.perf_counter()
        out = load.communicate()[0]
        prober.done.set()
        prober.join()
        alive = proc.poll() is None
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(work, ignore_errors=True)

    wrk_requests, wrk_non2xx, wrk_errors = wrk_counts(out)
    # How long each flip took to reach the prober: first answer of that generation or a later one.
    lags = []
    for generation, at in renamed.items():
        seen = [t for g, t in prober.first_seen.items() if g >= generation]
        if seen:
            lags.append((min(seen) - at) * 1000)
    lags.sort()
    applied = sum(1 for g in renamed if g in prober.first_seen)
    if not alive:
        print("  sluice run exited during the run", flush=True)
    if prober.problems:
        print(f"  prober problems: {', '.join(sorted(set(prober.problems)))}", flush=True)
    print(f"  wrk requests={wrk_requests} non2xx={wrk_non2xx} socket_errors={wrk_errors} "
          f"({wrk_requests / seconds:.0f} req/s)", flush=True)
    print(f"  prober requests={prober.requests} non200={prober.non200} errors={prober.errors} "
          f"inconsistent_answers={prober.inconsistent} backend_switches_seen={prober.transitions}/{FLIPS} "
          f"generations_seen={applied}/{FLIPS}", flush=True)
    if lags:
        print(f"  flip rename->first answer at prober: p50_ms={lags[len(lags) // 2]:.1f} "
              f"p99_ms={lags[max(0, math.ceil(0.99 * len(lags)) - 1)]:.1f} max_ms={lags[-1]:.1f} "
              f"mean_ms={statistics.mean(lags):.1f}", flush=True)
    requests = wrk_requests + prober.requests
    non200 = wrk_non2xx + wrk_errors + prober.non200 + prober.errors
    print(f"routechange flips={FLIPS} requests={requests} non200={non200}")


if __name__ == "__main__":
    main()
