//! HTTPRoute filters (rule and backendRef filters): header modifiers, redirects,
//! rewrites, mirrors, CORS and ExtensionRefs become snapshot filters.

use sluice_gateway_api::httproutes::{
    HttpRouteRulesFilters, HttpRouteRulesFiltersCors, HttpRouteRulesFiltersRequestRedirectPath,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewritePath,
};
use sluice_snapshot::{
    Cors, DirectResponse, Header, HeaderModifier, HttpFilter, PathMatchType, PathModifier, RequestMirror,
    RequestRedirect, UrlRewrite, http_filter, path_modifier,
};

use crate::backends::{BackendError, ClusterCache, INVALID_BACKEND_STATUS};
use crate::httproutes::{CompiledRoute, RouteKind, check_header_name};
use crate::index::{Index, ObjectKey};
use crate::rule_problems::RuleProblem;

pub(crate) fn compile_filter(
    route: &ObjectKey,
    route_kind: RouteKind,
    filter: &HttpRouteRulesFilters,
    path_types: &[PathMatchType],
    index: &Index<'_>,
    cache: &mut ClusterCache<'_>,
    out: &mut CompiledRoute,
) -> Result<HttpFilter, RuleProblem> {
    let missing = |field: &'static str| RuleProblem::MissingFilterField { filter_type: filter.r#type.clone(), field };
    let kind = match filter.r#type {
        HttpRouteRulesFiltersType::RequestHeaderModifier => {
            let modifier = filter.request_header_modifier.as_ref().ok_or_else(|| missing("requestHeaderModifier"))?;
            http_filter::Kind::RequestHeaderModifier(header_modifier(
                modifier.set.iter().flatten().map(|h| (&h.name, &h.value)),
                modifier.add.iter().flatten().map(|h| (&h.name, &h.value)),
                modifier.remove.iter().flatten(),
            )?)
        }
        HttpRouteRulesFiltersType::ResponseHeaderModifier => {
            let modifier = filter.response_header_modifier.as_ref().ok_or_else(|| missing("responseHeaderModifier"))?;
            http_filter::Kind::ResponseHeaderModifier(header_modifier(
                modifier.set.iter().flatten().map(|h| (&h.name, &h.value)),
                modifier.add.iter().flatten().map(|h| (&h.name, &h.value)),
                modifier.remove.iter().flatten(),
            )?)
        }
        HttpRouteRulesFiltersType::RequestRedirect => {
            let redirect = filter.request_redirect.as_ref().ok_or_else(|| missing("requestRedirect"))?;
            let status_code = u32::try_from(redirect.status_code.unwrap_or(302)).unwrap_or(0);
            if !matches!(status_code, 301 | 302 | 303 | 307 | 308) {
                return Err(RuleProblem::RedirectStatusCode { code: status_code });
            }
            let port = u32::try_from(redirect.port.unwrap_or(0)).ok().filter(|p| *p <= 65535);
            let port = port.ok_or(RuleProblem::RedirectPort { port: redirect.port })?;
            check_hostname(redirect.hostname.as_deref().unwrap_or_default(), "redirect hostname")?;
            http_filter::Kind::RequestRedirect(RequestRedirect {
                scheme: match redirect.scheme {
                    Some(HttpRouteRulesFiltersRequestRedirectScheme::Http) => "http".into(),
                    Some(HttpRouteRulesFiltersRequestRedirectScheme::Https) => "https".into(),
                    None => String::new(),
                },
                hostname: redirect.hostname.clone().unwrap_or_default(),
                path: redirect.path.as_ref().map(redirect_path).transpose()?.flatten(),
                port,
                status_code,
            })
        }
        HttpRouteRulesFiltersType::UrlRewrite => {
            let rewrite = filter.url_rewrite.as_ref().ok_or_else(|| missing("urlRewrite"))?;
            check_hostname(rewrite.hostname.as_deref().unwrap_or_default(), "rewrite hostname")?;
            http_filter::Kind::UrlRewrite(UrlRewrite {
                hostname: rewrite.hostname.clone().unwrap_or_default(),
                path: rewrite.path.as_ref().map(rewrite_path).transpose()?.flatten(),
            })
        }
        HttpRouteRulesFiltersType::RequestMirror => {
            let mirror = filter.request_mirror.as_ref().ok_or_else(|| missing("requestMirror"))?;
            let (numerator, denominator) = match (&mirror.fraction, mirror.percent) {
                (Some(fraction), _) => (fraction.numerator, fraction.denominator.unwrap_or(100)),
                (None, Some(percent)) => (percent, 100),
                (None, None) => (1, 1),
            };
            let numerator = u32::try_from(numerator).map_err(|_| RuleProblem::MirrorFractionNegative)?;
            let denominator = u32::try_from(denominator).ok().filter(|d| *d > 0 && numerator <= *d);
            let denominator = denominator.ok_or(RuleProblem::MirrorFractionAboveOne)?;
            let backend = &mirror.backend_ref;
            let reference = backend_ref!(backend);
            match cache.resolve(index, route_kind.name(), &route.namespace, reference, route_kind.traffic()) {
                Ok(cluster) => {
                    let kind = http_filter::Kind::RequestMirror(RequestMirror {
                        cluster: cluster.name.clone(),
                        numerator,
                        denominator,
                    });
                    out.clusters.push(cluster);
                    kind
                }
                Err(error) => {
                    // The mirror is skipped; the route reports the reference.
                    if error.is_route_problem() {
                        out.unresolved.get_or_insert(error);
                    }
                    return Ok(HttpFilter { kind: None });
                }
            }
        }
        HttpRouteRulesFiltersType::ExtensionRef => {
            // Sluice resolves no custom filter. The filter must not be skipped: requests it
            // would have processed get 500, and the route reports the reference.
            let name = filter.extension_ref.as_ref().map(|e| format!("{}.{} {}", e.kind, e.group, e.name));
            out.unresolved.get_or_insert(BackendError::InvalidKind(format!(
                "ExtensionRef filter {} is not supported; matching requests get 500",
                name.unwrap_or_default()
            )));
            http_filter::Kind::DirectResponse(DirectResponse { status: INVALID_BACKEND_STATUS, body: String::new() })
        }
        HttpRouteRulesFiltersType::Cors => {
            http_filter::Kind::Cors(compile_cors(filter.cors.as_ref().ok_or_else(|| missing("cors"))?)?)
        }
    };
    if let http_filter::Kind::RequestRedirect(RequestRedirect { path: Some(path), .. })
    | http_filter::Kind::UrlRewrite(UrlRewrite { path: Some(path), .. }) = &kind
        && matches!(path.kind, Some(path_modifier::Kind::ReplacePrefixMatch(_)))
        && path_types.iter().any(|t| *t != PathMatchType::Prefix)
    {
        return Err(RuleProblem::ReplacePrefixNeedsPrefixMatches);
    }
    Ok(HttpFilter { kind: Some(kind) })
}

