#!/usr/bin/env python3
"""Writes equivalent configs for every proxy in the data-plane benchmark.

Usage: gen_configs.py OUT_DIR ROUTES PROXY_PORT BACKEND_PORT [TLS_PORT]

N host+path routes (host hI.bench.test, prefix /pI/) all to one backend, upstream
keep-alive on, access logs off, one worker/thread each.

With TLS_PORT, every proxy also terminates TLS on TLS_PORT with the same routes: one
self-signed ECDSA P-256 certificate for *.bench.test (made once with openssl, kept in
OUT_DIR), TLS 1.3, HTTP/2 or HTTP/1.1 by ALPN; the backend stays plain HTTP/1.1. The
load files of the POST class (a wrk script and a 4 KiB body) are written too.
"""
import json
import os
import subprocess
import sys

out, n, proxy_port, backend_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tls_port = int(sys.argv[5]) if len(sys.argv) > 5 else None
CERT, KEY, PEM = f"{out}/tls.crt", f"{out}/tls.key", f"{out}/tls.pem"
POST_BYTES = 4096

def write(name, text):
    with open(f"{out}/{name}", "w") as f:
        f.write(text)

if tls_port is not None:
    # One certificate for every proxy: ECDSA P-256, wildcard SAN, 2 days.
    if not (os.path.exists(CERT) and os.path.exists(KEY)):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=*.bench.test",
                        "-addext", "subjectAltName=DNS:*.bench.test,DNS:bench.test",
                        "-keyout", KEY, "-out", CERT], check=True, capture_output=True)
    cert_pem, key_pem = open(CERT).read(), open(KEY).read()
    write("tls.pem", cert_pem + key_pem)  # HAProxy takes the chain and key in one file
    # POST class: wrk's script and oha's/curl's body, the same 4 KiB.
    write("post.bin", "x" * POST_BYTES)
    write("post.lua", f"""wrk.method = "POST"
wrk.body = string.rep("x", {POST_BYTES})
wrk.headers["Content-Type"] = "application/octet-stream"
""")

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

# nginx 1.22 (Debian 12) turns HTTP/2 on per listen socket (`http2 on` is 1.25+). Its
# upstream keep-alive cache holds more idle connections than the h2 class has requests in
# flight (32 connections x 10 streams), as the other proxies' pools do: with 64 it opened
# a backend connection for every fifth HTTP/2 request.
tls_listen = f"listen 127.0.0.1:{tls_port} ssl http2; " if tls_port is not None else ""
tls_http = f"""
  ssl_certificate {CERT};
  ssl_certificate_key {KEY};
  ssl_protocols TLSv1.3;
  ssl_session_cache shared:SSL:10m;""" if tls_port is not None else ""
servers = "\n".join(
    f"  server {{ listen 127.0.0.1:{proxy_port}; {tls_listen}server_name h{i}.bench.test; "
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
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 1024; }}{tls_http}
{servers}
}}
""")

acls = "\n".join(
    f"  use_backend be if {{ hdr(host) -m str h{i}.bench.test }} {{ path_beg /p{i}/ }}" for i in range(n))
tls_bind = (f"\n  bind 127.0.0.1:{tls_port} ssl crt {PEM} alpn h2,http/1.1 ssl-min-ver TLSv1.3"
            if tls_port is not None else "")
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
  bind 127.0.0.1:{proxy_port}{tls_bind}
{acls}
backend be
  http-reuse always
  server s1 127.0.0.1:{backend_port}
""")

# Envoy: one connection manager (codec AUTO: HTTP/1.1, or HTTP/2 when ALPN says h2) on
# the plain listener and, behind a TLS transport socket, on the TLS listener.
connection_manager = {
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
    }}
listeners = [{
    "name": "plain",
    "address": {"socket_address": {"address": "127.0.0.1", "port_value": proxy_port}},
    "filter_chains": [{"filters": [connection_manager]}],
}]
if tls_port is not None:
    listeners.append({
        "name": "tls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": tls_port}},
        "filter_chains": [{
            "filters": [connection_manager],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [{"certificate_chain": {"filename": CERT}, "private_key": {"filename": KEY}}],
                }}},
        }],
    })
envoy = {
    "static_resources": {
        "listeners": listeners,
        "clusters": [{
            "name": "backend", "type": "STATIC", "connect_timeout": "5s",
            "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}}}}]}]},
        }],
    }
}
write("envoy.json", json.dumps(envoy))

# The minimal Pingora proxy reads its routes from a file; its TLS listener, certificate
# and key come on its command line (run_dataplane.py).
write("minimal.routes", "".join(f"h{i}.bench.test /p{i}/ {backend_port}\n" for i in range(n)))

# Sluice: the snapshot its controller would publish for a Gateway with an HTTP listener
# and, with TLS_PORT, an HTTPS listener (no hostname, as the other proxies check no SNI;
# certificateRefs to a Secret `bench/tls`), both with the same N HTTPRoutes.
http_routes = [{
    "name": f"httproute/bench/r{i}/rule/0/match/0", "hostnames": [f"h{i}.bench.test"],
    "match": {"path": {"type": "PATH_MATCH_TYPE_PREFIX", "value": f"/p{i}/"}},
    "backends": [{"name": "service/bench/backend/port/80", "weight": 1, "cluster": "service/bench/backend/port/80"}],
} for i in range(n)]
snapshot = {
    "gateway": "bench/gw",
    "listeners": [{
        "name": "gateway/bench/gw/listener/http", "port": proxy_port, "protocol": "PROTOCOL_HTTP",
        "httpRoutes": http_routes,
    }],
    "clusters": [{"name": "service/bench/backend/port/80", "appProtocol": "APP_PROTOCOL_HTTP1",
                  "endpoints": [{"address": "127.0.0.1", "port": backend_port, "ready": True}]}],
}
if tls_port is not None:
    snapshot["listeners"].append({
        "name": "gateway/bench/gw/listener/https", "port": tls_port, "protocol": "PROTOCOL_HTTPS",
        "tlsMode": "TLS_MODE_TERMINATE", "certificates": ["secret/bench/tls"], "httpRoutes": http_routes,
    })
    snapshot["certificates"] = [{"name": "secret/bench/tls", "certChainPem": cert_pem, "privateKeyPem": key_pem}]
write("snapshot.json", json.dumps(snapshot))
