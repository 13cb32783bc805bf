//! CORS (HTTPRoute filter `CORS`): one decision per request, executed by both request
//! paths (the HTTP/1.1 fast path and Pingora's).
//!
//! ```text
//!  route's Policy + request (method, Origin, Access-Control-Request-Method/-Headers)
//!     ── decide ─┬─► Preflight(fields): answered 200 by the data plane, never forwarded
//!                └─► Actual(fields):    forwarded; edits::response: the response loses the
//!                                       backend's Access-Control-Allow-Origin/-Credentials/
//!                                       -Expose-Headers and gets `fields` (Vary appended)
//! ```
//!
//! An allowed origin is always echoed (never `*`), which is right with and without
//! credentials; a `*` in allowMethods or allowHeaders echoes what the preflight asks for,
//! likewise. An origin that is not allowed gets no Access-Control-* fields at all.

use sluice_snapshot::compile::{OriginPattern, origin_pattern};

use crate::view::Headers;

/// A response header field the policy adds.
pub type Field = (&'static str, String);

/// Response fields that belong to the route's policy: the backend's are removed before
/// an `Actual` decision's fields are appended (`edits::response`; `Vary` is appended
/// beside the backend's).
pub(crate) const OWNED: [&str; 3] =
    ["access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers"];

/// `Vary` of responses to requests that are not preflights: the answer depends on Origin.
const VARY_ACTUAL: &str = "Origin";
/// `Vary` of preflight answers.
const VARY_PREFLIGHT: &str = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// A route's CORS policy, compiled.
#[derive(Debug)]
pub struct Policy {
    origins: Vec<OriginPattern>,
    methods: Allowed,
    headers: Allowed,
    /// The Access-Control-Expose-Headers value, if any.
    expose: Option<String>,
    credentials: bool,
    max_age: String,
}

/// What a preflight answer allows of a list (methods, headers).
#[derive(Debug, PartialEq)]
enum Allowed {
    /// The field is left out.
    Nothing,
    /// `*`: the requested value is echoed.
    Echo,
    /// The configured names, as the field's value.
    Names(String),
}

impl Allowed {
    fn of(names: &[String]) -> Allowed {
        match names {
            [] => Allowed::Nothing,
            [star] if star == "*" => Allowed::Echo,
            names => Allowed::Names(names.join(", ")),
        }
    }

    /// The field's value for a preflight that asks for `requested`.
    fn value(&self, requested: Option<&str>) -> Option<String> {
        match self {
            Allowed::Nothing => None,
            Allowed::Echo => requested.map(str::trim).filter(|r| !r.is_empty()).map(str::to_string),
            Allowed::Names(names) => Some(names.clone()),
        }
    }
}

/// What the data plane does about CORS for one request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// A preflight: answer it (200, empty body) with these fields.
    Preflight(Vec<Field>),
    /// Any other request: forward it, then edit its response with these (`edits::response`).
    Actual(Vec<Field>),
}

impl Policy {
    /// Compiles a snapshot policy (the translator checked it with the same parser).
    pub fn compile(cors: &sluice_snapshot::Cors) -> Result<Policy, String> {
        sluice_snapshot::compile::check_cors(cors)?;
        let origins = cors.allow_origins.iter().map(|o| origin_pattern(o)).collect::<Result<Vec<_>, _>>()?;
        // With credentials a `*` exposes nothing (the Fetch standard reads it as a name).
        let expose: Vec<&str> = cors
            .expose_headers
            .iter()
            .map(String::as_str)
            .filter(|name| !(cors.allow_credentials && *name == "*"))
            .collect();
        Ok(Policy {
            origins,
            methods: Allowed::of(&cors.allow_methods),
            headers: Allowed::of(&cors.allow_headers),
            expose: (!expose.is_empty()).then(|| expose.join(", ")),
            credentials: cors.allow_credentials,
            max_age: cors.max_age_seconds.to_string(),
        })
    }