/// `Access-Control-Max-Age` when the CORS filter gives no `maxAge` (Gateway API's default).
const DEFAULT_CORS_MAX_AGE_SECONDS: u32 = 5;

/// A CORS filter, checked with the data plane's own check (`check_cors`).
fn compile_cors(cors: &HttpRouteRulesFiltersCors) -> Result<Cors, RuleProblem> {
    let max_age_seconds = match cors.max_age {
        None => DEFAULT_CORS_MAX_AGE_SECONDS,
        Some(seconds) => u32::try_from(seconds)
            .ok()
            .filter(|s| *s >= 1)
            .ok_or_else(|| RuleProblem::CorsMaxAge { seconds: seconds.to_string() })?,
    };
    let policy = Cors {
        allow_origins: cors.allow_origins.clone().unwrap_or_default(),
        allow_methods: cors.allow_methods.clone().unwrap_or_default(),
        allow_headers: cors.allow_headers.clone().unwrap_or_default(),
        expose_headers: cors.expose_headers.clone().unwrap_or_default(),
        allow_credentials: cors.allow_credentials.unwrap_or(false),
        max_age_seconds,
    };
    sluice_snapshot::compile::check_cors(&policy)
        .map_err(|problem| RuleProblem::Cors { problem: problem.to_string() })?;
    Ok(policy)
}

fn header_modifier<'a>(
    set: impl Iterator<Item = (&'a String, &'a String)>,
    add: impl Iterator<Item = (&'a String, &'a String)>,
    remove: impl Iterator<Item = &'a String>,
) -> Result<HeaderModifier, RuleProblem> {
    let header = |(name, value): (&String, &String)| {
        check_header_name(name)?;
        if !sluice_snapshot::valid_header_value(value) {
            return Err(RuleProblem::InvalidHeaderValue { name: name.clone() });
        }
        Ok(Header { name: name.clone(), value: value.clone() })
    };
    let remove = remove.map(|name| check_header_name(name).map(|()| name.clone()));
    Ok(HeaderModifier {
        set: set.map(header).collect::<Result<_, _>>()?,
        add: add.map(header).collect::<Result<_, _>>()?,
        remove: remove.collect::<Result<_, _>>()?,
    })
}

fn check_hostname(hostname: &str, what: &'static str) -> Result<(), RuleProblem> {
    if hostname.is_empty() || sluice_snapshot::valid_hostname(hostname) {
        Ok(())
    } else {
        Err(RuleProblem::InvalidHostname { what, hostname: hostname.to_string() })
    }
}

fn path_modifier_of(
    full: Option<&String>,
    prefix: Option<&String>,
    full_type: bool,
) -> Result<Option<PathModifier>, RuleProblem> {
    let kind = if full_type {
        full.map(|p| path_modifier::Kind::ReplaceFullPath(p.clone())).ok_or(RuleProblem::MissingReplaceFullPath)?
    } else {
        path_modifier::Kind::ReplacePrefixMatch(prefix.cloned().ok_or(RuleProblem::MissingReplacePrefixMatch)?)
    };
    if let path_modifier::Kind::ReplaceFullPath(path) | path_modifier::Kind::ReplacePrefixMatch(path) = &kind
        && !path.starts_with('/')
    {
        return Err(RuleProblem::ReplacementNotAbsolute { path: path.clone() });
    }
    if let path_modifier::Kind::ReplaceFullPath(path) | path_modifier::Kind::ReplacePrefixMatch(path) = &kind
        && !sluice_snapshot::valid_path_value(path)
    {
        return Err(RuleProblem::ReplacementUnsafe { path: path.clone() });
    }
    Ok(Some(PathModifier { kind: Some(kind) }))
}

fn redirect_path(path: &HttpRouteRulesFiltersRequestRedirectPath) -> Result<Option<PathModifier>, RuleProblem> {
    let full =
        path.r#type == sluice_gateway_api::httproutes::HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath;
    path_modifier_of(path.replace_full_path.as_ref(), path.replace_prefix_match.as_ref(), full)
}

fn rewrite_path(path: &HttpRouteRulesFiltersUrlRewritePath) -> Result<Option<PathModifier>, RuleProblem> {
    let full = path.r#type == sluice_gateway_api::httproutes::HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath;
    path_modifier_of(path.replace_full_path.as_ref(), path.replace_prefix_match.as_ref(), full)
}
