//! CORS origins (HTTPRoute filter `CORS`, `allowOrigins`): parsing a pattern and matching
//! a request's `Origin` against it. The translator checks patterns with the same parser
//! the data plane compiles them with.
//!
//! ```text
//!  "https://*.example.com"  ──origin_pattern──►  OriginPattern ──matches("https://a.b.example.com")──► true
//! ```

/// A compiled `allowOrigins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: every origin.
    Any,
    /// `scheme://host[:port]`, the host possibly a wildcard.
    Origin {
        /// `http` or `https`.
        scheme: String,
        host: HostPattern,
        /// The port, or the scheme's default port when the pattern gives none.
        port: u16,
    },
}

/// The host part of an origin pattern (lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any host.
    Any,
    /// `*.suffix`: hosts with one or more labels in front of `.suffix`.
    Suffix(String),
    /// One host name.
    Exact(String),
}

/// The longest pattern accepted (Gateway API's `CORSOrigin` limit).
pub const MAX_ORIGIN_LENGTH: usize = 253;

/// Parses an `allowOrigins` entry as Gateway API's `CORSOrigin` defines it: `*`, or
/// `http(s)://host[:port]` where host is `*`, a DNS name or `*.` and a DNS name, and the
/// port is 1-65535.
pub fn origin_pattern(pattern: &str) -> Result<OriginPattern, String> {
    let invalid = |why: &str| Err(format!("allowOrigins entry {pattern:?} {why}"));
    if pattern == "*" {
        return Ok(OriginPattern::Any);
    }
    if pattern.is_empty() || pattern.len() > MAX_ORIGIN_LENGTH {
        return invalid("must be 1 to 253 characters long");
    }
    let Some((scheme, authority)) = pattern.split_once("://") else {
        return invalid("is not \"*\" or scheme://host[:port]");
    };
    if scheme != "http" && scheme != "https" {
        return invalid("must use the scheme http or https");
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let number = (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()))
                .then(|| port.parse::<u16>().ok())
                .flatten()
                .filter(|p| *p > 0);
            match number {
                Some(number) => (host, number),
                None => return invalid("has a port outside 1-65535"),
            }
        }
        None => (authority, default_port(scheme)),
    };
    let host = if host == "*" {
        HostPattern::Any
    } else if let Some(suffix) = host.strip_prefix("*.") {
        if !dns_labels(suffix) {
            return invalid("has an invalid host");
        }
        HostPattern::Suffix(suffix.to_ascii_lowercase())
    } else {
        if !dns_labels(host) {
            return invalid("has an invalid host");
        }
        HostPattern::Exact(host.to_ascii_lowercase())
    };
    Ok(OriginPattern::Origin { scheme: scheme.to_string(), host, port })
}

