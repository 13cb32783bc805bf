//! HTTP/2 connections (TLS with ALPN h2, and cleartext h2c) on the fast path.
//!
//! Pingora's HTTP/2 server keeps the connection: the handshake, flow control, and its
//! checks of every new stream (control bytes in the target, ambiguous authority or
//! Content-Length: reset or answered 400, at most 32 such streams per connection). Each
//! stream it accepts is then decided here, stream by stream:
//!
//! ```text
//!  accept stream ─► plan (checks, decide::route) ─┬─ Proxy ──► upstream HTTP/1.1 (the fast path's pool)
//!                                                 ├─ Respond (404/421/500/503, redirect, direct, preflight)
//!                                                 └─ HandOver ─► Pingora's proxy (this stream only)
//! ```
//!
//! A stream is handed over when its route is not one the fast path serves
//! (`Route::fast`: mirrors, retries, HTTP/2 or TLS backends such as gRPC's),
//! for CONNECT (and extended CONNECT), `Expect`, and whatever Pingora's proxy answers
//! itself (too many or too large header fields: 431; Host problems or ambiguous framing:
//! 400). The answers are the same on both paths; the data-plane tests run with the fast
//! path on and off.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::Digest;
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::http::v2::server::{H2Accept, HttpSession, handshake};
use pingora_core::server::ShutdownWatch;
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::cors;
use crate::decide::{self, Forward};
use crate::fast::{
    BodyError, ChunkedScanner, Client, Framing, Front, HANDED_OVER, LogFields, MAX_RESPONSE_HEAD_BYTES,
    MAX_RESPONSE_HEADERS, Peer, READ_CHUNK, RequestBody, RequestBodySource, ResponseBuffer, Waits,
    first_response_bytes, forwarded_fields, parse_length, parse_response, plain_target, read_failure, routed_target,
    upstream_head, within,
};
use crate::outcome::Failure;
use crate::proxy::{ambiguous_framing, answer_head, headers_too_large, host_problem, request_host};
use crate::tables::{InFlight, Route};
use crate::view::{Headers, RequestView};

/// Streams Pingora's checks refused on one connection before it is closed (as Pingora's
/// own accept loop allows).
const MAX_REFUSED_STREAMS: usize = 32;

/// What every stream of one connection shares.
struct Connection {
    port: u16,
    peer: Peer,
}

/// Streams in progress on a connection (its idle timeout starts when none is).
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    ended: Notify,
}

/// Counts one stream as active until dropped.
struct ActiveGuard(Arc<Active>);

