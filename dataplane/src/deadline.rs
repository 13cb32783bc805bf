//! An overall deadline for HTTP/1.x request headers.
//!
//! Pingora bounds each read of a request head, not the whole head, so a client sending a
//! byte every few seconds (slowloris) could hold a connection for hours. This wraps each
//! HTTP/1.x connection's stream: from the first byte of a request head (or from accept,
//! for the first request) the head must be complete (`\r\n\r\n`) within the deadline, or
//! reads fail and the connection is closed.
//!
//! ```text
//!  accept ──► Head(deadline) ──"\r\n\r\n"──► Open ──final response written──► Responded
//!                ▲                            │ (1xx interim: stays Open)          │
//!                │                            └──101 written──► Upgraded (no more deadlines)
//!                └──────────── first byte read after a response ────────────────┘
//! ```
//!
//! HTTP/2 connections (h2c or ALPN h2) are timed only until their 24-byte preface is in:
//! the head of a stream arrives in frames, and h2 has its own flow control and idle limit
//! (`--http2-idle-timeout-secs`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{ALPN, Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType};
use pingora_core::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
enum State {
    /// Reading a request head; `matched` counts the bytes of `\r\n\r\n` seen so far.
    Head { matched: usize },
    /// The head is complete; the request is being served.
    Open,
    /// A response was written; the next byte read starts a new head.
    Responded,
    /// A `101 Switching Protocols` was written (e.g. WebSocket): no heads any more.
    Upgraded,
}

/// Where a connection is between request heads.
#[derive(Debug)]
struct HeadTracker {
    state: State,
    /// While `Some(n)`: the connection's first `n` bytes matched the HTTP/2 preface. An
    /// HTTP/2 connection (h2c, or ALPN h2) must send its whole preface within the head
    /// deadline, then has no request heads to time: HTTP/2's idle limit takes over.
    preface: Option<usize>,
}

impl HeadTracker {
    /// Follows the head terminator across reads; returns true when `bytes` begin a new
    /// head after a response (its deadline starts now).
    fn read(&mut self, bytes: &[u8]) -> bool {
        const END: &[u8; 4] = b"\r\n\r\n";
        if let Some(n) = self.preface {
            let want = H2_PREFACE.get(n..).unwrap_or_default();
            let k = want.len().min(bytes.len());
            if bytes.get(..k) == want.get(..k) {
                if n + k == H2_PREFACE.len() {
                    self.preface = None;
                    self.state = State::Upgraded;
                } else {
                    self.preface = Some(n + k);
                }
                // Still (or no longer) in the preface: its deadline runs from accept.
                return false;
            }
            // Not HTTP/2 after all: the bytes that matched begin an HTTP/1.x head.
            self.preface = None;
            let started = self.read(H2_PREFACE.get(..n).unwrap_or_default());
            return self.read(bytes) || started;
        }
        let mut started = false;
        if let State::Responded = self.state {
            if bytes.is_empty() {
                return false;
            }
            self.state = State::Head { matched: 0 };
            started = true;
        }
        let State::Head { mut matched } = self.state else { return started };
        for byte in bytes {
            matched = if *byte == END[matched] {
                matched + 1
            } else if *byte == b'\r' {
                1
            } else {
                0
            };
            if matched == END.len() {
                self.state = State::Open;
                return started;
            }
        }
        self.state = State::Head { matched };
        started
    }

    /// Response bytes were written. The first write after a complete head carries the
    /// status line: `101` upgrades the connection for good, other `1xx` are interim (the
    /// request goes on, e.g. after `100 Continue`), anything else answers the request.
    fn wrote(&mut self, data: &[u8]) {
        if !matches!(self.state, State::Open) || data.is_empty() {
            return;
        }
        let status = data.strip_prefix(b"HTTP/1.1 ").or_else(|| data.strip_prefix(b"HTTP/1.0 "));
        self.state = match status {
            Some(code) if code.starts_with(b"101") => State::Upgraded,
            Some(code) if code.first() == Some(&b'1') => State::Open,
            _ => State::Responded,
        };
    }

    fn in_head(&self) -> bool {
        matches!(self.state, State::Head { .. })
    }
}

/// A stream whose reads fail once a request head takes longer than the deadline, and
/// that first returns bytes already read from the connection (by the HTTP/1.1 fast path,
/// before it handed the connection over).
///
/// Cheap for well-behaved clients: the deadline is a plain instant, checked when bytes
/// arrive; a timer is armed only when a read of an incomplete head has to wait.
#[derive(Debug)]
pub struct DeadlineStream {
    inner: Stream,
    /// `None`: no deadline, only the prefix.
    timeout: Option<Duration>,
    tracker: HeadTracker,
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    prefix: Vec<u8>,
    /// How much of `prefix` was returned already.
    prefix_read: usize,
}

impl DeadlineStream {
    pub fn new(inner: Stream, timeout: Option<Duration>, prefix: Vec<u8>) -> Self {
        Self {
            inner,
            timeout,
            tracker: HeadTracker { state: State::Head { matched: 0 }, preface: Some(0) },
            deadline: tokio::time::Instant::now() + timeout.unwrap_or_default(),
            timer: None,
            prefix,
            prefix_read: 0,
        }
    }

    /// Follows bytes just read; false when the head they belong to is too late.
    fn track(&mut self, bytes: &[u8]) -> bool {
        let Some(timeout) = self.timeout else { return true };
        if self.tracker.read(bytes) {
            self.deadline = tokio::time::Instant::now() + timeout;
        } else if self.tracker.in_head() && tokio::time::Instant::now() >= self.deadline {
            return false;
        }
        true
    }
}

