//! `validate()`: rejects any snapshot the data plane could not execute.
//!
//! The translator only emits valid snapshots; this is the data plane's guard (a snapshot
//! that fails is NACKed and the last good one keeps serving) and the translator's self-check
//! in tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::{
    ClientValidationMode, Cluster, DirectResponse, HttpFilter, HttpRoute, Listener, PathMatchType, PathModifier,
    Protocol, Snapshot, TlsMode, ValueMatch, ValueMatchType, WeightedBackend, http_filter, path_modifier,
    weighted_backend,
};

/// The problems found in a snapshot, each prefixed with the name of the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot: {}", problems.join("; "))]
pub struct ValidationError {
    /// One line per problem, e.g. `httproute/ns/r/rule/0/match/0: invalid regex ...`.
    pub problems: Vec<String>,
}

/// Checks every invariant the data plane relies on.
pub fn validate(snapshot: &Snapshot) -> Result<(), ValidationError> {
    let problems: Vec<String> = problems(snapshot).into_iter().map(|p| p.to_string()).collect();
    if problems.is_empty() { Ok(()) } else { Err(ValidationError { problems }) }
}

/// What a problem makes unusable: the whole snapshot (structure), or one piece that the
/// data plane drops while it serves the rest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Piece {
    /// Names, ports or clusters that do not fit together: the snapshot is rejected.
    Snapshot,
    /// One listener (by name): it is not served.
    Listener(String),
    /// One route (HTTP, TCP, UDP or TLS, by name): it answers 500 (an L4 route closes
    /// its connections), or never matches when its match cannot be compiled.
    Route(String),
    /// One certificate (by name): it is not served, nor the listeners that need it.
    Certificate(String),
    /// One client certificate validation (by name): the listeners that need it are not
    /// served (a port never serves without the client validation it was given).
    ClientValidation(String),
}

/// One problem found in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub piece: Piece,
    /// The offending item's name (`httproute/ns/r/rule/0/match/0`, `port 80`, ...).
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Every problem of a snapshot, each with the piece it makes unusable.
pub fn problems(snapshot: &Snapshot) -> Vec<Problem> {
    let mut check = Checker { piece: Piece::Snapshot, problems: Vec::new(), clusters: BTreeSet::new(), known: None };
    check.snapshot(snapshot);
    check.problems
}

/// The problems of one HTTP route as [`problems`] finds them in a snapshot whose clusters
/// are those `known` accepts (a data plane checks what a delta inserts, not the whole).
pub fn http_route_problems<'a>(route: &'a HttpRoute, known: &'a dyn Fn(&str) -> bool) -> Vec<Problem> {
    let mut check = Checker {
        piece: Piece::Route(route.name.clone()),
        problems: Vec::new(),
        clusters: BTreeSet::new(),
        known: Some(known),
    };
    check.http_route(route);
    check.problems
}

/// Whether a cluster without backend TLS passes the checks [`problems`] makes of it on its
/// own (its endpoints); uniqueness of its name is the caller's to check.
pub fn plain_cluster_valid(cluster: &Cluster) -> bool {
    let mut check = Checker { piece: Piece::Snapshot, problems: Vec::new(), clusters: BTreeSet::new(), known: None };
    check.endpoints(cluster);
    cluster.tls.is_none() && !cluster.name.is_empty() && check.problems.is_empty()
}

struct Checker<'a> {
    /// The piece being checked: problems found now make it unusable.
    piece: Piece,
    problems: Vec<Problem>,
    clusters: BTreeSet<&'a str>,
    /// Which clusters exist, when checking pieces without their snapshot.
    known: Option<&'a dyn Fn(&str) -> bool>,
}

impl Checker<'_> {
    fn cluster_known(&self, name: &str) -> bool {
        match self.known {
            Some(known) => known(name),
            None => self.clusters.contains(name),
        }
    }
}

