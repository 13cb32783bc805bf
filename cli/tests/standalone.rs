//! Standalone mode end to end: `sluice run DIR` with real files, real data-plane
//! processes and its built-in echo backends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a file atomically (a hidden temporary file renamed over it).
fn write(dir: &Path, name: &str, text: &str) {
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(temporary, dir.join(name)).unwrap();
}

fn gateway(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: sluice
  listeners:
    - {{name: http, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
"
    )
}

fn backend(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{standalone.sluice.dev/echo: \"true\"}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-static
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
"
    )
}

fn route(name: &str, host: &str, service: &str, tag: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules:
    - filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {{set: [{{name: x-tag, value: {tag}}}]}}
      backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

fn sluice_run(dir: &Path, status_file: &Path) -> Process {
    let child = Command::new(SLUICE)
        .arg("run")
        .arg(dir)
        .arg("--status-file")
        .arg(status_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

fn answers(port: u16, host: &str, want_status: u16, want: &str) -> bool {
    matches!(get(port, host, "/"), Ok((status, head, body)) if status == want_status
        && (head.contains(want) || body.contains(want)))
}

#[test]
fn sluice_run_follows_the_directory() {
    let dir = temp_dir("run");
    let status_file = dir.with_extension("status.yaml");
    let (port, a, b) = (free_port(), free_port(), free_port());
    write(&dir, "gateway.yaml", &gateway(port));
    write(&dir, "backends.yaml", &format!("{}---\n{}", backend("echo-a", a), backend("echo-b", b)));
    write(&dir, "route.yaml", &route("web", "web.example", "echo-a", "one"));
    let mut sluice = sluice_run(&dir, &status_file);

    eventually(Duration::from_secs(30), "the route to serve", || answers(port, "web.example", 200, "x-tag: one"));
    assert!(answers(port, "web.example", 200, "\"service\":\"echo-a\""));
    eventually(Duration::from_secs(5), "Programmed=True in the status file", || {
        let text = std::fs::read_to_string(&status_file).unwrap_or_default();
        let status: serde_json::Value = serde_saphyr::from_str(&text).unwrap_or_default();
        let conditions = &status["status"]["gateways"]["default/gw"]["conditions"];
        conditions.as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Programmed" && c["status"] == "True"))
    });

    // A change to the route: another backend and another header value.
    write(&dir, "route.yaml", &route("web", "web.example", "echo-b", "two"));
    eventually(Duration::from_secs(5), "the changed route", || {
        answers(port, "web.example", 200, "x-tag: two") && answers(port, "web.example", 200, "\"service\":\"echo-b\"")
    });

    // A broken file is reported, and everything else keeps serving.
    write(&dir, "broken.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: [");
    eventually(Duration::from_secs(5), "the problem in the status file", || {
        std::fs::read_to_string(&status_file).unwrap_or_default().contains("broken.yaml")
    });
    assert!(answers(port, "web.example", 200, "x-tag: two"));

    // A route the listener does not allow gets its reason in the status file.
    let refused =
        route("elsewhere", "other.example", "echo-a", "x").replace("name: gw}", "name: gw, sectionName: nope}");
    write(&dir, "refused.yaml", &refused);
    eventually(Duration::from_secs(5), "the refused route's reason", || {
        std::fs::read_to_string(&status_file).unwrap_or_default().contains("NoMatchingParent")
    });

    // Removing the route's file removes the route.
    std::fs::remove_file(dir.join("route.yaml")).unwrap();
    eventually(Duration::from_secs(5), "404 after the route is gone", || answers(port, "web.example", 404, ""));

    // Killing sluice (even with SIGKILL) takes its data planes down too; the next
    // `sluice run` removes the state directory (keys) it left behind.
    let pid = sluice.0.id();
    sluice.0.kill().unwrap();
    sluice.0.wait().unwrap();
    eventually(Duration::from_secs(5), "the data plane to exit", || get(port, "web.example", "/").is_err());
    let stale = std::env::temp_dir().join(format!("sluice-run-{pid}"));
    assert!(stale.exists(), "SIGKILL leaves the state directory behind");
    let other = temp_dir("run-again");
    let again = sluice_run(&other, &other.with_extension("status.yaml"));
    eventually(Duration::from_secs(10), "the stale state directory to be removed", || !stale.exists());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&status_file);
    drop(again);
    let _ = std::fs::remove_dir_all(&other);
    let _ = std::fs::remove_file(other.with_extension("status.yaml"));
}

/// A request with extra header lines; returns the status and the head.
fn request_head(port: u16, method: &str, path: &str, extra: &[&str]) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: cors.example\r\nConnection: close\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response).to_string();
    let head = text.split_once("\r\n\r\n").map_or(text.as_str(), |(head, _)| head).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status: {head}"))?;
    Ok((status, head))
}

#[test]
fn sluice_run_serves_cors_filters() {
    let dir = temp_dir("cors");
    let status_file = dir.with_extension("status.yaml");
    let (port, a) = (free_port(), free_port());
    write(&dir, "gateway.yaml", &gateway(port));
    write(&dir, "backends.yaml", &backend("echo-a", a));
    write(
        &dir,
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cors, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      filters:
        - type: CORS
          cors:
            allowOrigins: [\"https://*.example.com\"]
            allowMethods: [GET, PUT]
            allowCredentials: true
      backendRefs: [{name: echo-a, port: 80}]
",
    );
    let _sluice = sluice_run(&dir, &status_file);
    let preflight = ["Origin: https://app.example.com", "Access-Control-Request-Method: PUT"];
    eventually(Duration::from_secs(30), "the CORS route to answer preflights", || {
        request_head(port, "OPTIONS", "/api/x", &preflight).is_ok_and(|(status, head)| {
            status == 200
                && head.contains("access-control-allow-origin: https://app.example.com")
                && head.contains("access-control-allow-methods: get, put")
                && head.contains("access-control-max-age: 5")
        })
    });
    let (status, head) = request_head(port, "GET", "/api/x", &["Origin: https://app.example.com"]).unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("access-control-allow-credentials: true"), "{head}");
    let (_, head) = request_head(port, "GET", "/api/x", &["Origin: https://example.org"]).unwrap();
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let text = std::fs::read_to_string(&status_file).unwrap_or_default();
    assert!(!text.contains("PartiallyInvalid"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&status_file);
}

/// README's first command: the bundled example serves from its own echo backend.
#[test]
fn the_quickstart_example_serves_traffic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status_file = temp_dir("quickstart").join("status.yaml");
    let _sluice = sluice_run(&root.join("examples/quickstart"), &status_file);
    eventually(Duration::from_secs(30), "the quickstart route", || {
        answers(8080, "echo.example.com", 200, "x-served-by: sluice")
    });
    let (_, _, body) = get(8080, "echo.example.com", "/hello").unwrap();
    let echo: serde_json::Value = serde_saphyr::from_str(&body).unwrap();
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["service"], "echo");
    assert!(answers(8080, "unknown.example.com", 404, ""));
}

