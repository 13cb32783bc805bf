//! The HTTP/1.1 fast path, in front of Pingora's proxy.
//!
//! Most requests are HTTP/1.1 requests (cleartext or over TLS) to routes that only
//! modify headers or rewrite URLs, redirect, or answer directly. This path serves them
//! straight from the connection's bytes: it parses the head in place (httparse, no header
//! map), lets `crate::decide` route it as Pingora's path does, writes the upstream head
//! (and the first body bytes) with one write, streams the rest of the body, and passes the
//! response through with its own framing, on upstream connections kept in a small pool.
//! A WebSocket upgrade answered `101` becomes a tunnel between both connections; request
//! mirrors, Gateway API timeouts and (for body-less requests) retries are served here.
//! Everything else — other upgrades, `Expect`, HTTP/2, requests with a body to routes
//! with retries, HTTP/2 or TLS backends (`Route::fast`), anything odd — goes to
//! Pingora's proxy: the bytes read so far are handed over with the connection, which
//! stays with Pingora from then on.
//!
//! ```text
//!  accept ─► read head ─► plan (parse, decide) ──────┬─ Proxy ──► upstream (pooled) ─► response ─┐
//!               ▲                                    ├─ Respond (404/421/500/503, redirect,      │
//!               │                                    │   direct response, CORS preflight)        │
//!               └──────────── keep-alive ◄───────────┴───────────────────────────────────────────┘
//!                                                    └─ HandOver ─► Pingora (rest of connection)
//! ```
//!
//! Both paths answer alike: same routing, filters (CORS decided by `crate::cors`),
//! X-Forwarded-*, hop-by-hop stripping, `Date`/`Connection` on responses, status codes
//! for upstream failures (503 connect, 504 connect timeout, 502 otherwise), metrics and
//! access log. The data-plane tests run with the fast path on and off
//! (`--http1-fast-path false`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::ALPN;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use sluice_snapshot::HttpFilter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::cors;
use crate::deadline::DeadlineStream;
use crate::decide::{self, Forward};
use crate::edits::{self, HeaderEdits, UNTRUSTED_FORWARDING, forwarded_for};
use crate::metrics::RouteMetrics;
use crate::mirror;
use crate::outcome::{AccessLog, Failure, Finished};
use crate::path::normalize;
use crate::proxy::{MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS, SluiceProxy, host_of};
use crate::tables::{InFlight, Route, Tables};
use crate::view::{Headers, RequestView};

/// How long an idle client connection is kept open between requests (as Pingora does).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// How much earlier than KEEPALIVE_IDLE an idle connection may be closed.
const IDLE_SLACK: Duration = Duration::from_secs(5);
/// Connecting to an endpoint (as the Pingora path's peers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the fast paths wait for a backend: to connect, and for each read (and the
/// request head's write). A route's Gateway API timeouts bound both, as on Pingora's
/// path; without them a read may wait `Front::io_timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waits {
    pub connect: Duration,
    pub read: Duration,
}

impl Waits {
    /// The waits of a request to `route` that has just started.
    pub(crate) fn of(route: &Route, io_timeout: Duration) -> Waits {
        Waits::after(route, io_timeout, Duration::ZERO).unwrap_or(Waits::unbounded(io_timeout))
    }

    /// Without Gateway API timeouts.
    fn unbounded(io_timeout: Duration) -> Waits {
        Waits { connect: CONNECT_TIMEOUT, read: io_timeout }
    }

    /// The waits of a request that has `spent` that long already (a retry); `None`: the
    /// request timeout has passed.
    fn after(route: &Route, io_timeout: Duration, spent: Duration) -> Option<Waits> {
        match route.backend_wait(spent) {
            Ok(Some(limit)) => Some(Waits { connect: limit.min(CONNECT_TIMEOUT), read: limit }),
            Ok(None) => Some(Waits::unbounded(io_timeout)),
            Err(()) => None,
        }
    }
}
/// Idle upstream connections kept per endpoint, and for how long. Enough for the
/// streams of many HTTP/2 connections at once (each in-flight stream holds one): below
/// the concurrency, every burst would open and close connections.
const POOL_PER_ENDPOINT: usize = 1024;
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Limits of a backend's response head (beyond them: 502).
pub(crate) const MAX_RESPONSE_HEADERS: usize = 128;
pub(crate) const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// `io` within `limit` (`Front::io_timeout`); a timeout is an error like any other I/O
/// error. The clock is read and the timer made only when `io` has to wait: most writes
/// (and reads of bytes already there) finish on their first poll.
pub(crate) async fn within<T>(
    limit: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let mut io = std::pin::pin!(io);
    if let Poll::Ready(result) = std::future::poll_fn(|cx| Poll::Ready(io.as_mut().poll(cx))).await {
        return result;
    }
    match tokio::time::timeout(limit, io).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// The first line of a cleartext HTTP/2 connection's preface (RFC 9113 §3.4); the
/// HTTP/2 handshake reads (and checks) the rest, under the head deadline.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Buffer sizes: request heads start in a small buffer that grows as needed; the
/// upstream buffer (response heads and bodies) is allocated with the first exchange.
const HEAD_BUFFER: usize = 4 * 1024;
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// The HTTP app of the plain and TLS listeners: the fast path, then Pingora.
pub struct Front {
    pub proxy: Arc<HttpProxy<SluiceProxy>>,
    pub tables: Tables,
    /// Metrics of requests that matched no route.
    pub unmatched: Arc<RouteMetrics>,
    pub access_log: bool,
    /// The overall request-head deadline (`None`: none).
    pub head_timeout: Option<Duration>,
    /// Whether plain HTTP/1.1 connections try the fast path first.
    pub fast_path: bool,
    pub pool: UpstreamPool,
    /// Connection counters of every HTTP/HTTPS port, and the most open per port.
    pub connections: HashMap<u16, Arc<crate::metrics::ListenerMetrics>>,
    pub max_connections: usize,
    /// As `SluiceProxy::trusted_hops`.
    pub trusted_hops: usize,
    /// The longest a read from a backend or a write to a client may wait (a backend that
    /// stops answering, a client that stops reading); Pingora's path uses the same bound.
    pub io_timeout: Duration,
    /// The longest a request body may take to arrive, from the request's start (as
    /// `SluiceProxy::request_body_timeout`).
    pub request_body_timeout: Duration,
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let local = stream.get_socket_digest().and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()));
        let counters = local.and_then(|port| self.connections.get(&port));
        // At the cap, the connection is closed at once (counted in
        // sluice_connections_refused_total); the guard counts it open until it ends.
        let _open = match counters {
            Some(counters) => Some(counters.admit(self.max_connections)?),
            None => None,
        };
        // A TLS connection whose client certificate the port's validation refuses (a
        // resumed session that skipped the handshake's check) is closed unserved.
        if let Some(refused) = stream
            .get_ssl_digest()
            .and_then(|tls| tls.extension.get::<crate::tls::Handshake>().and_then(|h| h.refused.clone()))
        {
            tracing::debug!(port = ?local, refused, "closing a TLS connection before its first request");
            return None;
        }
        // HTTP/2 (TLS with ALPN h2, whose preface the head deadline also times) and
        // everything when the fast path is off go to Pingora; HTTP/1.x over TLS and
        // cleartext try the fast path first.
        let (true, Some(port)) = (self.fast_path, local) else {
            return self.hand_over(stream, Vec::new(), shutdown).await;
        };
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            self.serve_h2(self.wrap(stream, Vec::new()), port, shutdown).await;
            return None;
        }
        let mut connection = Connection::new(stream, port, self.io_timeout);
        match connection.serve(self, shutdown).await {
            Next::Close => None,
            Next::HandOver => {
                let unread = connection.unread();
                if unread.starts_with(H2_PREFACE_LINE) {
                    // Cleartext HTTP/2 with prior knowledge (h2c).
                    self.serve_h2(self.wrap(connection.stream, unread), port, shutdown).await;
                    return None;
                }
                self.hand_over(connection.stream, unread, shutdown).await
            }
        }
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await;
    }
}

