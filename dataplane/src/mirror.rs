//! Request mirroring: a copy of the request goes to the mirror backend, fire and forget;
//! its answer is read and dropped, and nothing it does affects the client. The body is
//! mirrored as it streams through (chunked encoding towards the mirror); a mirror that
//! cannot keep up is cut off rather than slowing the client. Both request paths pick and
//! start mirrors here: Pingora's with its upstream request, the HTTP/1.1 fast path with
//! the upstream head it wrote.

use std::net::SocketAddr;
use std::sync::Arc;
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

/// A mirror chosen for one request: its endpoint (counted in flight until the mirrored
/// request ends) and the cluster's TLS.
pub struct Target {
    endpoint: SocketAddr,
    tls: Option<Result<Arc<crate::upstream_tls::UpstreamTlsTable>, String>>,
    in_flight: Option<crate::tables::InFlight>,
}

/// The rule's mirrors that this request goes to (each by its share of requests), with
/// an endpoint each; a mirror without endpoints is skipped.
pub fn pick(mirrors: &[(Arc<crate::tables::ClusterTable>, u32, u32)]) -> Vec<Target> {
    let mut targets = Vec::new();
    for (cluster, numerator, denominator) in mirrors {
        if *numerator == 0 || rand::random_range(0..*denominator) >= *numerator {
            continue;
        }
        if let Some((endpoint, in_flight)) = cluster.pick() {
            targets.push(Target { endpoint, tls: cluster.tls.clone(), in_flight });
        }
    }
    targets
}

/// How the mirrored body arrives in chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Plain bytes: sent on chunked.
    Data,
    /// The client's own chunked encoding, passed on as it is (last chunk included).
    Chunked,
}

/// Starts a copy of the request (`head`: the request line and fields as `mirror_head`
/// or `mirror_head_raw` give them) to each target; returns the feeds its body goes to.
pub fn start(targets: Vec<Target>, head: &str, framing: BodyFraming) -> Vec<mpsc::Sender<Chunk>> {
    let mut feeds = Vec::new();
    for Target { endpoint, tls, in_flight } in targets {
        let body = (framing != BodyFraming::None).then(|| {
            let (feed, body) = mpsc::channel(BODY_CHUNKS);
            feeds.push(feed);
            (body, framing == BodyFraming::Chunked)
        });
        let head = head.to_string();
        tokio::spawn(async move {
            send(endpoint, tls, head, body).await;
            drop(in_flight);
        });
    }
    feeds
}

/// Fields a mirror never gets from the request: it frames the body itself and closes.
fn mirrored_field(name: &str) -> bool {
    !["content-length", "transfer-encoding", "connection"].iter().any(|f| name.eq_ignore_ascii_case(f))
}

/// The head of a mirrored copy of Pingora's upstream request.
pub fn mirror_head(request: &RequestHeader) -> String {
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.uri);
    for (name, value) in request.headers.iter() {
        if mirrored_field(name.as_str())
            && let Ok(value) = value.to_str()
        {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head
}

/// The head of a mirrored copy of an upstream request head written by the fast path
/// (request line, fields, blank line).
pub fn mirror_head_raw(upstream: &[u8]) -> String {
    let text = String::from_utf8_lossy(upstream);
    let mut head = String::with_capacity(text.len());
    for line in text.split_inclusive("\r\n") {
        if line == "\r\n" {
            break;
        }
        let name = line.split_once(':').map_or("", |(name, _)| name);
        if head.is_empty() || mirrored_field(name) {
            head.push_str(line);
        }
    }
    head
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

/// Sends the request (`head`) to `endpoint` over HTTP/1.1 (over TLS with `tls`, never
/// in plaintext when the cluster's TLS cannot be set up), with its body from `body` when
/// it has one (`true`: chunks already in chunked encoding).
async fn send(
    endpoint: SocketAddr,
    tls: Option<Result<Arc<crate::upstream_tls::UpstreamTlsTable>, String>>,
    mut head: String,
    body: Option<(mpsc::Receiver<Chunk>, bool)>,
) {
    let result = tokio::time::timeout(MIRROR_TIMEOUT, async {
        let mut stream: Box<dyn MirrorStream> = match &tls {
            None => Box::new(tokio::net::TcpStream::connect(endpoint).await?),
            Some(Ok(tls)) => Box::new(tls.connect(endpoint).await.map_err(std::io::Error::other)?),
            Some(Err(problem)) => return Err(std::io::Error::other(problem.clone())),
        };
        match body {
            None => {
                head.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
            }
            Some((mut body, framed)) => {
                head.push_str("transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
                loop {
                    match body.recv().await {
                        Some(Some(chunk)) if framed => stream.write_all(&chunk).await?,
                        Some(None) if framed => break,
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
    fn a_mirrored_head_leaves_framing_to_the_mirror() {
        let upstream = b"POST /a?b=1 HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: chunked\r\nx-forwarded-for: 10.0.0.1\r\nContent-Length: 3\r\n\r\n5\r\n";
        assert_eq!(mirror_head_raw(upstream), "POST /a?b=1 HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 10.0.0.1\r\n");
        let mut request = RequestHeader::build("PUT", b"/p", None).unwrap();
        request.insert_header("host", "y").unwrap();
        request.insert_header("content-length", "3").unwrap();
        assert_eq!(mirror_head(&request), "PUT /p HTTP/1.1\r\nhost: y\r\n");
    }

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
