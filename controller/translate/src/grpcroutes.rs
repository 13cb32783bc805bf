//! GRPCRoutes: each rule becomes an HTTPRoute rule (gRPC is HTTP/2 `POST /service/method`)
//! and is compiled by the HTTPRoute code, with the GRPCRoute's own precedence.
//!
//! ```text
//!  method {service S, method M} ─► path  Exact /S/M  │ S only ─► PathPrefix /S
//!                                                     │ M only ─► regex /[^/]+/M
//!  RegularExpression S, M        ─► regex /(?:S)/(?:M)
//!  every match                   ─► + content-type application/grpc…  (gRPC requests only)
//!  headers, filters, backendRefs ─► the HTTPRoute fields of the same shape
//! ```

use std::borrow::Cow;

use sluice_gateway_api::grpcroutes::{
    GrpcRoute as GRPCRoute, GrpcRouteRules, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethodType,
};
use sluice_gateway_api::httproutes::{
    HttpRouteRules, HttpRouteRulesMatches, HttpRouteRulesMatchesHeaders, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType,
};

use crate::backends::ClusterCache;
use crate::httproutes::{CompiledRoute, GrpcRank, RouteKind, RuleInput, compile_rules};
use crate::index::{Index, ObjectKey};
use crate::rule_problems::RuleProblem;

/// The content types of gRPC requests (`application/grpc`, `+proto`, `-web`, …): only
/// these match a GRPCRoute rule, so plain HTTP requests go to the host's HTTPRoutes.
pub(crate) const GRPC_CONTENT_TYPE: &str = "application/grpc([+;-].*)?";

/// Compiles every rule of a GRPCRoute; invalid rules are dropped and reported.
pub(crate) fn compile_grpc_route(route: &GRPCRoute, index: &Index<'_>, cache: &mut ClusterCache<'_>) -> CompiledRoute {
    let rules = route.spec.rules.iter().flatten().map(as_http_rule);
    compile_rules(&ObjectKey::of(route), RouteKind::Grpc, rules, index, cache)
}

/// A GRPCRoute rule in HTTPRoute form, with the rank of each match.
fn as_http_rule(rule: &GrpcRouteRules) -> RuleInput<'static> {
    let default_match = [GrpcRouteRulesMatches::default()];
    let user_matches = rule.matches.as_deref().filter(|m| !m.is_empty()).unwrap_or(&default_match);
    let mut matches = Vec::new();
    let mut ranks = Vec::new();
    for user in user_matches {
        let (path, rank) = method_path(user)?;
        let mut headers = vec![HttpRouteRulesMatchesHeaders {
            name: "content-type".into(),
            r#type: Some(HttpRouteRulesMatchesHeadersType::RegularExpression),
            value: GRPC_CONTENT_TYPE.into(),
        }];
        for header in user.headers.iter().flatten() {
            if header.name.eq_ignore_ascii_case("content-type") {
                return Err(RuleProblem::GrpcContentTypeMatch);
            }
            headers.push(HttpRouteRulesMatchesHeaders {
                name: header.name.clone(),
                r#type: Some(match header.r#type {
                    Some(GrpcRouteRulesMatchesHeadersType::RegularExpression) => {
                        HttpRouteRulesMatchesHeadersType::RegularExpression
                    }
                    _ => HttpRouteRulesMatchesHeadersType::Exact,
                }),
                value: header.value.clone(),
            });
        }
        ranks.push(GrpcRank { headers: headers.len() - 1, ..rank });
        matches.push(HttpRouteRulesMatches { headers: Some(headers), method: None, path, query_params: None });
    }
    // Filters and backendRefs have the HTTPRoute schema for the kinds GRPCRoute allows.
    let filters = rule.filters.as_ref().map(|f| convert(f, "filters")).transpose()?;
    let backend_refs = rule.backend_refs.as_ref().map(|b| convert(b, "backendRefs")).transpose()?;
    let http = HttpRouteRules {
        backend_refs,
        filters,
        matches: Some(matches),
        name: rule.name.clone(),
        retry: None,
        timeouts: None,
    };
    Ok((Cow::Owned(http), ranks))
}

fn convert<T: serde::Serialize, U: serde::de::DeserializeOwned>(
    value: &T,
    field: &'static str,
) -> Result<U, RuleProblem> {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .map_err(|error| RuleProblem::Unreadable { field, error: error.to_string() })
}

