//! Test support: echo backends, a raw HTTP/1.1 client and a data-plane process, all on
//! loopback.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_snapshot::Snapshot;

mod ports;
pub use ports::free_port;

/// An HTTP/1.1 backend answering every request with `200` and a body describing it:
/// `backend=NAME`, `method=`, `path=` (with query), then every header as `name: value`.
pub struct Echo {
    pub port: u16,
    pub name: String,
    /// Request lines (`METHOD path`) received, in order.
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Echo {
    pub fn start(name: &str) -> Echo {
        Self::start_with_delay(name, Duration::ZERO)
    }

    /// An echo backend that waits `delay` before answering each request.
    pub fn start_with_delay(name: &str, delay: Duration) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = name.to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (backend, log) = (backend.clone(), log.clone());
                std::thread::spawn(move || serve_echo(stream, &backend, delay, &log));
            }
        });
        Echo { port, name: name.to_string(), seen }
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_echo(stream: TcpStream, backend: &str, delay: Duration, log: &std::sync::Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end().to_string();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
                headers.push(format!("{}: {}", name.to_ascii_lowercase(), value.trim()));
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        log.lock().unwrap().push(format!("{method} {path}"));
        if headers.iter().any(|h| h == "upgrade: websocket") {
            // Accept the upgrade, then echo raw bytes until the client closes.
            let _ = writer
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n");
            let mut buffer = [0u8; 1024];
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if writer.write_all(&[b"ws-echo:", &buffer[..n]].concat()).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        std::thread::sleep(delay);
        let mut text = format!("backend={backend}\nmethod={method}\npath={path}\n");
        for header in &headers {
            text.push_str(header);
            text.push('\n');
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-backend: {backend}\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A `key=value` or `name: value` line of an echo body.
    pub fn echo(&self, key: &str) -> Option<&str> {
        self.body
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")).or_else(|| line.strip_prefix(&format!("{key}: "))))
    }
}

/// Sends raw bytes and reads the whole response (the request should say `connection: close`).
pub fn raw(port: u16, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    parse_response(&bytes)
}

pub fn parse_response(bytes: &[u8]) -> Response {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string())))
        .collect();
    Response { status, headers, body: body.to_string() }
}

/// `GET` with a Host header and optional extra header lines.
pub fn get(port: u16, host: &str, path: &str, extra: &[&str]) -> Response {
    request(port, "GET", host, path, extra)
}

pub fn request(port: u16, method: &str, host: &str, path: &str, extra: &[&str]) -> Response {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for line in extra {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    raw(port, text.as_bytes())
}

/// A running data plane serving a snapshot file.
pub struct DataPlane {
    child: Child,
    pub snapshot_path: PathBuf,
    pub admin_port: u16,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl DataPlane {
    pub fn start(snapshot: &Snapshot) -> DataPlane {
        Self::start_with(snapshot, &[])
    }

    pub fn start_with(snapshot: &Snapshot, extra_args: &[&str]) -> DataPlane {
        let dir = std::env::temp_dir().join(format!("sluice-dp-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let snapshot_path = dir.join("snapshot.json");
        std::fs::write(&snapshot_path, serde_json::to_string_pretty(snapshot).unwrap()).unwrap();
        let admin_port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-dataplane"));
        // The binary's own allocator settings apply (a test can pass its own).
        for (name, _) in sluice_snapshot::DATA_PLANE_ALLOCATOR_ENV {
            command.env_remove(name);
        }
        let child = command
            .args(["--snapshot", snapshot_path.to_str().unwrap(), "--bind", "127.0.0.1"])
            .args(["--admin", &format!("127.0.0.1:{admin_port}")])
            .args(extra_args)
            // CI runs these tests a second time with the HTTP/1.1 fast path off, so that
            // Pingora's path is checked against the same expectations.
            .args(
                std::env::var("SLUICE_TEST_HTTP1_FAST_PATH")
                    .map(|v| vec!["--http1-fast-path".to_string(), v])
                    .unwrap_or_default(),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(std::fs::File::create(dir.join("stdout.log")).unwrap()))
            .spawn()
            .unwrap();
        let plane = DataPlane { child, snapshot_path, admin_port, _dir: TempDir(dir) };
        plane.wait_ready();
        plane
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.admin_port)) {
                let _ = stream.write_all(b"GET /ready HTTP/1.1\r\n\r\n");
                let mut text = String::new();
                let _ = stream.read_to_string(&mut text);
                if text.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("data plane did not become ready");
    }

    /// The data plane's process id.
    #[allow(dead_code)] // not every test binary uses it
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the snapshot file atomically (write then rename).
    pub fn write_snapshot(&self, text: &str) {
        let tmp = self.snapshot_path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.snapshot_path).unwrap();
    }

    /// What the data plane printed to stdout so far (the access log, when enabled).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.snapshot_path.with_file_name("stdout.log")).unwrap_or_default()
    }

    pub fn admin(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port)).unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster of loopback endpoints on `ports`.
pub fn cluster(name: &str, ports: &[u16]) -> sluice_snapshot::Cluster {
    sluice_snapshot::Cluster {
        name: name.into(),
        app_protocol: sluice_snapshot::AppProtocol::Http1 as i32,
        endpoints: ports
            .iter()
            .map(|p| sluice_snapshot::Endpoint { address: "127.0.0.1".into(), port: u32::from(*p), ready: true })
            .collect(),
        ..Default::default()
    }
}

/// A weighted backend sending to `cluster`.
pub fn to(cluster: &str, weight: u32) -> sluice_snapshot::WeightedBackend {
    sluice_snapshot::WeightedBackend {
        name: cluster.into(),
        weight,
        target: Some(sluice_snapshot::weighted_backend::Target::Cluster(cluster.into())),
        filters: vec![],
    }
}

/// A snapshot with one HTTP listener on `port` whose single route sends every request to
/// the endpoint on `backend_port`.
pub fn catch_all(port: u16, backend_port: u16) -> Snapshot {
    Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![sluice_snapshot::Listener {
            name: "gateway/test/gw/listener/http".into(),
            port: u32::from(port),
            protocol: sluice_snapshot::Protocol::Http as i32,
            http_routes: vec![sluice_snapshot::HttpRoute {
                name: "all".into(),
                r#match: Some(sluice_snapshot::HttpMatch {
                    path: Some(sluice_snapshot::PathMatch {
                        r#type: sluice_snapshot::PathMatchType::Prefix as i32,
                        value: "/".into(),
                    }),
                    ..Default::default()
                }),
                backends: vec![to("a", 1)],
                ..Default::default()
            }],
            ..Default::default()
        }],
        clusters: vec![cluster("a", &[backend_port])],
        ..Default::default()
    }
}

/// Runs curl with `args` and returns `"<http version> <status>"` (curl must be installed;
/// .ci/run installs it).
pub fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .args(args)
        .output()
        .expect("curl (with HTTP/2) is needed for these tests; .ci/run installs it");
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A chunked body's data (its trailers read and dropped).
pub fn read_chunks(reader: &mut impl std::io::BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
        if size == 0 {
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    return body;
                }
            }
        }
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        body.extend_from_slice(&chunk[..size]);
    }
}
