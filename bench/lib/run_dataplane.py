#!/usr/bin/env python3
"""Data-plane benchmark: Sluice against nginx, HAProxy, Envoy and a minimal Pingora proxy,
side by side, with the same routes, certificate and backend (see shared BENCH.md), per
traffic class:

  get        plain HTTP/1.1 GET (wrk)
  post       HTTP/1.1 POST with a 4 KiB body (wrk with a Lua script)
  https      HTTPS GET on kept-alive connections (wrk)
  https_new  HTTPS with a new TCP and TLS connection per request (wrk sending
             `Connection: close`; the new connections per request are printed). wrk keeps
             the TLS session across its reconnects, so the handshakes are TLS 1.3
             resumptions with a fresh X25519 exchange and no certificate signature wherever
             the proxy resumes (the preflight says which do; nginx's $ssl_session_reused
             showed 3053 of 3054 wrk connections resumed). oha's latency run uses
             --disable-keepalive.
  h2         HTTP/2 over TLS (h2load, 32 connections of 10 streams)

Every proxy serves the routes in plain HTTP on PROXY_PORT and over TLS (TLS 1.3, one
ECDSA P-256 certificate, HTTP/2 or HTTP/1.1 by ALPN) on TLS_PORT; the backend is plain
HTTP/1.1. Each proxy runs alone on CPU 1 with one worker; the load and the backend share
CPU 0. The primary figure is requests per proxy CPU-second (utime+stime of the proxy's
processes over the run), as a ratio to nginx in the same class. Latency: p99 from oha at
a fixed rate of 50% of nginx's maximum for that class (oha --http2 for h2). RSS at N
routes is the proxy's after every class's load; RSS_ROUTES repeats only that (a short run
of each class) at a larger route count.

Knobs: ROUNDS (5), DURATION seconds per run (8), ROUTES ("1000"), RSS_ROUTES ("5000",
empty to skip), PROXIES, CLASSES.
"""
import json, os, re, shutil, signal, socket, ssl, statistics, subprocess, sys, tempfile, time, urllib.request

from common import ROOT, TARGET, proc_tree, rss_mb
ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "8"))
ROUTES = [int(n) for n in os.environ.get("ROUTES", "1000").split()]
RSS_ROUTES = [int(n) for n in os.environ.get("RSS_ROUTES", "5000").split()]
PROXIES = os.environ.get("PROXIES", "nginx haproxy envoy minimal sluice").split()
ALL_CLASSES = ["get", "post", "https", "https_new", "h2"]
CLASSES = [k for k in os.environ.get("CLASSES", " ".join(ALL_CLASSES)).split() if k in ALL_CLASSES]
BACKEND_PORT, PROXY_PORT = 18080, 18081
TLS_PORT = PROXY_PORT + 1
CONNECTIONS, STREAMS = 32, 10  # load connections; HTTP/2 streams per connection
HZ = os.sysconf("SC_CLK_TCK")
NAN = float("nan")
# A run fails when it served nothing or when more than this share of its requests failed.
MAX_ERROR_SHARE = 0.001
RSS_LOAD_SECONDS = 2  # load per class before the RSS-only figure at RSS_ROUTES
GEN = os.path.join(ROOT, "bench", "lib", "gen_configs.py")


def cpu_seconds(pid):
    """(user, system) CPU seconds of the process tree."""
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


def tcp_active_opens():
    """Outgoing TCP connections opened on the machine so far (/proc/net/snmp ActiveOpens):
    its difference over a run counts the load's new connections (plus the proxy's to the
    backend, which keep-alive keeps rare)."""
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("ActiveOpens")])


def command(proxy, work):
    release = os.path.join(TARGET, "dataplane")  # the shipped data plane's profile (bench/dataplane.sh)
    return {
        "nginx": ["nginx", "-c", f"{work}/nginx.conf", "-p", work],
        "haproxy": ["haproxy", "-f", f"{work}/haproxy.cfg"],
        "envoy": ["envoy", "-c", f"{work}/envoy.json", "--concurrency", "1", "--log-level", "error",
                  "--base-id", str(os.getpid() % 1000)],
        "minimal": [f"{release}/minimal-pingora", f"127.0.0.1:{PROXY_PORT}", f"{work}/minimal.routes",
                    f"127.0.0.1:{TLS_PORT}", f"{work}/tls.crt", f"{work}/tls.key"],
        # One serving thread, as every peer here has one worker.
        "sluice": [f"{release}/sluice-dataplane", "--snapshot", f"{work}/snapshot.json", "--bind", "127.0.0.1",
                   "--worker-threads", "1"]
        + os.environ.get("SLUICE_ARGS", "").split(),
    }[proxy]