impl ActiveGuard {
    fn new(active: &Arc<Active>) -> ActiveGuard {
        active.count.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(active.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

impl Active {
    /// Returns once no stream has been active for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let ended = self.ended.notified();
            if self.count.load(Ordering::Acquire) > 0 {
                ended.await;
                continue;
            }
            tokio::time::sleep(idle).await;
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
        }
    }
}

/// What to do with one stream.
enum Plan {
    HandOver,
    Respond(decide::Answer, Option<LogFields>),
    Proxy(Box<Exchange>),
}

/// A stream on its way to an endpoint.
struct Exchange {
    route: Arc<Route>,
    backend: usize,
    endpoint: SocketAddr,
    _in_flight: Option<InFlight>,
    head_request: bool,
    idempotent: bool,
    /// How the upstream request's body is delimited (`Chunked` when the client gave no
    /// length).
    body: RequestBody,
    cors: Vec<cors::Field>,
    log: Option<LogFields>,
    /// The upstream request head.
    head: Vec<u8>,
    waits: Waits,
}

impl Front {
    /// Serves an HTTP/2 connection: its streams go to the fast path or, one by one, to
    /// Pingora's proxy.
    pub(crate) async fn serve_h2(self: &Arc<Self>, stream: Stream, port: u16, shutdown: &ShutdownWatch) {
        let connection = Arc::new(Connection { port, peer: Peer::of(&stream) });
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let mut h2 = match handshake(stream, self.proxy.h2_options()).await {
            Ok(h2) => h2,
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 handshake failed");
                return;
            }
        };
        let idle = self.proxy.server_options().and_then(|o| o.h2_idle_timeout);
        let active = Arc::new(Active::default());
        let mut shutdown_changed = shutdown.clone();
        let mut closing = *shutdown.borrow();
        if closing {
            h2.graceful_shutdown();
        }
        let mut refused = 0;
        loop {
            let accepted = if closing {
                HttpSession::from_h2_conn(&mut h2, digest.clone()).await
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown_changed.changed() => {
                        h2.graceful_shutdown();
                        closing = true;
                        continue;
                    }
                    accepted = HttpSession::from_h2_conn(&mut h2, digest.clone()) => accepted,
                    () = active.idle_for(idle.unwrap_or_default()), if idle.is_some() => return,
                }
            };
            match accepted {
                Err(error) => {
                    tracing::debug!(%error, "HTTP/2 connection ends");
                    return;
                }
                Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    refused += 1;
                    if refused >= MAX_REFUSED_STREAMS {
                        tracing::debug!(refused, "closing an HTTP/2 connection after malformed streams");
                        return;
                    }
                }
                Ok(Some(H2Accept::Session(session))) => {
                    let front = self.clone();
                    let connection = connection.clone();
                    let shutdown = shutdown.clone();
                    let guard = ActiveGuard::new(&active);
                    tokio::spawn(async move {
                        let _guard = guard;
                        front.serve_stream(session, &connection, &shutdown).await;
                    });
                }
            }
        }
    }

    async fn serve_stream(
        self: &Arc<Self>,
        mut session: HttpSession,
        connection: &Connection,
        shutdown: &ShutdownWatch,
    ) {
        let started = Instant::now();
        let body_done = session.is_body_done();
        match self.plan_stream(session.req_header(), body_done, connection) {
            Plan::HandOver => {
                // Boxed: Pingora's proxy future is large, and every stream's task would
                // otherwise carry (and copy) its room.
                Box::pin(self.proxy.process_new_http(ServerSession::new_http2(session), shutdown)).await;
            }
            Plan::Respond(answer, log) => {
                let decide::Answer { status, route, fields } = answer;
                if let Err(error) = respond(&mut session, status, &fields) {
                    tracing::debug!(%error, "answer not written");
                }
                self.record(route.as_ref(), status, started, connection.peer.client, None, log);
            }
            Plan::Proxy(mut exchange) => {
                session.set_write_timeout(Some(self.io_timeout));
                let status = match self.forward(&mut session, &mut exchange).await {
                    Ok(status) => status,
                    Err((error, answered)) => {
                        if error.upstream() {
                            exchange.route.metrics.upstream_error();
                        }
                        match answered {
                            Some(status) => {
                                // The response started: the stream ends in a reset.
                                session.shutdown();
                                status
                            }
                            None => {
                                let status = error.status();
                                if status > 0 {
                                    let _ = respond(&mut session, status, &[]);
                                } else {
                                    session.shutdown();
                                }
                                status
                            }
                        }
                    }
                };
                let _ = session.finish();
                let log = exchange.log.take();
                self.record(
                    Some(&exchange.route),
                    status,
                    started,
                    connection.peer.client,
                    Some(exchange.endpoint),
                    log,
                );
            }
        }
    }

    /// Decides a stream from its request head; on `Proxy`, the exchange holds the
    /// upstream request head.
    fn plan_stream(&self, request: &RequestHeader, body_done: bool, connection: &Connection) -> Plan {
        if request.method == http::Method::CONNECT
            || headers_too_large(&request.headers)
            || host_problem(request).is_some()
            || ambiguous_framing(&request.headers)
            || HANDED_OVER.iter().any(|name| request.headers.contains_key(*name))
        {
            return Plan::HandOver;
        }
        let Ok(target) = std::str::from_utf8(request.raw_path()) else { return Plan::HandOver };
        if !plain_target(target) {
            return Plan::HandOver;
        }
        let body = if body_done {
            RequestBody::None
        } else {
            match request.headers.get(http::header::CONTENT_LENGTH) {
                Some(value) => match parse_length(value.as_bytes()) {
                    Some(0) => RequestBody::None,
                    Some(length) => RequestBody::Length(length),
                    None => return Plan::HandOver,
                },
                None => RequestBody::Chunked,
            }
        };
        let tables = self.tables.load();
        if tables.tls.contains_key(&connection.port) != connection.peer.tls {
            return Plan::HandOver;
        }
        let (path, query) = routed_target(target);
        let host = request_host(request);
        let log = || {
            self.access_log.then(|| LogFields {
                method: request.method.to_string(),
                host: host.clone().into_owned(),
                path: path.to_string(),
            })
        };
        let decision = decide::Request {
            port: connection.port,
            sni: connection.peer.sni.as_deref(),
            view: RequestView {
                host: &host,
                path: &path,
                query,
                method: &request.method,
                headers: Headers::Map(&request.headers),
            },
        };
        let matched = match decide::route(&tables, &decision) {
            Ok(matched) => matched,
            Err(answer) => return Plan::Respond(answer, log()),
        };
        // Mirrors and retries are only the HTTP/1.1 fast path's.
        if !matched.route.fast || !matched.route.mirrors.is_empty() || matched.route.retry.is_some() {
            return Plan::HandOver;
        }
        let Forward { route, backend, endpoint, in_flight, cors, .. } = match decide::pick(matched) {
            Ok(forward) => forward,
            Err(answer) => return Plan::Respond(answer, log()),
        };
        // HTTP/1.1 backends expect Host: the request's authority (as Pingora's path sets it).
        let authority = request.uri.authority().map(|a| a.as_str().as_bytes());
        let cookies = crate::edits::joined_cookies(&request.headers);
        let fields = authority
            .map(|a| (&b"host"[..], a))
            .into_iter()
            .chain(
                request
                    .headers
                    .iter()
                    .filter(|(name, _)| {
                        let replaced_host = authority.is_some() && *name == http::header::HOST;
                        let replaced_cookie = cookies.is_some() && *name == http::header::COOKIE;
                        !(replaced_host || replaced_cookie)
                    })
                    .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
            )
            .chain(cookies.as_deref().map(|c| (&b"cookie"[..], c)))
            .chain((body == RequestBody::Chunked).then_some((&b"transfer-encoding"[..], &b"chunked"[..])));
        let headers = forwarded_fields(fields, self.trusted_hops);
        let client =
            Client { ip: &connection.peer.client_ip, tls: connection.peer.tls, trusted_hops: self.trusted_hops };
        let filters = route.filters.iter().chain(route.backends.filters(backend));
        let mut head = Vec::with_capacity(512);
        upstream_head(&mut head, request.method.as_str(), &path, query, &route, filters, headers, &client, false);
        let log = log();
        let waits = Waits::of(&route, self.io_timeout);
        Plan::Proxy(Box::new(Exchange {
            waits,
            route,
            backend,
            endpoint,
            _in_flight: in_flight,
            head_request: request.method == http::Method::HEAD,
            idempotent: request.method.is_idempotent(),
            body,
            cors,
            log,
            head,
        }))
    }

    /// Sends the stream's request to its endpoint and passes the response back. Returns
    /// the status; on error, whether a response had been started already.
    async fn forward(&self, session: &mut HttpSession, exchange: &mut Exchange) -> Result<u16, (Failure, Option<u16>)> {
        let body_deadline = tokio::time::Instant::now() + self.request_body_timeout;
        let resendable = exchange.idempotent && exchange.body == RequestBody::None;
        let mut lazy = LazyReadBuffer(None);
        let source = StreamBody { front: self, session, body: exchange.body, deadline: body_deadline };
        let (mut stream, mut read, body_cut) = first_response_bytes(
            &self.pool,
            exchange.endpoint,
            exchange.waits,
            &exchange.head,
            resendable,
            &mut lazy,
            source,
        )
        .await?;
        let mut buf = lazy.0.unwrap_or_else(ReadBuffer::take);
        loop {
            match write_response_head(session, buf.get(..read).unwrap_or_default(), exchange)? {
                Head::Incomplete => {
                    if read >= MAX_RESPONSE_HEAD_BYTES {
                        return Err((Failure::Upstream, None));
                    }
                    if read == buf.len() {
                        buf.resize(read + READ_CHUNK, 0);
                    }
                    let n = within(exchange.waits.read, stream.read(buf.get_mut(read..).unwrap_or_default()))
                        .await
                        .map_err(|e| read_failure(&e))?;
                    if n == 0 {
                        return Err((Failure::Upstream, None));
                    }
                    read += n;
                }
                Head::Interim(len) => {
                    // HTTP/2 responses carry no 1xx here (as on Pingora's path): read on.
                    buf.copy_within(len..read, 0);
                    read -= len;
                }
                Head::Written { status, len, framing, upstream_keep } => {
                    let reusable = self
                        .pass_body(session, &mut stream, &mut buf, (len, read), framing, exchange.waits.read)
                        .await
                        .map_err(|f| (f, Some(status)))?;
                    if reusable && upstream_keep && !body_cut {
                        self.pool.put(exchange.endpoint, stream);
                    }
                    return Ok(status);
                }
            }
        }
    }

    /// Passes the response body (`buf[start..read]` read already) to the client as DATA
    /// frames, without HTTP/1.1 framing. Returns whether the upstream connection can be
    /// reused.
    async fn pass_body(
        &self,
        session: &mut HttpSession,
        upstream: &mut TcpStream,
        buf: &mut [u8],
        (start, read): (usize, usize),
        framing: Framing,
        read_wait: Duration,
    ) -> Result<bool, Failure> {
        let mut remaining = match framing {
            Framing::Empty => return Ok(read == start),
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut chunks = ChunkedScanner::default();
        let mut data = Vec::new();
        let mut piece = buf.get(start..read).unwrap_or_default();
        // The upstream closed (the end of a body delimited by the close).
        let mut closed = false;
        loop {
            // What of `piece` belongs to the body, and whether the body is complete.
            data.clear();
            let (done, extra) = match framing {
                Framing::Length(_) => {
                    let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(piece.len());
                    remaining -= take as u64;
                    data.extend_from_slice(piece.get(..take).unwrap_or_default());
                    (remaining == 0, take < piece.len())
                }
                Framing::Chunked => match chunks.feed_data(piece, |d| data.extend_from_slice(d)) {
                    Ok(Some(end)) => (true, end < piece.len()),
                    Ok(None) => (false, false),
                    Err(()) => return Err(Failure::Upstream),
                },
                _ => {
                    data.extend_from_slice(piece);
                    (closed, false)
                }
            };
            if !data.is_empty() || done {
                session.write_body(Bytes::copy_from_slice(&data), done).await.map_err(|_| Failure::ClientGone)?;
            }
            if done {
                return Ok(!extra && framing != Framing::UntilClose);
            }
            let n = within(read_wait, upstream.read(buf)).await.map_err(|e| read_failure(&e).0)?;
            if n == 0 {
                if framing != Framing::UntilClose {
                    return Err(Failure::Upstream);
                }
                closed = true;
            }
            piece = buf.get(..n).unwrap_or_default();
        }
    }
}