impl Front {
    /// Pingora serves the rest of the connection, starting with `unread`.
    async fn hand_over(self: &Arc<Self>, stream: Stream, unread: Vec<u8>, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.proxy.process_new(self.wrap(stream, unread), shutdown).await
    }

    /// The connection with the bytes read so far put back in front, under the head
    /// deadline. Cleartext connections are always wrapped: Pingora's h2c check peeks
    /// through the wrapper, which never waits for the preface's 24 bytes after a shorter
    /// HTTP/1.x head.
    fn wrap(&self, stream: Stream, unread: Vec<u8>) -> Stream {
        if self.head_timeout.is_none() && unread.is_empty() && stream.get_ssl_digest().is_some() {
            return stream;
        }
        Box::new(DeadlineStream::new(stream, self.head_timeout, unread))
    }
}

/// Idle upstream connections by endpoint.
#[derive(Default)]
pub struct UpstreamPool {
    idle: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    by_endpoint: HashMap<SocketAddr, Vec<(TcpStream, Instant)>>,
    swept: Option<Instant>,
}

impl UpstreamPool {
    /// An idle connection to `endpoint`. With `verify`, one the backend has closed (or
    /// sent unexpected bytes on) is skipped: for requests that must not be sent twice.
    pub(crate) fn take(&self, endpoint: SocketAddr, verify: bool) -> Option<TcpStream> {
        let mut pool = self.idle.lock().ok()?;
        let idle = pool.by_endpoint.get_mut(&endpoint)?;
        while let Some((stream, since)) = idle.pop() {
            let open = !verify
                || matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            if open && since.elapsed() < POOL_IDLE {
                return Some(stream);
            }
        }
        None
    }

    pub(crate) fn put(&self, endpoint: SocketAddr, stream: TcpStream) {
        let Ok(mut pool) = self.idle.lock() else { return };
        let now = Instant::now();
        // Now and then, drop connections idle for too long (e.g. to endpoints gone).
        if pool.swept.is_none_or(|at| now.duration_since(at) > POOL_IDLE / 2) {
            pool.swept = Some(now);
            pool.by_endpoint.retain(|_, idle| {
                idle.retain(|(_, since)| now.duration_since(*since) < POOL_IDLE);
                !idle.is_empty()
            });
        }
        let idle = pool.by_endpoint.entry(endpoint).or_default();
        if idle.len() < POOL_PER_ENDPOINT {
            idle.push((stream, now));
        }
    }
}

/// What the connection does after the fast path stops.
enum Next {
    Close,
    HandOver,
}

/// What the fast paths know of a client connection.
pub(crate) struct Peer {
    /// The connection came in over TLS, with this SNI (if the client sent one).
    pub tls: bool,
    pub sni: Option<String>,
    pub client: Option<SocketAddr>,
    /// The client's IP, as X-Forwarded-For carries it.
    pub client_ip: String,
}

impl Peer {
    pub(crate) fn of(stream: &Stream) -> Peer {
        let client = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let tls = stream.get_ssl_digest();
        let sni = tls.as_ref().and_then(|tls| {
            tls.extension.get::<crate::tls::Handshake>().and_then(|handshake| handshake.server_name.clone())
        });
        Peer { tls: tls.is_some(), sni, client, client_ip: client.map(|c| c.ip().to_string()).unwrap_or_default() }
    }
}

/// One client connection on the fast path.
struct Connection {
    stream: Stream,
    /// Bytes read from the client; `buf[..filled]` is not consumed yet.
    buf: Vec<u8>,
    filled: usize,
    port: u16,
    peer: Peer,
    /// Outgoing bytes: the upstream request head, then the response head.
    out: Vec<u8>,
    /// Bytes read from the upstream.
    upstream_buf: Vec<u8>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    accepted: tokio::time::Instant,
    /// As `Front::io_timeout`.
    io_timeout: Duration,
}

/// What to do with a complete request head.
enum Plan {
    /// The head is not complete yet.
    Partial,
    HandOver,
    Respond(Answer),
    Proxy(Box<Exchange>),
}

/// A response from the proxy itself (no route, no endpoint, an invalid backend, a
/// redirect, a direct response, a CORS preflight), to a request of `head_len` bytes.
struct Answer {
    answer: decide::Answer,
    head_len: usize,
    close: bool,
    log: Option<LogFields>,
}

/// A request on its way to an endpoint; its upstream head is in `Connection::out`.
struct Exchange {
    route: Arc<Route>,
    backend: usize,
    /// The backend's cluster (a retry picks another endpoint of it).
    cluster: Arc<crate::tables::ClusterTable>,
    endpoint: SocketAddr,
    _in_flight: Option<InFlight>,
    head_len: usize,
    /// The client asked to close after this request.
    close: bool,
    /// A HEAD request: the response has no body, whatever its headers say.
    head_request: bool,
    /// An idempotent method (RFC 9110 §9.2.2): may be sent again on a new connection
    /// when a pooled one turns out closed (if its body, if any, is still at hand).
    idempotent: bool,
    /// The request body still to come after the head.
    body: RequestBody,
    /// The client asked to switch protocols (WebSocket): a `101` from the backend turns
    /// the connection into a tunnel.
    upgrade: bool,
    waits: Waits,
    /// The mirrors this request is copied to (taken when it is sent).
    mirrors: Vec<mirror::Target>,
    log: Option<LogFields>,
    /// CORS fields for the response (the route's policy decided them on the request).
    cors: Vec<cors::Field>,
}

/// What the access log needs of the request (only collected when it is on).
pub(crate) struct LogFields {
    pub method: String,
    pub host: String,
    pub path: String,
}

/// A failed read from the backend: a timeout answers 504, anything else 502.
pub(crate) fn read_failure(error: &std::io::Error) -> (Failure, Option<u16>) {
    let failure =
        if error.kind() == std::io::ErrorKind::TimedOut { Failure::UpstreamTimeout } else { Failure::Upstream };
    (failure, None)
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the client connection closes after it too.
    UntilClose,
}

/// What is left of a request body on its way to the upstream.
enum BodyLeft {
    Length(u64),
    Chunked(ChunkedScanner, bool),
}

/// Why passing a request body stopped.
pub(crate) enum BodyError {
    /// The client's side (deadline, gone, malformed).
    Client(Failure),
    /// The upstream stopped taking it.
    Upstream,
}

impl BodyLeft {
    fn new(body: RequestBody) -> BodyLeft {
        match body {
            RequestBody::None => BodyLeft::Length(0),
            RequestBody::Length(length) => BodyLeft::Length(length),
            RequestBody::Chunked => BodyLeft::Chunked(ChunkedScanner::default(), false),
        }
    }

    fn done(&self) -> bool {
        match self {
            BodyLeft::Length(left) => *left == 0,
            BodyLeft::Chunked(_, done) => *done,
        }
    }

    /// How many of `bytes` (the next ones from the client) belong to the body.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        match self {
            BodyLeft::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(bytes.len());
                *left -= take as u64;
                Ok(take)
            }
            BodyLeft::Chunked(_, true) => Ok(0),
            BodyLeft::Chunked(scanner, done) => match scanner.feed(bytes)? {
                Some(end) => {
                    *done = true;
                    Ok(end)
                }
                None => Ok(bytes.len()),
            },
        }
    }
}

impl Connection {
    fn new(stream: Stream, port: u16, io_timeout: Duration) -> Connection {
        Connection {
            peer: Peer::of(&stream),
            stream,
            buf: vec![0; HEAD_BUFFER],
            filled: 0,
            port,
            out: Vec::with_capacity(1024),
            upstream_buf: Vec::new(),
            timer: None,
            accepted: tokio::time::Instant::now(),
            io_timeout,
        }
    }

    /// The bytes read from the client and not consumed.
    fn unread(&mut self) -> Vec<u8> {
        self.buf.truncate(self.filled);
        std::mem::take(&mut self.buf)
    }