def stop(proc):
    """SIGINT: a fast shutdown for every proxy here (Pingora drains for long on SIGTERM)."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)


def wait_ok(url, host, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers={"Host": host})
            if urllib.request.urlopen(req, timeout=1).status == 200:
                return True
        except Exception:
            time.sleep(0.1)
    return False


def target(klass, mid):
    """(host, port, scheme, path) of a class's requests: the route in the middle of the table."""
    tls = klass in ("https", "https_new", "h2")
    return f"h{mid}.bench.test", TLS_PORT if tls else PROXY_PORT, "https" if tls else "http", f"/p{mid}/x"


def connect_to(scheme, host, port):
    """URL on the scheme's default port (so that Host and :authority carry no port, which
    HAProxy's and Envoy's host matches would see) and the --connect-to value (curl, oha)
    that sends it to 127.0.0.1:port."""
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}", f"{host}:{default}:127.0.0.1:{port}"


def curl(klass, work, mid):
    """(status, HTTP version) of one request of the class by curl (SNI and Host the route's)."""
    host, port, scheme, path = target(klass, mid)
    origin, mapping = connect_to(scheme, host, port)
    args = ["curl", "-sk", "--max-time", "2", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
            "--connect-to", mapping]
    args += ["--http2"] if klass == "h2" else ["--http1.1"]
    if klass == "post":
        args += ["--data-binary", f"@{work}/post.bin", "-H", "Content-Type: application/octet-stream"]
    if klass == "https_new":
        args += ["-H", "Connection: close"]
    out = subprocess.run(args + [origin + path], capture_output=True, text=True).stdout.split()
    return (out + ["000", "?"])[:2]


def tls_facts(mid):
    """(protocol, ALPN, whether a second connection resumes the first's session) of TLS_PORT,
    as a client offering h2 and http/1.1 sees them; wrk's https_new offers its last session
    the same way."""
    host, port, _, path = target("https", mid)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        version, alpn = tls.version(), tls.selected_alpn_protocol()
    # TLS 1.3 sends its session tickets after the handshake: read a response first.
    ctx.set_alpn_protocols(["http/1.1"])
    session = None
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        while tls.recv(4096):
            pass
        session = tls.session
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
            ctx.wrap_socket(raw, server_hostname=host, session=session) as tls:
        resumed = tls.session_reused
    return version, alpn, resumed


