//! Request mirroring: a copy of the request head goes to the mirror backend, fire and
//! forget; its answer is read and dropped, and nothing it does affects the client.

use std::net::SocketAddr;
use std::time::Duration;

use pingora_http::RequestHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends the head of `request` (the body is not mirrored) to `endpoint` over HTTP/1.1.
pub async fn send(endpoint: SocketAddr, request: RequestHeader) {
    let result = tokio::time::timeout(MIRROR_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(endpoint).await?;
        let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.uri);
        for (name, value) in request.headers.iter() {
            let skip = matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection");
            if !skip && let Ok(value) = value.to_str() {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink).await?;
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(result, Ok(Ok(()))) {
        tracing::debug!(%endpoint, "mirrored request failed or timed out");
    }
}
