//! HTTPRoutes: rules → snapshot routes (one per rule match), filters, backends, precedence.

use std::cmp::Reverse;

use sluice_gateway_api::httproutes::{
    HttpRoute as HTTPRoute, HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesMethod, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use sluice_snapshot::{
    Cluster, DirectResponse, HttpFilter, HttpMatch, HttpRoute, PathMatch, PathMatchType, Retry, Timeouts, ValueMatch,
    ValueMatchType, WeightedBackend, http_filter,
};

use crate::attach::HostnameRank;
use crate::backends::{BackendError, ClusterCache, Traffic, weighted_backend};
use crate::httpfilters::compile_filter;
use crate::index::{Index, ObjectKey};
use crate::problems::Problem;
use crate::rule_problems::RuleProblem;

use crate::backends::INVALID_BACKEND_STATUS;

/// The route kinds whose rules become snapshot HTTP routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    /// The kind's name in the API (attachment, ReferenceGrant `from.kind`).
    pub const fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }

    /// The prefix of snapshot route names (`httproute/ns/name/rule/0/match/0`).
    fn prefix(self) -> &'static str {
        match self {
            RouteKind::Http => "httproute",
            RouteKind::Grpc => "grpcroute",
        }
    }

    pub(crate) fn traffic(self) -> Traffic {
        match self {
            RouteKind::Http => Traffic::Http,
            RouteKind::Grpc => Traffic::Grpc,
        }
    }
}

/// How a GRPCRoute match ranks (characters of its service, of its method, its number of
/// header matches: more is more specific).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GrpcRank {
    pub service: usize,
    pub method: usize,
    pub headers: usize,
}

/// A rule ready to be placed on listeners.
pub(crate) struct CompiledRule {
    pub kind: RouteKind,
    pub index: usize,
    pub matches: Vec<HttpMatch>,
    /// GRPCRoute rules: the rank of each match (same order as `matches`).
    pub grpc_ranks: Vec<GrpcRank>,
    pub filters: Vec<HttpFilter>,
    pub backends: Vec<WeightedBackend>,
    pub timeouts: Option<Timeouts>,
    pub retry: Option<Retry>,
}

/// An HTTPRoute's rules compiled once, whatever listeners it attaches to.
pub(crate) struct CompiledRoute {
    pub rules: Vec<CompiledRule>,
    /// Rules dropped, with why (`rule <i>: ...`).
    pub invalid_rules: Vec<String>,
    /// The first unresolved reference (ResolvedRefs=False).
    pub unresolved: Option<BackendError>,
    /// Clusters the rules reference.
    pub clusters: Vec<std::sync::Arc<Cluster>>,
}

/// Orders snapshot routes on a listener as the HTTPRoute and GRPCRoute specs rank
/// matches. The two kinds are never merged: GRPCRoute rules (which match only gRPC
/// requests) come first, in their own precedence, then HTTPRoute rules, so a gRPC request
/// falls through to HTTPRoutes only when no GRPCRoute of its host matches it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RouteOrder {
    /// 0 for GRPCRoute rules, 1 for HTTPRoute rules.
    kind: u8,
    /// The route's own hostname on this listener, most specific first (the snapshot
    /// routes of a host group share their hostnames after intersection).
    hostname: Reverse<HostnameRank>,
    grpc_service: Reverse<usize>,
    grpc_method: Reverse<usize>,
    grpc_headers: Reverse<usize>,
    path_rank: u8,
    path_length: Reverse<usize>,
    has_method: Reverse<bool>,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    /// The route's age, then namespace/name (see `by_age`).
    route_rank: Age,
    rule: usize,
    match_index: usize,
}

