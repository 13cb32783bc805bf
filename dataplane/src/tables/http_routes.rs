//! HTTP routes, compiled: matches (path, headers, query, method) and actions.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use sluice_snapshot::{HttpFilter, HttpRoute, PathMatchType, ValueMatchType, http_filter};

use super::clusters::{Backends, ClusterLookup, ClusterTable, Target, backend_target};
use crate::view::RequestView;

/// One snapshot route, ready to match.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    path: PathMatcher,
    headers: Vec<(http::HeaderName, ValueMatcher)>,
    query_params: Vec<(String, ValueMatcher)>,
    method: Option<http::Method>,
    pub path_prefix: Option<String>,
    pub filters: Vec<HttpFilter>,
    /// Mirrors of the rule: cluster and the share of requests to copy (numerator, denominator).
    pub mirrors: Vec<(Arc<ClusterTable>, u32, u32)>,
    pub backends: Backends,
    pub metrics: Arc<crate::metrics::RouteMetrics>,
    pub request_timeout_ms: u64,
    pub backend_timeout_ms: u64,
    /// The rule's retries (HTTPRoute `retry`).
    pub retry: Option<sluice_snapshot::Retry>,
    /// The rule's CORS policy (HTTPRoute filter `CORS`).
    pub cors: Option<Box<crate::cors::Policy>>,
    /// The HTTP/1.1 fast path forwards its requests: no backend reached over HTTP/2 or
    /// TLS (those are Pingora's; for HTTP/2 streams mirrors and retries too, and requests
    /// with a body to a route with retries are Pingora's on both). Decided here, before any
    /// request, so that a weighted pick is made by one path only.
    pub fast: bool,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// Prefix without its trailing slash ("" for "/").
    Prefix(String),
    Regex(Regex),
    /// A dropped route whose match could not be compiled: it matches nothing.
    Never,
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

/// What a route matches, compiled.
struct CompiledMatch {
    path: PathMatcher,
    path_prefix: Option<String>,
    headers: Vec<(http::HeaderName, ValueMatcher)>,
    query_params: Vec<(String, ValueMatcher)>,
    method: Option<http::Method>,
}