def start(proxy, work, mid, timeout=60):
    """The proxy on CPU 1, once its plain port answers the route with 200 and its TLS port
    too (given 10 s more; a proxy whose TLS never answers fails the TLS classes alone);
    None if it does not start."""
    proc = subprocess.Popen(["taskset", "-c", "1"] + command(proxy, work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    if wait_ok(f"http://127.0.0.1:{PROXY_PORT}/p{mid}/x", f"h{mid}.bench.test", timeout):
        deadline = time.time() + 10
        while time.time() < deadline and curl("https", work, mid)[0] != "200":
            time.sleep(0.1)
        if proc.poll() is None:
            return proc
    stop(proc)
    return None


def wrk(klass, work, mid, seconds):
    host, port, scheme, path = target(klass, mid)
    args = ["taskset", "-c", "0", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-H", f"Host: {host}"]
    if klass == "post":
        args += ["-s", f"{work}/post.lua"]
    if klass == "https_new":
        args += ["-H", "Connection: close"]
    run = subprocess.run(args + [f"{scheme}://127.0.0.1:{port}{path}"], capture_output=True, text=True)
    m = re.search(r"(\d+) requests in", run.stdout)
    if not m:
        return {"requests": 0, "failures": 0, "note": (run.stderr or run.stdout).strip()[-200:] or "no output"}
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", run.stdout))
    non2xx = int(n.group(1)) if (n := re.search(r"Non-2xx or 3xx responses: (\d+)", run.stdout)) else 0
    # wrk counts responses of any status in its total: only the 2xx ones are served.
    return {"requests": int(m.group(1)) - non2xx, "failures": errors + non2xx,
            "note": f"socket errors {errors}, non-2xx {non2xx}" if errors + non2xx else ""}


def h2load(work, mid, seconds):
    host, port, _, path = target("h2", mid)
    # The URL's host name is the SNI and :authority (without port: the URL's is 443);
    # --connect-to sends the connections to 127.0.0.1:port.
    run = subprocess.run(["taskset", "-c", "0", "h2load", "-t1", f"-c{CONNECTIONS}", f"-m{STREAMS}", "-D", str(seconds),
                          f"--connect-to=127.0.0.1:{port}", f"https://{host}{path}"], capture_output=True, text=True)
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, \d+ errored, (\d+) timeout",
                  run.stdout)
    if not m:
        return {"requests": 0, "failures": 0, "note": (run.stderr or run.stdout).strip()[-200:] or "no output"}
    protocol = re.search(r"Application protocol: (\S+)", run.stdout)
    if not protocol:
        return {"requests": 0, "failures": 0, "note": run.stderr.strip()[-200:] or "h2load made no TLS connection"}
    if protocol.group(1) != "h2":
        return {"requests": 0, "failures": 0, "note": f"ALPN gave {protocol.group(1)}, not h2"}
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx", run.stdout)
    redirects = int(status.group(2)) if status else 0  # h2load counts 3xx as succeeded
    failures = int(m.group(2)) + int(m.group(3)) + redirects
    return {"requests": int(m.group(1)) - redirects, "failures": failures,
            "note": f"failed {m.group(2)}, timeout {m.group(3)}, 3xx {redirects}" if failures else ""}


def load(klass, work, mid, seconds):
    """{requests served with 2xx, failures, note} of one closed-loop run of the class."""
    return h2load(work, mid, seconds) if klass == "h2" else wrk(klass, work, mid, seconds)


def oha_p99(klass, work, mid, rate, seconds):
    """p99 in ms at a fixed rate, or None (no oha, or no answer)."""
    if not shutil.which("oha") or not rate:
        return None
    host, port, scheme, path = target(klass, mid)
    origin, mapping = connect_to(scheme, host, port)
    args = ["taskset", "-c", "0", "oha", "--no-tui", "--output-format", "json", "-q", str(int(rate)), "-z", f"{seconds}s",
            "-c", str(CONNECTIONS), "--connect-to", mapping]
    if scheme == "https":
        args += ["--insecure"]
    if klass == "post":
        args += ["-m", "POST", "-D", f"{work}/post.bin", "-H", "Content-Type: application/octet-stream"]
    if klass == "https_new":
        args += ["--disable-keepalive"]
    if klass == "h2":
        args += ["--http2", "-p", str(STREAMS)]
    out = subprocess.run(args + [origin + path], capture_output=True, text=True).stdout
    try:
        report = json.loads(out)
        if set(report.get("statusCodeDistribution", {})) != {"200"}:
            return None
        return report["latencyPercentiles"]["p99"] * 1000
    except (ValueError, KeyError, TypeError):
        return None


def run_class(proc, klass, work, mid, rate):
    """One measured run of a class against the running proxy: its CPU, load, p99 and RSS."""
    load(klass, work, mid, 1)  # warm-up
    cpu0, (steal0, total0), opens0 = cpu_seconds(proc.pid), steal_and_total(), tcp_active_opens()
    result = load(klass, work, mid, DURATION)
    cpu1, (steal1, total1), opens1 = cpu_seconds(proc.pid), steal_and_total(), tcp_active_opens()
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    requests = result["requests"]
    result.update({
        "per_cpu": requests / max(user + system, 1e-9), "rps": requests / DURATION,
        "user_us": user * 1e6 / max(requests, 1), "sys_us": system * 1e6 / max(requests, 1),
        "conns_per_req": (opens1 - opens0) / max(requests, 1),
        "steal": (steal1 - steal0) / max(1, total1 - total0),
        "ok": requests > 0 and result["failures"] <= MAX_ERROR_SHARE * requests,
    })
    result["p99_fixed_ms"] = oha_p99(klass, work, mid, rate, DURATION) if result["ok"] else None
    result["rss"] = rss_mb(proc.pid)
    return result


def preflight(work, n):
    """Every proxy answers every class with 200 (curl), over TLS 1.3 with h2 by ALPN."""
    mid = n // 2
    for proxy in PROXIES:
        proc = start(proxy, work, mid)
        if proc is None:
            print(f"  preflight N={n} {proxy:8} did not start", flush=True)
            continue
        try:
            answers = " ".join(f"{k}={'/'.join(curl(k, work, mid))}" for k in CLASSES)
            try:
                version, alpn, resumed = tls_facts(mid)
                tls = f"tls={version} alpn={alpn} resumes={'yes' if resumed else 'no'}"
            except (OSError, ssl.SSLError) as error:
                tls = f"tls: {error}"
            print(f"  preflight N={n} {proxy:8} {answers} {tls}", flush=True)
        finally:
            stop(proc)


def rss_only(work, n):
    """RSS idle and after a short run of each class at N routes, per proxy."""
    mid = n // 2
    subprocess.run([sys.executable, GEN, work, str(n), str(PROXY_PORT), str(BACKEND_PORT), str(TLS_PORT)], check=True)
    rows = {}
    for proxy in PROXIES:
        proc = start(proxy, work, mid, timeout=120)
        if proc is None:
            print(f"  N={n} {proxy}: did not start", flush=True)
            continue
        try:
            idle = rss_mb(proc.pid)
            failed = [k for k in CLASSES if not load(k, work, mid, RSS_LOAD_SECONDS)["requests"]]
            rows[proxy] = (idle, rss_mb(proc.pid), failed)
            print(f"  N={n} {proxy:8} rss idle={idle:.1f}MB after load={rows[proxy][1]:.1f}MB"
                  + (f" (no 2xx for {' '.join(failed)})" if failed else ""), flush=True)
        finally:
            stop(proc)
    return rows



def main():
    work = tempfile.mkdtemp(prefix="sluice-bench-")
    subprocess.run([sys.executable, GEN, work, "1", str(PROXY_PORT), str(BACKEND_PORT), str(TLS_PORT)], check=True)
    backend = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", f"{work}/backend.conf", "-p", work],
                               stderr=subprocess.DEVNULL, start_new_session=True)
    summary, rss_rows = {}, {}
    try:
        for n in ROUTES:
            mid = n // 2
            subprocess.run([sys.executable, GEN, work, str(n), str(PROXY_PORT), str(BACKEND_PORT), str(TLS_PORT)],
                           check=True)
            preflight(work, n)
            runs = {(k, p): [] for k in CLASSES for p in PROXIES}
            # Calibration: nginx's closed-loop maximum per class sets the fixed rate (50%)
            # for latency.
            rates = {}
            proc = start("nginx", work, mid)
            if proc is not None:
                try:
                    for klass in CLASSES:
                        load(klass, work, mid, 1)
                        result = load(klass, work, mid, DURATION)
                        rates[klass] = result["requests"] / DURATION * 0.5 if result["requests"] else None
                finally:
                    stop(proc)
            print(f"  N={n} fixed latency rates (50% of nginx's maximum): "
                  + " ".join(f"{k}={rates.get(k) or 0:.0f}/s" for k in CLASSES), flush=True)
            for r in range(ROUNDS):
                for proxy in PROXIES:  # interleaved rounds; one start serves every class
                    proc = start(proxy, work, mid)
                    if proc is None:
                        print(f"  N={n} round {r + 1} {proxy}: did not start", flush=True)
                        continue
                    try:
                        for klass in CLASSES:
                            if proc.poll() is not None:  # died in the class before: start again
                                print(f"  N={n} round {r + 1} {proxy}: exited; starting it again", flush=True)
                                proc = start(proxy, work, mid)
                                if proc is None:
                                    break
                            result = run_class(proc, klass, work, mid, rates.get(klass))
                            result["round"] = r
                            result["dropped"] = result["steal"] > 0.02
                            flag = " (dropped: steal > 2%)" if result["dropped"] else ""
                            if not result["ok"]:
                                flag = f" FAILED ({result['note'] or 'no 2xx'})"
                            p99 = result["p99_fixed_ms"]
                            print(f"  N={n} round {r + 1} {klass:9} {proxy:8} requests={result['requests']} "
                                  f"per_cpu={result['per_cpu']:.0f} p99@50%={p99 if p99 is not None else NAN:.2f}ms "
                                  f"failures={result['failures']} conns/req={result['conns_per_req']:.2f} "
                                  f"rss={result['rss']:.1f}MB steal={result['steal']:.1%}{flag}", flush=True)
                            runs[(klass, proxy)].append(result)
                    finally:
                        if proc is not None:
                            stop(proc)
            summary[n] = runs
        for n in RSS_ROUTES:
            rss_rows[n] = rss_only(work, n)
    finally:
        os.killpg(backend.pid, signal.SIGTERM)

    last = {}
    for n, runs in summary.items():
        print()
        print(f"N={n} routes; RSS after the load of the class and those above it (one start per round)")
        print(f"{'class':9} {'proxy':8} {'req/cpu-s':>10} {'spread':>7} {'vs nginx':>8} {'user µs':>8} {'sys µs':>7} "
              f"{'p99@50% ms':>10} {'rss MB':>7}")
        ratios, p99_ratios, conns = {}, {}, {}
        for klass in CLASSES:
            # Failed runs never count; runs with steal above 2% are dropped, unless every
            # served run of a proxy was.
            kept = {p: [x for x in runs[(klass, p)] if x["ok"] and not x["dropped"]]
                    or [x for x in runs[(klass, p)] if x["ok"]] for p in PROXIES}

            def med(p, key):
                values = [x[key] for x in kept.get(p, []) if x[key] is not None]
                return statistics.median(values) if values else NAN

            base, base_p99 = med("nginx", "per_cpu"), med("nginx", "p99_fixed_ms")
            for p in PROXIES:
                if not kept[p]:
                    notes = sorted({x["note"] or "no 2xx" for x in runs[(klass, p)]}) or ["did not start"]
                    print(f"{klass:9} {p:8} FAILED: {'; '.join(notes)}")
                    continue
                values = [x["per_cpu"] for x in kept[p]]
                spread = (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0
                print(f"{klass:9} {p:8} {med(p, 'per_cpu'):>10.0f} {spread:>6.1%} {med(p, 'per_cpu') / base:>8.2f} "
                      f"{med(p, 'user_us'):>8.1f} {med(p, 'sys_us'):>7.1f} {med(p, 'p99_fixed_ms'):>10.2f} "
                      f"{med(p, 'rss'):>7.1f}")
                conns[(klass, p)] = med(p, "conns_per_req")
            ratios[klass] = med("sluice", "per_cpu") / base
            p99_ratios[klass] = med("sluice", "p99_fixed_ms") / base_p99
        if "https_new" in CLASSES:
            print("https_new: new TCP connections per request (machine-wide ActiveOpens over the run): "
                  + " ".join(f"{p}={conns.get(('https_new', p), NAN):.2f}" for p in PROXIES))
        known = {k: v for k, v in p99_ratios.items() if v == v}
        worst = max(known, key=known.get) if known else None
        print("sluice p99@50% / nginx's per class: " + " ".join(f"{k}={v:.2f}" for k, v in p99_ratios.items())
              + (f" (worst: {worst})" if worst else ""))
        # Sluice's RSS after all of a round's load (its largest of the round), median of rounds.
        per_round = {}
        for k in CLASSES:
            for x in runs.get((k, "sluice"), []):
                per_round[x["round"]] = max(per_round.get(x["round"], 0.0), x["rss"])
        rss = statistics.median(per_round.values()) if per_round else NAN
        last = {"n": n, "ratios": ratios, "p99": known[worst] if worst else NAN, "rss": rss}
    for n, rows in rss_rows.items():
        print()
        print(f"N={n} routes, RSS only (idle; after {RSS_LOAD_SECONDS} s of each class)")
        print(f"{'proxy':8} {'idle MB':>8} {'load MB':>8}")
        for p, (idle, loaded, failed) in rows.items():
            print(f"{p:8} {idle:>8.1f} {loaded:>8.1f}" + (f"  no 2xx for {' '.join(failed)}" if failed else ""))
    if last:
        classes = " ".join(f"{k}={last['ratios'].get(k, NAN):.2f}" for k in ALL_CLASSES)
        rss_large = " ".join(f"rss_mb_{n}={rows['sluice'][1] if 'sluice' in rows else NAN:.1f}"
                             for n, rows in rss_rows.items())
        print(f"dataplane routes={last['n']} {classes} p99_vs_nginx={last['p99']:.2f} rss_mb={last['rss']:.1f}"
              + (f" {rss_large}" if rss_large else ""))


if __name__ == "__main__":
    main()