    async fn serve(&mut self, front: &Front, shutdown: &ShutdownWatch) -> Next {
        let mut first = true;
        loop {
            // The head deadline runs from accept for the first request, from its first
            // byte for later ones; between requests the connection may idle.
            let mut head_deadline = first.then(|| self.head_deadline(front, self.accepted));
            // Bytes already searched for the end of the head: a head arriving in many
            // small pieces is parsed once, not once per piece.
            let mut scanned = 0;
            // A request's clock starts when its head is complete (as Pingora's path's
            // context is made after the head is read): routing counts in its duration.
            let (plan, started) = loop {
                let complete = head_end_after(self.buf.get(..self.filled).unwrap_or_default(), scanned);
                scanned = self.filled;
                if complete {
                    let started = Instant::now();
                    let plan = self.plan(front);
                    if !matches!(plan, Plan::Partial) {
                        break (plan, started);
                    }
                }
                if self.filled > MAX_REQUEST_HEADER_BYTES {
                    // Too large for the fast path: Pingora gives the defined answer.
                    break (Plan::HandOver, Instant::now());
                }
                let (deadline, slack) = match head_deadline {
                    Some(deadline) => (deadline, Duration::ZERO),
                    // Idle between requests: the timer armed for an earlier wait may fire
                    // up to IDLE_SLACK early instead of being moved for every request.
                    None if self.filled == 0 => (tokio::time::Instant::now() + KEEPALIVE_IDLE, IDLE_SLACK),
                    None => {
                        let deadline = self.head_deadline(front, tokio::time::Instant::now());
                        head_deadline = Some(deadline);
                        (deadline, Duration::ZERO)
                    }
                };
                match self.read_client(deadline, slack).await {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => {}
                }
            };
            first = false;
            let close = match plan {
                Plan::Partial | Plan::HandOver => return Next::HandOver,
                Plan::Respond(answer) => {
                    let close = answer.close || *shutdown.borrow();
                    self.consume(answer.head_len);
                    let decide::Answer { status, route, fields } = answer.answer;
                    let written = self.respond(status, close, &fields).await;
                    front.record(route.as_ref(), status, started, self.peer.client, None, answer.log);
                    if written.is_err() {
                        return Next::Close;
                    }
                    close
                }
                Plan::Proxy(mut exchange) => {
                    self.consume(exchange.head_len);
                    // After an upgrade the connection is the new protocol's; one the
                    // backend refused closes too (the client may have sent more already).
                    let close_requested = exchange.close || exchange.upgrade || *shutdown.borrow();
                    let (status, close) = match self.exchange(front, &mut exchange, close_requested, started).await {
                        Ok(outcome) => outcome,
                        Err((error, answered)) => {
                            if error.upstream() {
                                exchange.route.metrics.upstream_error();
                            }
                            match answered {
                                Some(status) => (status, true),
                                None => {
                                    let status = error.status();
                                    if status > 0 {
                                        let _ = self.respond(status, true, &[]).await;
                                    }
                                    (status, true)
                                }
                            }
                        }
                    };
                    front.record(
                        Some(&exchange.route),
                        status,
                        started,
                        self.peer.client,
                        Some(exchange.endpoint),
                        exchange.log,
                    );
                    close
                }
            };
            if close {
                return Next::Close;
            }
        }
    }

    fn head_deadline(&self, front: &Front, from: tokio::time::Instant) -> tokio::time::Instant {
        // Without a configured deadline, a head still may not take longer than an idle
        // keep-alive connection may wait.
        from + front.head_timeout.unwrap_or(KEEPALIVE_IDLE)
    }

    /// Drops a served request head from the buffer.
    fn consume(&mut self, len: usize) {
        let len = len.min(self.filled);
        self.buf.copy_within(len..self.filled, 0);
        self.filled -= len;
    }