/// The TCP/UDP example: a TCPRoute and a UDPRoute to the built-in echo backends.
#[test]
fn the_tcp_udp_example_serves_traffic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status_file = temp_dir("tcp-udp").join("status.yaml");
    let _sluice = sluice_run(&root.join("examples/tcp-udp"), &status_file);
    // TCP: the bytes reach the HTTP echo behind the TCP listener.
    eventually(Duration::from_secs(30), "the TCP route", || answers(9000, "any", 200, "echo-127.0.0.1-9101"));
    // UDP: a datagram comes back from the UDP echo, which names itself.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buffer = [0u8; 2048];
    eventually(Duration::from_secs(30), "the UDP route", || {
        socket.send_to(b"ping", "127.0.0.1:5300").unwrap();
        socket.recv(&mut buffer).is_ok()
    });
    socket.send_to(b"hello", "127.0.0.1:5300").unwrap();
    let len = socket.recv(&mut buffer).unwrap();
    let echo: serde_json::Value = serde_json::from_slice(&buffer[..len]).unwrap();
    assert_eq!(echo["request"], "hello");
    assert_eq!(echo["service"], "echo");
    assert_eq!(echo["pod"], "echo-127.0.0.1-9102");
}

/// The TLS passthrough example: the client's TLS session ends at the app behind the
/// Gateway (curl verifies the app's own certificate); other names are closed.
#[test]
fn the_tls_passthrough_example_serves_traffic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = root.join("examples/tls-passthrough");
    let status_file = temp_dir("tls-passthrough").join("status.yaml");
    let _sluice = sluice_run(&example, &status_file);
    let curl = |host: &str, extra: &[&str]| {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--resolve", &format!("{host}:8443:127.0.0.1")])
            .args(extra)
            .arg(format!("https://{host}:8443/hello"))
            .output()
            .expect("curl is needed for this test; .ci/run installs it");
        (output.status.code(), String::from_utf8_lossy(&output.stdout).to_string())
    };
    let ca = example.join("app.example.com.crt");
    let ca = ca.to_str().unwrap();
    eventually(Duration::from_secs(30), "the passthrough route", || {
        curl("app.example.com", &["--cacert", ca]).1.contains("\"path\":\"/hello\"")
    });
    let (_, body) = curl("app.example.com", &["--cacert", ca]);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["service"], "echo");
    // curl's exit code 35: the TLS connection failed (closed during the handshake).
    assert_eq!(curl("other.example.com", &["-k"]).0, Some(35));
}