fn route_order(
    hostname: HostnameRank,
    route_rank: Age,
    rule: usize,
    match_index: usize,
    http_match: &HttpMatch,
) -> RouteOrder {
    let path = http_match.path.as_ref();
    let (path_rank, path_length) = match path.map(|p| (p.r#type(), p.value.len())) {
        Some((PathMatchType::Exact, len)) => (0, len),
        Some((PathMatchType::RegularExpression, len)) => (1, len),
        Some((_, len)) => (2, len),
        None => (2, 1),
    };
    RouteOrder {
        kind: 1,
        hostname: Reverse(hostname),
        grpc_service: Reverse(0),
        grpc_method: Reverse(0),
        grpc_headers: Reverse(0),
        path_rank,
        path_length: Reverse(path_length),
        has_method: Reverse(!http_match.method.is_empty()),
        headers: Reverse(http_match.headers.len()),
        query_params: Reverse(http_match.query_params.len()),
        route_rank,
        rule,
        match_index,
    }
}

/// GRPCRoute order for a match with `rank`: before every HTTPRoute rule, then by the
/// GRPCRoute precedence, then by route age, rule and match.
fn grpc_route_order(
    hostname: HostnameRank,
    route_rank: Age,
    rule: usize,
    match_index: usize,
    rank: GrpcRank,
) -> RouteOrder {
    RouteOrder {
        kind: 0,
        hostname: Reverse(hostname),
        grpc_service: Reverse(rank.service),
        grpc_method: Reverse(rank.method),
        grpc_headers: Reverse(rank.headers),
        path_rank: 0,
        path_length: Reverse(0),
        has_method: Reverse(false),
        headers: Reverse(0),
        query_params: Reverse(0),
        route_rank,
        rule,
        match_index,
    }
}

/// Compiles every rule of `route`; invalid rules are dropped and reported.
pub(crate) fn compile_route(route: &HTTPRoute, index: &Index<'_>, cache: &mut ClusterCache<'_>) -> CompiledRoute {
    let rules = route.spec.rules.iter().flatten().map(|rule| Ok((std::borrow::Cow::Borrowed(rule), Vec::new())));
    compile_rules(&ObjectKey::of(route), RouteKind::Http, rules, index, cache)
}

/// A rule in HTTPRoute form, with the GRPCRoute ranks of its matches (GRPCRoutes only),
/// or why it cannot be one.
pub(crate) type RuleInput<'a> = Result<(std::borrow::Cow<'a, HttpRouteRules>, Vec<GrpcRank>), RuleProblem>;

/// Compiles the rules of a route of `kind`; invalid rules are dropped and reported.
pub(crate) fn compile_rules<'a>(
    key: &ObjectKey,
    kind: RouteKind,
    rules: impl Iterator<Item = RuleInput<'a>>,
    index: &Index<'_>,
    cache: &mut ClusterCache<'_>,
) -> CompiledRoute {
    let mut compiled =
        CompiledRoute { rules: Vec::new(), invalid_rules: Vec::new(), unresolved: None, clusters: Vec::new() };
    for (i, rule) in rules.enumerate() {
        let result = rule.and_then(|(rule, ranks)| {
            let mut rule = compile_rule(key, kind, i, &rule, index, cache, &mut compiled)?;
            rule.grpc_ranks = ranks;
            Ok(rule)
        });
        match result {
            Ok(rule) => compiled.rules.push(rule),
            Err(problem) => compiled.invalid_rules.push(format!("rule {i}: {}", problem.message())),
        }
    }
    compiled
}