/// A `READ_CHUNK` buffer for one stream's upstream reads, taken from (and given back
/// to) a small free list per thread: a stream does not pay for zeroing a new one.
struct ReadBuffer(Vec<u8>);

/// Buffers kept per thread for the next streams (1 MiB at most; a burst of streams
/// beyond it allocates).
const SPARE_READ_BUFFERS: usize = 64;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ReadBuffer {
    fn take() -> ReadBuffer {
        let spare = SPARE.try_with(|spare| spare.borrow_mut().pop()).ok().flatten();
        ReadBuffer(spare.unwrap_or_else(|| vec![0u8; READ_CHUNK]))
    }
}

/// A [`ReadBuffer`] taken when the backend's first bytes have been read: the streams
/// waiting on their backends hold none. (A pooled connection can report itself readable
/// with nothing to read, so the first read goes to the stack.)
struct LazyReadBuffer(Option<ReadBuffer>);

/// The first read's size: a typical response head with a small body.
const FIRST_READ: usize = 4096;

impl ResponseBuffer for LazyReadBuffer {
    fn poll_read_from(&mut self, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if let Some(buf) = &mut self.0 {
            return buf.0.poll_read_from(stream, cx);
        }
        let mut first = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut first);
        std::task::ready!(Pin::new(stream).poll_read(cx, &mut read))?;
        let filled = read.filled();
        let buf = self.0.insert(ReadBuffer::take());
        if let Some(to) = buf.get_mut(..filled.len()) {
            to.copy_from_slice(filled);
        }
        Poll::Ready(Ok(filled.len()))
    }
}

