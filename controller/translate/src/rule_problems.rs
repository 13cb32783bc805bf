//! Why a rule of an HTTPRoute or GRPCRoute is dropped: the route reports every dropped
//! rule (`rule <i>: <message>`) in Accepted=False or PartiallyInvalid=True.

use sluice_gateway_api::httproutes::HttpRouteRulesFiltersType;

use crate::problems::Problem;
use crate::status::reason;

/// A user mistake in one route rule.
#[derive(Debug, Clone)]
pub(crate) enum RuleProblem {
    /// A regular expression the data plane cannot compile (its error).
    InvalidRegex(String),
    InvalidHeaderName {
        name: String,
    },
    InvalidHeaderValue {
        name: String,
    },
    PathNotAbsolute {
        path: String,
    },
    QueryParamWithoutName,
    TwoCorsFilters,
    RedirectWithBackends,
    UnreadableBackendFilter {
        error: String,
    },
    RedirectAsBackendFilter,
    CorsAsBackendFilter,
    RetryCode {
        code: String,
    },
    RetryAttempts {
        attempts: String,
    },
    RetryBackoff {
        value: String,
        error: String,
    },
    /// `timeouts.<field>` is not a duration.
    Timeout {
        field: &'static str,
        value: String,
        error: String,
    },
    BackendRequestLongerThanRequest,
    /// A filter of `filter_type` without its `field`.
    MissingFilterField {
        filter_type: HttpRouteRulesFiltersType,
        field: &'static str,
    },
    RedirectStatusCode {
        code: u32,
    },
    RedirectPort {
        port: Option<i32>,
    },
    MirrorFractionNegative,
    MirrorFractionAboveOne,
    ReplacePrefixNeedsPrefixMatches,
    CorsMaxAge {
        seconds: String,
    },
    /// The data plane's CORS check failed (`problem`).
    Cors {
        problem: String,
    },
    /// `what` (redirect or rewrite hostname) is not a hostname.
    InvalidHostname {
        what: &'static str,
        hostname: String,
    },
    MissingReplaceFullPath,
    MissingReplacePrefixMatch,
    ReplacementNotAbsolute {
        path: String,
    },
    ReplacementUnsafe {
        path: String,
    },
    /// GRPCRoute: a header match on content-type.
    GrpcContentTypeMatch,
    /// GRPCRoute: `field` cannot be read in the HTTPRoute schema.
    Unreadable {
        field: &'static str,
        error: String,
    },
    EmptyMethodMatch,
    /// GRPCRoute: an exact service or method (`what`) with a `/`.
    SlashInExact {
        what: &'static str,
        value: String,
    },
}

impl Problem for RuleProblem {
    fn reason(&self) -> &'static str {
        reason::UNSUPPORTED_VALUE
    }

    fn message(&self) -> String {
        use RuleProblem::*;
        match self {
            InvalidRegex(error) => error.clone(),
            InvalidHeaderName { name } => format!("{name:?} is not a valid header name"),
            InvalidHeaderValue { name } => {
                format!("the value of header {name:?} holds a control (CR, LF, NUL) or non-ASCII character")
            }
            PathNotAbsolute { path } => format!("path {path:?} must start with /"),
            QueryParamWithoutName => "query parameter match needs a name".into(),
            TwoCorsFilters => "a rule can have only one CORS filter".into(),
            RedirectWithBackends => "a RequestRedirect filter cannot be combined with backendRefs".into(),
            UnreadableBackendFilter { error } => format!("backendRef filter cannot be read: {error}"),
            RedirectAsBackendFilter => "RequestRedirect is not supported as a backendRef filter".into(),
            CorsAsBackendFilter => "CORS is not supported as a backendRef filter; set it on the rule".into(),
            RetryCode { code } => format!("retry.codes {code} is not an HTTP error code (400-599)"),
            RetryAttempts { attempts } => {
                format!("retry.attempts {attempts} is out of range (0-{})", sluice_snapshot::MAX_RETRY_ATTEMPTS)
            }
            RetryBackoff { value, error } => format!("retry.backoff {value:?} is not a valid duration: {error}"),
            Timeout { field, value, error } => format!("timeouts.{field} {value:?} is not a valid duration: {error}"),
            BackendRequestLongerThanRequest => {
                "timeouts.backendRequest must not be longer than timeouts.request".into()
            }
            MissingFilterField { filter_type, field } => format!("filter type {filter_type:?} needs its {field} field"),
            RedirectStatusCode { code } => format!("redirect statusCode {code} is not supported"),
            RedirectPort { port } => format!("redirect port {port:?} is out of range"),
            MirrorFractionNegative => "mirror fraction must not be negative".into(),
            MirrorFractionAboveOne => "mirror fraction must be at most 1 with a positive denominator".into(),
            ReplacePrefixNeedsPrefixMatches => {
                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match".into()
            }
            CorsMaxAge { seconds } => format!("CORS maxAge {seconds} must be at least 1"),
            Cors { problem } => format!("CORS {problem}"),
            InvalidHostname { what, hostname } => format!("{what} {hostname:?} is not a valid hostname"),
            MissingReplaceFullPath => "ReplaceFullPath needs replaceFullPath".into(),
            MissingReplacePrefixMatch => "ReplacePrefixMatch needs replacePrefixMatch".into(),
            ReplacementNotAbsolute { path } => format!("replacement path {path:?} must start with /"),
            ReplacementUnsafe { path } => format!(
                "replacement path {path:?} holds a control character (CR, LF, NUL), a space or a non-ASCII character; percent-encode it"
            ),
            GrpcContentTypeMatch => "a header match on content-type is not supported (it selects gRPC requests)".into(),
            Unreadable { field, error } => format!("{field} cannot be read: {error}"),
            EmptyMethodMatch => "a method match needs a service or a method".into(),
            SlashInExact { what, value } => format!("{what} {value:?} must not contain /"),
        }
    }
}