    /// The decision for a request with `method` and `headers`.
    pub fn decide(&self, method: &http::Method, headers: Headers<'_>) -> Decision {
        let origin = headers.first("origin");
        let requested_method = headers.first("access-control-request-method").filter(|m| !m.trim().is_empty());
        let allowed = origin.filter(|origin| self.origins.iter().any(|pattern| pattern.matches(origin)));
        if method == http::Method::OPTIONS && origin.is_some() && requested_method.is_some() {
            let mut fields = vec![("vary", VARY_PREFLIGHT.to_string())];
            if let Some(origin) = allowed {
                self.allow(origin, &mut fields);
                if let Some(methods) = self.methods.value(requested_method) {
                    fields.push(("access-control-allow-methods", methods));
                }
                let requested_headers = headers.first("access-control-request-headers");
                if let Some(names) = self.headers.value(requested_headers) {
                    fields.push(("access-control-allow-headers", names));
                }
                fields.push(("access-control-max-age", self.max_age.clone()));
            }
            return Decision::Preflight(fields);
        }
        let mut fields = vec![("vary", VARY_ACTUAL.to_string())];
        if let Some(origin) = allowed {
            self.allow(origin, &mut fields);
        }
        Decision::Actual(fields)
    }

    /// The fields every answer to an allowed origin carries.
    fn allow(&self, origin: &str, fields: &mut Vec<Field>) {
        fields.push(("access-control-allow-origin", origin.to_string()));
        if self.credentials {
            fields.push(("access-control-allow-credentials", "true".to_string()));
        }
        if let Some(expose) = &self.expose {
            fields.push(("access-control-expose-headers", expose.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], methods: &[&str], headers: &[&str], expose: &[&str], credentials: bool) -> Policy {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        Policy::compile(&sluice_snapshot::Cors {
            allow_origins: list(origins),
            allow_methods: list(methods),
            allow_headers: list(headers),
            expose_headers: list(expose),
            allow_credentials: credentials,
            max_age_seconds: 5,
        })
        .expect("valid policy")
    }

    fn decide(policy: &Policy, method: &str, fields: &[(&str, &str)]) -> Decision {
        let mut map = http::HeaderMap::new();
        for (name, value) in fields {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                http::HeaderValue::from_str(value).expect("value"),
            );
        }
        let method = http::Method::from_bytes(method.as_bytes()).expect("method");
        let map_decision = policy.decide(&method, Headers::Map(&map));
        // The fast path's raw fields decide alike.
        let raw: Vec<httparse::Header<'_>> =
            fields.iter().map(|(name, value)| httparse::Header { name, value: value.as_bytes() }).collect();
        assert_eq!(policy.decide(&method, Headers::Raw(&raw)), map_decision);
        map_decision
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> Vec<(&'static str, String)> {
        let mut fields = vec![("origin", origin.to_string()), ("access-control-request-method", method.to_string())];
        if let Some(headers) = headers {
            fields.push(("access-control-request-headers", headers.to_string()));
        }
        fields
    }

    fn fields(list: &[(&'static str, &str)]) -> Vec<Field> {
        list.iter().map(|(name, value)| (*name, value.to_string())).collect()
    }

    fn ask(policy: &Policy, method: &str, request: &[(&'static str, String)]) -> Decision {
        let borrowed: Vec<(&str, &str)> = request.iter().map(|(n, v)| (*n, v.as_str())).collect();
        decide(policy, method, &borrowed)
    }

    #[test]
    fn preflights_from_listed_origins_get_the_listed_names() {
        let p = policy(
            &["https://www.foo.com", "https://*.bar.com"],
            &["GET", "OPTIONS"],
            &["x-header-1", "x-header-2"],
            &["x-header-3", "x-header-4"],
            true,
        );
        for origin in ["https://www.foo.com", "https://www.bar.com", "https://xpto.www.bar.com"] {
            let decision = ask(&p, "OPTIONS", &preflight(origin, "GET", Some("x-header-1, x-header-2")));
            assert_eq!(
                decision,
                Decision::Preflight(fields(&[
                    ("vary", VARY_PREFLIGHT),
                    ("access-control-allow-origin", origin),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-expose-headers", "x-header-3, x-header-4"),
                    ("access-control-allow-methods", "GET, OPTIONS"),
                    ("access-control-allow-headers", "x-header-1, x-header-2"),
                    ("access-control-max-age", "5"),
                ]))
            );
        }
    }

    #[test]
    fn other_origins_get_no_cors_fields() {
        let p = policy(&["https://www.foo.com"], &["*"], &[], &[], true);
        assert_eq!(
            ask(&p, "OPTIONS", &preflight("https://foobar.com", "GET", None)),
            Decision::Preflight(fields(&[("vary", VARY_PREFLIGHT)]))
        );
        assert_eq!(
            decide(&p, "GET", &[("origin", "https://foobar.com")]),
            Decision::Actual(fields(&[("vary", VARY_ACTUAL)]))
        );
        assert_eq!(decide(&p, "GET", &[]), Decision::Actual(fields(&[("vary", VARY_ACTUAL)])));
    }

    #[test]
    fn wildcards_echo_what_is_asked() {
        for credentials in [true, false] {
            let p = policy(&["*"], &["*"], &["*"], &[], credentials);
            let Decision::Preflight(answer) =
                ask(&p, "OPTIONS", &preflight("https://other.foo.com", "PUT", Some("x-header-1, x-header-2")))
            else {
                panic!("a preflight");
            };
            let value = |name: &str| answer.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
            assert_eq!(value("access-control-allow-origin"), Some("https://other.foo.com"));
            assert_eq!(value("access-control-allow-methods"), Some("PUT"));
            assert_eq!(value("access-control-allow-headers"), Some("x-header-1, x-header-2"));
            assert_eq!(value("access-control-allow-credentials"), credentials.then_some("true"));
            // Without Access-Control-Request-Headers, no Access-Control-Allow-Headers.
            let Decision::Preflight(answer) = ask(&p, "OPTIONS", &preflight("https://a.com:12345", "PUT", None)) else {
                panic!("a preflight");
            };
            assert!(answer.iter().all(|(n, _)| *n != "access-control-allow-headers"), "{answer:?}");
            assert!(answer.contains(&("access-control-allow-origin", "https://a.com:12345".into())));
        }
    }

    #[test]
    fn actual_requests_get_origin_credentials_and_exposed_headers() {
        let p = policy(&["https://*.example.com"], &["GET"], &[], &["x-a", "x-b"], true);
        assert_eq!(
            decide(&p, "PUT", &[("origin", "https://app.example.com")]),
            Decision::Actual(fields(&[
                ("vary", VARY_ACTUAL),
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-a, x-b"),
            ]))
        );
        // OPTIONS without Access-Control-Request-Method is an ordinary request.
        assert!(matches!(decide(&p, "OPTIONS", &[("origin", "https://app.example.com")]), Decision::Actual(_)));
        // No credentials: no Access-Control-Allow-Credentials.
        let open = policy(&["*"], &[], &[], &["*"], false);
        assert_eq!(
            decide(&open, "GET", &[("origin", "https://foobar.com")]),
            Decision::Actual(fields(&[
                ("vary", VARY_ACTUAL),
                ("access-control-allow-origin", "https://foobar.com"),
                ("access-control-expose-headers", "*"),
            ]))
        );
    }

    #[test]
    fn credentials_never_expose_a_star_and_max_age_is_given() {
        let p = policy(&["*"], &[], &[], &["*"], true);
        let Decision::Preflight(answer) = ask(&p, "OPTIONS", &preflight("https://a.com", "GET", None)) else {
            panic!("a preflight");
        };
        assert!(answer.iter().all(|(n, _)| *n != "access-control-expose-headers"), "{answer:?}");
        assert!(answer.iter().all(|(n, _)| *n != "access-control-allow-methods"), "{answer:?}");
        assert!(answer.contains(&("access-control-max-age", "5".into())));
    }
}
