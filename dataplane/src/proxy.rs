//! The HTTP proxy: Pingora `ProxyHttp` phases over the compiled tables.
//!
//! ```text
//!  request_filter:  load tables once (ArcSwap) → port → listener by Host → route
//!                   → CORS preflight (answered, crate::cors decides)
//!                   → redirect / direct response / invalid share (500) / no endpoint (503)
//!                   → else remember the chosen endpoint
//!  upstream_peer:   the chosen endpoint (h2c by appProtocol), timeouts
//!  upstream_request_filter: rule + backend request filters, URL rewrite, X-Forwarded-*
//!  response_filter: the route's CORS fields, then response header filters
//! ```

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use sluice_snapshot::AppProtocol;

use crate::cors;
use crate::decide;
use crate::edits::{self, HeaderEdits, UNTRUSTED_FORWARDING, forwarded_for};
use crate::metrics::RouteMetrics;
use crate::outcome::{AccessLog, Failure, Finished};
use crate::path::normalize;
use crate::retry;
use crate::tables::{Route, Tables};
use crate::view::{Headers, RequestView};

/// The Sluice HTTP proxy.
pub struct SluiceProxy {
    pub tables: Tables,
    /// Metrics of requests that matched no route.
    pub unmatched: Arc<RouteMetrics>,
    /// Whether to print a JSON access-log line per request.
    pub access_log: bool,
    /// Proxies in front of the data plane whose X-Forwarded-For entries are kept.
    pub trusted_hops: usize,
    /// The longest a read (request body, backend) or a write (to the client, to a
    /// backend) may wait.
    pub io_timeout: Duration,
    /// The longest a request body may take to arrive, from the request's start.
    pub request_body_timeout: Duration,
}

/// Per-request state.
pub struct RequestContext {
    started: Instant,
    route: Option<Arc<Route>>,
    /// Index of the chosen weighted backend in the route (for its filters).
    backend: Option<usize>,
    endpoint: Option<(SocketAddr, AppProtocol)>,
    /// Counts this request against its endpoint (least-request clusters) until it ends.
    in_flight: Option<crate::tables::InFlight>,
    /// Whether the request came in over TLS.
    tls: bool,
    /// Body feeds of this request's mirrors: each chunk is offered to them as it passes.
    mirror_bodies: Vec<tokio::sync::mpsc::Sender<crate::mirror::Chunk>>,
    /// The cluster the endpoint came from, for retries to pick another endpoint.
    cluster: Option<Arc<crate::tables::ClusterTable>>,
    /// Retries made so far (HTTPRoute `retry`).
    retries: u32,
    /// The current error is a retry the route's rule asked for (a listed answer code).
    rule_retry: bool,
    /// The backend's `grpc-status` (in the response head of a trailers-only answer, else
    /// in the trailers), for the gRPC metrics.
    grpc_status: Option<u32>,
    /// CORS fields for the response (the route's policy decided them on the request).
    cors: Vec<cors::Field>,
}

#[async_trait]
impl ProxyHttp for SluiceProxy {
    type CTX = RequestContext;