impl std::ops::Deref for ReadBuffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for ReadBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        // Grown buffers (long response heads) are not kept.
        if self.0.len() == READ_CHUNK {
            let buf = std::mem::take(&mut self.0);
            // (Not at all while the thread ends.)
            let _ = SPARE.try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() < SPARE_READ_BUFFERS {
                    spare.push(buf);
                }
            });
        }
    }
}

/// What the upstream's bytes so far gave.
enum Head {
    Incomplete,
    /// A 1xx response of this many bytes (not passed on).
    Interim(usize),
    /// The response head, edited, is written to the stream; its body starts at `len`.
    Written {
        status: u16,
        len: usize,
        framing: Framing,
        upstream_keep: bool,
    },
}

/// Parses the response head in `bytes` and, when complete, writes it (with the route's
/// edits) to the stream. Not async: the parser's field storage stays off the stream's
/// task.
fn write_response_head(
    session: &mut HttpSession,
    bytes: &[u8],
    exchange: &Exchange,
) -> Result<Head, (Failure, Option<u16>)> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let parsed =
        parse_response(bytes, &mut storage, exchange.head_request, false).map_err(|()| (Failure::Upstream, None))?;
    let Some(parsed) = parsed else { return Ok(Head::Incomplete) };
    if parsed.interim {
        return Ok(Head::Interim(parsed.len));
    }
    let status = parsed.status;
    let mut fields = parsed.fields;
    crate::edits::response(&mut fields, &exchange.route, Some(exchange.backend), &exchange.cors);
    // HTTP/2 names are lowercase: no map of their original case to keep.
    let mut response =
        ResponseHeader::build_no_case(status, Some(fields.len() + 1)).map_err(|_| (Failure::Upstream, None))?;
    for (name, value) in &fields {
        let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value)) else {
            return Err((Failure::Upstream, None));
        };
        response.append_header(name, value).map_err(|_| (Failure::Upstream, None))?;
    }
    let end = parsed.framing == Framing::Empty;
    session.write_response_header(Box::new(response), end).map_err(|_| (Failure::ClientGone, Some(status)))?;
    Ok(Head::Written { status, len: parsed.len, framing: parsed.framing, upstream_keep: parsed.upstream_keep })
}

