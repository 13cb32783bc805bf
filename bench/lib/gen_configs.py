#!/usr/bin/env python3
"""Writes equivalent configs for every proxy in the data-plane benchmark.

Usage: gen_configs.py OUT_DIR ROUTES PROXY_PORT BACKEND_PORT

N host+path routes (host hI.bench.test, prefix /pI/) all to one backend, upstream
keep-alive on, access logs off, one worker/thread each.
"""
import json
import sys

out, n, proxy_port, backend_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def write(name, text):
    with open(f"{out}/{name}", "w") as f:
        f.write(text)

# Backend: nginx answering 200 with one worker.
write("backend.conf", f"""
worker_processes 1;
daemon off;
pid {out}/backend.pid;
error_log /dev/null crit;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 "ok\\n"; }} }}
}}
""")

servers = "\n".join(
    f"  server {{ listen 127.0.0.1:{proxy_port}; server_name h{i}.bench.test; "
    f"location /p{i}/ {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
    for i in range(n))
write("nginx.conf", f"""
worker_processes 1;
daemon off;
pid {out}/nginx.pid;
error_log /dev/null crit;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server_names_hash_max_size 65536;
  server_names_hash_bucket_size 128;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}
{servers}
}}
""")

acls = "\n".join(
    f"  use_backend be if {{ hdr(host) -m str h{i}.bench.test }} {{ path_beg /p{i}/ }}" for i in range(n))
write("haproxy.cfg", f"""
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{proxy_port}
{acls}
backend be
  http-reuse always
  server s1 127.0.0.1:{backend_port}
""")

envoy = {
    "static_resources": {
        "listeners": [{
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": proxy_port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "bench",
                    "route_config": {"virtual_hosts": [
                        {"name": f"h{i}", "domains": [f"h{i}.bench.test"],
                         "routes": [{"match": {"prefix": f"/p{i}/"}, "route": {"cluster": "backend"}}]}
                        for i in range(n)]},
                    "http_filters": [{"name": "envoy.filters.http.router",
                                      "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                }}]}],
        }],
        "clusters": [{
            "name": "backend", "type": "STATIC", "connect_timeout": "5s",
            "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}}}}]}]},
        }],
    }
}
write("envoy.json", json.dumps(envoy))

write("minimal.routes", "".join(f"h{i}.bench.test /p{i}/ {backend_port}\n" for i in range(n)))

snapshot = {
    "gateway": "bench/gw",
    "listeners": [{
        "name": "gateway/bench/gw/listener/http", "port": proxy_port, "protocol": "PROTOCOL_HTTP",
        "httpRoutes": [{
            "name": f"httproute/bench/r{i}/rule/0/match/0", "hostnames": [f"h{i}.bench.test"],
            "match": {"path": {"type": "PATH_MATCH_TYPE_PREFIX", "value": f"/p{i}/"}},
            "backends": [{"name": "service/bench/backend/port/80", "weight": 1, "cluster": "service/bench/backend/port/80"}],
        } for i in range(n)],
    }],
    "clusters": [{"name": "service/bench/backend/port/80", "appProtocol": "APP_PROTOCOL_HTTP1",
                  "endpoints": [{"address": "127.0.0.1", "port": backend_port, "ready": True}]}],
}
write("snapshot.json", json.dumps(snapshot))