    fn new_ctx(&self) -> Self::CTX {
        RequestContext {
            started: Instant::now(),
            route: None,
            backend: None,
            endpoint: None,
            in_flight: None,
            tls: false,
            mirror_bodies: Vec::new(),
            cluster: None,
            retries: 0,
            rule_retry: false,
            grpc_status: None,
            cors: Vec::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // A client that stops reading the response, or stops sending its body, is given up
        // after this long idle; the whole body must arrive within request_body_timeout.
        session.set_write_timeout(Some(self.io_timeout));
        session.set_read_timeout(Some(self.io_timeout));
        if headers_too_large(&session.req_header().headers) {
            session.set_keepalive(None);
            return answer(session, 431, &[]).await;
        }
        if let Some(problem) = host_problem(session.req_header()) {
            // RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with more
            // than one, is answered 400 and the connection closed.
            tracing::debug!(problem, "bad request");
            session.set_keepalive(None);
            return answer(session, 400, &[]).await;
        }
        if ambiguous_framing(&session.req_header().headers) || stripped_content_length(session) {
            // Request smuggling shapes: answer 400 and close, never forward.
            session.set_keepalive(None);
            return answer(session, 400, &[]).await;
        }
        let tables = self.tables.load();
        let port = session.as_downstream().server_addr().and_then(|a| a.as_inet()).map(|a| a.port()).unwrap_or(0);
        if !tables.ports.contains_key(&port) {
            return answer(session, 404, &[]).await;
        }
        ctx.tls = tables.tls.contains_key(&port);
        let header = session.req_header();
        let raw_path = header.uri.path();
        if let Cow::Owned(path) = normalize(raw_path) {
            // Forward exactly what is routed: the normalized path.
            let normalized = match header.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let uri =
                normalized.parse::<http::Uri>().map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "path", e))?;
            session.req_header_mut().set_uri(uri);
        }
        let header = session.req_header();
        let host = request_host(header);
        let request = decide::Request {
            port,
            sni: connection_sni(session),
            view: RequestView {
                host: &host,
                path: header.uri.path(),
                query: header.uri.query(),
                method: &header.method,
                headers: Headers::Map(&header.headers),
            },
        };
        let forward = decide::route(&tables, &request).and_then(decide::pick);
        match forward {
            Err(answered) => {
                ctx.route = answered.route;
                answer(session, answered.status, &answered.fields).await
            }
            Ok(forward) => {
                ctx.endpoint = Some((forward.endpoint, forward.cluster.app_protocol));
                ctx.in_flight = forward.in_flight;
                ctx.backend = Some(forward.backend);
                ctx.cluster = Some(forward.cluster);
                ctx.cors = forward.cors;
                if forward.route.retry.is_some() {
                    // Keep the request body (up to Pingora's retry buffer) so that a
                    // retry can send it again; a longer body is never resent.
                    session.enable_retry_buffering();
                }
                ctx.route = Some(forward.route);
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        if ctx.retries > 0
            && let Some(route) = &ctx.route
        {
            let backoff = route.retry.as_ref().map_or(0, |r| r.backoff_ms);
            tokio::time::sleep(retry::backoff(backoff)).await;
            // Another endpoint of the same backend, as the balancing picks it.
            if let Some((endpoint, in_flight)) = ctx.cluster.as_ref().and_then(|c| c.pick()) {
                ctx.endpoint = Some((endpoint, ctx.cluster.as_ref().map_or(AppProtocol::Http1, |c| c.app_protocol)));
                ctx.in_flight = in_flight;
            }
        }
        let Some((endpoint, app_protocol)) = ctx.endpoint else {
            return Err(Error::explain(ErrorType::InternalError, "no endpoint chosen"));
        };
        let mut peer = match ctx.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
            None => HttpPeer::new(endpoint, false, String::new()),
            Some(Ok(tls)) => {
                let mut peer = HttpPeer::new(endpoint, true, tls.sni.clone());
                peer.options.verify_hostname = tls.verify_hostname();
                peer.options.ca = tls.ca.clone();
                peer.client_cert_key = tls.client.clone();
                // Pooled connections are reused only under the same verification.
                peer.group_key = tls.group_key;
                peer
            }
            // Never plaintext where the policy asks for TLS.
            Some(Err(problem)) => {
                return Err(Error::explain(ErrorType::HTTPStatus(502), format!("backend TLS: {problem}")));
            }
        };
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        // A backend that stops answering (or reading) is given up after this long idle.
        peer.options.read_timeout = Some(self.io_timeout);
        peer.options.write_timeout = Some(self.io_timeout);
        if app_protocol == AppProtocol::H2c {
            peer.options.alpn = ALPN::H2;
        }
        if let Some(route) = &ctx.route {
            // The tighter of the two Gateway API timeouts bounds connecting and every read
            // from the backend; a timeout answers 504.
            // Retries share the request timeout: each attempt gets what is left of it.
            let Ok(limit) = route.backend_wait(ctx.started.elapsed()) else {
                return Err(Error::new_up(ErrorType::ReadTimedout));
            };
            if let Some(timeout) = limit {
                peer.options.total_connection_timeout = Some(timeout);
                peer.options.read_timeout = Some(timeout);
            }
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else { return Ok(()) };
        if self.trusted_hops == 0 {
            for name in UNTRUSTED_FORWARDING {
                upstream_request.remove_header(name);
            }
        }
        let backend_filters = ctx.backend.map(|i| route.backends.filters(i)).unwrap_or_default();
        let filters = route.filters.iter().chain(backend_filters);
        // The routed (normalized) path of the downstream request.
        let routed_path = session.req_header().uri.path();
        if let Some(new_path) = edits::request(upstream_request, filters, route.path_prefix.as_deref(), routed_path) {
            let uri = match upstream_request.uri.query() {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            };
            let uri = uri.parse::<http::Uri>().map_err(|e| Error::because(ErrorType::InternalError, "rewrite", e))?;
            upstream_request.set_uri(uri);
        }
        if session.req_header().version == http::Version::HTTP_2
            && let Some(cookies) = edits::joined_cookies(&upstream_request.headers)
        {
            // RFC 9113 §8.2.3: an HTTP/2 client's Cookie fields go to HTTP/1.1 as one.
            upstream_request.insert_header(http::header::COOKIE, cookies)?;
        }
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()).unwrap_or_default();
        let incoming = upstream_request.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        let forwarded = forwarded_for(incoming, &client, self.trusted_hops);
        if forwarded.is_empty() {
            upstream_request.remove_header("x-forwarded-for");
        } else {
            upstream_request.insert_header("x-forwarded-for", forwarded)?;
        }
        upstream_request.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        let targets = crate::mirror::pick(&route.mirrors);
        if !targets.is_empty() {
            // The client's request says whether a body comes (the upstream request's
            // framing fields are not final yet: a chunked body has none here).
            let framing = if !session.is_body_empty() {
                crate::mirror::BodyFraming::Data
            } else {
                crate::mirror::BodyFraming::None
            };
            let head = crate::mirror::mirror_head(upstream_request);
            ctx.mirror_bodies.extend(crate::mirror::start(targets, &head, framing));
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !end_of_stream && ctx.started.elapsed() > self.request_body_timeout {
            return Err(Error::create(
                ErrorType::ReadTimedout,
                pingora_core::ErrorSource::Downstream,
                Some("the request body did not arrive within its deadline".into()),
                None,
            ));
        }
        if !ctx.mirror_bodies.is_empty() {
            crate::mirror::offer(&mut ctx.mirror_bodies, body.as_ref(), end_of_stream);
        }
        Ok(())
    }

    /// A backend whose policy lists subjectAltNames: a new connection's certificate must
    /// carry one (Pingora checked its chain).
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(Ok(tls)) = ctx.cluster.as_ref().and_then(|c| c.tls.as_ref()) else { return Ok(()) };
        if reused || tls.verify_hostname() {
            return Ok(());
        }
        let leaf = digest.and_then(|d| d.ssl_digest.as_ref()).map(|d| d.cert_digest.clone()).unwrap_or_default();
        let Some(endpoint) = pingora_core::upstreams::peer::Peer::address(peer).as_inet().copied() else {
            return Ok(());
        };
        if let Err(problem) = tls.check_leaf(endpoint, &leaf).await {
            tracing::warn!(policy = tls.policy, problem, "backend certificate refused");
            return Err(Error::explain(ErrorType::HTTPStatus(502), problem));
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(code) = grpc_status(trailers) {
            ctx.grpc_status = Some(code);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        let Some(route) = &ctx.route else { return Ok(()) };
        let Some(retry) = &route.retry else { return Ok(()) };
        if retry::on_status(retry, status, ctx.retries, session.retry_buffer_truncated()) {
            ctx.retries += 1;
            ctx.rule_retry = true;
            route.metrics.retried();
            let mut error = Error::new_up(ErrorType::HTTPStatus(status));
            error.set_retry(true);
            return Err(error);
        }
        Ok(())
    }

    /// Pingora's policy (no retry for non-idempotent methods or a body that outgrew the
    /// retry buffer; reused-connection failures only) except for retries the route's rule
    /// asked for, which any method gets while its body is still whole.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let rule_retry = std::mem::take(&mut ctx.rule_retry);
        if session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else if rule_retry {
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(route) = &ctx.route
            && let Some(retry) = &route.retry
            && ctx.retries < retry.attempts
        {
            // Nothing reached the backend: retrying is safe for every method.
            ctx.retries += 1;
            route.metrics.retried();
            e.set_retry(true);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, error: &Error, ctx: &mut Self::CTX) -> FailToProxy {
        let code = Failure::of_pingora(error).status();
        if error.esource() == &pingora_core::ErrorSource::Upstream
            && let Some(route) = &ctx.route
        {
            route.metrics.upstream_error();
        }
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _error: Option<&Error>, ctx: &mut Self::CTX) {
        let finished = Finished {
            route: ctx.route.as_deref(),
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            elapsed: ctx.started.elapsed(),
            grpc_status: ctx.grpc_status,
        };
        let header = session.req_header();
        let host = request_host(header);
        let log = self.access_log.then(|| AccessLog {
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            method: header.method.as_str(),
            host: &host,
            path: header.uri.path(),
            upstream: ctx.endpoint.map(|(a, _)| a),
        });
        finished.record(&self.unmatched, log);
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(code) = grpc_status(&upstream_response.headers) {
            ctx.grpc_status = Some(code);
        }
        if let Some(route) = &ctx.route {
            edits::response(upstream_response, route, ctx.backend, &ctx.cors);
        }
        Ok(())
    }
}

/// A gRPC status code (`grpc-status`, 0-16) in `headers`.
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse().ok().filter(|code| *code <= 16)
}

/// Limits on request headers, answered with 431: at most this many header fields...
pub const MAX_REQUEST_HEADERS: usize = 100;
/// ...and at most this many bytes of names and values together.
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

pub(crate) fn headers_too_large(headers: &http::HeaderMap) -> bool {
    if headers.len() > MAX_REQUEST_HEADERS {
        return true;
    }
    let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    bytes > MAX_REQUEST_HEADER_BYTES
}

/// Whether the request's body framing is ambiguous: Content-Length together with
/// Transfer-Encoding, or Content-Length values that disagree or do not parse.
pub(crate) fn ambiguous_framing(headers: &http::HeaderMap) -> bool {
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter().peekable();
    if lengths.peek().is_none() {
        return false;
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    let mut seen: Option<u64> = None;
    for value in lengths {
        let Ok(text) = value.to_str() else { return true };
        for part in text.split(',') {
            let Ok(length) = part.trim().parse::<u64>() else { return true };
            if seen.is_some_and(|s| s != length) {
                return true;
            }
            seen = Some(length);
        }
    }
    false
}

/// Pingora drops Content-Length when Transfer-Encoding is present (RFC 9112 §6.3) and turns
/// keep-alive off. On an HTTP/1.1 request that did not ask to close, keep-alive being off
/// with Transfer-Encoding present therefore means both headers came in: refuse it. (With
/// `Connection: close` the two cases look alike; Transfer-Encoding then wins and the
/// connection closes, which is also safe.)
fn stripped_content_length(session: &Session) -> bool {
    let header = session.req_header();
    if header.version != http::Version::HTTP_11 || !header.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return false;
    }
    let asked_close = header
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
    !asked_close && session.as_downstream().get_keepalive().is_none()
}

/// Why the request's Host is unacceptable: more than one Host field, or none on an HTTP/1.1
/// request (whose absolute-form target does not make up for it: RFC 9112 §3.2 requires the
/// field). HTTP/1.0 requests may come without Host; they are routed as for an empty host
/// (routes and listeners without hostnames). HTTP/2 requests carry `:authority`.
pub(crate) fn host_problem(header: &RequestHeader) -> Option<&'static str> {
    let hosts = header.headers.get_all(http::header::HOST).iter().count();
    if hosts > 1 {
        return Some("more than one Host header");
    }
    if hosts == 0 && header.version == http::Version::HTTP_11 {
        return Some("an HTTP/1.1 request without Host");
    }
    None
}

/// The request's host: the Host header (or the URI authority), lower-cased, without port.
pub(crate) fn request_host(header: &RequestHeader) -> Cow<'_, str> {
    let raw = header
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| header.uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    host_of(raw)
}