/// The gRPC example: a GRPCRoute to the built-in gRPC echo backends, by method and by
/// metadata.
#[test]
fn the_grpc_example_serves_calls() {
    use sluice_snapshot::echo::EchoRequest;
    use sluice_snapshot::echo::echo_client::EchoClient;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status_file = temp_dir("grpc").join("status.yaml");
    let _sluice = sluice_run(&root.join("examples/grpc"), &status_file);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let call = |method: &'static str, version: Option<&'static str>| {
        runtime.block_on(async move {
            let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:8090")
                .origin("http://grpc.example.com".parse().unwrap());
            let mut client = EchoClient::new(endpoint.connect().await.map_err(|e| e.to_string())?);
            let mut request = tonic::Request::new(EchoRequest { message: "hi".into() });
            if let Some(version) = version {
                request.metadata_mut().insert("version", version.parse().unwrap());
            }
            let reply = match method {
                "Echo" => client.echo(request).await,
                _ => client.echo_two(request).await,
            };
            reply.map(|r| r.into_inner().service).map_err(|status| format!("{:?}", status.code()))
        })
    };
    eventually(Duration::from_secs(30), "the gRPC route", || call("Echo", None).is_ok());
    assert_eq!(call("Echo", None).unwrap(), "echo-a");
    assert_eq!(call("EchoTwo", Some("two")).unwrap(), "echo-b");
    assert_eq!(call("EchoTwo", None).unwrap(), "echo-a");
}