fn compile_match(route: &HttpRoute) -> Result<CompiledMatch, String> {
    let http_match = route.r#match.clone().unwrap_or_default();
    let (path, path_prefix) = match &http_match.path {
        None => (PathMatcher::Prefix(String::new()), Some("/".to_string())),
        Some(p) => match p.r#type() {
            PathMatchType::Exact => (PathMatcher::Exact(p.value.clone()), None),
            PathMatchType::Prefix | PathMatchType::Unspecified => {
                (PathMatcher::Prefix(p.value.trim_end_matches('/').to_string()), Some(p.value.clone()))
            }
            PathMatchType::RegularExpression => (PathMatcher::Regex(full_regex(&p.value)?), None),
        },
    };
    let value_matcher = |kind: ValueMatchType, value: &str| -> Result<ValueMatcher, String> {
        Ok(match kind {
            ValueMatchType::RegularExpression => ValueMatcher::Regex(full_regex(value)?),
            _ => ValueMatcher::Exact(value.to_string()),
        })
    };
    let mut headers = Vec::new();
    for header in &http_match.headers {
        let name = http::HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|e| format!("header name {:?}: {e}", header.name))?;
        headers.push((name, value_matcher(header.r#type(), &header.value)?));
    }
    let mut query_params = Vec::new();
    for param in &http_match.query_params {
        query_params.push((param.name.clone(), value_matcher(param.r#type(), &param.value)?));
    }
    let method = if http_match.method.is_empty() {
        None
    } else {
        Some(http::Method::from_bytes(http_match.method.as_bytes()).map_err(|e| e.to_string())?)
    };
    Ok(CompiledMatch { path, path_prefix, headers, query_params, method })
}

pub(crate) fn compile_route(
    route: &HttpRoute,
    clusters: &(impl ClusterLookup + ?Sized),
    metrics: &crate::metrics::Metrics,
) -> Result<Route, String> {
    let CompiledMatch { path, path_prefix, headers, query_params, method } = compile_match(route)?;
    let mut targets = Vec::new();
    for backend in &route.backends {
        targets.push((backend.weight, backend_target(backend, clusters)?, backend.filters.clone()));
    }
    let mut mirrors = Vec::new();
    for filter in &route.filters {
        if let Some(http_filter::Kind::RequestMirror(mirror)) = &filter.kind {
            let cluster = clusters
                .cluster(&mirror.cluster)
                .ok_or_else(|| format!("unknown mirror cluster {}", mirror.cluster))?;
            mirrors.push((cluster.clone(), mirror.numerator, mirror.denominator));
        }
    }
    let cors = route
        .filters
        .iter()
        .find_map(|filter| match &filter.kind {
            Some(http_filter::Kind::Cors(cors)) => Some(crate::cors::Policy::compile(cors).map(Box::new)),
            _ => None,
        })
        .transpose()?;
    let timeouts = route.timeouts.unwrap_or_default();
    let backends = Backends::new(targets);
    let fast = !backends.pingora_only();
    Ok(Route {
        fast,
        cors,
        mirrors,
        name: route.name.clone(),
        path,
        headers,
        query_params,
        method,
        path_prefix,
        filters: route.filters.clone(),
        backends,
        metrics: metrics.route(&route.name),
        request_timeout_ms: timeouts.request_ms,
        backend_timeout_ms: timeouts.backend_request_ms,
        retry: route.retry.clone(),
    })
}

/// A route that could not be compiled: it answers 500 to what it matches, or matches
/// nothing when its match itself cannot be compiled.
pub(crate) fn failed_route(route: &HttpRoute, metrics: &crate::metrics::Metrics) -> Route {
    let matched = compile_match(route).unwrap_or(CompiledMatch {
        path: PathMatcher::Never,
        path_prefix: None,
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    });
    Route {
        mirrors: Vec::new(),
        name: route.name.clone(),
        path: matched.path,
        headers: matched.headers,
        query_params: matched.query_params,
        method: matched.method,
        path_prefix: matched.path_prefix,
        filters: Vec::new(),
        backends: Backends::new(vec![(1, Target::Status(500), Vec::new())]),
        metrics: metrics.route(&route.name),
        request_timeout_ms: 0,
        backend_timeout_ms: 0,
        retry: None,
        cors: None,
        fast: true,
    }
}

/// Gateway API regular expressions match the whole value (the translator compiles them
/// with the same function).
fn full_regex(pattern: &str) -> Result<Regex, String> {
    sluice_snapshot::compile::full_regex(pattern)
}

impl Route {
    /// How long each wait for the backend (connecting, every read) may take under the
    /// rule's Gateway API timeouts: the tighter of the backend request timeout and what
    /// is left of the request timeout after `spent`. `Ok(None)`: neither is set;
    /// `Err(())`: the request timeout has passed. Both request paths use it.
    pub(crate) fn backend_wait(&self, spent: Duration) -> Result<Option<Duration>, ()> {
        let left = (self.request_timeout_ms > 0).then(|| {
            let spent = u64::try_from(spent.as_millis()).unwrap_or(u64::MAX);
            self.request_timeout_ms.saturating_sub(spent)
        });
        if left == Some(0) {
            return Err(());
        }
        let limit = [self.backend_timeout_ms, left.unwrap_or(0)].into_iter().filter(|t| *t > 0).min();
        Ok(limit.map(Duration::from_millis))
    }

    pub(crate) fn matches(&self, request: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatcher::Exact(value) => request.path == value,
            PathMatcher::Prefix(prefix) => {
                request.path.starts_with(prefix.as_str())
                    && (request.path.len() == prefix.len() || request.path.as_bytes().get(prefix.len()) == Some(&b'/'))
            }
            PathMatcher::Regex(regex) => regex.is_match(request.path),
            PathMatcher::Never => false,
        };
        if !path_ok {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m != request.method) {
            return false;
        }
        let headers_ok =
            self.headers.iter().all(|(name, matcher)| request.headers.any_value(name, |v| matcher.matches(v)));
        headers_ok
            && self.query_params.iter().all(|(name, matcher)| {
                first_query_value(request.query, name).is_some_and(|value| matcher.matches(&value))
            })
    }
}

impl ValueMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(expected) => value == expected,
            ValueMatcher::Regex(regex) => regex.is_match(value),
        }
    }
}

/// The first value of query parameter `name` (exact, case-sensitive name), decoded.
fn first_query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// Decodes `%XX` escapes and `+` (form encoding) in a query component.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Whether a route's filters end the request without a backend.
pub fn terminal_filter(filters: &[HttpFilter]) -> Option<&http_filter::Kind> {
    filters
        .iter()
        .filter_map(|f| f.kind.as_ref())
        .find(|kind| matches!(kind, http_filter::Kind::RequestRedirect(_) | http_filter::Kind::DirectResponse(_)))
}