    /// Reads more request bytes; fails at `deadline` (or up to `slack` before it). The
    /// timer is only armed when the read has to wait.
    async fn read_client(&mut self, deadline: tokio::time::Instant, slack: Duration) -> std::io::Result<usize> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let Connection { stream, buf, filled, timer, .. } = self;
        let space = buf.get_mut(*filled..).unwrap_or_default();
        let n = std::future::poll_fn(|cx| {
            let mut read = ReadBuf::new(space);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(read.filled().len())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            let armed = sleep.deadline();
            if armed > deadline || armed + slack < deadline {
                sleep.as_mut().reset(deadline);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        *filled += n;
        Ok(n)
    }

    /// Parses and routes the buffered request head; on `Proxy`, `out` holds the upstream
    /// request head.
    fn plan(&mut self, front: &Front) -> Plan {
        let mut fields = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut request = httparse::Request::new(&mut fields);
        let head_len = match request.parse(self.buf.get(..self.filled).unwrap_or_default()) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Plan::Partial,
            Err(_) => return Plan::HandOver,
        };
        let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else {
            return Plan::HandOver;
        };
        let fields: &[httparse::Header<'_>] = &*request.headers;
        let Some(head) = RequestHead::read(method, target, fields) else {
            return Plan::HandOver;
        };
        let tables = front.tables.load();
        if tables.tls.contains_key(&self.port) != self.peer.tls {
            // TLS on a port without certificates or the reverse (a configuration being
            // swapped): Pingora's path decides.
            return Plan::HandOver;
        }
        let (path, query) = routed_target(target);
        let host = host_of(head.host);
        let log = || {
            front.access_log.then(|| LogFields {
                method: method.to_string(),
                host: host.clone().into_owned(),
                path: path.to_string(),
            })
        };
        let answer = |answer| Plan::Respond(Answer { answer, head_len, close: head.close, log: log() });
        let request = decide::Request {
            port: self.port,
            sni: self.peer.sni.as_deref(),
            view: RequestView { host: &host, path: &path, query, method: &head.method, headers: Headers::Raw(fields) },
        };
        let matched = match decide::route(&tables, &request) {
            Ok(matched) => matched,
            Err(answered) => return answer(answered),
        };
        // A rule's retries resend body-less requests only here: a body would have to be
        // kept for them (Pingora's path keeps up to 64 KiB).
        if !matched.route.fast || (matched.route.retry.is_some() && head.body != RequestBody::None) {
            return Plan::HandOver;
        }
        let Forward { route, backend, cluster, endpoint, in_flight, cors } = match decide::pick(matched) {
            Ok(forward) => forward,
            Err(answered) => return answer(answered),
        };
        let filters = route.filters.iter().chain(route.backends.filters(backend));
        let client = Client { ip: &self.peer.client_ip, tls: self.peer.tls, trusted_hops: front.trusted_hops };
        let headers = forwarded_fields(fields.iter().map(|f| (f.name.as_bytes(), f.value)), front.trusted_hops);
        upstream_head(&mut self.out, method, &path, query, &route, filters, headers, &client, head.upgrade);
        let log = log();
        let waits = Waits::of(&route, self.io_timeout);
        // An upgraded connection is not mirrored (its copy could not follow the tunnel).
        let mirrors = if head.upgrade { Vec::new() } else { mirror::pick(&route.mirrors) };
        Plan::Proxy(Box::new(Exchange {
            waits,
            mirrors,
            route,
            backend,
            cluster,
            endpoint,
            _in_flight: in_flight,
            head_len,
            close: head.close,
            head_request: method == "HEAD",
            idempotent: head.method.is_idempotent(),
            body: head.body,
            upgrade: head.upgrade,
            log,
            cors,
        }))
    }

    /// Sends the upstream request (in `out`) and passes the response to the client.
    /// Returns the status and whether the client connection closes; on error, whether
    /// a response had been written to the client already.
    async fn exchange(
        &mut self,
        front: &Front,
        exchange: &mut Exchange,
        close_requested: bool,
        started: Instant,
    ) -> Result<(u16, bool), (Failure, Option<u16>)> {
        let Some(retry) = exchange.route.retry.clone() else {
            return self.attempt(front, exchange, close_requested, &[]).await;
        };
        // The rule's retries (a body-less request, see `plan`), as on Pingora's path: a
        // listed answer or a failed connection is tried again, after the backoff, on an
        // endpoint the balancing picks, within what is left of the request timeout.
        let upstream_head = self.out.clone();
        let mut retries = 0;
        loop {
            let codes: &[u32] = if retries < retry.attempts { &retry.codes } else { &[] };
            match self.attempt(front, exchange, close_requested, codes).await {
                Err((Failure::Status(_) | Failure::ConnectRefused | Failure::ConnectTimeout, None))
                    if retries < retry.attempts => {}
                outcome => return outcome,
            }
            retries += 1;
            exchange.route.metrics.retried();
            tokio::time::sleep(crate::retry::backoff(retry.backoff_ms)).await;
            let Some(waits) = Waits::after(&exchange.route, self.io_timeout, started.elapsed()) else {
                return Err((Failure::UpstreamTimeout, None));
            };
            exchange.waits = waits;
            if let Some((endpoint, in_flight)) = exchange.cluster.pick() {
                exchange.endpoint = endpoint;
                exchange._in_flight = in_flight;
            }
            self.out.clone_from(&upstream_head);
        }
    }

    /// One attempt of `exchange`: a final answer with a status in `retry_codes` is not
    /// passed on but returned as `Failure::Status` (its connection dropped).
    async fn attempt(
        &mut self,
        front: &Front,
        exchange: &mut Exchange,
        close_requested: bool,
        retry_codes: &[u32],
    ) -> Result<(u16, bool), (Failure, Option<u16>)> {
        if self.upstream_buf.len() < READ_CHUNK {
            self.upstream_buf.resize(READ_CHUNK, 0);
        }
        // The body bytes that came with the head go out in the same write.
        let body_deadline = tokio::time::Instant::now() + front.request_body_timeout;
        let mut body = BodyLeft::new(exchange.body);
        let first =
            body.take(self.buf.get(..self.filled).unwrap_or_default()).map_err(|()| (Failure::BadRequest, None))?;
        let mut mirrors = Vec::new();
        if !exchange.mirrors.is_empty() {
            let framing = match exchange.body {
                RequestBody::None => mirror::BodyFraming::None,
                RequestBody::Length(_) => mirror::BodyFraming::Data,
                RequestBody::Chunked => mirror::BodyFraming::Chunked,
            };
            let head = mirror::mirror_head_raw(&self.out);
            mirrors = mirror::start(std::mem::take(&mut exchange.mirrors), &head, framing);
            offer(&mut mirrors, self.buf.get(..first).unwrap_or_default(), body.done());
        }
        self.out.extend_from_slice(self.buf.get(..first).unwrap_or_default());
        self.consume(first);
        // A request whose whole body is in `out` can be sent again.
        let resendable = exchange.idempotent && body.done();
        let head = std::mem::take(&mut self.out);
        let mut buf = std::mem::take(&mut self.upstream_buf);
        let waits = exchange.waits;
        let source = ClientBody { connection: self, body: &mut body, deadline: body_deadline, mirrors: &mut mirrors };
        let sent =
            first_response_bytes(&front.pool, exchange.endpoint, waits, &head, resendable, &mut buf, source).await;
        // A body that did not arrive whole is never completed towards a mirror.
        drop(mirrors);
        self.out = head;
        self.upstream_buf = buf;
        let (mut stream, mut read, body_cut) = sent?;
        let close_requested = close_requested || body_cut;
        loop {
            let head = match self.response_head(exchange, read, close_requested) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    if read >= MAX_RESPONSE_HEAD_BYTES {
                        return Err((Failure::Upstream, None));
                    }
                    if read == self.upstream_buf.len() {
                        self.upstream_buf.resize(read + READ_CHUNK, 0);
                    }
                    let n = within(waits.read, stream.read(self.upstream_buf.get_mut(read..).unwrap_or_default()))
                        .await
                        .map_err(|e| read_failure(&e))?;
                    if n == 0 {
                        return Err((Failure::Upstream, None));
                    }
                    read += n;
                    continue;
                }
                Err(()) => return Err((Failure::Upstream, None)),
            };
            if head.status == 101 {
                // Switched (only when asked): both connections become one tunnel until
                // either side closes; the request is logged when it ends.
                within(self.io_timeout, self.stream.write_all(&self.out))
                    .await
                    .map_err(|_| (Failure::ClientGone, Some(101)))?;
                within(self.io_timeout, self.stream.flush()).await.map_err(|_| (Failure::ClientGone, Some(101)))?;
                self.tunnel(stream, head.len, read).await;
                return Ok((101, true));
            }
            if head.interim {
                // 1xx (not 101): forward it and read on for the final response.
                within(self.io_timeout, self.stream.write_all(&self.out))
                    .await
                    .map_err(|_| (Failure::Upstream, None))?;
                within(self.io_timeout, self.stream.flush()).await.map_err(|_| (Failure::Upstream, None))?;
                self.upstream_buf.copy_within(head.len..read, 0);
                read -= head.len;
                if read == 0 {
                    read =
                        within(waits.read, stream.read(&mut self.upstream_buf)).await.map_err(|e| read_failure(&e))?;
                    if read == 0 {
                        return Err((Failure::Upstream, None));
                    }
                }
                continue;
            }
            if retry_codes.contains(&u32::from(head.status)) {
                return Err((Failure::Status(head.status), None));
            }
            let client_close = head.client_close;
            let reusable = self
                .pass_body(&mut stream, &head, read, waits.read)
                .await
                .map_err(|()| (Failure::Upstream, Some(head.status)))?;
            if reusable && !body_cut {
                front.pool.put(exchange.endpoint, stream);
            }
            return Ok((head.status, client_close));
        }
    }

    /// Relays an upgraded connection (its `101` written): the bytes either side sent
    /// early first (after the backend's head in `upstream_buf[from..read]`, after the
    /// request head in `buf`), then both ways until either side closes. No deadline: a
    /// WebSocket may be quiet for as long as its ends like.
    async fn tunnel(&mut self, mut upstream: TcpStream, from: usize, read: usize) {
        let early = self.upstream_buf.get(from..read).unwrap_or_default();
        if !early.is_empty() && within(self.io_timeout, self.stream.write_all(early)).await.is_err() {
            return;
        }
        let sent = self.buf.get(..self.filled).unwrap_or_default();
        if !sent.is_empty() && within(self.io_timeout, upstream.write_all(sent)).await.is_err() {
            return;
        }
        self.filled = 0;
        // The connection's buffers are not needed any more; a tunnel may live for hours.
        self.buf = Vec::new();
        self.upstream_buf = Vec::new();
        self.out = Vec::new();
        if let Err(error) = tokio::io::copy_bidirectional(&mut self.stream, &mut upstream).await {
            tracing::debug!(%error, "upgraded connection ended");
        }
    }