/// Answers a stream with `fields` and no body, as `proxy::answer` does.
fn respond(session: &mut HttpSession, status: u16, fields: &[cors::Field]) -> pingora_core::Result<()> {
    session.write_response_header(Box::new(answer_head(status, fields)?), true)
}

/// The request body of an HTTP/2 stream.
struct StreamBody<'a> {
    front: &'a Front,
    session: &'a mut HttpSession,
    body: RequestBody,
    deadline: tokio::time::Instant,
}

impl RequestBodySource for StreamBody<'_> {
    /// Passes the client's request body to the upstream as it arrives (chunked when the
    /// client gave no length).
    async fn send_to(&mut self, upstream: &mut TcpStream) -> Result<(), BodyError> {
        let chunked = match self.body {
            RequestBody::None => return Ok(()),
            body => body == RequestBody::Chunked,
        };
        let mut out = Vec::new();
        loop {
            let limit = self.deadline.min(tokio::time::Instant::now() + self.front.io_timeout);
            let data = match tokio::time::timeout_at(limit, self.session.read_body_bytes()).await {
                Err(_) => return Err(BodyError::Client(Failure::ClientTimeout)),
                Ok(Err(_)) => return Err(BodyError::Client(Failure::ClientGone)),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(data))) => data,
            };
            if data.is_empty() {
                continue;
            }
            let bytes: &[u8] = if chunked {
                out.clear();
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
                &out
            } else {
                &data
            };
            within(self.front.io_timeout, upstream.write_all(bytes)).await.map_err(|_| BodyError::Upstream)?;
        }
        if chunked {
            within(self.front.io_timeout, upstream.write_all(b"0\r\n\r\n")).await.map_err(|_| BodyError::Upstream)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_stream_takes_its_read_buffer_only_with_bytes_to_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut backend, _) = listener.accept().await.unwrap();
        let (mut upstream, mut lazy) = (upstream, LazyReadBuffer(None));
        let waiting = std::future::poll_fn(|cx| Poll::Ready(lazy.poll_read_from(&mut upstream, cx))).await;
        assert!(waiting.is_pending(), "nothing to read yet");
        assert!(lazy.0.is_none(), "a stream with nothing to read holds no buffer");
        backend.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
        let read = std::future::poll_fn(|cx| lazy.poll_read_from(&mut upstream, cx)).await.unwrap();
        let buf = lazy.0.expect("taken with the first bytes");
        assert_eq!(buf.len(), READ_CHUNK);
        assert_eq!(&buf[..read], b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert!(!crate::fast::tests::readiness_left(&upstream), "a read that empties the socket clears its readiness");
    }

    #[test]
    fn chunked_bodies_give_their_data_without_framing() {
        let mut scanner = ChunkedScanner::default();
        let mut data = Vec::new();
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        for byte in body.iter() {
            let _ = scanner.feed_data(std::slice::from_ref(byte), |d| data.extend_from_slice(d)).unwrap();
        }
        assert_eq!(data, b"hello world");
    }
}