fn compile_rule(
    route: &ObjectKey,
    kind: RouteKind,
    rule_index: usize,
    rule: &HttpRouteRules,
    index: &Index<'_>,
    cache: &mut ClusterCache<'_>,
    out: &mut CompiledRoute,
) -> Result<CompiledRule, RuleProblem> {
    let default_match = [HttpRouteRulesMatches::default()];
    let user_matches = rule.matches.as_deref().filter(|m| !m.is_empty()).unwrap_or(&default_match);
    let matches = user_matches.iter().map(compile_match).collect::<Result<Vec<_>, _>>()?;
    let path_types: Vec<PathMatchType> =
        matches.iter().map(|m| m.path.as_ref().map_or(PathMatchType::Prefix, |p| p.r#type())).collect();

    let mut filters = Vec::new();
    let mut terminal = false;
    for filter in rule.filters.iter().flatten() {
        let filter = compile_filter(route, kind, filter, &path_types, index, cache, out)?;
        if matches!(filter.kind, Some(http_filter::Kind::DirectResponse(_))) {
            // An unresolvable custom filter: the whole rule answers with an error.
            let timeouts = compile_timeouts(rule)?;
            let retry = compile_retry(rule)?;
            return Ok(CompiledRule {
                kind,
                index: rule_index,
                matches,
                grpc_ranks: Vec::new(),
                filters: vec![filter],
                backends: vec![],
                timeouts,
                retry,
            });
        }
        terminal |= matches!(filter.kind, Some(http_filter::Kind::RequestRedirect(_)));
        if matches!(filter.kind, Some(http_filter::Kind::Cors(_)))
            && filters.iter().any(|f: &HttpFilter| matches!(f.kind, Some(http_filter::Kind::Cors(_))))
        {
            return Err(RuleProblem::TwoCorsFilters);
        }
        filters.extend(filter.kind.map(|kind| HttpFilter { kind: Some(kind) }));
    }

    let backend_refs = rule.backend_refs.as_deref().unwrap_or_default();
    if terminal && !backend_refs.is_empty() {
        return Err(RuleProblem::RedirectWithBackends);
    }
    let mut backends = Vec::new();
    for backend in backend_refs {
        let reference = backend_ref!(backend);
        let weight = u32::try_from(backend.weight.unwrap_or(1)).unwrap_or(0);
        let mut backend_filters = Vec::new();
        for filter in backend.filters.iter().flatten() {
            // Backend filters share the rule filters' schema; reuse one conversion.
            let as_rule_filter: HttpRouteRulesFilters =
                serde_json::to_value(filter)
                    .and_then(serde_json::from_value)
                    .map_err(|error| RuleProblem::UnreadableBackendFilter { error: error.to_string() })?;
            let filter = compile_filter(route, kind, &as_rule_filter, &path_types, index, cache, out)?;
            if matches!(filter.kind, Some(http_filter::Kind::RequestRedirect(_))) {
                return Err(RuleProblem::RedirectAsBackendFilter);
            }
            if matches!(filter.kind, Some(http_filter::Kind::Cors(_))) {
                return Err(RuleProblem::CorsAsBackendFilter);
            }
            backend_filters.extend(filter.kind.map(|kind| HttpFilter { kind: Some(kind) }));
        }
        // A backend whose own custom filter cannot be resolved answers 500 for its share.
        let unresolvable = backend_filters.iter().any(|f| matches!(f.kind, Some(http_filter::Kind::DirectResponse(_))));
        let resolved = if unresolvable {
            backend_filters.clear();
            Err(BackendError::InvalidKind(format!(
                "backendRef {} has an unsupported ExtensionRef filter",
                backend.name
            )))
        } else {
            cache.resolve(index, kind.name(), &route.namespace, reference, kind.traffic())
        };
        backends.push(weighted_backend(
            reference,
            &route.namespace,
            weight,
            resolved,
            backend_filters,
            &mut out.clusters,
            &mut out.unresolved,
        ));
    }
    if !terminal && backend_refs.is_empty() {
        filters.push(HttpFilter {
            kind: Some(http_filter::Kind::DirectResponse(DirectResponse {
                status: INVALID_BACKEND_STATUS,
                body: String::new(),
            })),
        });
    }
    Ok(CompiledRule {
        kind,
        index: rule_index,
        matches,
        grpc_ranks: Vec::new(),
        filters,
        backends,
        timeouts: compile_timeouts(rule)?,
        retry: compile_retry(rule)?,
    })
}

/// Default wait before a retry when the rule gives no `backoff`.
const DEFAULT_RETRY_BACKOFF_MS: u64 = 25;

/// The rule's `retry`: codes 400-599, attempts within the data plane's limit, backoff a
/// Gateway API duration. Without `attempts` a request is retried once.
fn compile_retry(rule: &HttpRouteRules) -> Result<Option<Retry>, RuleProblem> {
    let Some(retry) = &rule.retry else { return Ok(None) };
    let mut codes = Vec::new();
    for code in retry.codes.iter().flatten() {
        match u32::try_from(*code) {
            Ok(code) if (400..=599).contains(&code) => codes.push(code),
            _ => return Err(RuleProblem::RetryCode { code: code.to_string() }),
        }
    }
    let attempts = match retry.attempts {
        None => 1,
        Some(n) => match u32::try_from(n) {
            Ok(n) if n <= sluice_snapshot::MAX_RETRY_ATTEMPTS => n,
            _ => return Err(RuleProblem::RetryAttempts { attempts: n.to_string() }),
        },
    };
    let backoff_ms = match &retry.backoff {
        None => DEFAULT_RETRY_BACKOFF_MS,
        Some(text) => sluice_gateway_api::parse_duration(text)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|error| RuleProblem::RetryBackoff { value: text.clone(), error: error.to_string() })?,
    };
    Ok(Some(Retry { codes, attempts, backoff_ms }))
}

fn compile_match(user: &HttpRouteRulesMatches) -> Result<HttpMatch, RuleProblem> {
    let path = match &user.path {
        None => PathMatch { r#type: PathMatchType::Prefix as i32, value: "/".into() },
        Some(path) => {
            let value = path.value.clone().unwrap_or_else(|| "/".into());
            let kind = match path.r#type {
                Some(HttpRouteRulesMatchesPathType::Exact) => PathMatchType::Exact,
                Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                    check_regex(&value)?;
                    PathMatchType::RegularExpression
                }
                Some(HttpRouteRulesMatchesPathType::PathPrefix) | None => PathMatchType::Prefix,
            };
            if kind != PathMatchType::RegularExpression && !value.starts_with('/') {
                return Err(RuleProblem::PathNotAbsolute { path: value });
            }
            PathMatch { r#type: kind as i32, value }
        }
    };
    let mut headers: Vec<ValueMatch> = Vec::new();
    for header in user.headers.iter().flatten() {
        // The first match for a header name wins; names compare case-insensitively.
        if headers.iter().any(|h| h.name.eq_ignore_ascii_case(&header.name)) {
            continue;
        }
        check_header_name(&header.name)?;
        let kind = match header.r#type {
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                check_regex(&header.value)?;
                ValueMatchType::RegularExpression
            }
            _ => ValueMatchType::Exact,
        };
        headers.push(ValueMatch { r#type: kind as i32, name: header.name.clone(), value: header.value.clone() });
    }
    let mut query_params: Vec<ValueMatch> = Vec::new();
    for param in user.query_params.iter().flatten() {
        if query_params.iter().any(|q| q.name == param.name) {
            continue;
        }
        if param.name.is_empty() {
            return Err(RuleProblem::QueryParamWithoutName);
        }
        let kind = match param.r#type {
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                check_regex(&param.value)?;
                ValueMatchType::RegularExpression
            }
            _ => ValueMatchType::Exact,
        };
        query_params.push(ValueMatch { r#type: kind as i32, name: param.name.clone(), value: param.value.clone() });
    }
    let method = user.method.as_ref().map(method_name).unwrap_or_default().to_string();
    Ok(HttpMatch { path: Some(path), headers, query_params, method })
}

fn method_name(method: &HttpRouteRulesMatchesMethod) -> &'static str {
    match method {
        HttpRouteRulesMatchesMethod::Get => "GET",
        HttpRouteRulesMatchesMethod::Head => "HEAD",
        HttpRouteRulesMatchesMethod::Post => "POST",
        HttpRouteRulesMatchesMethod::Put => "PUT",
        HttpRouteRulesMatchesMethod::Delete => "DELETE",
        HttpRouteRulesMatchesMethod::Connect => "CONNECT",
        HttpRouteRulesMatchesMethod::Options => "OPTIONS",
        HttpRouteRulesMatchesMethod::Trace => "TRACE",
        HttpRouteRulesMatchesMethod::Patch => "PATCH",
    }
}

