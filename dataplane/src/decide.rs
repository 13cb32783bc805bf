//! What happens to an HTTP request, decided once for both request paths (Pingora's
//! proxy and the HTTP/1.1 fast path) from the compiled tables and a view of the request.
//!
//! ```text
//!  route():  port → listener by Host → (TLS) Host of the SNI's listener? else 421
//!            → route (else 404) → CORS preflight (200) → redirect / direct response
//!  pick():   weighted backend (none: 500; invalid: its status) → endpoint (none: 503)
//!            → Forward
//! ```
//!
//! Between the two halves the fast path checks whether the route is one it serves
//! (`Route::fast`, decided when the route was compiled) and hands the request to
//! Pingora's path otherwise; the answers it writes itself.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_snapshot::{RequestRedirect, http_filter};

use crate::cors;
use crate::tables::{ClusterTable, Compiled, InFlight, ListenerTable, PortTable, Route, Target};
use crate::view::RequestView;

/// A request as the decision sees it.
pub(crate) struct Request<'a> {
    /// The local port the request came in on.
    pub port: u16,
    /// The connection's TLS SNI (`None` without TLS or without SNI).
    pub sni: Option<&'a str>,
    /// Host (as `host_of` makes it), normalized path, query, method, header fields.
    pub view: RequestView<'a>,
}

/// An answer from the proxy itself, with an empty body.
pub(crate) struct Answer {
    pub status: u16,
    /// The route it belongs to (for its metrics); `None`: no route matched.
    pub route: Option<Arc<Route>>,
    /// Header fields of the answer (a CORS preflight's, a redirect's Location).
    pub fields: Vec<cors::Field>,
}

impl Answer {
    fn new(status: u16, route: Option<&Arc<Route>>) -> Answer {
        Answer { status, route: route.cloned(), fields: Vec::new() }
    }
}

/// A request that matched a route which forwards it.
pub(crate) struct Matched {
    pub route: Arc<Route>,
    /// CORS fields for the response (the route's policy decided them on the request).
    pub cors: Vec<cors::Field>,
}

/// Where a request goes.
pub(crate) struct Forward {
    pub route: Arc<Route>,
    /// Index of the chosen weighted backend in the route (for its filters).
    pub backend: usize,
    pub cluster: Arc<ClusterTable>,
    pub endpoint: SocketAddr,
    /// Counts the request against its endpoint (least-request clusters) until dropped.
    pub in_flight: Option<InFlight>,
    pub cors: Vec<cors::Field>,
}

/// The first half: the route, or the proxy's own answer.
pub(crate) fn route(tables: &Compiled, request: &Request<'_>) -> Result<Matched, Answer> {
    let view = &request.view;
    let Some(port_table) = tables.ports.get(&request.port) else {
        return Err(Answer::new(404, None));
    };
    let Some(listener) = port_table.listener(view.host) else {
        return Err(Answer::new(404, None));
    };
    let tls = tables.tls.contains_key(&request.port);
    if tls && misdirected(request.sni, port_table, listener) {
        // The connection's SNI chose another listener (and certificate) on this port
        // than the Host does: the client must open a connection for that host.
        return Err(Answer::new(421, None));
    }
    let Some(route) = listener.find(view) else {
        tracing::debug!(listener = listener.name, host = view.host, path = view.path, "no route matches");
        return Err(Answer::new(404, None));
    };
    tracing::debug!(route = route.name, "matched");
    let mut cors = Vec::new();
    if let Some(policy) = &route.cors {
        match policy.decide(view.method, view.headers) {
            cors::Decision::Preflight(fields) => {
                return Err(Answer { status: 200, route: Some(route.clone()), fields });
            }
            cors::Decision::Actual(fields) => cors = fields,
        }
    }
    match crate::tables::terminal_filter(&route.filters) {
        Some(http_filter::Kind::RequestRedirect(redirect)) => {
            let location = redirect_location(redirect, route, tls, view.host, request.port, view.path, view.query);
            let status = u16::try_from(redirect.status_code).unwrap_or(302);
            Err(Answer { status, route: Some(route.clone()), fields: vec![("location", location)] })
        }
        Some(http_filter::Kind::DirectResponse(direct)) => {
            Err(Answer::new(u16::try_from(direct.status).unwrap_or(500), Some(route)))
        }
        _ => Ok(Matched { route: route.clone(), cors }),
    }
}

/// The second half: the backend and endpoint, or the proxy's own answer.
pub(crate) fn pick(matched: Matched) -> Result<Forward, Answer> {
    let Matched { route, cors } = matched;
    let Some((backend, target)) = route.backends.pick() else {
        // No backend, or every weight is zero.
        return Err(Answer::new(500, Some(&route)));
    };
    let cluster = match target {
        Target::Status(status) => return Err(Answer::new(*status, Some(&route))),
        Target::Cluster(cluster) => cluster.clone(),
    };
    let Some((endpoint, in_flight)) = cluster.pick() else {
        tracing::debug!(cluster = cluster.name, "no endpoint");
        return Err(Answer::new(503, Some(&route)));
    };
    Ok(Forward { route, backend, cluster, endpoint, in_flight, cors })
}

/// Whether a TLS request's Host belongs to another listener than the one its
/// connection's SNI selected (requests without SNI are never misdirected).
fn misdirected(sni: Option<&str>, port_table: &PortTable, listener: &ListenerTable) -> bool {
    let Some(sni) = sni else { return false };
    !port_table.listener(sni).is_some_and(|by_sni| std::ptr::eq(by_sni, listener))
}

/// The Location of a RequestRedirect, as Gateway API defines it.
fn redirect_location(
    redirect: &RequestRedirect,
    route: &Route,
    listener_tls: bool,
    host: &str,
    listener_port: u16,
    path: &str,
    query: Option<&str>,
) -> String {
    let scheme =
        if redirect.scheme.is_empty() { if listener_tls { "https" } else { "http" } } else { redirect.scheme.as_str() };
    let port = if redirect.port != 0 {
        u16::try_from(redirect.port).unwrap_or(listener_port)
    } else if !redirect.scheme.is_empty() {
        if scheme == "https" { 443 } else { 80 }
    } else {
        listener_port
    };
    let default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
    let hostname = if redirect.hostname.is_empty() { host } else { redirect.hostname.as_str() };
    let new_path = match redirect.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(kind) => crate::edits::rewrite_path(kind, route.path_prefix.as_deref(), path),
        None => path.to_string(),
    };
    let authority = if default_port { hostname.to_string() } else { format!("{hostname}:{port}") };
    match query {
        Some(q) => format!("{scheme}://{authority}{new_path}?{q}"),
        None => format!("{scheme}://{authority}{new_path}"),
    }
}