/// Whether `value` is an HTTP token (header names, methods).
pub fn valid_token(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` may be sent as a header value: visible ASCII, spaces and tabs (no CR,
/// LF, NUL or other controls, no bytes beyond ASCII).
pub fn valid_header_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Whether `path` may be written into a request line or a `Location` header: visible
/// ASCII only (no CR, LF, NUL, spaces or bytes beyond ASCII; percent-encode those).
pub fn valid_path_value(path: &str) -> bool {
    path.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// Retries per request at most (Gateway API leaves the limit to implementations).
pub const MAX_RETRY_ATTEMPTS: u32 = 100;

/// The port of a data plane's admin endpoint (`/ready`, `/metrics`) in its pods: no
/// listener may use it (the translator answers `PortUnavailable`).
pub const ADMIN_PORT: u32 = 9901;

/// Allocator settings for the data plane, whose allocator is mimalloc: freed memory goes
/// back to the system at once instead of a delay later (mimalloc returns it only while
/// allocating, so an idle data plane never would), and no transparent huge pages (2 MiB
/// pages that a few live blocks keep resident). The deployer sets them in the data
/// plane's pods, `sluice run` for the data planes it starts, and the binary for itself
/// when they are not set. bench/dataplane.sh, against glibc with two arenas and 128 KiB
/// trim thresholds: 5000 routes 27.4 -> 23.1 MB resident after load, 1000 routes after
/// HTTP/2 load 18.6 -> 16.8 MB, requests per CPU-second unchanged.
pub const DATA_PLANE_ALLOCATOR_ENV: [(&str, &str); 2] = [("MIMALLOC_PURGE_DELAY", "0"), ("MIMALLOC_ALLOW_THP", "0")];

fn valid_port(port: u32) -> bool {
    (1..=65535).contains(&port)
}

impl<'a> Checker<'a> {
    fn problem(&mut self, at: &str, what: impl std::fmt::Display) {
        self.problems.push(Problem { piece: self.piece.clone(), at: at.to_string(), message: what.to_string() });
    }

    fn endpoints(&mut self, cluster: &Cluster) {
        for endpoint in &cluster.endpoints {
            if endpoint.address.parse::<IpAddr>().is_err() {
                self.problem(&cluster.name, format!("endpoint address {:?} is not an IP", endpoint.address));
            }
            if !valid_port(endpoint.port) {
                self.problem(&cluster.name, format!("endpoint port {} out of range", endpoint.port));
            }
        }
    }

    fn snapshot(&mut self, snapshot: &'a Snapshot) {
        if snapshot.gateway.is_empty() {
            self.problem("snapshot", "gateway is empty");
        }
        for cluster in &snapshot.clusters {
            if !self.clusters.insert(&cluster.name) {
                self.problem(&cluster.name, "duplicate cluster name");
            }
            self.endpoints(cluster);
        }
        let mut certificates = BTreeSet::new();
        for certificate in &snapshot.certificates {
            if !certificates.insert(certificate.name.as_str()) {
                self.problem(&certificate.name, "duplicate certificate name");
            }
            if !certificate.cert_chain_pem.contains("-----BEGIN") || !certificate.private_key_pem.contains("-----BEGIN")
            {
                self.piece = Piece::Certificate(certificate.name.clone());
                self.problem(&certificate.name, "certificate chain or private key is not PEM");
                self.piece = Piece::Snapshot;
            }
        }
        for cluster in &snapshot.clusters {
            let Some(tls) = &cluster.tls else { continue };
            if tls.sni.is_empty() {
                self.problem(&cluster.name, "backend TLS without an SNI");
            }
            if tls.ca_pem.is_empty() && !tls.system_roots {
                self.problem(&cluster.name, "backend TLS trusts no CA");
            }
            if !tls.client_certificate.is_empty() && !certificates.contains(tls.client_certificate.as_str()) {
                self.problem(&cluster.name, format!("unknown client certificate {}", tls.client_certificate));
            }
        }
        let mut validations = BTreeSet::new();
        for validation in &snapshot.client_validations {
            if !validations.insert(validation.name.as_str()) {
                self.problem(&validation.name, "duplicate client validation name");
            }
            self.piece = Piece::ClientValidation(validation.name.clone());
            if !validation.ca_bundle_pem.contains("-----BEGIN") {
                self.problem(&validation.name, "the CA bundle is not PEM");
            }
            if validation.mode() == ClientValidationMode::Unspecified {
                self.problem(&validation.name, "client validation mode is unspecified");
            }
            self.piece = Piece::Snapshot;
        }
        let mut listener_names = BTreeSet::new();
        // UDP and the TCP-based protocols are different transports: they may share a port
        // number, and each is checked on its own.
        let mut ports: BTreeMap<(bool, u32), Vec<&Listener>> = BTreeMap::new();
        for listener in &snapshot.listeners {
            if !listener_names.insert(listener.name.as_str()) {
                self.problem(&listener.name, "duplicate listener name");
            }
            ports.entry((listener.protocol() == Protocol::Udp, listener.port)).or_default().push(listener);
            self.piece = Piece::Listener(listener.name.clone());
            self.listener(listener, &certificates, &validations);
            self.piece = Piece::Snapshot;
        }
        for ((udp, port), listeners) in ports {
            let protocols: BTreeSet<i32> = listeners.iter().map(|l| l.protocol).collect();
            if protocols.len() > 1 {
                self.problem(&format!("port {port}"), "listeners with different protocols share the port");
            }
            let hostnames: BTreeSet<&str> = listeners.iter().map(|l| l.hostname.as_str()).collect();
            if hostnames.len() != listeners.len() {
                self.problem(&format!("port {port}"), "listeners on the port share a hostname");
            }
            if listeners.iter().any(|l| l.protocol() == Protocol::Tcp) && listeners.len() > 1 {
                self.problem(&format!("port {port}"), "a TCP listener cannot share its port");
            }
            if udp && listeners.len() > 1 {
                self.problem(&format!("port {port}"), "a UDP listener cannot share its port");
            }
            let client_validations: BTreeSet<&str> = listeners
                .iter()
                .filter(|l| l.protocol() == Protocol::Https)
                .map(|l| l.client_validation.as_str())
                .collect();
            if client_validations.len() > 1 {
                self.problem(
                    &format!("port {port}"),
                    "HTTPS listeners on the port differ in client certificate validation",
                );
            }
        }
    }

    fn listener(&mut self, listener: &'a Listener, certificates: &BTreeSet<&str>, validations: &BTreeSet<&str>) {
        let at = listener.name.as_str();
        if !valid_port(listener.port) {
            self.problem(at, format!("port {} out of range", listener.port));
        }
        let protocol = Protocol::try_from(listener.protocol).unwrap_or(Protocol::Unspecified);
        if protocol == Protocol::Unspecified {
            self.problem(at, "protocol is unspecified");
        }
        if !listener.hostname.is_empty() && !valid_hostname(&listener.hostname) {
            self.problem(at, format!("invalid hostname {:?}", listener.hostname));
        }
        for name in &listener.certificates {
            if !certificates.contains(name.as_str()) {
                self.problem(at, format!("unknown certificate {name}"));
            }
        }
        let terminates =
            protocol == Protocol::Https || (protocol == Protocol::Tls && listener.tls_mode() == TlsMode::Terminate);
        if terminates && listener.certificates.is_empty() {
            self.problem(at, "terminates TLS without a certificate");
        }
        if !listener.client_validation.is_empty() {
            if protocol != Protocol::Https {
                self.problem(at, "client certificate validation on a listener that is not HTTPS");
            }
            if !validations.contains(listener.client_validation.as_str()) {
                self.problem(at, format!("unknown client validation {}", listener.client_validation));
            }
        }
        let serves_http = matches!(protocol, Protocol::Http | Protocol::Https);
        if !serves_http && !listener.http_routes.is_empty() {
            self.problem(at, "HTTP routes on a non-HTTP listener");
        }
        if protocol != Protocol::Tcp && !listener.tcp_routes.is_empty() {
            self.problem(at, "TCP routes on a non-TCP listener");
        }
        if protocol != Protocol::Udp && !listener.udp_routes.is_empty() {
            self.problem(at, "UDP routes on a non-UDP listener");
        }
        if protocol != Protocol::Tls && !listener.tls_routes.is_empty() {
            self.problem(at, "TLS routes on a non-TLS listener");
        }
        if protocol == Protocol::Tls {
            match listener.tls_mode() {
                TlsMode::Unspecified => self.problem(at, "a TLS listener needs tls_mode Terminate or Passthrough"),
                TlsMode::Passthrough if !listener.certificates.is_empty() => {
                    self.problem(at, "a Passthrough listener has no certificates")
                }
                TlsMode::Passthrough | TlsMode::Terminate => {}
            }
        }
        for route in &listener.http_routes {
            self.piece = Piece::Route(route.name.clone());
            self.http_route(route);
        }
        for route in &listener.tcp_routes {
            self.piece = Piece::Route(route.name.clone());
            for backend in &route.backends {
                self.backend(&route.name, backend);
                if !backend.filters.is_empty() {
                    self.problem(&route.name, "TCP backends take no filters");
                }
            }
        }
        for route in &listener.udp_routes {
            self.piece = Piece::Route(route.name.clone());
            for backend in &route.backends {
                self.backend(&route.name, backend);
                if !backend.filters.is_empty() {
                    self.problem(&route.name, "UDP backends take no filters");
                }
            }
        }
        for route in &listener.tls_routes {
            self.piece = Piece::Route(route.name.clone());
            if route.name.is_empty() {
                self.problem("tls route", "name is empty");
            }
            for hostname in &route.hostnames {
                if !valid_hostname(hostname) {
                    self.problem(&route.name, format!("invalid hostname {hostname:?}"));
                }
            }
            for backend in &route.backends {
                self.backend(&route.name, backend);
                if !backend.filters.is_empty() {
                    self.problem(&route.name, "TLS backends take no filters");
                }
            }
        }
    }

    fn http_route(&mut self, route: &'a HttpRoute) {
        let at = route.name.as_str();
        if at.is_empty() {
            self.problem("http route", "name is empty");
        }
        for hostname in &route.hostnames {
            if !valid_hostname(hostname) {
                self.problem(at, format!("invalid hostname {hostname:?}"));
            }
        }
        let path_type = route.r#match.as_ref().and_then(|m| m.path.as_ref()).map(|p| p.r#type());
        if let Some(http_match) = &route.r#match {
            if let Some(path) = &http_match.path {
                match path.r#type() {
                    PathMatchType::Unspecified => self.problem(at, "path match type is unspecified"),
                    PathMatchType::Exact | PathMatchType::Prefix => {
                        if !path.value.starts_with('/') {
                            self.problem(at, format!("path {:?} does not start with /", path.value));
                        }
                    }
                    PathMatchType::RegularExpression => self.regex(at, &path.value),
                }
            }
            for header in &http_match.headers {
                self.value_match(at, "header", header);
                if !valid_token(&header.name) {
                    self.problem(at, format!("invalid header name {:?}", header.name));
                }
            }
            for param in &http_match.query_params {
                self.value_match(at, "query parameter", param);
            }
            if !http_match.method.is_empty() && !valid_token(&http_match.method) {
                self.problem(at, format!("invalid method {:?}", http_match.method));
            }
        }
        if let Some(retry) = &route.retry {
            if let Some(code) = retry.codes.iter().find(|code| !(400..=599).contains(*code)) {
                self.problem(at, format!("retry code {code} is not in 400-599"));
            }
            if retry.attempts > MAX_RETRY_ATTEMPTS {
                self.problem(at, format!("retry attempts {} above {MAX_RETRY_ATTEMPTS}", retry.attempts));
            }
        }
        let mut terminal = false;
        for filter in &route.filters {
            terminal |= self.filter(at, filter, path_type);
        }
        if route.filters.iter().filter(|f| matches!(f.kind, Some(http_filter::Kind::Cors(_)))).count() > 1 {
            self.problem(at, "more than one CORS filter");
        }
        if terminal && !route.backends.is_empty() {
            self.problem(at, "a redirect or direct response cannot have backends");
        }
        for backend in &route.backends {
            self.backend(at, backend);
            for filter in &backend.filters {
                if self.filter(at, filter, path_type) {
                    self.problem(at, "backend filters cannot redirect or answer directly");
                }
                if matches!(filter.kind, Some(http_filter::Kind::Cors(_))) {
                    self.problem(at, "CORS applies to a route, not to a backend");
                }
            }
        }
    }

    fn value_match(&mut self, at: &str, what: &str, value_match: &ValueMatch) {
        if value_match.name.is_empty() {
            self.problem(at, format!("{what} match has an empty name"));
        }
        match value_match.r#type() {
            ValueMatchType::Unspecified => self.problem(at, format!("{what} match type is unspecified")),
            ValueMatchType::Exact => {}
            ValueMatchType::RegularExpression => self.regex(at, &value_match.value),
        }
    }

    fn regex(&mut self, at: &str, pattern: &str) {
        if let Err(problem) = crate::compile::full_regex(pattern) {
            self.problem(at, problem);
        }
    }

    /// Checks one filter; returns true when it ends the request (redirect, direct response).
    fn filter(&mut self, at: &str, filter: &HttpFilter, path_type: Option<PathMatchType>) -> bool {
        let Some(kind) = &filter.kind else {
            self.problem(at, "filter has no kind");
            return false;
        };
        match kind {
            http_filter::Kind::RequestHeaderModifier(modifier)
            | http_filter::Kind::ResponseHeaderModifier(modifier) => {
                let names = modifier.set.iter().chain(&modifier.add).map(|h| &h.name).chain(&modifier.remove);
                for name in names {
                    if !valid_token(name) {
                        self.problem(at, format!("invalid header name {name:?}"));
                    }
                }
                for header in modifier.set.iter().chain(&modifier.add) {
                    if !valid_header_value(&header.value) {
                        self.problem(at, format!("invalid value for header {:?}", header.name));
                    }
                }
                false
            }
            http_filter::Kind::RequestRedirect(redirect) => {
                if !["", "http", "https"].contains(&redirect.scheme.as_str()) {
                    self.problem(at, format!("unsupported redirect scheme {:?}", redirect.scheme));
                }
                if !matches!(redirect.status_code, 301 | 302 | 303 | 307 | 308) {
                    self.problem(at, format!("unsupported redirect status {}", redirect.status_code));
                }
                if redirect.port > 65535 {
                    self.problem(at, format!("redirect port {} out of range", redirect.port));
                }
                if !redirect.hostname.is_empty() && !valid_hostname(&redirect.hostname) {
                    self.problem(at, format!("invalid redirect hostname {:?}", redirect.hostname));
                }
                self.path_modifier(at, redirect.path.as_ref(), path_type);
                true
            }
            http_filter::Kind::UrlRewrite(rewrite) => {
                if !rewrite.hostname.is_empty() && !valid_hostname(&rewrite.hostname) {
                    self.problem(at, format!("invalid rewrite hostname {:?}", rewrite.hostname));
                }
                self.path_modifier(at, rewrite.path.as_ref(), path_type);
                false
            }
            http_filter::Kind::RequestMirror(mirror) => {
                if !self.cluster_known(&mirror.cluster) {
                    self.problem(at, format!("mirror to unknown cluster {}", mirror.cluster));
                }
                if mirror.denominator == 0 || mirror.numerator > mirror.denominator {
                    self.problem(at, format!("invalid mirror fraction {}/{}", mirror.numerator, mirror.denominator));
                }
                false
            }
            http_filter::Kind::DirectResponse(response) => {
                self.direct_response(at, response);
                true
            }
            http_filter::Kind::Cors(cors) => {
                if let Err(problem) = crate::compile::check_cors(cors) {
                    self.problem(at, problem);
                }
                false
            }
        }
    }

    fn path_modifier(&mut self, at: &str, modifier: Option<&PathModifier>, path_type: Option<PathMatchType>) {
        if let Some(path_modifier::Kind::ReplacePrefixMatch(path) | path_modifier::Kind::ReplaceFullPath(path)) =
            modifier.and_then(|m| m.kind.as_ref())
            && !valid_path_value(path)
        {
            self.problem(at, format!("replacement path {path:?} holds a control, space or non-ASCII character"));
        }
        match modifier.and_then(|m| m.kind.as_ref()) {
            Some(path_modifier::Kind::ReplacePrefixMatch(prefix)) => {
                if path_type != Some(PathMatchType::Prefix) {
                    self.problem(at, "ReplacePrefixMatch needs a PathPrefix match");
                }
                if !prefix.starts_with('/') {
                    self.problem(at, format!("replacement prefix {prefix:?} does not start with /"));
                }
            }
            Some(path_modifier::Kind::ReplaceFullPath(path)) if !path.starts_with('/') => {
                self.problem(at, format!("replacement path {path:?} does not start with /"));
            }
            Some(path_modifier::Kind::ReplaceFullPath(_)) | None => {}
        }
    }

    fn direct_response(&mut self, at: &str, response: &DirectResponse) {
        if !(200..=599).contains(&response.status) {
            self.problem(at, format!("direct response status {} out of range", response.status));
        }
    }

    fn backend(&mut self, at: &str, backend: &WeightedBackend) {
        match &backend.target {
            Some(weighted_backend::Target::Cluster(cluster)) => {
                if !self.cluster_known(cluster) {
                    self.problem(at, format!("backend {} points to unknown cluster {cluster}", backend.name));
                }
            }
            Some(weighted_backend::Target::Invalid(response)) => self.direct_response(at, response),
            None => self.problem(at, format!("backend {} has no target", backend.name)),
        }
    }
}

/// A DNS name as Gateway API allows it: lower-case labels, optionally a leading `*.`.
pub fn valid_hostname(hostname: &str) -> bool {
    let name = hostname.strip_prefix("*.").unwrap_or(hostname);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cluster, Endpoint, HttpMatch, PathMatch, RequestRedirect, http_filter::Kind};

    fn route(path: PathMatch) -> HttpRoute {
        HttpRoute {
            name: "httproute/ns/r/rule/0/match/0".into(),
            r#match: Some(HttpMatch { path: Some(path), ..Default::default() }),
            backends: vec![WeightedBackend {
                name: "service/ns/svc/port/80".into(),
                weight: 1,
                target: Some(weighted_backend::Target::Cluster("service/ns/svc/port/80".into())),
                filters: vec![],
            }],
            ..Default::default()
        }
    }

    fn snapshot(routes: Vec<HttpRoute>) -> Snapshot {
        Snapshot {
            gateway: "ns/gw".into(),
            listeners: vec![Listener {
                name: "gateway/ns/gw/listener/http".into(),
                port: 80,
                protocol: Protocol::Http as i32,
                http_routes: routes,
                ..Default::default()
            }],
            clusters: vec![Cluster {
                name: "service/ns/svc/port/80".into(),
                endpoints: vec![Endpoint { address: "10.0.0.1".into(), port: 8080, ready: true }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn prefix(value: &str) -> PathMatch {
        PathMatch { r#type: PathMatchType::Prefix as i32, value: value.into() }
    }

    #[test]
    fn accepts_a_plain_snapshot() {
        assert_eq!(validate(&snapshot(vec![route(prefix("/"))])), Ok(()));
    }

    #[test]
    fn rejects_bad_regex_and_unknown_cluster() {
        let mut bad = route(PathMatch { r#type: PathMatchType::RegularExpression as i32, value: "/(".into() });
        bad.backends[0].target = Some(weighted_backend::Target::Cluster("nope".into()));
        let error = validate(&snapshot(vec![bad])).unwrap_err();
        assert_eq!(error.problems.len(), 2, "{error}");
        assert!(error.problems[0].contains("invalid regular expression"));
        assert!(error.problems[1].contains("unknown cluster nope"));
    }

    #[test]
    fn cors_policies_are_checked_once_per_route_and_never_on_backends() {
        let cors = |origin: &str| HttpFilter {
            kind: Some(Kind::Cors(crate::Cors {
                allow_origins: vec![origin.into()],
                allow_methods: vec!["*".into()],
                max_age_seconds: 5,
                ..Default::default()
            })),
        };
        let mut good = route(prefix("/"));
        good.filters.push(cors("https://*.example.com"));
        assert_eq!(validate(&snapshot(vec![good.clone()])), Ok(()));

        let mut bad = good.clone();
        bad.filters.push(cors("*"));
        bad.backends[0].filters.push(cors("ftp://example.com"));
        let found = problems(&snapshot(vec![bad]));
        let lines: Vec<String> = found.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            lines,
            [
                "httproute/ns/r/rule/0/match/0: more than one CORS filter",
                "httproute/ns/r/rule/0/match/0: allowOrigins entry \"ftp://example.com\" must use the scheme http or https",
                "httproute/ns/r/rule/0/match/0: CORS applies to a route, not to a backend",
            ]
        );
        assert!(found.iter().all(|p| p.piece == Piece::Route("httproute/ns/r/rule/0/match/0".into())), "{found:?}");
    }

    #[test]
    fn rejects_redirect_with_backends_and_bad_status() {
        let mut r = route(prefix("/"));
        r.filters.push(HttpFilter {
            kind: Some(Kind::RequestRedirect(RequestRedirect { status_code: 200, ..Default::default() })),
        });
        let error = validate(&snapshot(vec![r])).unwrap_err();
        assert!(error.to_string().contains("unsupported redirect status 200"));
        assert!(error.to_string().contains("cannot have backends"));
    }

    #[test]
    fn rejects_conflicting_listeners_and_bad_endpoints() {
        let mut s = snapshot(vec![]);
        let mut tcp = s.listeners[0].clone();
        tcp.name = "gateway/ns/gw/listener/tcp".into();
        tcp.protocol = Protocol::Tcp as i32;
        s.listeners.push(tcp);
        s.clusters[0].endpoints[0].address = "pod-a".into();
        let error = validate(&s).unwrap_err();
        assert!(error.to_string().contains("different protocols"), "{error}");
        assert!(error.to_string().contains("not an IP"), "{error}");
    }

    #[test]
    fn udp_listeners_share_port_numbers_with_tcp_but_not_with_each_other() {
        let mut s = snapshot(vec![]);
        let mut udp = s.listeners[0].clone();
        udp.name = "gateway/ns/gw/listener/udp".into();
        udp.protocol = Protocol::Udp as i32;
        udp.http_routes.clear();
        udp.udp_routes.push(crate::UdpRoute {
            name: "udproute/ns/r/rule/0".into(),
            backends: vec![WeightedBackend {
                name: "service/ns/svc/port/80".into(),
                weight: 1,
                target: Some(weighted_backend::Target::Cluster("service/ns/svc/port/80".into())),
                filters: vec![],
            }],
        });
        s.listeners.push(udp.clone());
        assert_eq!(validate(&s), Ok(()));
        let mut second = udp.clone();
        second.name = "gateway/ns/gw/listener/udp2".into();
        second.hostname = "other.example.com".into();
        s.listeners.push(second);
        let error = validate(&s).unwrap_err();
        assert!(error.to_string().contains("a UDP listener cannot share its port"), "{error}");
        s.listeners.pop();
        s.listeners[0].udp_routes = udp.udp_routes.clone();
        let error = validate(&s).unwrap_err();
        assert!(error.to_string().contains("UDP routes on a non-UDP listener"), "{error}");
    }

    #[test]
    fn udp_listeners_carry_only_udp_routes_and_share_port_numbers_with_tcp() {
        let mut s = snapshot(vec![]);
        let backend = s.listeners[0].clone();
        let mut tcp = backend.clone();
        tcp.name = "gateway/ns/gw/listener/tcp".into();
        tcp.port = 53;
        tcp.protocol = Protocol::Tcp as i32;
        let mut udp = tcp.clone();
        udp.name = "gateway/ns/gw/listener/udp".into();
        udp.protocol = Protocol::Udp as i32;
        let to_svc = WeightedBackend {
            name: "service/ns/svc/port/80".into(),
            weight: 1,
            target: Some(weighted_backend::Target::Cluster("service/ns/svc/port/80".into())),
            filters: vec![],
        };
        tcp.tcp_routes.push(crate::TcpRoute { name: "tcproute/ns/r/rule/0".into(), backends: vec![to_svc.clone()] });
        udp.udp_routes.push(crate::UdpRoute { name: "udproute/ns/r/rule/0".into(), backends: vec![to_svc.clone()] });
        s.listeners.extend([tcp.clone(), udp.clone()]);
        assert_eq!(validate(&s), Ok(()), "a TCP and a UDP listener on port 53");

        let mut wrong = udp.clone();
        wrong.http_routes = vec![route(prefix("/"))];
        wrong.tcp_routes = tcp.tcp_routes.clone();
        s.listeners[2] = wrong;
        let error = validate(&s).unwrap_err();
        assert_eq!(
            error.problems,
            [
                "gateway/ns/gw/listener/udp: HTTP routes on a non-HTTP listener",
                "gateway/ns/gw/listener/udp: TCP routes on a non-TCP listener",
            ]
        );

        let mut bad_backends = udp.clone();
        bad_backends.udp_routes[0].backends[0].target = Some(weighted_backend::Target::Cluster("nope".into()));
        bad_backends.udp_routes[0].backends[0].filters.push(HttpFilter {
            kind: Some(Kind::RequestRedirect(RequestRedirect { status_code: 302, ..Default::default() })),
        });
        s.listeners[2] = bad_backends;
        let error = validate(&s).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("udproute/ns/r/rule/0: backend service/ns/svc/port/80 points to unknown cluster nope"),
            "{error}"
        );
        assert!(error.to_string().contains("udproute/ns/r/rule/0: UDP backends take no filters"), "{error}");

        // Two UDP listeners on one port conflict even with different hostnames, like TCP ones.
        s.listeners[2] = udp.clone();
        let mut second = udp.clone();
        second.name = "gateway/ns/gw/listener/udp2".into();
        second.hostname = "other.example.com".into();
        s.listeners.push(second);
        let error = validate(&s).unwrap_err();
        assert_eq!(error.problems, ["port 53: a UDP listener cannot share its port"]);
    }

    #[test]
    fn tls_listeners_terminate_or_pass_through_and_carry_only_tls_routes() {
        let to_svc = WeightedBackend {
            name: "service/ns/svc/port/80".into(),
            weight: 1,
            target: Some(weighted_backend::Target::Cluster("service/ns/svc/port/80".into())),
            filters: vec![],
        };
        let tls_route = |name: &str, hostname: &str| crate::TlsRoute {
            name: name.into(),
            hostnames: vec![hostname.into()],
            backends: vec![to_svc.clone()],
        };
        let mut s = snapshot(vec![]);
        s.listeners.clear();
        s.certificates.push(crate::Certificate {
            name: "secret/ns/c".into(),
            cert_chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            private_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        });
        let passthrough = Listener {
            name: "gateway/ns/gw/listener/pass".into(),
            port: 8443,
            protocol: Protocol::Tls as i32,
            hostname: "abc.example.com".into(),
            tls_mode: TlsMode::Passthrough as i32,
            tls_routes: vec![tls_route("tlsroute/ns/pass/rule/0", "abc.example.com")],
            ..Default::default()
        };
        let terminate = Listener {
            name: "gateway/ns/gw/listener/term".into(),
            hostname: "*.example.com".into(),
            tls_mode: TlsMode::Terminate as i32,
            certificates: vec!["secret/ns/c".into()],
            tls_routes: vec![tls_route("tlsroute/ns/term/rule/0", "tls.example.com")],
            ..passthrough.clone()
        };
        s.listeners = vec![passthrough.clone(), terminate.clone()];
        assert_eq!(validate(&s), Ok(()), "both modes on one port");

        let mut bad = passthrough.clone();
        bad.name = "gateway/ns/gw/listener/bad".into();
        bad.port = 9443;
        bad.certificates = vec!["secret/ns/c".into()];
        bad.tls_routes[0].hostnames = vec!["Bad Host".into()];
        bad.tls_routes[0].backends[0].filters.push(HttpFilter {
            kind: Some(Kind::RequestRedirect(RequestRedirect { status_code: 302, ..Default::default() })),
        });
        let mut unspecified = terminate.clone();
        unspecified.name = "gateway/ns/gw/listener/unspecified".into();
        unspecified.port = 9444;
        unspecified.tls_mode = TlsMode::Unspecified as i32;
        unspecified.tls_routes.clear();
        let mut tcp = passthrough.clone();
        tcp.name = "gateway/ns/gw/listener/tcp".into();
        tcp.port = 9445;
        tcp.hostname.clear();
        tcp.protocol = Protocol::Tcp as i32;
        tcp.tls_mode = TlsMode::Unspecified as i32;
        s.listeners.extend([bad, unspecified, tcp]);
        let found = problems(&s);
        let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "gateway/ns/gw/listener/bad: a Passthrough listener has no certificates",
                "tlsroute/ns/pass/rule/0: invalid hostname \"Bad Host\"",
                "tlsroute/ns/pass/rule/0: TLS backends take no filters",
                "gateway/ns/gw/listener/unspecified: a TLS listener needs tls_mode Terminate or Passthrough",
                "gateway/ns/gw/listener/tcp: TLS routes on a non-TLS listener",
            ]
        );
        assert_eq!(found[1].piece, Piece::Route("tlsroute/ns/pass/rule/0".into()));
        assert_eq!(found[3].piece, Piece::Listener("gateway/ns/gw/listener/unspecified".into()));
    }

    #[test]
    fn problems_name_the_piece_they_make_unusable() {
        let mut bad_rewrite = route(prefix("/"));
        bad_rewrite.name = "httproute/ns/bad/rule/0/match/0".into();
        bad_rewrite.filters.push(HttpFilter {
            kind: Some(Kind::UrlRewrite(crate::UrlRewrite {
                hostname: String::new(),
                path: Some(PathModifier {
                    kind: Some(path_modifier::Kind::ReplaceFullPath("/x HTTP/1.1\r\nX-Evil: 1".into())),
                }),
            })),
        });
        let mut s = snapshot(vec![route(prefix("/")), bad_rewrite]);
        let mut https = s.listeners[0].clone();
        https.name = "gateway/ns/gw/listener/https".into();
        https.port = 443;
        https.protocol = Protocol::Https as i32;
        https.http_routes.clear();
        https.certificates = vec!["secret/ns/missing".into()];
        s.listeners.push(https);
        let found = problems(&s);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].piece, Piece::Route("httproute/ns/bad/rule/0/match/0".into()));
        assert!(found[0].message.contains("holds a control, space or non-ASCII character"), "{}", found[0]);
        assert_eq!(found[1].piece, Piece::Listener("gateway/ns/gw/listener/https".into()));
        assert!(found[1].message.contains("unknown certificate secret/ns/missing"));
        s.listeners[1].name = s.listeners[0].name.clone();
        assert!(problems(&s).iter().any(|p| p.piece == Piece::Snapshot && p.message == "duplicate listener name"));
    }

    #[test]
    fn client_validations_are_per_https_port_and_known() {
        let validation = |name: &str, mode: ClientValidationMode| crate::ClientValidation {
            name: name.into(),
            ca_bundle_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            mode: mode as i32,
        };
        let https = |name: &str, port: u32, hostname: &str, validation: &str| Listener {
            name: format!("gateway/ns/gw/listener/{name}"),
            port,
            protocol: Protocol::Https as i32,
            hostname: hostname.into(),
            certificates: vec!["secret/ns/tls".into()],
            client_validation: validation.into(),
            ..Default::default()
        };
        let mut s = snapshot(vec![]);
        s.certificates.push(crate::Certificate {
            name: "secret/ns/tls".into(),
            cert_chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            private_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        });
        s.client_validations = vec![
            validation("gateway/ns/gw/frontend/default", ClientValidationMode::AllowValidOnly),
            validation("gateway/ns/gw/frontend/port/8443", ClientValidationMode::AllowInsecureFallback),
        ];
        s.listeners.push(https("a", 443, "a.example.com", "gateway/ns/gw/frontend/default"));
        s.listeners.push(https("b", 443, "b.example.com", "gateway/ns/gw/frontend/default"));
        s.listeners.push(https("c", 8443, "", "gateway/ns/gw/frontend/port/8443"));
        assert_eq!(validate(&s), Ok(()));

        // Listeners of one port must agree: the certificate is requested before the SNI
        // picks a listener.
        let mut differ = s.clone();
        differ.listeners[3].port = 443;
        let error = validate(&differ).unwrap_err();
        assert_eq!(error.problems, ["port 443: HTTPS listeners on the port differ in client certificate validation"]);
        differ.listeners[3].client_validation.clear();
        assert!(validate(&differ).is_err(), "one listener without validation on a port with validation");

        let mut unknown = s.clone();
        unknown.listeners[3].client_validation = "gateway/ns/gw/frontend/port/1".into();
        let found = problems(&unknown);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].piece, Piece::Listener("gateway/ns/gw/listener/c".into()));
        assert_eq!(found[0].message, "unknown client validation gateway/ns/gw/frontend/port/1");

        let mut on_http = s.clone();
        on_http.listeners[0].client_validation = "gateway/ns/gw/frontend/default".into();
        let found = problems(&on_http);
        assert_eq!(found[0].piece, Piece::Listener("gateway/ns/gw/listener/http".into()));
        assert_eq!(found[0].message, "client certificate validation on a listener that is not HTTPS");

        let mut broken = s.clone();
        broken.client_validations[1].ca_bundle_pem = "not PEM".into();
        broken.client_validations[1].mode = ClientValidationMode::Unspecified as i32;
        let found: Vec<(Piece, String)> = problems(&broken).into_iter().map(|p| (p.piece, p.message)).collect();
        let piece = Piece::ClientValidation("gateway/ns/gw/frontend/port/8443".into());
        assert_eq!(
            found,
            [
                (piece.clone(), "the CA bundle is not PEM".to_string()),
                (piece, "client validation mode is unspecified".to_string())
            ]
        );
        broken.client_validations[1].name = "gateway/ns/gw/frontend/default".into();
        assert!(problems(&broken).iter().any(|p| p.piece == Piece::Snapshot));
    }

    #[test]
    fn path_and_header_values() {
        assert!(valid_path_value("/a/b?c=%20"));
        for bad in ["/a b", "/a\r\n", "/a\0", "/é", ""] {
            assert_eq!(valid_path_value(bad), bad.is_empty(), "{bad:?}");
        }
        assert!(valid_header_value("a b\tc"));
        assert!(!valid_header_value("a\r\nb"));
        assert!(!valid_header_value("é"));
    }

    #[test]
    fn hostnames() {
        assert!(valid_hostname("foo.example.com"));
        assert!(valid_hostname("*.example.com"));
        assert!(!valid_hostname("*"));
        assert!(!valid_hostname("Foo.com"));
        assert!(!valid_hostname("a..b"));
    }
}
