#!/usr/bin/env python3
"""Data-plane benchmark: Sluice against nginx, HAProxy, Envoy and a minimal Pingora proxy,
side by side, with the same routes and backend (see shared BENCH.md).

Each proxy runs alone on CPU 1 with one worker; wrk and the backend share CPU 0. The
primary figure is requests per proxy CPU-second (utime+stime of the proxy's processes
over the run), as a ratio to nginx. Latency p99 comes from oha at a fixed rate of 50% of
nginx's measured maximum when oha is installed (wrk's closed-loop p99 otherwise).
"""
import json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

from common import ROOT, TARGET, proc_tree, rss_mb
ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "8"))
ROUTES = [int(n) for n in os.environ.get("ROUTES", "1 100 1000").split()]
PROXIES = os.environ.get("PROXIES", "nginx haproxy envoy minimal sluice").split()
BACKEND_PORT, PROXY_PORT, ADMIN_PORT = 18080, 18081, 18082
HZ = os.sysconf("SC_CLK_TCK")


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


def command(proxy, work):
    release = os.path.join(TARGET, "release")
    return {
        "nginx": ["nginx", "-c", f"{work}/nginx.conf", "-p", work],
        "haproxy": ["haproxy", "-f", f"{work}/haproxy.cfg"],
        "envoy": ["envoy", "-c", f"{work}/envoy.json", "--concurrency", "1", "--log-level", "error",
                  "--base-id", str(os.getpid() % 1000)],
        "minimal": [f"{release}/minimal-pingora", f"127.0.0.1:{PROXY_PORT}", f"{work}/minimal.routes"],
        "sluice": [f"{release}/sluice-dataplane", "--snapshot", f"{work}/snapshot.json", "--bind", "127.0.0.1"]
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


def wrk(url, host, seconds):
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-H", f"Host: {host}", url],
                         capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)] if p99 else float("nan")
    return rps, requests, errors + non2xx, p99_ms


def oha_p99(url, host, rate, seconds):
    if not shutil.which("oha"):
        return None
    out = subprocess.run(["taskset", "-c", "0", "oha", "--no-tui", "--output-format", "json", "-q", str(int(rate)), "-z", f"{seconds}s",
                          "-c", "32", "-H", f"Host: {host}", url], capture_output=True, text=True).stdout
    try:
        return json.loads(out)["latencyPercentiles"]["p99"] * 1000
    except Exception:
        return None


def measure(proxy, work, n, rate=None):
    mid = n // 2
    host, url = f"h{mid}.bench.test", f"http://127.0.0.1:{PROXY_PORT}/p{mid}/x"
    proc = subprocess.Popen(["taskset", "-c", "1"] + command(proxy, work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if not wait_ok(url, host):
            return None
        rss_idle = rss_mb(proc.pid)
        wrk(url, host, 1)  # warm-up
        cpu0, (steal0, total0) = cpu_seconds(proc.pid), steal_and_total()
        rps, requests, errors, p99 = wrk(url, host, DURATION)
        cpu1, (steal1, total1) = cpu_seconds(proc.pid), steal_and_total()
        steal = (steal1 - steal0) / max(1, total1 - total0)
        p99_fixed = oha_p99(url, host, rate, DURATION) if rate else None
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        return {"rps": rps, "per_cpu": requests / max(user + system, 1e-9), "errors": errors, "p99_ms": p99,
                "user_us": user * 1e6 / max(requests, 1), "sys_us": system * 1e6 / max(requests, 1),
                "p99_fixed_ms": p99_fixed, "steal": steal, "rss_idle": rss_idle, "rss_load": rss_mb(proc.pid)}
    finally:
        stop(proc)


def main():
    work = tempfile.mkdtemp(prefix="sluice-bench-")
    gen = os.path.join(ROOT, "bench", "lib", "gen_configs.py")
    subprocess.run([sys.executable, gen, work, "1", str(PROXY_PORT), str(BACKEND_PORT)], check=True)
    backend = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", f"{work}/backend.conf", "-p", work],
                               stderr=subprocess.DEVNULL, start_new_session=True)
    summary = {}
    try:
        for n in ROUTES:
            subprocess.run([sys.executable, gen, work, str(n), str(PROXY_PORT), str(BACKEND_PORT)], check=True)
            runs = {p: [] for p in PROXIES}
            # Calibration: nginx's closed-loop maximum sets the fixed rate (50%) for latency.
            calibration = measure("nginx", work, n)
            rate = calibration["rps"] * 0.5 if calibration else None
            print(f"  N={n} fixed latency rate: {rate or 0:.0f} req/s (50% of nginx's maximum)", flush=True)
            for r in range(ROUNDS):
                for proxy in PROXIES:  # interleaved rounds
                    result = measure(proxy, work, n, rate=rate)
                    if result is None:
                        print(f"  {proxy}: did not start", flush=True)
                        continue
                    flag = " (dropped: steal > 2%)" if result["steal"] > 0.02 else ""
                    print(f"  N={n} round {r + 1} {proxy:8} rps={result['rps']:9.0f} per_cpu={result['per_cpu']:9.0f} "
                          f"p99={result['p99_ms']:.2f}ms p99@50%={result['p99_fixed_ms'] or float('nan'):.2f}ms "
                          f"errors={result['errors']} rss={result['rss_load']:.1f}MB steal={result['steal']:.1%}{flag}", flush=True)
                    result["dropped"] = bool(flag)
                    runs[proxy].append(result)
            # Runs with steal above 2% are dropped, unless every run of a proxy was.
            summary[n] = {p: ([x for x in rs if not x["dropped"]] or rs) for p, rs in runs.items()}
    finally:
        os.killpg(backend.pid, signal.SIGTERM)
    print()
    print(f"{'routes':>6} {'proxy':8} {'req/cpu-s':>10} {'spread':>8} {'vs nginx':>8} {'user µs':>8} {'sys µs':>7} "
          f"{'p99 ms':>7} {'p99@50% ms':>10} {'rss MB':>7}")
    last = None
    for n, runs in summary.items():
        med = lambda p, k: statistics.median([x[k] for x in runs[p] if x[k] is not None]) if runs.get(p) and any(x[k] is not None for x in runs[p]) else float("nan")
        base = med("nginx", "per_cpu")
        for p in PROXIES:
            if not runs.get(p):
                continue
            values = [x["per_cpu"] for x in runs[p]]
            spread = (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0
            print(f"{n:>6} {p:8} {med(p, 'per_cpu'):>10.0f} {spread:>7.1%} {med(p, 'per_cpu') / base:>8.2f} "
                  f"{med(p, 'user_us'):>8.1f} {med(p, 'sys_us'):>7.1f} "
                  f"{med(p, 'p99_ms'):>7.2f} {med(p, 'p99_fixed_ms'):>10.2f} {med(p, 'rss_load'):>7.1f}")
        p99_key = "p99_fixed_ms" if not (med("sluice", "p99_fixed_ms") != med("sluice", "p99_fixed_ms")) else "p99_ms"
        last = (n, med("sluice", "per_cpu") / base, med("sluice", "per_cpu") / med("minimal", "per_cpu"),
                med("sluice", p99_key) / med("nginx", p99_key), med("sluice", "rss_load"))
    if last:
        n, r, q, p, m = last
        print(f"dataplane routes={n} rps_per_cpu_vs_nginx={r:.2f} vs_minimal_pingora={q:.2f} p99_vs_nginx={p:.2f} rss_mb={m:.1f}")


if __name__ == "__main__":
    main()
