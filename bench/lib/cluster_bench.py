#!/usr/bin/env python3
"""Control-plane benchmarks on the local cluster (driven by bench/*.sh through bench/lib/cluster.sh).

    cluster_bench.py propagation ADDRESS   HTTPRoute applied -> first 200 through the Gateway
    cluster_bench.py rollout ADDRESS       a 10-replica backend rolled 3 times under load
    cluster_bench.py status-scale          1000 HTTPRoutes: time to correct status, writes per change

Talks to the API server directly (BENCH_KUBE_SERVER, BENCH_KUBE_TOKEN, BENCH_KUBE_CA), so
that a timer starts at the request `kubectl apply --server-side` sends, not at kubectl's
own start-up. The Gateway is `bench-infra/bench`, routes and the echo backend live in
`bench-app`. Standard library only.
"""
import datetime, http.client, json, math, multiprocessing, os, ssl, statistics, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse, urlencode

from common import probe_until_200

CONTROLLER = "sluice.dev/gateway-controller"
ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/bench-app/httproutes"
# How often a probe asks again (POLL_MS): 1 ms for propagation, whose latencies are around
# 10 ms (a 5 ms poll added 0-5 ms of its own); 5 ms for the rollout's /config/endpoints.
POLL_PROPAGATION = float(os.environ.get("POLL_MS", "1")) / 1000
POLL = float(os.environ.get("POLL_MS", "5")) / 1000


def log(text):
    print(text, file=sys.stderr, flush=True)


def percentile(values, q):
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


class Api:
    """A minimal Kubernetes API client: one HTTPS connection per thread, bearer token."""

    def __init__(self):
        url = urlparse(os.environ["BENCH_KUBE_SERVER"])
        self.host, self.port = url.hostname, url.port or 443
        self.token = os.environ["BENCH_KUBE_TOKEN"]
        self.context = ssl.create_default_context(cafile=os.environ["BENCH_KUBE_CA"])
        self.local = threading.local()

    def connection(self, timeout=30):
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def request(self, method, path, body=None, content_type="application/json"):
        for attempt in range(3):
            conn = getattr(self.local, "conn", None) or self.connection()
            self.local.conn = conn
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = content_type
            try:
                conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
            return json.loads(data) if data else None

    def apply(self, collection, obj):
        """Server-side apply, as `kubectl apply --server-side` does."""
        query = urlencode({"fieldManager": "bench", "force": "true"})
        return self.request("PATCH", f"{collection}/{obj['metadata']['name']}?{query}", obj,
                            "application/apply-patch+yaml")

    def list_all(self, collection, selector):
        items, token = [], ""
        while True:
            query = {"labelSelector": selector, "limit": "500"}
            if token:
                query["continue"] = token
            page = self.request("GET", f"{collection}?{urlencode(query)}")
            items += page["items"]
            token = page["metadata"].get("continue", "")
            if not token:
                return items, page["metadata"]["resourceVersion"]

    def watch(self, collection, selector, resource_version, on_event, stop):
        """Calls on_event(arrival_time, type, object) for each event until stop is set."""
        while not stop.is_set():
            query = urlencode({"labelSelector": selector, "watch": "1", "resourceVersion": resource_version,
                               "timeoutSeconds": "600", "allowWatchBookmarks": "true"})
            conn = self.connection(timeout=None)
            conn.request("GET", f"{collection}?{query}", headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"watch {collection}: {response.status} {response.read()[:300]!r}")
            while not stop.is_set():
                line = response.readline()
                if not line:
                    break
                arrived = time.time()
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    raise RuntimeError(f"watch {collection}: {obj}")
                resource_version = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    on_event(arrived, event["type"], obj)
            conn.close()


def route(name, hostname, path="/"):
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "bench-app", "labels": {"bench": name.split("-")[0]}},
        "spec": {
            "parentRefs": [{"name": "bench", "namespace": "bench-infra"}],
            "hostnames": [hostname],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                       "backendRefs": [{"name": "echo", "port": 8080}]}],
        },
    }


def status_correct(obj):
    """Accepted and ResolvedRefs True for our parent, for the current generation."""
    for parent in (obj.get("status") or {}).get("parents") or []:
        ref = parent.get("parentRef", {})
        if parent.get("controllerName") != CONTROLLER or ref.get("name") != "bench":
            continue
        conditions = {c["type"]: c for c in parent.get("conditions") or []}
        return all(conditions.get(t, {}).get("status") == "True"
                   and conditions[t].get("observedGeneration") == obj["metadata"]["generation"]
                   for t in ("Accepted", "ResolvedRefs"))
    return False