/// The path match of a method match, and its rank.
fn method_path(user: &GrpcRouteRulesMatches) -> Result<(Option<HttpRouteRulesMatchesPath>, GrpcRank), RuleProblem> {
    let Some(method) = &user.method else { return Ok((None, GrpcRank::default())) };
    let service = method.service.as_deref().filter(|s| !s.is_empty());
    let name = method.method.as_deref().filter(|m| !m.is_empty());
    let regex = matches!(method.r#type, Some(GrpcRouteRulesMatchesMethodType::RegularExpression));
    // A regular expression names no characters for certain: exact matches rank above it.
    let characters = |value: Option<&str>| if regex { 0 } else { value.map_or(0, str::len) };
    let rank = GrpcRank { service: characters(service), method: characters(name), headers: 0 };
    let path = |kind, value: String| Some(HttpRouteRulesMatchesPath { r#type: Some(kind), value: Some(value) });
    let path = match (regex, service, name) {
        (_, None, None) => return Err(RuleProblem::EmptyMethodMatch),
        (false, Some(s), Some(m)) => {
            check_exact(s, "service")?;
            check_exact(m, "method")?;
            path(HttpRouteRulesMatchesPathType::Exact, format!("/{s}/{m}"))
        }
        (false, Some(s), None) => {
            check_exact(s, "service")?;
            path(HttpRouteRulesMatchesPathType::PathPrefix, format!("/{s}"))
        }
        (false, None, Some(m)) => {
            check_exact(m, "method")?;
            path(HttpRouteRulesMatchesPathType::RegularExpression, format!("/[^/]+/{}", escape_regex(m)))
        }
        (true, s, m) => path(
            HttpRouteRulesMatchesPathType::RegularExpression,
            format!("/(?:{})/(?:{})", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
        ),
    };
    Ok((path, rank))
}

/// `value` as a regular expression that matches exactly it.
fn escape_regex(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Exact services and methods never contain `/` (the spec's rule; the CRD checks the
/// characters too).
fn check_exact(value: &str, what: &'static str) -> Result<(), RuleProblem> {
    if value.contains('/') {
        return Err(RuleProblem::SlashInExact { what, value: value.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_gateway_api::grpcroutes::GrpcRouteRulesMatchesMethod;

    fn method(service: Option<&str>, name: Option<&str>, regex: bool) -> GrpcRouteRulesMatches {
        GrpcRouteRulesMatches {
            headers: None,
            method: Some(GrpcRouteRulesMatchesMethod {
                service: service.map(str::to_string),
                method: name.map(str::to_string),
                r#type: regex.then_some(GrpcRouteRulesMatchesMethodType::RegularExpression),
            }),
        }
    }

    fn path_of(user: &GrpcRouteRulesMatches) -> (String, String) {
        let (path, _) = method_path(user).unwrap();
        let path = path.unwrap();
        (format!("{:?}", path.r#type.unwrap()), path.value.unwrap())
    }

    #[test]
    fn method_matches_become_paths() {
        assert_eq!(path_of(&method(Some("pkg.Svc"), Some("Get"), false)), ("Exact".into(), "/pkg.Svc/Get".into()));
        assert_eq!(path_of(&method(Some("pkg.Svc"), None, false)), ("PathPrefix".into(), "/pkg.Svc".into()));
        assert_eq!(path_of(&method(None, Some("Get"), false)), ("RegularExpression".into(), "/[^/]+/Get".into()));
        assert_eq!(
            path_of(&method(Some("pkg\\..*"), None, true)),
            ("RegularExpression".into(), "/(?:pkg\\..*)/(?:[^/]+)".into())
        );
        assert_eq!(
            path_of(&method(None, Some("a.b"), false)),
            ("RegularExpression".into(), "/[^/]+/a\\.b".into()),
            "an exact method is escaped"
        );
        assert!(method_path(&method(None, None, false)).is_err());
        assert!(method_path(&method(Some("a/b"), Some("M"), false)).is_err());
        assert_eq!(method_path(&GrpcRouteRulesMatches::default()).unwrap(), (None, GrpcRank::default()));
    }

    #[test]
    fn ranks_count_service_method_and_header_characters() {
        let mut user = method(Some("pkg.Svc"), Some("Get"), false);
        user.headers = Some(vec![Default::default(), Default::default()]);
        let rule = GrpcRouteRules { matches: Some(vec![user]), ..Default::default() };
        let (http, ranks) = as_http_rule(&rule).unwrap();
        assert_eq!(ranks, [GrpcRank { service: 7, method: 3, headers: 2 }]);
        let headers = http.matches.as_ref().unwrap()[0].headers.as_ref().unwrap();
        assert_eq!(headers[0].name, "content-type", "gRPC requests only");
        assert_eq!(headers.len(), 3);
    }
}