/// A Host value without its port and trailing dot, lower-cased.
pub(crate) fn host_of(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        raw.split_once(']').map_or(raw, |(v6, _)| v6.trim_start_matches('['))
    } else {
        raw.rsplit_once(':').map_or(raw, |(host, _)| host)
    };
    let host = without_port.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Pingora's request and response heads share these methods but no trait. Names keep
/// their case on the wire (as the fast path's do).
macro_rules! header_edits {
    ($head:ty) => {
        impl HeaderEdits<'_> for $head {
            fn remove(&mut self, name: &str) {
                self.remove_header(name);
            }

            fn append(&mut self, name: &str, value: &str) {
                if let Err(error) = self.append_header(name.to_owned(), value) {
                    tracing::debug!(name, %error, "header field not added");
                }
            }

            fn set(&mut self, name: &str, value: &str) {
                if let Err(error) = self.insert_header(name.to_owned(), value) {
                    tracing::debug!(name, %error, "header field not set");
                }
            }
        }
    };
}
header_edits!(RequestHeader);
header_edits!(ResponseHeader);

/// The head of an answer of the proxy's own: `fields` and no body.
pub(crate) fn answer_head(status: u16, fields: &[cors::Field]) -> Result<ResponseHeader> {
    let mut response = ResponseHeader::build(status, Some(2 + fields.len()))?;
    for (name, value) in fields {
        response.append_header(*name, value.as_str())?;
    }
    response.insert_header(http::header::CONTENT_LENGTH, "0")?;
    Ok(response)
}

/// Answers the request directly with `fields` and an empty body.
async fn answer(session: &mut Session, status: u16, fields: &[cors::Field]) -> Result<bool> {
    session.write_response_header(Box::new(answer_head(status, fields)?), false).await?;
    session.write_response_body(Some(Bytes::new()), true).await?;
    Ok(true)
}

/// The SNI of a TLS connection's handshake.
fn connection_sni(session: &Session) -> Option<&str> {
    session
        .digest()
        .and_then(|digest| digest.ssl_digest.as_ref())
        .and_then(|tls| tls.extension.get::<crate::tls::Handshake>())
        .and_then(|handshake| handshake.server_name.as_deref())
}