fn too_slow() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the request head did not arrive within the deadline")
}

impl AsyncRead for DeadlineStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.prefix_read < this.prefix.len() {
            let prefix = std::mem::take(&mut this.prefix);
            let rest = prefix.get(this.prefix_read..).unwrap_or_default();
            let n = rest.len().min(buf.remaining());
            let bytes = rest.get(..n).unwrap_or_default();
            buf.put_slice(bytes);
            let in_time = this.track(bytes);
            this.prefix_read += n;
            if this.prefix_read < prefix.len() {
                this.prefix = prefix;
            } else {
                this.prefix_read = 0;
            }
            return Poll::Ready(if in_time { Ok(()) } else { Err(too_slow()) });
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let new = buf.filled().get(before..).unwrap_or_default();
                if !this.track(new) {
                    return Poll::Ready(Err(too_slow()));
                }
            }
            Poll::Pending if this.timeout.is_some() && this.tracker.in_head() => {
                let deadline = this.deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(too_slow()));
                }
            }
            _ => {}
        }
        result
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            this.tracker.wrote(data.get(..n).unwrap_or_default());
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            let first = bufs.iter().find(|b| !b.is_empty()).map(|b| &b[..n.min(b.len())]).unwrap_or_default();
            this.tracker.wrote(first);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

/// The whole HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a connection may take to show whether it speaks cleartext HTTP/2 when no head
/// deadline is configured.
const PREFACE_WAIT: Duration = Duration::from_secs(10);

#[async_trait]
impl Peek for DeadlineStream {
    /// Pingora peeks the first 24 bytes of a cleartext connection to tell HTTP/2 (the
    /// preface) from HTTP/1.x. A complete HTTP/1.x head can be shorter than that
    /// (`GET / HTTP/1.0\r\n\r\n`), so waiting for 24 bytes would hold it forever: bytes
    /// are read only until they stop matching the preface, within the head deadline, and
    /// what does not fill `buf` is padded so that it cannot equal the preface.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + self.timeout.unwrap_or(PREFACE_WAIT);
        loop {
            let unread = self.prefix.get(self.prefix_read..).unwrap_or_default();
            let compared = unread.len().min(H2_PREFACE.len());
            let diverged = unread.get(..compared) != H2_PREFACE.get(..compared);
            if unread.len() >= buf.len() || diverged {
                let n = unread.len().min(buf.len());
                buf.fill(0);
                buf.get_mut(..n).unwrap_or_default().copy_from_slice(unread.get(..n).unwrap_or_default());
                return Ok(true);
            }
            let mut more = [0u8; 1024];
            let n = match tokio::time::timeout_at(deadline, self.inner.read(&mut more)).await {
                Ok(read) => read?,
                Err(_) => return Err(too_slow()),
            };
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if self.prefix_read >= self.prefix.len() {
                self.prefix.clear();
                self.prefix_read = 0;
            }
            self.prefix.extend_from_slice(more.get(..n).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2c_connections_have_no_heads_to_time() {
        let mut t = HeadTracker { state: State::Head { matched: 0 }, preface: Some(0) };
        t.read(b"PRI * HT");
        assert!(t.in_head());
        t.read(b"TP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(matches!(t.state, State::Upgraded));
        assert!(!t.in_head());
        let mut t = HeadTracker { state: State::Head { matched: 0 }, preface: Some(0) };
        t.read(b"PRIVATE / HTTP/1.1\r\n");
        assert!(t.preface.is_none() && t.in_head());
        // The preface holds a blank line; its deadline runs until all 24 bytes are in.
        let mut t = HeadTracker { state: State::Head { matched: 0 }, preface: Some(0) };
        t.read(b"PRI * HTTP/2.0\r\n\r\n");
        assert!(t.in_head(), "a partial preface is still timed");
        t.read(b"SM\r\n");
        assert!(t.in_head());
        t.read(b"\r\n\x00\x00\x00\x04");
        assert!(!t.in_head());
        // Bytes that stop matching it are an HTTP/1.x head, the matched ones included.
        let mut t = HeadTracker { state: State::Head { matched: 0 }, preface: Some(0) };
        t.read(b"PRI * HTTP/2.0\r\n\r");
        t.read(b"\nX");
        assert!(matches!(t.state, State::Open), "{:?}", t.state);
    }

    #[test]
    fn follows_heads_across_reads_and_requests() {
        let mut t = HeadTracker { state: State::Head { matched: 0 }, preface: Some(0) };
        assert!(!t.read(b"GET / HTTP/1.1\r\nHost: a\r"));
        assert!(matches!(t.state, State::Head { matched: 1 }));
        t.read(b"\n\r");
        assert!(matches!(t.state, State::Head { matched: 3 }));
        t.read(b"\n");
        assert!(matches!(t.state, State::Open));
        // Body bytes before the response never restart a head.
        t.read(b"\r\n\r\nbody");
        assert!(matches!(t.state, State::Open));
        t.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(matches!(t.state, State::Open), "an interim response does not end the request");
        t.wrote(b"HTTP/1.1 200 OK\r\n");
        assert!(!t.read(b""), "an empty read (EOF) starts nothing");
        assert!(t.read(b"GET /next HTTP/1.1\r\n\r\n"), "a new head starts its deadline");
        assert!(matches!(t.state, State::Open));
        t.wrote(b"HTTP/1.1 404 Not Found\r\n");
        assert!(t.read(b"POST"));
        assert!(t.in_head());
        t.read(b" /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        t.wrote(b"HTTP/1.1 101 Switching Protocols\r\n");
        assert!(!t.read(b"\x81\x05hello"), "an upgraded connection has no more heads");
        assert!(!t.in_head());
    }
}