/// Orders routes as the spec breaks ties: oldest first (routes without a creation time
/// last), then by namespace/name.
pub(crate) fn by_age<K: kube::Resource>(routes: &[std::sync::Arc<K>]) -> Vec<&K> {
    let mut sorted: Vec<&K> = routes.iter().map(|r| r.as_ref()).collect();
    sorted.sort_by(|a, b| age_order(a.meta()).cmp(&age_order(b.meta())));
    sorted
}

/// The order `by_age` sorts in: oldest first (objects without a creation timestamp
/// last), then namespace, then name.
fn age_order(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (bool, Option<k8s_openapi::jiff::Timestamp>, Option<&str>, Option<&str>) {
    (
        meta.creation_timestamp.is_none(),
        meta.creation_timestamp.as_ref().map(|t| t.0),
        meta.namespace.as_deref(),
        meta.name.as_deref(),
    )
}

/// A route's place in `by_age` order. Unlike its position in that order, it does not
/// move when other routes come or go, so what a route placed can be kept and compared
/// across translations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Age(std::sync::Arc<AgeKey>);

/// No timestamp, creation timestamp, namespace, name.
type AgeKey = (bool, Option<k8s_openapi::jiff::Timestamp>, Option<String>, Option<String>);

impl Age {
    pub(crate) fn of<K: kube::Resource>(route: &K) -> Age {
        let (none, created, namespace, name) = age_order(route.meta());
        Age(std::sync::Arc::new((none, created, namespace.map(str::to_string), name.map(str::to_string))))
    }

    /// The age of a route named `name` without a creation timestamp (for tests).
    #[cfg(test)]
    pub(crate) fn named(name: &str) -> Age {
        Age(std::sync::Arc::new((true, None, None, Some(name.to_string()))))
    }
}

/// Compiles a regular expression exactly as the data plane will (anchored, size limits).
pub(crate) fn check_regex(pattern: &str) -> Result<(), RuleProblem> {
    sluice_snapshot::compile::full_regex(pattern).map(|_| ()).map_err(RuleProblem::InvalidRegex)
}

pub(crate) fn check_header_name(name: &str) -> Result<(), RuleProblem> {
    if sluice_snapshot::valid_token(name) {
        Ok(())
    } else {
        Err(RuleProblem::InvalidHeaderName { name: name.to_string() })
    }
}

fn compile_timeouts(rule: &HttpRouteRules) -> Result<Option<Timeouts>, RuleProblem> {
    let Some(timeouts) = &rule.timeouts else { return Ok(None) };
    let parse = |value: &Option<String>, field: &'static str| -> Result<u64, RuleProblem> {
        match value {
            None => Ok(0),
            Some(text) => sluice_gateway_api::parse_duration(text)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .map_err(|error| RuleProblem::Timeout { field, value: text.clone(), error: error.to_string() }),
        }
    };
    let request_ms = parse(&timeouts.request, "request")?;
    let backend_request_ms = parse(&timeouts.backend_request, "backendRequest")?;
    if request_ms != 0 && backend_request_ms > request_ms {
        return Err(RuleProblem::BackendRequestLongerThanRequest);
    }
    Ok(Some(Timeouts { request_ms, backend_request_ms }))
}

/// The snapshot routes of one compiled rule on one listener.
pub(crate) fn place_rule<'a>(
    key: &'a ObjectKey,
    route_rank: Age,
    rule: &'a CompiledRule,
    hostnames: &'a [String],
    hostname_rank: HostnameRank,
) -> impl Iterator<Item = (RouteOrder, HttpRoute)> + 'a {
    rule.matches.iter().enumerate().map(move |(j, http_match)| {
        let order = match rule.kind {
            RouteKind::Http => route_order(hostname_rank, route_rank.clone(), rule.index, j, http_match),
            RouteKind::Grpc => {
                let rank = rule.grpc_ranks.get(j).copied().unwrap_or_default();
                grpc_route_order(hostname_rank, route_rank.clone(), rule.index, j, rank)
            }
        };
        let snapshot_route = HttpRoute {
            name: format!("{}/{}/{}/rule/{}/match/{j}", rule.kind.prefix(), key.namespace, key.name, rule.index),
            hostnames: hostnames.to_vec(),
            r#match: Some(http_match.clone()),
            filters: rule.filters.clone(),
            backends: rule.backends.clone(),
            timeouts: rule.timeouts,
            retry: rule.retry.clone(),
        };
        (order, snapshot_route)
    })
}
