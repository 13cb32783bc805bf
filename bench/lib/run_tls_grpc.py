#!/usr/bin/env python3
"""HTTPS and gRPC benchmark: Sluice against nginx (TLS termination) and Envoy (gRPC),
side by side, with the same route, certificate and backend (see shared BENCH.md).

- https: HTTP/1.1 over TLS 1.3 (ECDSA P-256) on kept-alive connections (wrk -t1 -c32),
  proxied to an nginx `return 200` backend with upstream keep-alive. Peer: nginx.
- grpc: unary gRPC calls (`sluice.echo.v1.Echo/Echo`) over h2c (h2load: 32 connections,
  10 streams each), proxied over h2c to `sluice echo --grpc`. Peer: Envoy.

Each proxy runs alone on CPU 1 with one worker; the load and the backends share CPU 0.
The figure is requests per proxy CPU-second (utime+stime over the run), as a ratio to the
peer in the same round; median of ROUNDS interleaved rounds, runs with steal > 2% dropped.
"""
import json, os, re, signal, statistics, subprocess, sys, tempfile, time

from common import TARGET, proc_tree

ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "8"))
BACKEND_PORT, GRPC_BACKEND_PORT, PROXY_PORT = 18180, 18181, 18182
HZ = os.sysconf("SC_CLK_TCK")
HOST = "bench.example.com"
RELEASE = os.path.join(TARGET, "release")
DATAPLANE = os.path.join(TARGET, "dataplane")  # the shipped data plane's profile (bench/tls-grpc.sh)
# A gRPC frame (uncompressed, 4-byte length) holding EchoRequest{message: "hi"}.
GRPC_BODY = b"\x00\x00\x00\x00\x04\x0a\x02hi"


def cpu_seconds(pid):
    user = system = 0
    for p in proc_tree(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (OSError, IndexError):
            pass
    return user / HZ, system / HZ


def steal_and_total():
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return fields[7], sum(fields)


def write(work, name, text):
    with open(os.path.join(work, name), "w") as f:
        f.write(text)


def certificate(work):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
                    "-keyout", f"{work}/tls.key", "-out", f"{work}/tls.crt"], check=True, capture_output=True)
    return open(f"{work}/tls.crt").read(), open(f"{work}/tls.key").read()