    /// Passes the rest of the request body from the client to the upstream, as it
    /// arrives; bytes after it (a pipelined request) stay in the buffer.
    async fn send_body(
        &mut self,
        upstream: &mut TcpStream,
        body: &mut BodyLeft,
        deadline: tokio::time::Instant,
        mirrors: &mut Vec<tokio::sync::mpsc::Sender<mirror::Chunk>>,
    ) -> Result<(), BodyError> {
        if self.buf.len() < READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
        }
        while !body.done() {
            if self.filled == 0 {
                let limit = deadline.min(tokio::time::Instant::now() + self.io_timeout);
                match self.read_client(limit, Duration::ZERO).await {
                    Ok(0) => return Err(BodyError::Client(Failure::ClientGone)),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        return Err(BodyError::Client(Failure::ClientTimeout));
                    }
                    Err(_) => return Err(BodyError::Client(Failure::ClientGone)),
                }
            }
            let take = body
                .take(self.buf.get(..self.filled).unwrap_or_default())
                .map_err(|()| BodyError::Client(Failure::BadRequest))?;
            within(self.io_timeout, upstream.write_all(self.buf.get(..take).unwrap_or_default()))
                .await
                .map_err(|_| BodyError::Upstream)?;
            if !mirrors.is_empty() {
                offer(mirrors, self.buf.get(..take).unwrap_or_default(), body.done());
            }
            self.consume(take);
        }
        Ok(())
    }

    /// Parses the response head in `upstream_buf[..read]`; when complete, writes the
    /// client's response head to `out`. `Ok(None)`: incomplete.
    fn response_head(
        &mut self,
        exchange: &Exchange,
        read: usize,
        close_requested: bool,
    ) -> Result<Option<ResponseHead>, ()> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let bytes = self.upstream_buf.get(..read).unwrap_or_default();
        let Some(parsed) = parse_response(bytes, &mut storage, exchange.head_request, exchange.upgrade)? else {
            return Ok(None);
        };
        let out = &mut self.out;
        out.clear();
        let Parsed { status, reason, len, framing, upstream_keep, interim, mut fields } = parsed;
        if interim {
            out.extend_from_slice(bytes.get(..len).unwrap_or_default());
            return Ok(Some(ResponseHead { status, len, framing, upstream_keep, client_close: false, interim }));
        }
        let client_close = close_requested;
        push_status_line(out, status, reason);
        if framing == Framing::UntilClose {
            // The client's connection stays open: the body goes to it in chunks.
            fields.push((Cow::Borrowed(b"transfer-encoding"), Cow::Borrowed(b"chunked")));
        }
        edits::response(&mut fields, &exchange.route, Some(exchange.backend), &exchange.cors);
        for (name, value) in &fields {
            push_field(out, name, value);
        }
        let date = pingora_core::protocols::http::date::get_cached_date();
        push_field(out, b"date", date.as_bytes());
        let connection: &[u8] = match (status, client_close) {
            (101, _) => b"upgrade",
            (_, true) => b"close",
            (_, false) => b"keep-alive",
        };
        push_field(out, b"connection", connection);
        out.extend_from_slice(b"\r\n");
        Ok(Some(ResponseHead { status, len, framing, upstream_keep, client_close, interim: false }))
    }

    /// Writes the response head (in `out`) and the body to the client. Returns whether
    /// the upstream connection can be reused.
    async fn pass_body(
        &mut self,
        upstream: &mut TcpStream,
        head: &ResponseHead,
        read: usize,
        read_wait: Duration,
    ) -> Result<bool, ()> {
        let mut body = self.upstream_buf.get(head.len..read).unwrap_or_default();
        let mut chunks = ChunkedScanner::default();
        // How much of `body` belongs to this response, and whether it is complete.
        let (take, mut done, mut remaining) = match head.framing {
            Framing::Empty => (0, true, 0),
            Framing::Length(n) => {
                let take = usize::try_from(n).unwrap_or(usize::MAX).min(body.len());
                (take, take as u64 == n, n - take as u64)
            }
            Framing::Chunked => match chunks.feed(body)? {
                Some(end) => (end, true, 0),
                None => (body.len(), false, 0),
            },
            Framing::UntilClose => (body.len(), false, 0),
        };
        let extra = body.len() > take;
        body = body.get(..take).unwrap_or_default();
        let rechunk = head.framing == Framing::UntilClose;
        if rechunk {
            push_chunk(&mut self.out, body);
        } else {
            self.out.extend_from_slice(body);
        }
        within(self.io_timeout, self.stream.write_all(&self.out)).await.map_err(|_| ())?;
        if !done {
            // The head goes out before the rest of the body is waited for.
            within(self.io_timeout, self.stream.flush()).await.map_err(|_| ())?;
        }
        while !done {
            let n = within(read_wait, upstream.read(&mut self.upstream_buf)).await.map_err(|_| ())?;
            if n == 0 {
                if rechunk {
                    within(self.io_timeout, self.stream.write_all(b"0\r\n\r\n")).await.map_err(|_| ())?;
                    break;
                }
                return Err(());
            }
            if rechunk {
                self.out.clear();
                push_chunk(&mut self.out, self.upstream_buf.get(..n).unwrap_or_default());
                within(self.io_timeout, self.stream.write_all(&self.out)).await.map_err(|_| ())?;
                // What the backend sent goes out now (a stream of events is not held
                // in the connection's write buffer).
                within(self.io_timeout, self.stream.flush()).await.map_err(|_| ())?;
                continue;
            }
            let data = self.upstream_buf.get(..n).unwrap_or_default();
            let take = match head.framing {
                Framing::Length(_) => {
                    let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(n);
                    remaining -= take as u64;
                    done = remaining == 0;
                    take
                }
                Framing::Chunked => match chunks.feed(data)? {
                    Some(end) => {
                        done = true;
                        end
                    }
                    None => n,
                },
                _ => n,
            };
            if take < n {
                // Bytes after the response: the connection is out of step.
                within(self.io_timeout, self.stream.write_all(data.get(..take).unwrap_or_default()))
                    .await
                    .map_err(|_| ())?;
                within(self.io_timeout, self.stream.flush()).await.map_err(|_| ())?;
                return Ok(false);
            }
            within(self.io_timeout, self.stream.write_all(data)).await.map_err(|_| ())?;
            within(self.io_timeout, self.stream.flush()).await.map_err(|_| ())?;
        }
        within(self.io_timeout, self.stream.flush()).await.map_err(|_| ())?;
        Ok(done && !extra && head.upstream_keep && head.framing != Framing::UntilClose)
    }

    /// Answers the request with `fields` and an empty body, as `proxy::answer` does.
    async fn respond(&mut self, status: u16, close: bool, fields: &[cors::Field]) -> std::io::Result<()> {
        let out = &mut self.out;
        out.clear();
        let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        push_status_line(out, status, reason);
        for (name, value) in fields {
            push_field(out, name.as_bytes(), value.as_bytes());
        }
        push_field(out, b"content-length", b"0");
        let date = pingora_core::protocols::http::date::get_cached_date();
        push_field(out, b"date", date.as_bytes());
        push_field(out, b"connection", if close { b"close" } else { b"keep-alive" });
        out.extend_from_slice(b"\r\n");
        within(self.io_timeout, self.stream.write_all(&self.out)).await?;
        within(self.io_timeout, self.stream.flush()).await
    }
}

impl Front {
    /// Metrics and the access-log line of one request (as `SluiceProxy::logging`).
    pub(crate) fn record(
        &self,
        route: Option<&Arc<Route>>,
        status: u16,
        started: Instant,
        client: Option<SocketAddr>,
        upstream: Option<SocketAddr>,
        log: Option<LogFields>,
    ) {
        // HTTP/1.1 carries no gRPC (its status is only read on Pingora's HTTP/2 path).
        let finished = Finished { route: route.map(|r| &**r), status, elapsed: started.elapsed(), grpc_status: None };
        let log = log.as_ref().map(|log| AccessLog {
            client,
            method: &log.method,
            host: &log.host,
            path: &log.path,
            upstream,
        });
        finished.record(&self.unmatched, log);
    }
}

/// A backend's response head as both client protocols need it.
pub(crate) struct Parsed<'b> {
    pub status: u16,
    pub reason: &'b str,
    /// The head's length in bytes.
    pub len: usize,
    pub framing: Framing,
    /// The backend keeps the connection open after the response.
    pub upstream_keep: bool,
    /// A 1xx response (not 101): the final one follows.
    pub interim: bool,
    /// The fields that go on to the client: not hop-by-hop ones (the proxy writes its own
    /// `Date` and `Connection`), no Content-Length beside Transfer-Encoding, and no
    /// Transfer-Encoding on a body delimited by the connection's close.
    pub fields: FieldList<'b>,
}

