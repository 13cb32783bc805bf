"""Helpers shared by the benchmark drivers: paths, ports, files, processes."""
import glob
import http.client
import os
import signal
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SLUICE = os.path.join(TARGET, "release", "sluice")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_atomically(path, text):
    """Write a hidden temporary file (never read by `sluice run`) and rename it over `path`."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def descendants(pid):
    """Every process below `pid`, whichever thread started it (Go starts children from any
    thread, and /proc/P/task/P/children lists only the main thread's)."""
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        children = []
        for task in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                children += [int(c) for c in open(task).read().split()]
            except OSError:
                pass
        found += children
        frontier += children
    return found


def proc_tree(pid):
    """`pid` and every process below it."""
    return [pid] + descendants(pid)


def own_rss_mb(pid):
    """Resident memory of one process, in MB (0 when it is gone)."""
    try:
        return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def rss_mb(pid):
    """Resident memory of a process and all its descendants, in MB."""
    return sum(own_rss_mb(p) for p in proc_tree(pid))


def split_rss(pid):
    """(controller MB, data plane MB): the process started, and all its descendants."""
    return own_rss_mb(pid), sum(own_rss_mb(p) for p in descendants(pid))


def probe_until_200(conn_holder, connect, host, started, timeout, poll):
    """GET / with `host` every `poll` seconds on the keep-alive connection in
    `conn_holder[0]` (replaced by `connect()` after a failure) until 200. Returns
    (seconds since `started` or None, error count, what went wrong): any code but 404
    before the 200, every connection error and no 200 within `timeout` are errors."""
    errors, bad = 0, []
    deadline = started + timeout
    while True:
        if time.perf_counter() > deadline:
            return None, errors + 1, bad + ["no 200 within %gs" % timeout]
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
            conn_holder[0] = connect()
            time.sleep(poll)
            continue
        if code == 200:
            return time.perf_counter() - started, errors, bad
        if code != 404:
            errors += 1
            bad.append(str(code))
        time.sleep(poll)


def stop_sluice(proc):
    """SIGTERM: `sluice run` kills its data planes and exits; SIGKILL the group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