/// Letters, digits and `-` in non-empty labels separated by dots.
fn dns_labels(host: &str) -> bool {
    !host.is_empty()
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

impl OriginPattern {
    /// Whether a request's `Origin` value is allowed by this pattern. An origin that is
    /// not `scheme://host[:port]` (e.g. `null`) only matches `*`.
    pub fn matches(&self, origin: &str) -> bool {
        let OriginPattern::Origin { scheme, host, port } = self else { return true };
        let Some((origin_scheme, authority)) = origin.split_once("://") else { return false };
        if !origin_scheme.eq_ignore_ascii_case(scheme) {
            return false;
        }
        let (origin_host, origin_port) = match split_port(authority) {
            Some((h, Some(p))) => (h, p),
            Some((h, None)) => (h, default_port(scheme)),
            None => return false,
        };
        if origin_host.is_empty() || origin_port != *port {
            return false;
        }
        match host {
            HostPattern::Any => true,
            HostPattern::Exact(exact) => origin_host.eq_ignore_ascii_case(exact),
            HostPattern::Suffix(suffix) => {
                let cut = origin_host.len().saturating_sub(suffix.len() + 1);
                cut > 0
                    && origin_host
                        .get(cut..)
                        .and_then(|end| end.strip_prefix('.'))
                        .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

/// An origin's authority as host and port (`None`: none given); `None` when the port is
/// not a number or something follows the authority.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(port) => (v6, Some(port)),
            None if after.is_empty() => (v6, None),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    match port {
        None => Some((host, None)),
        Some(port) => port.parse::<u16>().ok().map(|p| (host, Some(p))),
    }
}

/// Why a CORS policy cannot be served, if so: origins that are not `CORSOrigin`s, method
/// or header names that are not tokens, a `*` beside other entries. The translator and
/// the data plane both check policies with this.
pub fn check_cors(cors: &crate::Cors) -> Result<(), String> {
    for origin in &cors.allow_origins {
        origin_pattern(origin)?;
    }
    let lists = [
        ("allowOrigins", &cors.allow_origins),
        ("allowMethods", &cors.allow_methods),
        ("allowHeaders", &cors.allow_headers),
    ];
    for (field, list) in lists {
        if list.len() > 1 && list.iter().any(|entry| entry == "*") {
            return Err(format!("{field} cannot contain \"*\" beside other entries"));
        }
    }
    let names = [
        ("allowMethods", &cors.allow_methods),
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ];
    for (field, list) in names {
        if let Some(bad) = list.iter().find(|name| !crate::valid_token(name)) {
            return Err(format!("{field} entry {bad:?} is not a valid name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, origin: &str) -> bool {
        origin_pattern(pattern).map(|p| p.matches(origin)).unwrap_or(false)
    }

    #[test]
    fn exact_origins_compare_scheme_host_and_port() {
        assert!(allows("https://www.foo.com", "https://www.foo.com"));
        assert!(allows("https://www.foo.com", "https://WWW.Foo.com"));
        assert!(allows("https://www.foo.com", "https://www.foo.com:443"));
        assert!(!allows("https://www.foo.com", "http://www.foo.com"));
        assert!(!allows("https://www.foo.com", "https://www.foo.com:8443"));
        assert!(!allows("https://www.foo.com", "https://foo.com"));
        assert!(!allows("https://www.foo.com", "https://www.foo.com.evil.com"));
        assert!(allows("http://localhost:8080", "http://localhost:8080"));
        assert!(!allows("http://localhost:8080", "http://localhost"));
        assert!(!allows("https://www.foo.com", "null"));
        assert!(!allows("https://www.foo.com", "https://www.foo.com/path"));
    }

    #[test]
    fn wildcards_take_any_number_of_labels_to_the_left() {
        assert!(allows("https://*.bar.com", "https://www.bar.com"));
        assert!(allows("https://*.bar.com", "https://xpto.www.bar.com"));
        assert!(!allows("https://*.bar.com", "https://bar.com"));
        assert!(!allows("https://*.bar.com", "https://foobar.com"));
        assert!(!allows("https://*.bar.com", "http://www.bar.com"));
        assert!(!allows("https://*.bar.com", "https://www.bar.com:444"));
        assert!(allows("https://*", "https://anything.example"));
        assert!(!allows("https://*", "http://anything.example"));
        assert!(allows("*", "https://foobar.com:12345"));
        assert!(allows("*", "null"));
    }

    #[test]
    fn policies_are_checked_as_a_whole() {
        let cors = |origins: &[&str], methods: &[&str], headers: &[&str]| crate::Cors {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: methods.iter().map(|s| s.to_string()).collect(),
            allow_headers: headers.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(check_cors(&cors(&["*"], &["*"], &["*"])), Ok(()));
        assert_eq!(check_cors(&cors(&["https://a.com", "https://*.b.com"], &["GET", "PUT"], &["x-a"])), Ok(()));
        assert!(check_cors(&cors(&["*", "https://a.com"], &[], &[])).is_err());
        assert!(check_cors(&cors(&[], &["*", "GET"], &[])).is_err());
        assert!(check_cors(&cors(&[], &[], &["x a"])).is_err());
        assert!(check_cors(&cors(&["a.com"], &[], &[])).is_err());
    }

    #[test]
    fn patterns_follow_the_cors_origin_format() {
        for bad in [
            "",
            "www.foo.com",
            "ftp://foo.com",
            "https://",
            "https://foo.com:0",
            "https://foo.com:65536",
            "https://foo.com/",
            "https://*foo.com",
            "https://foo..com",
            "https://a.*.com",
            "**",
            "https://foo.com:",
        ] {
            assert!(origin_pattern(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            origin_pattern("https://*.Bar.com:8443"),
            Ok(OriginPattern::Origin {
                scheme: "https".into(),
                host: HostPattern::Suffix("bar.com".into()),
                port: 8443
            })
        );
        assert_eq!(
            origin_pattern("http://foo"),
            Ok(OriginPattern::Origin { scheme: "http".into(), host: HostPattern::Exact("foo".into()), port: 80 })
        );
    }
}