/// Parses a backend's response head from `bytes`; `Ok(None)`: incomplete; `Err`: not a
/// response the proxy passes on (malformed, conflicting lengths, an unasked 101).
pub(crate) fn parse_response<'b>(
    bytes: &'b [u8],
    storage: &mut [httparse::Header<'b>],
    head_request: bool,
    upgrade_asked: bool,
) -> Result<Option<Parsed<'b>>, ()> {
    let mut response = httparse::Response::new(storage);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(status), Some(version)) = (response.code, response.version) else { return Err(()) };
    let reason = response.reason.unwrap_or("");
    if status == 101 && upgrade_asked && version == 1 {
        // The backend switched protocols: its fields go on (`Upgrade` among them), the
        // proxy writes `Connection` itself; what follows the head is the new protocol's.
        let fields = response
            .headers
            .iter()
            .filter(|f| !RESPONSE_HOP_BY_HOP.iter().any(|h| f.name.eq_ignore_ascii_case(h)))
            .map(|f| (Cow::Borrowed(f.name.as_bytes()), Cow::Borrowed(f.value)))
            .collect();
        return Ok(Some(Parsed {
            status,
            reason,
            len,
            framing: Framing::Empty,
            upstream_keep: false,
            interim: false,
            fields,
        }));
    }
    if (100..200).contains(&status) {
        if status == 101 {
            // Nothing asked to switch protocols.
            return Err(());
        }
        let framing = Framing::Empty;
        return Ok(Some(Parsed {
            status,
            reason,
            len,
            framing,
            upstream_keep: true,
            interim: true,
            fields: Vec::new(),
        }));
    }
    let mut length: Option<u64> = None;
    // Some(whether chunked is the last coding)
    let mut transfer_chunked: Option<bool> = None;
    let mut upstream_close = version == 0;
    for field in response.headers.iter() {
        if field.name.eq_ignore_ascii_case("content-length") {
            let value = parse_length(field.value).ok_or(())?;
            if length.is_some_and(|l| l != value) {
                return Err(());
            }
            length = Some(value);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_chunked = Some(last_token(field.value).is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        } else if field.name.eq_ignore_ascii_case("connection") {
            if has_token(field.value, b"close") {
                upstream_close = true;
            } else if version == 0 && has_token(field.value, b"keep-alive") {
                upstream_close = false;
            }
        }
    }
    // Both framings: Transfer-Encoding wins and Content-Length is not forwarded
    // (RFC 9112 §6.3), as Pingora does.
    let drop_length = transfer_chunked.is_some();
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (transfer_chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(length)) => Framing::Length(length),
        }
    };
    let fields = response
        .headers
        .iter()
        .filter(|f| !RESPONSE_HOP_BY_HOP.iter().any(|h| f.name.eq_ignore_ascii_case(h)))
        .filter(|f| !(drop_length && f.name.eq_ignore_ascii_case("content-length")))
        .filter(|f| !(framing == Framing::UntilClose && f.name.eq_ignore_ascii_case("transfer-encoding")))
        .map(|f| (Cow::Borrowed(f.name.as_bytes()), Cow::Borrowed(f.value)))
        .collect();
    Ok(Some(Parsed { status, reason, len, framing, upstream_keep: !upstream_close, interim: false, fields }))
}

/// A parsed response head, and what it means for both connections.
struct ResponseHead {
    status: u16,
    len: usize,
    framing: Framing,
    upstream_keep: bool,
    client_close: bool,
    /// A 1xx response: the final one follows.
    interim: bool,
}

/// What the fast path needs to know of a request head, or `None` when the request is
/// not for the fast path.
pub(crate) struct RequestHead<'b> {
    host: &'b str,
    method: http::Method,
    close: bool,
    body: RequestBody,
    /// An HTTP/1.1 upgrade (WebSocket): `Upgrade` with `Connection: upgrade`, no body.
    upgrade: bool,
}

/// How a request body is delimited (RFC 9112 §6); it passes through as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestBody {
    None,
    Length(u64),
    Chunked,
}

impl<'b> RequestHead<'b> {
    /// How the request's body is delimited.
    pub(crate) fn body(&self) -> RequestBody {
        self.body
    }

    pub(crate) fn read(method: &str, target: &str, fields: &[httparse::Header<'b>]) -> Option<RequestHead<'b>> {
        if method == "CONNECT" || !plain_target(target) {
            return None;
        }
        let method = http::Method::from_bytes(method.as_bytes()).ok()?;
        let mut host = None;
        let mut close = false;
        let mut length = None;
        let mut chunked = false;
        let mut upgrade_field = false;
        let mut upgrade_token = false;
        let mut bytes = 0;
        for field in fields {
            bytes += field.name.len() + field.value.len();
            let name = field.name;
            if name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return None;
                }
                host = Some(std::str::from_utf8(field.value).ok()?);
            } else if name.eq_ignore_ascii_case("content-length") {
                // Values that do not parse or disagree are Pingora's to refuse.
                let value = parse_length(field.value)?;
                if length.is_some_and(|l| l != value) {
                    return None;
                }
                length = Some(value);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Exactly one field saying `chunked`; other codings are Pingora's.
                if chunked || !field.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return None;
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in field.value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        upgrade_token = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        // Nominated hop-by-hop fields: Pingora's checks apply.
                        return None;
                    }
                }
            } else if name.eq_ignore_ascii_case("upgrade") {
                // One protocol to switch to; `h2c` (and lists) are Pingora's.
                let value = field.value.trim_ascii();
                if upgrade_field || value.is_empty() || value.contains(&b',') || value.eq_ignore_ascii_case(b"h2c") {
                    return None;
                }
                upgrade_field = true;
            } else if HANDED_OVER.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                return None;
            }
        }
        // An upgrade needs both fields (RFC 9110 §7.8), and a request that switches
        // protocols carries no body of its own; any other shape is Pingora's.
        if upgrade_field != upgrade_token || (upgrade_field && (close || length.is_some_and(|l| l > 0) || chunked)) {
            return None;
        }
        if bytes > MAX_REQUEST_HEADER_BYTES || fields.len() > MAX_REQUEST_HEADERS {
            return None;
        }
        let body = match (length, chunked) {
            // Both framings: a smuggling shape, answered 400 on Pingora's path.
            (Some(_), true) => return None,
            (None, true) => RequestBody::Chunked,
            (Some(0) | None, false) => RequestBody::None,
            (Some(length), false) => RequestBody::Length(length),
        };
        Some(RequestHead { host: host?, method, close, body, upgrade: upgrade_field })
    }
}

/// Request fields that send the request to Pingora: expectations, HTTP/2 upgrades (and,
/// from HTTP/2 clients, any `Upgrade`; HTTP/1.1 WebSocket upgrades are the fast path's).
pub(crate) const HANDED_OVER: [&str; 3] = ["upgrade", "expect", "http2-settings"];

/// Request fields that never reach a backend (RFC 9110 §7.6.1; `connection` itself is
/// handled with its tokens). X-Forwarded-For/-Proto are rewritten.
const REQUEST_HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "x-forwarded-proto",
];

/// Response fields the proxy replaces (`connection`, `date`) or drops.
const RESPONSE_HOP_BY_HOP: [&str; 4] = ["connection", "keep-alive", "proxy-connection", "date"];

/// Whether the fast path takes a request target: origin-form, of plain bytes only.
pub(crate) fn plain_target(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(plain_target_byte)
}

/// The path a request is routed by (normalized) and its query.
pub(crate) fn routed_target(target: &str) -> (Cow<'_, str>, Option<&str>) {
    let (raw_path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    (normalize(raw_path), query)
}

/// Bytes of an origin-form request target the fast path takes (RFC 3986 `pchar`, `/`,
/// `?`, `%`); anything else is left to Pingora's URI parser and its answer.
fn plain_target_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

/// What the forwarding fields say of the client connection.
pub(crate) struct Client<'a> {
    pub ip: &'a str,
    pub tls: bool,
    pub trusted_hops: usize,
}

/// Writes the upstream request head: the routed (normalized, maybe rewritten) target,
/// the client's fields without hop-by-hop ones, the filters' changes, X-Forwarded-*.
/// `fields` are the client's, as `forwarded_fields` leaves them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn upstream_head<'a>(
    out: &mut Vec<u8>,
    method: &str,
    path: &str,
    query: Option<&str>,
    route: &Route,
    filters: impl Iterator<Item = &'a HttpFilter>,
    mut headers: FieldList<'a>,
    client: &Client<'_>,
    upgrade: bool,
) {
    let new_path = edits::request(&mut headers, filters, route.path_prefix.as_deref(), path);
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(new_path.as_deref().unwrap_or(path).as_bytes());
    if let Some(query) = query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut incoming: Option<Cow<'_, [u8]>> = None;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            incoming.get_or_insert_with(|| value.clone());
            continue;
        }
        // The data plane's own goes out below (one set by a filter is replaced, as on
        // Pingora's path).
        if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            continue;
        }
        push_field(out, name, value);
    }
    let incoming = incoming.as_deref().map(String::from_utf8_lossy);
    let forwarded = forwarded_for(incoming.as_deref(), client.ip, client.trusted_hops);
    if !forwarded.is_empty() {
        push_field(out, b"x-forwarded-for", forwarded.as_bytes());
    }
    push_field(out, b"x-forwarded-proto", if client.tls { b"https" } else { b"http" });
    if upgrade {
        // The client's `Upgrade` went on with the other fields; its `Connection` is
        // hop-by-hop and is written anew.
        push_field(out, b"connection", b"upgrade");
    }
    out.extend_from_slice(b"\r\n");
}

