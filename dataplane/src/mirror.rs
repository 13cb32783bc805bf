//! Request mirroring: a copy of the request goes to the mirror backend, fire and forget;
//! its answer is read and dropped, and nothing it does affects the client. The body is
//! mirrored as it streams through (chunked encoding towards the mirror); a mirror that
//! cannot keep up is cut off rather than slowing the client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use pingora_http::RequestHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);
/// Body chunks buffered per mirror before it is cut off.
pub const BODY_CHUNKS: usize = 64;

/// A piece of the mirrored body: `None` marks its end.
pub type Chunk = Option<Bytes>;

/// True if the request announces a body.
pub fn has_body(request: &RequestHeader) -> bool {
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|v| v.trim().parse::<u64>().map_or(true, |n| n > 0))
}

/// Hands a body chunk (and the end) to every mirror; a mirror whose buffer is full is
/// dropped (its request is then abandoned, never completed with a partial body).
pub fn offer(feeds: &mut Vec<mpsc::Sender<Chunk>>, body: Option<&Bytes>, end: bool) {
    if let Some(chunk) = body.filter(|b| !b.is_empty()) {
        feeds.retain(|feed| feed.try_send(Some(chunk.clone())).is_ok());
    }
    if end {
        for feed in feeds.drain(..) {
            let _ = feed.try_send(None);
        }
    }
}

/// A connection to a mirror backend: plaintext, or TLS as its BackendTLSPolicy asks.
trait MirrorStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> MirrorStream for T {}

/// Sends `request` to `endpoint` over HTTP/1.1 (over TLS with `tls`, never in plaintext
/// when the cluster's TLS cannot be set up), with its body from `body` when it has one.
pub async fn send(
    endpoint: SocketAddr,
    tls: Option<Result<std::sync::Arc<crate::upstream_tls::UpstreamTlsTable>, String>>,
    request: RequestHeader,
    body: Option<mpsc::Receiver<Chunk>>,
) {
    let result = tokio::time::timeout(MIRROR_TIMEOUT, async {
        let mut stream: Box<dyn MirrorStream> = match &tls {
            None => Box::new(tokio::net::TcpStream::connect(endpoint).await?),
            Some(Ok(tls)) => Box::new(tls.connect(endpoint).await.map_err(std::io::Error::other)?),
            Some(Err(problem)) => return Err(std::io::Error::other(problem.clone())),
        };
        let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.uri);
        for (name, value) in request.headers.iter() {
            let skip = matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection");
            if !skip && let Ok(value) = value.to_str() {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        match body {
            None => {
                head.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
            }
            Some(mut body) => {
                head.push_str("transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
                loop {
                    match body.recv().await {
                        Some(Some(chunk)) => {
                            stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                            stream.write_all(&chunk).await?;
                            stream.write_all(b"\r\n").await?;
                        }
                        Some(None) => {
                            stream.write_all(b"0\r\n\r\n").await?;
                            break;
                        }
                        // Cut off (it could not keep up) or the client went away.
                        None => return Err(std::io::Error::other("mirror body cut off")),
                    }
                }
            }
        }
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink).await?;
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(result, Ok(Ok(()))) {
        tracing::debug!(%endpoint, "mirrored request failed or timed out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_that_cannot_keep_up_is_cut_off() {
        let (fast, mut fast_rx) = mpsc::channel(4);
        let (slow, _slow_rx) = mpsc::channel(1);
        let mut feeds = vec![fast, slow];
        offer(&mut feeds, Some(&Bytes::from_static(b"a")), false);
        offer(&mut feeds, Some(&Bytes::from_static(b"b")), false);
        assert_eq!(feeds.len(), 1, "the full mirror is dropped");
        offer(&mut feeds, None, true);
        assert!(feeds.is_empty());
        assert_eq!(fast_rx.try_recv().unwrap(), Some(Bytes::from_static(b"a")));
        assert_eq!(fast_rx.try_recv().unwrap(), Some(Bytes::from_static(b"b")));
        assert_eq!(fast_rx.try_recv().unwrap(), None);
    }
}
