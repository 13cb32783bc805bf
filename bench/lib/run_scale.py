#!/usr/bin/env python3
"""Scale figures in standalone mode: controller and data-plane memory with N routes present,
and the size of the snapshot the controller pushes.

The data plane is the `sluice-dataplane` binary, as deployed in a cluster (its image runs
that binary); DATAPLANE=sluice measures `sluice dataplane` instead, the one binary that
standalone mode runs by default, whose resident code pages include the controller's
(about 4 MB more).

For each N: `sluice run` on a fresh directory with the Gateway, echo Service and N
HTTPRoutes of bench/lib/run_propagation.py. Once the last route answers and SETTLE ms have
passed, the resident memory (VmRSS) of the controller (`sluice run` itself) and of its data
plane (its child) is read; then CHANGES routes are added one at a time (each waited for)
and the memory is read again. The data plane runs with `--state-dir`, where it keeps the
last applied snapshot as received (a header line, then the protobuf); its size without the
header is the snapshot size.
"""
import os, shutil, stat, subprocess, sys, tempfile, time

from common import SLUICE, free_port, split_rss, stop_sluice, write_atomically
from run_propagation import BASE, ROUTE, SLUICE_BACKEND, wait_for

COUNTS = [int(n) for n in os.environ.get("ROUTES", "5000 10000").split()]
SETTLE = float(os.environ.get("SETTLE_MS", "3000")) / 1000
CHANGES = int(os.environ.get("CHANGES", "10"))
READY_LIMIT = float(os.environ.get("READY_LIMIT", "600"))
DATAPLANE_BINARY = os.path.join(os.path.dirname(os.path.dirname(SLUICE)), "dataplane", "sluice-dataplane")
STANDALONE_BINARY = os.environ.get("DATAPLANE", "sluice-dataplane") == "sluice"


DATAPLANE_LABEL = "sluice dataplane" if STANDALONE_BINARY else "sluice-dataplane"


def dataplane_command():
    """The data plane's command line start, without its arguments."""
    return f'"{SLUICE}" dataplane' if STANDALONE_BINARY else f'"{DATAPLANE_BINARY}"'


def snapshot_bytes(state):
    path = os.path.join(state, "snapshot.pb")
    with open(path, "rb") as f:
        data = f.read()
    return len(data) - (data.index(b"\n") + 1)


def run(routes):
    work = tempfile.mkdtemp(prefix="sluice-scale-")
    manifests, state = os.path.join(work, "manifests"), os.path.join(work, "state")
    os.mkdir(manifests)
    port = free_port()
    write_atomically(os.path.join(manifests, "base.yaml"), BASE.format(gateway_port=port, echo_port=free_port()))
    docs = "---\n".join(ROUTE.format(name=f"pre-{i}", backend=SLUICE_BACKEND) for i in range(routes))
    write_atomically(os.path.join(manifests, "preload.yaml"), docs)
    # The data plane `sluice run` starts, plus --state-dir (the snapshot it keeps on disk).
    wrapper = os.path.join(work, "dataplane")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec {dataplane_command()} "$@" --state-dir "{state}"\n')
    os.chmod(wrapper, stat.S_IRWXU)
    log = open(os.path.join(work, "sluice.log"), "w")
    started = time.perf_counter()
    proc = subprocess.Popen([SLUICE, "run", manifests, "--status-file", os.path.join(work, "status.yaml"),
                             "--dataplane", wrapper, "--quiet"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not wait_for(port, f"pre-{routes - 1}.example.com", 200, READY_LIMIT):
            log.flush()
            sys.exit(f"sluice did not serve {routes} routes:\n" + open(log.name).read()[-3000:])
        ready = time.perf_counter() - started
        time.sleep(SETTLE)
        idle = split_rss(proc.pid)
        for i in range(CHANGES):
            write_atomically(os.path.join(manifests, f"probe-{i}.yaml"),
                             ROUTE.format(name=f"probe-{i}", backend=SLUICE_BACKEND))
            if not wait_for(port, f"probe-{i}.example.com", 200, 30):
                sys.exit(f"route probe-{i} not served within 30 s")
        time.sleep(SETTLE)
        changed = split_rss(proc.pid)
        size = snapshot_bytes(state)
    finally:
        stop_sluice(proc)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    return routes, ready, idle, changed, size


def main():
    for binary in (SLUICE, DATAPLANE_BINARY):
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary} is missing: cargo build --release -p sluice; cargo build --profile dataplane -p sluice-dataplane")
    print(f"method: standalone `sluice run DIR --quiet` with N HTTPRoutes (one host, one PathPrefix rule, one "
          f"Service backend each); VmRSS of the controller and its data plane ({DATAPLANE_LABEL}) {SETTLE * 1000:g} ms after the "
          f"last route serves, and again after {CHANGES} more routes were added one at a time; snapshot = "
          f"protobuf the data plane applied (its --state-dir copy, header excluded)", flush=True)
    results = [run(n) for n in COUNTS]
    print("| routes | start to serving s | controller RSS MB | data plane RSS MB | "
          f"after {CHANGES} changes: controller / data plane MB | snapshot KB |")
    print("|---|---|---|---|---|---|")
    for routes, ready, idle, changed, size in results:
        print(f"| {routes} | {ready:.1f} | {idle[0]:.1f} | {idle[1]:.1f} | {changed[0]:.1f} / {changed[1]:.1f} | "
              f"{size / 1024:.0f} |")
    for routes, ready, idle, changed, size in results:
        print(f"scale routes={routes} controller_rss_mb={max(idle[0], changed[0]):.1f} "
              f"dataplane_rss_mb={max(idle[1], changed[1]):.1f} snapshot_kb={size / 1024:.0f}", flush=True)


if __name__ == "__main__":
    main()
