#!/usr/bin/env python3
"""Reload under load: the same wrk load while the config changes SWAPS times. Sluice
swaps snapshots (write + rename of its snapshot file); nginx, the peer, reloads with HUP.
Counts non-2xx responses and socket errors.
"""
import json, os, re, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_dataplane import BACKEND_PORT, PROXY_PORT, TARGET, stop, wait_ok  # noqa: E402

SWAPS = int(os.environ.get("SWAPS", "100"))
INTERVAL = float(os.environ.get("INTERVAL", "0.1"))
ROUTES = int(os.environ.get("RELOAD_ROUTES", "100"))


def run(proxy, work):
    mid = ROUTES // 2
    host, url = f"h{mid}.bench.test", f"http://127.0.0.1:{PROXY_PORT}/p{mid}/x"
    if proxy == "sluice":
        cmd = [f"{TARGET}/dataplane/sluice-dataplane", "--snapshot", f"{work}/snapshot.json", "--bind", "127.0.0.1",
               "--poll-interval-ms", "20"]
    else:
        cmd = ["nginx", "-c", f"{work}/nginx.conf", "-p", work]
    proc = subprocess.Popen(["taskset", "-c", "1"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert wait_ok(url, host), f"{proxy} did not start"
        seconds = int(SWAPS * INTERVAL) + 3
        load = subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", "-c32", f"-d{seconds}s", "-H", f"Host: {host}", url],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        snapshot = json.load(open(f"{work}/snapshot.json"))
        for i in range(SWAPS):
            if proxy == "sluice":
                # Alternate a header filter on every route: a real content change each time.
                for route in snapshot["listeners"][0]["httpRoutes"]:
                    route["filters"] = [{"requestHeaderModifier": {"set": [{"name": "x-swap", "value": str(i)}]}}]
                tmp = f"{work}/snapshot.json.tmp"
                with open(tmp, "w") as f:
                    json.dump(snapshot, f)
                os.rename(tmp, f"{work}/snapshot.json")
            else:
                os.kill(proc.pid, signal.SIGHUP)
            time.sleep(INTERVAL)
        out = load.communicate()[0]
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        return requests, errors + non2xx
    finally:
        stop(proc)


def main():
    work = tempfile.mkdtemp(prefix="sluice-reload-")
    gen = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen_configs.py")
    subprocess.run([sys.executable, gen, work, str(ROUTES), str(PROXY_PORT), str(BACKEND_PORT)], check=True)
    backend = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", f"{work}/backend.conf", "-p", work],
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        results = {}
        for proxy in os.environ.get("PROXIES", "nginx sluice").split():
            results[proxy] = run(proxy, work)
            print(f"  {proxy:7} swaps={SWAPS} requests={results[proxy][0]} errors={results[proxy][1]}", flush=True)
    finally:
        os.killpg(backend.pid, signal.SIGTERM)
    requests, errors = results["sluice"]
    print(f"reload swaps={SWAPS} requests={requests} errors={errors}")


if __name__ == "__main__":
    main()