/// The client's request fields that go on to the backend: not the hop-by-hop ones, nor
/// forwarding fields from an untrusted client.
pub(crate) fn forwarded_fields<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    trusted_hops: usize,
) -> FieldList<'a> {
    let untrusted =
        |name: &[u8]| trusted_hops == 0 && UNTRUSTED_FORWARDING.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()));
    fields
        .filter(|(name, _)| {
            !REQUEST_HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes())) && !untrusted(name)
        })
        .map(|(name, value)| (Cow::Borrowed(name), Cow::Borrowed(value)))
        .collect()
}

/// Header fields on their way through: (name, value), in order.
pub(crate) type FieldList<'a> = Vec<(Cow<'a, [u8]>, Cow<'a, [u8]>)>;

impl<'v> HeaderEdits<'v> for FieldList<'v> {
    fn remove(&mut self, name: &str) {
        self.retain(|(existing, _)| !existing.eq_ignore_ascii_case(name.as_bytes()));
    }

    fn append(&mut self, name: &'v str, value: &'v str) {
        self.push((Cow::Borrowed(name.as_bytes()), Cow::Borrowed(value.as_bytes())));
    }
}

/// `HTTP/1.1 <status> <reason>\r\n`
fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let status = status.clamp(100, 999);
    for digit in [status / 100, status / 10 % 10, status % 10] {
        out.push(b'0' + u8::try_from(digit).unwrap_or(0));
    }
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Whether `buf` has an empty line (the end of a head: `\n\n` or `\n\r\n`) ending at
/// or after index `from`.
pub(crate) fn head_end_after(buf: &[u8], from: usize) -> bool {
    buf.iter().enumerate().skip(from).any(|(i, byte)| {
        *byte == b'\n' && (i >= 1 && buf[i - 1] == b'\n' || i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n')
    })
}

/// One chunk of a chunked body (nothing for no bytes: an empty chunk ends the body).
fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A Content-Length value: digits, or a list of equal ones.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

fn last_token(value: &[u8]) -> Option<&[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii).rfind(|t| !t.is_empty())
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Where a fast-path request body comes from: an HTTP/1.1 connection or an HTTP/2 stream.
pub(crate) trait RequestBodySource {
    /// Passes the rest of the body to `upstream` (nothing when there is none).
    fn send_to(&mut self, upstream: &mut TcpStream) -> impl std::future::Future<Output = Result<(), BodyError>> + Send;
}

/// The body of the request an HTTP/1.1 connection is reading.
struct ClientBody<'a> {
    connection: &'a mut Connection,
    body: &'a mut BodyLeft,
    deadline: tokio::time::Instant,
    /// Feeds of the request's mirrors: each piece of the body is offered to them.
    mirrors: &'a mut Vec<tokio::sync::mpsc::Sender<mirror::Chunk>>,
}

impl RequestBodySource for ClientBody<'_> {
    async fn send_to(&mut self, upstream: &mut TcpStream) -> Result<(), BodyError> {
        if self.body.done() {
            return Ok(());
        }
        self.connection.send_body(upstream, self.body, self.deadline, self.mirrors).await
    }
}

/// Offers body bytes as they pass (and their end) to a request's mirrors.
fn offer(mirrors: &mut Vec<tokio::sync::mpsc::Sender<mirror::Chunk>>, bytes: &[u8], end: bool) {
    let chunk = (!bytes.is_empty()).then(|| bytes::Bytes::copy_from_slice(bytes));
    mirror::offer(mirrors, chunk.as_ref(), end);
}

/// The upstream exchange both fast paths share: sends `head` (then the body, by
/// `body`) on a pooled or new connection to `endpoint` and reads the first response
/// bytes into `buf`. A pooled connection the backend had closed is tried once more on a
/// new one when the request is `resendable`. Returns the connection, the bytes read and
/// whether the backend stopped taking the body (its answer, if any, then ends the client
/// connection, whose unsent body bytes are still unread).
pub(crate) async fn first_response_bytes(
    pool: &UpstreamPool,
    endpoint: SocketAddr,
    waits: Waits,
    head: &[u8],
    resendable: bool,
    buf: &mut impl ResponseBuffer,
    mut body: impl RequestBodySource,
) -> Result<(TcpStream, usize, bool), (Failure, Option<u16>)> {
    let mut body_cut = false;
    for _attempt in 0..2 {
        let (mut stream, reused) = match pool.take(endpoint, !resendable) {
            Some(stream) => (stream, true),
            None => (connect(endpoint, waits.connect).await.map_err(|e| (e, None))?, false),
        };
        let sent = within(waits.read, stream.write_all(head)).await.is_ok();
        if sent {
            match body.send_to(&mut stream).await {
                Ok(()) => {}
                Err(BodyError::Upstream) => body_cut = true,
                Err(BodyError::Client(error)) => return Err((error, None)),
            }
        }
        let read = if sent {
            match within(waits.read, read_when_ready(&mut stream, buf)).await {
                Ok(n) => n,
                // The backend has the request and is silent: never sent twice.
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(read_failure(&e)),
                Err(_) => 0,
            }
        } else {
            0
        };
        if read > 0 {
            return Ok((stream, read, body_cut));
        }
        if !reused || !resendable || body_cut {
            break;
        }
        // A pooled connection the backend had closed: once more on a new one.
    }
    Err((Failure::Upstream, None))
}

/// Where the first response bytes go: a connection's own buffer, or (HTTP/2 streams) one
/// taken only once the backend has answered, so that waiting streams hold none.
pub(crate) trait ResponseBuffer {
    /// One read from `stream`, through tokio's `poll_read`: a read that leaves the socket
    /// empty clears its readiness, so the next response is awaited rather than tried with
    /// a read that can only answer `EAGAIN`.
    fn poll_read_from(&mut self, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>>;
}

impl ResponseBuffer for Vec<u8> {
    fn poll_read_from(&mut self, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut read = ReadBuf::new(self);
        Pin::new(stream).poll_read(cx, &mut read).map_ok(|()| read.filled().len())
    }
}

/// One read of what the backend has sent.
async fn read_when_ready(stream: &mut TcpStream, buf: &mut impl ResponseBuffer) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| buf.poll_read_from(stream, cx)).await
}