def configs(work, cert, key):
    write(work, "backend.conf", f"""
worker_processes 1;
daemon off;
pid {work}/backend.pid;
error_log /dev/null crit;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{BACKEND_PORT}; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    write(work, "nginx.conf", f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log /dev/null crit;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{PROXY_PORT} ssl;
    server_name {HOST};
    ssl_certificate {work}/tls.crt;
    ssl_certificate_key {work}/tls.key;
    ssl_protocols TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    envoy = {"static_resources": {
        "listeners": [{
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": PROXY_PORT}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "bench", "codec_type": "HTTP2",
                    "route_config": {"virtual_hosts": [{"name": "grpc", "domains": [HOST], "routes": [{
                        "match": {"path": "/sluice.echo.v1.Echo/Echo", "grpc": {}},
                        "route": {"cluster": "grpc"}}]}]},
                    "http_filters": [router],
                }}]}],
        }],
        "clusters": [{
            "name": "grpc", "type": "STATIC", "connect_timeout": "5s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "grpc", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": GRPC_BACKEND_PORT}}}}]}]},
        }],
    }}
    write(work, "envoy.json", json.dumps(envoy))
    cluster = lambda name, port, protocol: {"name": name, "appProtocol": protocol,
                                            "endpoints": [{"address": "127.0.0.1", "port": port, "ready": True}]}
    https = {
        "gateway": "bench/gw",
        "listeners": [{"name": "gateway/bench/gw/listener/https", "port": PROXY_PORT, "protocol": "PROTOCOL_HTTPS",
                       "hostname": HOST, "tlsMode": "TLS_MODE_TERMINATE", "certificates": ["secret/bench/tls"],
                       "httpRoutes": [{"name": "httproute/bench/web/rule/0/match/0", "hostnames": [HOST],
                                       "match": {"path": {"type": "PATH_MATCH_TYPE_PREFIX", "value": "/"}},
                                       "backends": [{"name": "backend", "weight": 1, "cluster": "backend"}]}]}],
        "clusters": [cluster("backend", BACKEND_PORT, "APP_PROTOCOL_HTTP1")],
        "certificates": [{"name": "secret/bench/tls", "certChainPem": cert, "privateKeyPem": key}],
    }
    write(work, "https.json", json.dumps(https))
    grpc = {
        "gateway": "bench/gw",
        "listeners": [{"name": "gateway/bench/gw/listener/h2c", "port": PROXY_PORT, "protocol": "PROTOCOL_HTTP",
                       "httpRoutes": [{"name": "grpcroute/bench/echo/rule/0/match/0", "hostnames": [HOST],
                                       "match": {"path": {"type": "PATH_MATCH_TYPE_EXACT", "value": "/sluice.echo.v1.Echo/Echo"},
                                                 "headers": [{"type": "VALUE_MATCH_TYPE_REGULAR_EXPRESSION",
                                                              "name": "content-type", "value": "application/grpc([+;-].*)?"}]},
                                       "backends": [{"name": "grpc", "weight": 1, "cluster": "grpc"}]}]}],
        "clusters": [cluster("grpc", GRPC_BACKEND_PORT, "APP_PROTOCOL_H2C")],
    }
    write(work, "grpc.json", json.dumps(grpc))
    with open(f"{work}/grpc-body.bin", "wb") as f:
        f.write(GRPC_BODY)


def command(proxy, klass, work):
    if proxy == "sluice":
        return [f"{DATAPLANE}/sluice-dataplane", "--snapshot", f"{work}/{klass}.json", "--bind", "127.0.0.1",
                "--worker-threads", "1"]
    if proxy == "nginx":
        return ["nginx", "-c", f"{work}/nginx.conf", "-p", work]
    return ["envoy", "-c", f"{work}/envoy.json", "--concurrency", "1", "--log-level", "error",
            "--base-id", str(os.getpid() % 1000)]


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)


def load(klass, work, seconds):
    """(requests, failures) of one load run."""
    if klass == "https":
        out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c32", f"-d{seconds}s", "-H", f"Host: {HOST}",
                              f"https://127.0.0.1:{PROXY_PORT}/"], capture_output=True, text=True).stdout
        requests = int(re.search(r"(\d+) requests in", out).group(1)) if "requests in" in out else 0
        failures = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        failures += int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        return requests, failures
    out = subprocess.run(["taskset", "-c", "0", "h2load", "-t1", "-c32", "-m10", "-D", str(seconds),
                          "-d", f"{work}/grpc-body.bin", "-H", "content-type: application/grpc", "-H", "te: trailers",
                          "-H", f":authority: {HOST}", f"http://127.0.0.1:{PROXY_PORT}/sluice.echo.v1.Echo/Echo"],
                         capture_output=True, text=True).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m:
        return 0, 1
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    non2xx = sum(int(x) for x in status.groups()[1:]) if status else 0
    return int(m.group(2)), int(m.group(3)) + int(m.group(4)) + non2xx


def ready(klass, work):
    for _ in range(100):
        requests, failures = load(klass, work, 1) if klass == "grpc" else (None, None)
        if klass == "https":
            out = subprocess.run(["curl", "-sk", "--max-time", "1", "-o", "/dev/null", "-w", "%{http_code}",
                                  "--resolve", f"{HOST}:{PROXY_PORT}:127.0.0.1", f"https://{HOST}:{PROXY_PORT}/"],
                                 capture_output=True, text=True).stdout
            if out == "200":
                return True
        elif requests and not failures:
            return True
        time.sleep(0.2)
    return False


def measure(proxy, klass, work):
    proc = subprocess.Popen(["taskset", "-c", "1"] + command(proxy, klass, work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if not ready(klass, work):
            return None
        cpu0, (steal0, total0) = cpu_seconds(proc.pid), steal_and_total()
        requests, failures = load(klass, work, DURATION)
        cpu1, (steal1, total1) = cpu_seconds(proc.pid), steal_and_total()
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        return {"per_cpu": requests / max(user + system, 1e-9), "requests": requests, "failures": failures,
                "user_us": user * 1e6 / max(requests, 1), "sys_us": system * 1e6 / max(requests, 1),
                "steal": (steal1 - steal0) / max(1, total1 - total0)}
    finally:
        stop(proc)


def main():
    work = tempfile.mkdtemp(prefix="sluice-bench-tls-grpc-")
    cert, key = certificate(work)
    configs(work, cert, key)
    backends = [
        subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", f"{work}/backend.conf", "-p", work],
                         stderr=subprocess.DEVNULL, start_new_session=True),
        subprocess.Popen(["taskset", "-c", "0", f"{RELEASE}/sluice", "echo", "--grpc", f"127.0.0.1:{GRPC_BACKEND_PORT}"],
                         stderr=subprocess.DEVNULL, start_new_session=True),
    ]
    classes = {"https": ["nginx", "sluice"], "grpc": ["envoy", "sluice"]}
    runs = {(k, p): [] for k, ps in classes.items() for p in ps}
    try:
        time.sleep(1)
        for r in range(ROUNDS):
            for klass, proxies in classes.items():
                for proxy in proxies:
                    result = measure(proxy, klass, work)
                    if result is None:
                        print(f"  {klass} {proxy}: did not start", flush=True)
                        continue
                    result["dropped"] = result["steal"] > 0.02
                    flag = " (dropped: steal > 2%)" if result["dropped"] else ""
                    print(f"  round {r + 1} {klass:5} {proxy:6} per_cpu={result['per_cpu']:9.0f} "
                          f"requests={result['requests']} failures={result['failures']} "
                          f"user={result['user_us']:.1f}us sys={result['sys_us']:.1f}us steal={result['steal']:.1%}{flag}",
                          flush=True)
                    runs[(klass, proxy)].append(result)
    finally:
        for backend in backends:
            os.killpg(backend.pid, signal.SIGTERM)
    print()
    print(f"{'class':6} {'proxy':7} {'req/cpu-s':>10} {'spread':>7} {'vs peer':>8} {'user µs':>8} {'sys µs':>7} {'failures':>9}")
    ratios = {}
    for klass, proxies in classes.items():
        kept = {p: [x for x in runs[(klass, p)] if not x["dropped"]] or runs[(klass, p)] for p in proxies}
        if not all(kept.values()):
            continue
        med = lambda p, k: statistics.median(x[k] for x in kept[p])
        peer = proxies[0]
        for p in proxies:
            values = [x["per_cpu"] for x in kept[p]]
            spread = (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0
            print(f"{klass:6} {p:7} {med(p, 'per_cpu'):>10.0f} {spread:>6.1%} {med(p, 'per_cpu') / med(peer, 'per_cpu'):>8.2f} "
                  f"{med(p, 'user_us'):>8.1f} {med(p, 'sys_us'):>7.1f} {sum(x['failures'] for x in kept[p]):>9}")
        ratios[klass] = med("sluice", "per_cpu") / med(peer, "per_cpu")
    failures = sum(x["failures"] for rs in runs.values() for x in rs)
    print(f"tls-grpc https_vs_nginx={ratios.get('https', float('nan')):.2f} "
          f"grpc_vs_envoy={ratios.get('grpc', float('nan')):.2f} failures={failures}")


if __name__ == "__main__":
    main()