def apply_many(api, objects, threads=4):
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda o: api.apply(ROUTES, o), objects))


def delete_many(api, names, threads=4):
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda n: api.request("DELETE", f"{ROUTES}/{n}"), names))


def http_status(address, host, timeout=2):
    conn = http.client.HTTPConnection(address, 80, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_until(what, check, limit=600, interval=0.5):
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {limit}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# propagation


def probe(address, host, started, limit):
    """GET / every POLL_PROPAGATION on a keep-alive connection until 200: (seconds or None, errors, problems)."""
    connect = lambda: http.client.HTTPConnection(address, 80, timeout=2)
    holder = [connect()]
    try:
        return probe_until_200(holder, connect, host, started, limit, POLL_PROPAGATION)
    finally:
        holder[0].close()


def all_status_correct(api, selector, count):
    items, _ = api.list_all(ROUTES, selector)
    return len(items) == count and all(status_correct(o) for o in items)


def propagation(address):
    preloads = sorted(int(n) for n in os.environ.get("PRELOADS", "0 1000 5000").split())
    probes = int(os.environ.get("PROBES", "30"))
    limit = float(os.environ.get("TIMEOUT", "30"))
    gap = float(os.environ.get("GAP_MS", "200")) / 1000
    settle = float(os.environ.get("SETTLE_MS", "5000")) / 1000
    api = Api()
    print(f"method: per preload N in {preloads} (HTTPRoutes pre-I.example.com in bench-app, applied 4 at a time, "
          f"all with correct status, then {settle:g} s): {probes} new HTTPRoutes one at a time (server-side apply, "
          f"the request `kubectl apply --server-side` sends); from that request, GET / with the route's Host through "
          f"the Gateway's Service ({address}:80, kube-proxy) every {POLL_PROPAGATION * 1000:g} ms on keep-alive until 200; errors = "
          f"codes other than 404 before the 200, socket errors, no 200 in {limit:g} s; {gap * 1000:g} ms between probes",
          flush=True)
    present = 0
    for preload in preloads:
        if preload > present:
            started = time.perf_counter()
            apply_many(api, [route(f"pre-{i}", f"pre-{i}.example.com") for i in range(present, preload)])
            applied = time.perf_counter() - started
            wait_until(f"the last preloaded route to answer",
                       lambda: http_status(address, f"pre-{preload - 1}.example.com") == 200, interval=0.2)
            served = time.perf_counter() - started
            wait_until(f"{preload} preloaded routes with correct status",
                       lambda: all_status_correct(api, "bench=pre", preload), interval=2)
            log(f"preloaded {preload - present} routes: applied in {applied:.1f} s, last one served after "
                f"{served:.1f} s, all statuses after {time.perf_counter() - started:.1f} s")
            present = preload
        time.sleep(settle)
        latencies, errors, problems = [], 0, []
        names, applies, after_apply, trace = [], [], [], []
        for i in range(probes):
            name = f"probe-{preload}-{i}"
            names.append(name)
            host = f"{name}.example.com"
            if http_status(address, host) != 404:
                errors += 1
                problems.append("no 404 before the apply")
            obj = route(name, host)
            wall = datetime.datetime.now(datetime.timezone.utc)
            started = time.perf_counter()
            api.apply(ROUTES, obj)
            applies.append((time.perf_counter() - started) * 1000)
            seconds, bad, what = probe(address, host, started, limit)
            if seconds is not None:
                after_apply.append(seconds * 1000 - applies[-1])
            errors += bad
            problems += what
            if seconds is not None:
                latencies.append(seconds * 1000)
            trace.append(f"{name} {wall.strftime('%H:%M:%S.%f')} apply_ms={applies[-1]:.1f} "
                         f"total_ms={'-' if seconds is None else f'{seconds * 1000:.1f}'}")
            time.sleep(gap)
        if problems:
            print(f"  preloaded={preload} problems: {', '.join(sorted(set(problems)))}", flush=True)
        # The apply request is part of each latency: the API server's share of the floor.
        print(f"  preloaded={preload} min_ms={min(latencies or [0]):.1f} mean_ms={statistics.mean(latencies or [0]):.1f} "
              f"answered={len(latencies)}/{probes} apply_request_p50_ms={percentile(applies, 0.5):.1f} "
              f"apply_request_p99_ms={percentile(applies, 0.99):.1f} after_apply_p50_ms={percentile(after_apply, 0.5):.1f} "
              f"after_apply_p99_ms={percentile(after_apply, 0.99):.1f}", flush=True)
        if os.environ.get("VERBOSE"):
            print("  latencies_ms (in probe order): " + " ".join(f"{v:.0f}" for v in latencies), flush=True)
            print("  probes (apply request sent at UTC):\n    " + "\n    ".join(trace), flush=True)
        print(f"propagation-cluster preloaded={preload} p50_ms={percentile(latencies, 0.5):.1f} "
              f"p99_ms={percentile(latencies, 0.99):.1f} max_ms={max(latencies or [float('nan')]):.1f} errors={errors}",
              flush=True)
        delete_many(api, names)


# ---------------------------------------------------------------------------------------
# rollout


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.ok = self.errors = 0
        self.codes = {}

    def add(self, code):
        with self.lock:
            self.requests += 1
            if code is None:
                self.errors += 1
            elif 200 <= code < 300:
                self.ok += 1
            else:
                self.codes[code] = self.codes.get(code, 0) + 1


def paced_load(address, rate, counts, stop):
    """GETs at `rate` per second on one keep-alive connection (reconnects after an error)."""
    conn = http.client.HTTPConnection(address, 80, timeout=5)
    interval, next_at = 1 / rate, time.perf_counter()
    while not stop.is_set():
        try:
            conn.request("GET", "/load", headers={"Host": "rollout.example.com"})
            response = conn.getresponse()
            response.read()
            counts.add(response.status)
        except (OSError, http.client.HTTPException):
            counts.add(None)
            conn.close()
            conn = http.client.HTTPConnection(address, 80, timeout=5)
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    conn.close()


def sequential_prober(address, counts, stop):
    """One GET after another, each on a new connection, 10 ms apart."""
    while not stop.is_set():
        counts.add(http_status(address, "rollout.example.com", timeout=5))
        time.sleep(0.01)


def ready_addresses(slices):
    addresses = set()
    for s in slices.values():
        port = next((p.get("port") for p in s.get("ports") or []), None)
        for endpoint in s.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready", True) is not False:
                addresses.update(f"{a}:{port}" for a in endpoint.get("addresses") or [])
    return addresses


def poll_data_plane(ip, cluster, states, stop):
    """Records (compiled_unix_ms, endpoints) each time the data plane at ip serves new tables."""
    last = None
    while not stop.is_set():
        conn = http.client.HTTPConnection(ip, 9901, timeout=2)
        try:
            conn.request("GET", "/config/endpoints")
            text = conn.getresponse().read().decode()
        except (OSError, http.client.HTTPException):
            text = ""
        finally:
            conn.close()
        lines = text.splitlines()
        if lines:
            fields = dict(f.split("=", 1) for f in lines[0].split() if "=" in f)
            compiled = int(fields.get("compiled_unix_ms", "0"))
            if compiled != last:
                last = compiled
                endpoints = next((set(l.split()[1:]) for l in lines[1:] if l.split()[0] == cluster), set())
                states.append((compiled / 1000, endpoints))
        time.sleep(POLL)


def load_process(address, rate, connections, stop, results):
    """The load and the prober, in a process of their own so that their threads do not
    delay the watch's timestamps (one interpreter lock)."""
    counts_load, counts_probe, stop_threads = Counts(), Counts(), threading.Event()
    threads = [threading.Thread(target=paced_load, args=(address, rate / connections, counts_load, stop_threads))
               for _ in range(connections)]
    threads.append(threading.Thread(target=sequential_prober, args=(address, counts_probe, stop_threads)))
    for t in threads:
        t.start()
    stop.wait()
    stop_threads.set()
    for t in threads:
        t.join()
    results.put([(c.requests, c.ok, c.errors, c.codes) for c in (counts_load, counts_probe)])


def deployment_rolled(api, path):
    d = api.request("GET", path)
    s, want = d.get("status") or {}, d["spec"]["replicas"]
    return (s.get("observedGeneration", 0) >= d["metadata"]["generation"] and s.get("updatedReplicas") == want
            and s.get("replicas") == want and s.get("availableReplicas") == want)


def rollout(address):
    restarts = int(os.environ.get("RESTARTS", "3"))
    rate = float(os.environ.get("RATE", "200"))
    connections = int(os.environ.get("CONNECTIONS", "4"))
    pause = float(os.environ.get("PAUSE_S", "5"))
    api = Api()
    deployment = "/apis/apps/v1/namespaces/bench-app/deployments/echo"
    cluster = "service/bench-app/echo/port/8080"
    print(f"method: Deployment bench-app/echo (echo-basic, 10 replicas, readiness GET / every 1 s, preStop sleep "
          f"3 s, maxSurge 1, maxUnavailable 0) behind HTTPRoute rollout.example.com; load through the Gateway's "
          f"Service ({address}:80): {rate:g} req/s paced over {connections} keep-alive connections plus a sequential "
          f"prober (new connection per GET, 10 ms apart); {restarts} rollouts (pod-template annotation), each to "
          f"completion then {pause:g} s; endpoint latency = EndpointSlice event seen by a watch (ready address "
          f"added or gone) -> build time of the first data-plane tables reflecting it (/config/endpoints, polled "
          f"every {POLL * 1000:g} ms at each data-plane pod)", flush=True)
    api.apply(ROUTES, route("rollout", "rollout.example.com"))
    wait_until("the rollout route to answer", lambda: http_status(address, "rollout.example.com") == 200, 120, 0.2)

    stop = threading.Event()
    # The EndpointSlices of the echo Service: per ready address, when it appeared and went.
    selector = "kubernetes.io/service-name=echo"
    slices_path = "/apis/discovery.k8s.io/v1/namespaces/bench-app/endpointslices"
    items, rv = api.list_all(slices_path, selector)
    slices = {s["metadata"]["name"]: s for s in items}
    current = ready_addresses(slices)
    changes = []  # (time, address, "add" | "remove")

    def on_slice(arrived, kind, obj):
        nonlocal current
        if kind == "DELETED":
            slices.pop(obj["metadata"]["name"], None)
        else:
            slices[obj["metadata"]["name"]] = obj
        now = ready_addresses(slices)
        changes.extend((arrived, a, "add") for a in now - current)
        changes.extend((arrived, a, "remove") for a in current - now)
        current = now

    pods, _ = api.list_all("/api/v1/namespaces/bench-infra/pods", "gateway.networking.k8s.io/gateway-name=bench")
    planes = [p["status"]["podIP"] for p in pods if p.get("status", {}).get("podIP")]
    states = {ip: [] for ip in planes}
    threads = [threading.Thread(target=api.watch, args=(slices_path, selector, rv, on_slice, stop), daemon=True)]
    threads += [threading.Thread(target=poll_data_plane, args=(ip, cluster, states[ip], stop), daemon=True)
                for ip in planes]
    load_stop, load_results = multiprocessing.Event(), multiprocessing.Queue()
    loader = multiprocessing.Process(target=load_process, args=(address, rate, connections, load_stop, load_results))
    loader.start()
    for t in threads:
        t.start()
    time.sleep(pause)
    for restart in range(1, restarts + 1):
        started = time.perf_counter()
        api.request("PATCH", deployment,
                    {"spec": {"template": {"metadata": {"annotations": {"bench.sluice.dev/restart": str(restart)}}}}},
                    "application/merge-patch+json")
        time.sleep(1)
        wait_until(f"rollout {restart}", lambda: deployment_rolled(api, deployment), 300)
        log(f"rollout {restart} done in {time.perf_counter() - started:.1f} s")
        time.sleep(pause)
    load_stop.set()
    (load_requests, load_ok, load_errors, load_codes), (probe_requests, probe_ok, probe_errors, probe_codes) = \
        load_results.get(timeout=60)
    loader.join()
    stop.set()
    time.sleep(0.5)

    latencies, missing, by_kind = [], 0, {"add": [], "remove": []}
    for ip, seen in states.items():
        for at, address_, kind in changes:
            if kind == "add":
                first = next((t for t, eps in seen if address_ in eps), None)
            else:
                last_with = max((i for i, (_, eps) in enumerate(seen) if address_ in eps), default=None)
                first = seen[last_with + 1][0] if last_with is not None and last_with + 1 < len(seen) else None
            if first is None:
                missing += 1
            else:
                latencies.append((first - at) * 1000)
                by_kind[kind].append((first - at) * 1000)
    requests = load_requests + probe_requests
    non2xx = requests - load_ok - probe_ok
    codes = {}
    for c in (load_codes, probe_codes):
        for code, n in c.items():
            codes[code] = codes.get(code, 0) + n
    print(f"  load: {load_requests} requests, {load_requests - load_ok} non-2xx ({load_errors} socket errors); "
          f"prober: {probe_requests} requests, {probe_requests - probe_ok} non-2xx ({probe_errors} socket errors); "
          f"codes other than 2xx: {codes or 'none'}", flush=True)
    print(f"  endpoint changes: {len(changes)} (ready addresses added or gone) x {len(planes)} data-plane pod(s); "
          f"{len(latencies)} matched, {missing} never seen applied; latency ms min={min(latencies or [0]):.0f} "
          f"p50={percentile(latencies, 0.5):.0f} p99={percentile(latencies, 0.99):.0f} "
          f"max={max(latencies or [0]):.0f}; data-plane table builds seen: {sum(len(s) for s in states.values())}",
          flush=True)
    for kind, values in by_kind.items():
        print(f"  {kind}: {len(values)} changes, latency ms min={min(values or [0]):.0f} "
              f"p50={percentile(values, 0.5):.0f} max={max(values or [0]):.0f}", flush=True)
    print(f"rollout restarts={restarts} requests={requests} non2xx={non2xx} "
          f"endpoint_p99_ms={percentile(latencies, 0.99):.0f}", flush=True)


# ---------------------------------------------------------------------------------------
# status-scale


def status_scale():
    count = int(os.environ.get("ROUTES", "1000"))
    quiet = float(os.environ.get("QUIET_S", "10"))
    api = Api()
    print(f"method: {count} HTTPRoutes (scale-I.example.com, bench-app, parent bench-infra/bench, backend echo) "
          f"created by server-side apply 4 at a time; a watch on them records every event; all_status_s = first "
          f"apply request -> the last route showing Accepted and ResolvedRefs True for our parent at its "
          f"generation (after_last_apply_s: from the last apply's answer); then every route's path changed (one spec change each) the same way; a status write is "
          f"a watch event whose status changed and generation did not; counted until {quiet:g} s without events",
          flush=True)
    selector = "bench=scale"
    _, rv = api.list_all(ROUTES, selector)
    lock = threading.Lock()
    last = {}  # name -> (generation, status, metadata without resourceVersion/managedFields)
    good_since = {}  # name -> arrival of the event that made it correct (for the current phase)
    writes = {"status": 0, "spec": 0, "other": 0}
    last_event = [time.monotonic()]

    def on_route(arrived, kind, obj):
        name = obj["metadata"]["name"]
        meta = {k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "managedFields")}
        shape = (obj["metadata"]["generation"], json.dumps(obj.get("status"), sort_keys=True), json.dumps(meta, sort_keys=True))
        with lock:
            last_event[0] = time.monotonic()
            before = last.get(name)
            if kind == "MODIFIED" and before is not None:
                if shape[0] != before[0]:
                    writes["spec"] += 1
                elif shape[1] != before[1]:
                    writes["status"] += 1
                else:
                    writes["other"] += 1
            last[name] = shape if kind != "DELETED" else None
            if status_correct(obj) and name not in good_since:
                good_since[name] = arrived

    stop = threading.Event()
    threading.Thread(target=api.watch, args=(ROUTES, selector, rv, on_route, stop), daemon=True).start()
    time.sleep(1)
    results = []
    for phase, path in (("create", "/"), ("update", "/v2")):
        with lock:
            good_since.clear()
            for key in writes:
                writes[key] = 0
        started_wall, started = time.time(), time.perf_counter()
        apply_many(api, [route(f"scale-{i}", f"scale-{i}.example.com", path) for i in range(count)])
        applied = time.perf_counter() - started

        def all_good():
            with lock:
                return len(good_since) >= count

        wait_until(f"{count} routes with correct status ({phase})", all_good, 900, 0.2)
        with lock:
            all_status = max(good_since.values()) - started_wall
        wait_until("the watch to go quiet", lambda: time.monotonic() - last_event[0] > quiet, 900, 0.5)
        with lock:
            counted = dict(writes)
        per_change = counted["status"] / count
        # The API server takes most of the time to accept the applies on this machine;
        # what Sluice adds is the time from the last apply to the last correct status.
        after_applies = all_status - applied
        results.append((all_status, counted["status"], after_applies))
        print(f"  {phase}: applied in {applied:.1f} s; all {count} statuses correct after {all_status:.1f} s "
              f"({after_applies:.2f} s after the last apply); "
              f"status writes {counted['status']} ({per_change:.2f} per route change), spec writes "
              f"{counted['spec']}, other metadata writes {counted['other']}", flush=True)
    stop.set()
    total_writes = sum(w for _, w, _ in results)
    print(f"status-scale routes={count} all_status_s={results[0][0]:.1f} "
          f"after_last_apply_s={results[0][2]:.2f} "
          f"writes_per_change={total_writes / (count * len(results)):.2f}", flush=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "propagation":
        propagation(sys.argv[2])
    elif command == "rollout":
        rollout(sys.argv[2])
    elif command == "status-scale":
        status_scale()
    else:
        sys.exit(__doc__)
