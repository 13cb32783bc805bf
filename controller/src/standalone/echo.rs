//! A small HTTP/1.1 echo backend for standalone mode, so examples serve real traffic with
//! no other software. It answers every request with JSON describing the request, in the
//! shape of the Gateway API conformance `echo-basic` server:
//! `{"path", "host", "method", "proto", "headers", "namespace", "service", "pod"}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Who the echo server says it is.
#[derive(Debug, Clone)]
pub struct EchoIdentity {
    pub namespace: String,
    pub service: String,
    pub pod: String,
}

/// Largest request head the echo server reads.
const MAX_HEAD: usize = 64 * 1024;

/// Serves echo responses on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, identity: EchoIdentity) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let identity = identity.clone();
        tokio::spawn(async move {
            let _ = connection(stream, &identity).await;
        });
    }
}

/// Binds `address` and serves echo responses in a task; the returned handle stops it.
pub async fn start(address: SocketAddr, identity: EchoIdentity) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(address).await?;
    Ok(tokio::spawn(serve(listener, identity)))
}

/// Binds `address` (UDP) and answers every datagram with a JSON object naming the
/// request and the backend (`request`, `namespace`, `service`, `pod`), as the conformance
/// `echo-basic` UDP echo does; the returned handle stops it.
pub async fn start_udp(address: SocketAddr, identity: EchoIdentity) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let socket = tokio::net::UdpSocket::bind(address).await?;
    Ok(tokio::spawn(async move {
        let mut buffer = vec![0u8; 65535];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buffer).await else { continue };
            let answer = serde_json::json!({
                "request": String::from_utf8_lossy(&buffer[..len]),
                "namespace": identity.namespace,
                "service": identity.service,
                "pod": identity.pod,
            });
            let _ = socket.send_to(answer.to_string().as_bytes(), from).await;
        }
    }))
}

async fn connection(stream: TcpStream, identity: &EchoIdentity) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        let mut line = String::new();
        let mut lines = Vec::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            head.extend_from_slice(line.as_bytes());
            if head.len() > MAX_HEAD {
                return reply(reader.get_mut(), 431, "{}", false).await;
            }
            let trimmed = line.trim_end_matches(['\r', '\n']);
            if trimmed.is_empty() {
                break;
            }
            lines.push(trimmed.to_string());
        }
        let Some(request_line) = lines.first() else { return Ok(()) };
        let mut parts = request_line.split(' ');
        let (method, path, proto) =
            (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for header in &lines[1..] {
            if let Some((name, value)) = header.split_once(':') {
                headers.entry(canonical(name.trim())).or_default().push(value.trim().to_string());
            }
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.first()).map(String::as_str);
        let length: usize = header("Content-Length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; length.min(16 * 1024 * 1024)];
        reader.read_exact(&mut body).await?;
        if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            skip_chunked(&mut reader).await?;
        }
        let close = header("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) || proto == "HTTP/1.0";
        let host = header("Host").unwrap_or_default().to_string();
        let echo = serde_json::json!({
            "path": path,
            "host": host,
            "method": method,
            "proto": proto,
            "headers": headers,
            "namespace": identity.namespace,
            "service": identity.service,
            "pod": identity.pod,
        });
        reply(reader.get_mut(), 200, &echo.to_string(), close).await?;
        if close {
            return Ok(());
        }
    }
}

async fn skip_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        let mut chunk = vec![0u8; size.min(16 * 1024 * 1024) + 2];
        reader.read_exact(&mut chunk).await?;
    }
}

async fn reply(stream: &mut TcpStream, status: u16, body: &str, close: bool) -> std::io::Result<()> {
    let reason = if status == 200 { "OK" } else { "Request Header Fields Too Large" };
    let connection = if close { "close" } else { "keep-alive" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: {connection}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

/// `x-request-id` → `X-Request-Id`, as Go's net/http (and echo-basic) report header names.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_requests_over_keep_alive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let identity = EchoIdentity { namespace: "ns".into(), service: "svc".into(), pod: "p".into() };
        let server = tokio::spawn(serve(listener, identity));
        let mut stream = TcpStream::connect(address).await.unwrap();
        for path in ["/one", "/two"] {
            let request =
                format!("POST {path} HTTP/1.1\r\nHost: a.example\r\nx-test: 1\r\ncontent-length: 3\r\n\r\nabc");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut buffer = vec![0u8; 4096];
            let n = stream.read(&mut buffer).await.unwrap();
            let text = String::from_utf8_lossy(&buffer[..n]).to_string();
            let body: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
            assert_eq!(body["path"], path);
            assert_eq!(body["host"], "a.example");
            assert_eq!(body["method"], "POST");
            assert_eq!(body["headers"]["X-Test"][0], "1");
            assert_eq!(body["service"], "svc");
        }
        server.abort();
    }
}