pub(crate) async fn connect(endpoint: SocketAddr, wait: Duration) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(wait, TcpStream::connect(endpoint)).await {
        Err(_) => Err(Failure::ConnectTimeout),
        Ok(Err(_)) => Err(Failure::ConnectRefused),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// Follows a chunked body (RFC 9112 §7.1) as it passes, to find where it ends.
#[derive(Debug, Default)]
pub(crate) struct ChunkedScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

impl ChunkedScanner {
    /// Follows `bytes`; `Some(n)`: the body ends after the first `n` of them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        self.feed_data(bytes, |_| {})
    }

    /// As `feed`, and passes the chunks' data (without the chunked framing) to `data`.
    pub(crate) fn feed_data(&mut self, bytes: &[u8], mut data: impl FnMut(&[u8])) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            self.state = match self.state {
                ChunkState::Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = u64::from((byte as char).to_digit(16).ok_or(())?);
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(());
                        }
                        self.size = self.size * 16 + digit;
                        ChunkState::Size
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => ChunkState::Extension,
                    b'\r' if self.digits > 0 => ChunkState::SizeLf,
                    _ => return Err(()),
                },
                ChunkState::Extension => match byte {
                    b'\r' => ChunkState::SizeLf,
                    b'\n' => return Err(()),
                    _ => ChunkState::Extension,
                },
                ChunkState::SizeLf => match byte {
                    b'\n' if self.size == 0 => ChunkState::TrailerStart,
                    b'\n' => ChunkState::Data(self.size),
                    _ => return Err(()),
                },
                ChunkState::Data(left) => {
                    let available = (bytes.len() - i) as u64;
                    let step = left.min(available);
                    let end = i + usize::try_from(step).map_err(|_| ())?;
                    data(bytes.get(i..end).unwrap_or_default());
                    i = end;
                    self.state = if step == left { ChunkState::DataCr } else { ChunkState::Data(left - step) };
                    continue;
                }
                ChunkState::DataCr => match byte {
                    b'\r' => ChunkState::DataLf,
                    _ => return Err(()),
                },
                ChunkState::DataLf => match byte {
                    b'\n' => {
                        self.size = 0;
                        self.digits = 0;
                        ChunkState::Size
                    }
                    _ => return Err(()),
                },
                ChunkState::TrailerStart => match byte {
                    b'\r' => ChunkState::FinalLf,
                    b'\n' => return Err(()),
                    _ => ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => match byte {
                    b'\r' => ChunkState::TrailerLf,
                    b'\n' => return Err(()),
                    _ => ChunkState::TrailerLine,
                },
                ChunkState::TrailerLf => match byte {
                    b'\n' => ChunkState::TrailerStart,
                    _ => return Err(()),
                },
                ChunkState::FinalLf => match byte {
                    b'\n' => {
                        self.state = ChunkState::Done;
                        return Ok(Some(i + 1));
                    }
                    _ => return Err(()),
                },
                ChunkState::Done => return Ok(Some(i)),
            };
            i += 1;
        }
        Ok(matches!(self.state, ChunkState::Done).then_some(bytes.len()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Whether tokio still holds `stream` readable: the next read would be a syscall (an
    /// `EAGAIN` when the socket is empty) rather than a wait for the next epoll event.
    pub(crate) fn readiness_left(stream: &TcpStream) -> bool {
        let mut tried = false;
        let _ = stream.try_io(tokio::io::Interest::READABLE, || {
            tried = true;
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
        tried
    }

    #[tokio::test(start_paused = true)]
    async fn within_bounds_io_that_waits_and_passes_io_that_is_ready() {
        let ready = within(Duration::from_secs(1), async { Ok(7) }).await;
        assert_eq!(ready.unwrap(), 7);
        let started = tokio::time::Instant::now();
        let waits = within(Duration::from_secs(3), std::future::pending::<std::io::Result<()>>()).await;
        assert_eq!(waits.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3), "the limit counts from the first wait");
        // A future that waits once, then finishes: its result, not a timeout.
        let mut polled = false;
        let once = std::future::poll_fn(|cx| {
            if std::mem::replace(&mut polled, true) {
                return Poll::Ready(Ok(1));
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert_eq!(within(Duration::from_secs(1), once).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_response_read_that_empties_the_socket_leaves_no_readiness() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut upstream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut backend, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; READ_CHUNK];
        for round in 0..3 {
            backend.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            let n = read_when_ready(&mut upstream, &mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"HTTP/1.1 204 No Content\r\n\r\n", "round {round}");
            // try_read would have left it set: the next response's read would start with
            // a read answering EAGAIN (one wasted syscall per request).
            assert!(!readiness_left(&upstream), "round {round}: readiness cleared");
        }
        // The control: a try_read of the same response leaves it set.
        backend.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        upstream.readable().await.unwrap();
        assert!(upstream.try_read(&mut buf).unwrap() > 0);
        assert!(readiness_left(&upstream), "try_read keeps the readiness");
    }

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.feed(body), Ok(Some(body.len() - 4)));
        // Byte by byte: the same end.
        let mut scanner = ChunkedScanner::default();
        let mut end = None;
        for (i, byte) in body.iter().enumerate() {
            if let Some(n) = scanner.feed(std::slice::from_ref(byte)).unwrap() {
                end = Some(i + n);
                break;
            }
        }
        assert_eq!(end, Some(body.len() - 4));
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.feed(b"0\r\n\r\n"), Ok(Some(5)));
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for body in [&b"x\r\n"[..], b"5\r\nhelloX", b"\r\n", b"5\nhello", b"ffffffffffffffffff\r\n"] {
            assert_eq!(ChunkedScanner::default().feed(body), Err(()), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(head_end_after(head, 0));
        for split in 1..head.len() {
            assert!(!head_end_after(&head[..split], 0), "{split}");
            assert!(head_end_after(head, split), "{split}");
        }
        assert!(head_end_after(b"GET / HTTP/1.1\nHost: x\n\n", 20));
        assert!(!head_end_after(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
    }

    #[test]
    fn content_lengths_must_be_digits_and_agree() {
        assert_eq!(parse_length(b"12"), Some(12));
        assert_eq!(parse_length(b"12, 12"), Some(12));
        assert_eq!(parse_length(b"12, 13"), None);
        assert_eq!(parse_length(b"+12"), None);
        assert_eq!(parse_length(b""), None);
    }

    fn head(text: &'static str) -> Option<(http::Method, bool)> {
        read_head(text).map(|(method, close, _)| (method, close))
    }

    fn read_head(text: &'static str) -> Option<(http::Method, bool, RequestBody)> {
        let fields = Box::leak(Box::new([httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS]));
        let mut request = httparse::Request::new(fields);
        request.parse(text.as_bytes()).unwrap();
        let (method, target) = (request.method.unwrap(), request.path.unwrap());
        RequestHead::read(method, target, request.headers).map(|h| (h.method, h.close, h.body))
    }

    #[test]
    fn request_bodies_are_framed_by_length_or_chunked_and_never_both() {
        let body = |text| read_head(text).map(|(_, _, body)| body);
        assert_eq!(body("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(RequestBody::None));
        assert_eq!(body("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), Some(RequestBody::None));
        assert_eq!(body("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"), Some(RequestBody::Length(5)));
        assert_eq!(
            body("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Some(RequestBody::Length(5))
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(RequestBody::Chunked)
        );
        // Left to Pingora's answers (400 and the like).
        for text in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: five\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert_eq!(body(text), None, "{text}");
        }
    }

    #[test]
    fn websocket_upgrades_take_the_fast_path() {
        let upgrade = |text| {
            let fields = Box::leak(Box::new([httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS]));
            let mut request = httparse::Request::new(fields);
            request.parse(text).unwrap();
            RequestHead::read(request.method.unwrap(), request.path.unwrap(), request.headers).map(|h| h.upgrade)
        };
        assert_eq!(
            upgrade(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            upgrade(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Some(true)
        );
        assert_eq!(upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(false));
    }

    #[test]
    fn a_101_is_passed_on_only_when_an_upgrade_was_asked() {
        let text = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: k\r\n\r\nframe";
        let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        assert!(parse_response(text, &mut storage, false, false).is_err(), "an unasked 101 is a broken response");
        let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let parsed = parse_response(text, &mut storage, false, true).unwrap().unwrap();
        assert_eq!((parsed.status, parsed.interim, parsed.len), (101, false, text.len() - b"frame".len()));
        let names: Vec<&[u8]> = parsed.fields.iter().map(|(name, _)| name.as_ref()).collect();
        assert_eq!(names, [&b"Upgrade"[..], b"Sec-WebSocket-Accept"], "Connection is the proxy's to write");
    }

    #[test]
    fn only_plain_requests_take_the_fast_path() {
        assert_eq!(head("GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n"), Some((http::Method::GET, false)));
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), Some((http::Method::GET, true)));
        assert_eq!(
            head("DELETE / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").map(|h| h.0),
            Some(http::Method::DELETE)
        );
        for text in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            // Upgrades of other shapes: to h2c, without `Connection: upgrade` (or the
            // reverse), with a body, or closing.
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: a, b\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade, close\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, x-private\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a|b HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(head(text), None, "{text}");
        }
    }
}