/// One team's hostile route (a regex the data plane could not anchor, a rewrite with
/// CR/LF) fails alone, in its own status; another team's route serves and keeps changing.
#[test]
fn one_teams_bad_route_never_stops_another() {
    let dir = temp_dir("tenants");
    let status_file = dir.with_extension("status.yaml");
    let (port, a) = (free_port(), free_port());
    write(&dir, "gateway.yaml", &gateway(port));
    write(&dir, "backends.yaml", &backend("echo-a", a));
    let hostile = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hostile, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [team-a.example]
  rules:
    - matches: [{path: {type: RegularExpression, value: \"(?x)/a#\"}}]
      backendRefs: [{name: echo-a, port: 80}]
    - filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: \"/x HTTP/1.1\\r\\nX-Evil: 1\"}}
      backendRefs: [{name: echo-a, port: 80}]
";
    write(&dir, "team-a.yaml", hostile);
    write(&dir, "team-b.yaml", &route("web", "web.example", "echo-a", "one"));
    let _sluice = sluice_run(&dir, &status_file);
    eventually(Duration::from_secs(30), "team B's route to serve", || answers(port, "web.example", 200, "x-tag: one"));
    eventually(Duration::from_secs(5), "team A's route status", || {
        let text = std::fs::read_to_string(&status_file).unwrap_or_default();
        text.contains("(?x)/a#") && text.contains("holds a control character")
    });
    let text = std::fs::read_to_string(&status_file).unwrap();
    let status: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let hostile = &status["status"]["httpRoutes"]["default/hostile"]["parents"][0]["conditions"];
    let accepted = hostile.as_array().unwrap().iter().find(|c| c["type"] == "Accepted").unwrap();
    assert_eq!((accepted["status"].as_str(), accepted["reason"].as_str()), (Some("False"), Some("UnsupportedValue")));
    let web = &status["status"]["httpRoutes"]["default/web"]["parents"][0]["conditions"];
    assert!(web.as_array().unwrap().iter().all(|c| c["status"] == "True"), "{web:?}");
    assert!(answers(port, "team-a.example", 404, ""), "team A's rules are not served");
    // Team B's changes still apply.
    write(&dir, "team-b.yaml", &route("web", "web.example", "echo-a", "two"));
    eventually(Duration::from_secs(5), "team B's changed route", || answers(port, "web.example", 200, "x-tag: two"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&status_file);
}

/// A certificate that expires while `sluice run` serves it: with no other change, the
/// listener's status says so within a rescan, and the certificate stops being served.
#[test]
fn a_certificate_is_reported_invalid_once_it_expires() {
    let dir = temp_dir("expiry");
    let status_file = dir.with_extension("status.yaml");
    let (port, a) = (free_port(), free_port());
    let mut params = rcgen::CertificateParams::new(vec!["web.example".to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::seconds(6);
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = params.self_signed(&key).unwrap();
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: web-tls, namespace: default}}\ntype: kubernetes.io/tls\n\
stringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&certificate.pem()),
        indent(&key.serialize_pem())
    );
    let gateway = gateway(port).replace(
        "  listeners:\n",
        &format!(
            "  listeners:\n    - {{name: https, port: {}, protocol: HTTPS, tls: {{certificateRefs: [{{name: web-tls}}]}}}}\n",
            free_port()
        ),
    );
    write(&dir, "gateway.yaml", &gateway);
    write(&dir, "secret.yaml", &secret);
    write(&dir, "backends.yaml", &backend("echo-a", a));
    let _sluice = sluice_run(&dir, &status_file);
    let https = |text: &str| -> Option<(String, String)> {
        let status: serde_json::Value = serde_saphyr::from_str(text).ok()?;
        let listeners = status["status"]["gateways"]["default/gw"]["listeners"].as_array()?.clone();
        let https = listeners.iter().find(|l| l["name"] == "https")?;
        let resolved = https["conditions"].as_array()?.iter().find(|c| c["type"] == "ResolvedRefs")?.clone();
        Some((resolved["reason"].as_str()?.to_string(), resolved["message"].as_str()?.to_string()))
    };
    let read = || std::fs::read_to_string(&status_file).unwrap_or_default();
    eventually(Duration::from_secs(30), "the listener to resolve its certificate", || {
        https(&read()).is_some_and(|(reason, _)| reason == "ResolvedRefs")
    });
    eventually(Duration::from_secs(15), "the expiry to be reported", || {
        https(&read()).is_some_and(|(reason, message)| {
            reason == "InvalidCertificateRef" && message.contains("the certificate expired at")
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&status_file);
}
