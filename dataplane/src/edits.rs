//! Edits on the way through, written once for both request paths: header fields (over
//! `HeaderEdits`, which both paths' heads implement), the forwarding fields
//! (X-Forwarded-For and the fields about earlier hops) and URL rewrites.

use sluice_snapshot::{HeaderModifier, HttpFilter, http_filter, path_modifier};

use crate::cors;
use crate::tables::Route;

/// A head on its way through, as each request path holds it (Pingora's `RequestHeader`
/// and `ResponseHeader`, the fast path's field list). Names and values are valid: the
/// snapshot's were checked when it was loaded, CORS values are visible ASCII.
pub(crate) trait HeaderEdits<'v> {
    /// Removes every field `name` (compared case-insensitively).
    fn remove(&mut self, name: &str);
    /// Appends a field (after any of the same name).
    fn append(&mut self, name: &'v str, value: &'v str);
    /// Replaces every field `name` with this one.
    fn set(&mut self, name: &'v str, value: &'v str) {
        self.remove(name);
        self.append(name, value);
    }
}

/// Applies a header modifier: set, then add, then remove.
pub(crate) fn modify<'v>(head: &mut impl HeaderEdits<'v>, modifier: &'v HeaderModifier) {
    for header in &modifier.set {
        head.set(&header.name, &header.value);
    }
    for header in &modifier.add {
        head.append(&header.name, &header.value);
    }
    for name in &modifier.remove {
        head.remove(name);
    }
}

/// The request edits of `filters` (a rule's, then its chosen backend's), in order:
/// header modifiers and URL rewrites. Returns the rewritten path, if a rewrite changes
/// it (`routed_path`: the normalized path the route matched, `path_prefix` its prefix).
pub(crate) fn request<'v>(
    head: &mut impl HeaderEdits<'v>,
    filters: impl Iterator<Item = &'v HttpFilter>,
    path_prefix: Option<&str>,
    routed_path: &str,
) -> Option<String> {
    let mut new_path = None;
    for filter in filters {
        match &filter.kind {
            Some(http_filter::Kind::RequestHeaderModifier(modifier)) => modify(head, modifier),
            Some(http_filter::Kind::UrlRewrite(rewrite)) => {
                if !rewrite.hostname.is_empty() {
                    head.set("host", &rewrite.hostname);
                }
                if let Some(kind) = rewrite.path.as_ref().and_then(|p| p.kind.as_ref()) {
                    new_path = Some(rewrite_path(kind, path_prefix, routed_path));
                }
            }
            _ => {}
        }
    }
    new_path
}

/// An `Actual` CORS decision's fields on a backend's response: the backend's own CORS
/// fields go, the policy's are appended (`Vary` beside the backend's).
fn cors_fields<'v>(head: &mut impl HeaderEdits<'v>, fields: &'v [cors::Field]) {
    for name in cors::OWNED {
        head.remove(name);
    }
    for (name, value) in fields {
        head.append(name, value);
    }
}

/// The response edits of a route (`backend`: the index of the weighted backend that
/// answered): its CORS fields (`cors`, decided on the request), then the response header
/// modifiers of the rule and of that backend.
pub(crate) fn response<'v>(
    head: &mut impl HeaderEdits<'v>,
    route: &'v Route,
    backend: Option<usize>,
    cors: &'v [cors::Field],
) {
    if route.cors.is_some() {
        cors_fields(head, cors);
    }
    let backend_filters = backend.map(|i| route.backends.filters(i)).unwrap_or_default();
    for filter in route.filters.iter().chain(backend_filters) {
        if let Some(http_filter::Kind::ResponseHeaderModifier(modifier)) = &filter.kind {
            modify(head, modifier);
        }
    }
}

/// Client-supplied fields about earlier hops that are dropped unless hops are trusted
/// (X-Forwarded-For is trimmed instead, X-Forwarded-Proto always replaced).
pub(crate) const UNTRUSTED_FORWARDING: [&str; 4] = ["forwarded", "x-forwarded-host", "x-forwarded-port", "x-real-ip"];

/// The X-Forwarded-For a backend gets: the last `trusted_hops` entries of the one that
/// came in (written by proxies in front of the data plane), then the client's address.
/// With no trusted hops a client cannot make up its address.
pub(crate) fn forwarded_for(incoming: Option<&str>, client: &str, trusted_hops: usize) -> String {
    let entries: Vec<&str> = incoming.unwrap_or_default().split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    let kept = entries.get(entries.len().saturating_sub(trusted_hops)..).unwrap_or_default();
    let mut out = kept.join(", ");
    if !client.is_empty() {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(client);
    }
    out
}

/// Applies a path modifier to `path` (the normalized request path).
pub(crate) fn rewrite_path(kind: &path_modifier::Kind, matched_prefix: Option<&str>, path: &str) -> String {
    match kind {
        path_modifier::Kind::ReplaceFullPath(full) => full.clone(),
        path_modifier::Kind::ReplacePrefixMatch(replacement) => {
            let prefix = matched_prefix.unwrap_or("/").trim_end_matches('/');
            let rest = path.get(prefix.len()..).unwrap_or_default();
            let base = replacement.trim_end_matches('/');
            let joined = format!("{base}{rest}");
            if joined.is_empty() { "/".to_string() } else { joined }
        }
    }
}

/// An h2 client's Cookie fields as one (RFC 9113 §8.2.3: joined with "; " for an
/// HTTP/1.1 hop); `None` for at most one field.
pub(crate) fn joined_cookies(headers: &http::HeaderMap) -> Option<Vec<u8>> {
    let mut cookies = headers.get_all(http::header::COOKIE).iter();
    let first = cookies.next()?;
    let mut rest = cookies.peekable();
    rest.peek()?;
    let mut joined = first.as_bytes().to_vec();
    for cookie in rest {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(cookie.as_bytes());
    }
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_snapshot::{Header, PathModifier, UrlRewrite};

    /// A head as a list of (name, value).
    #[derive(Default)]
    struct Head(Vec<(String, String)>);

    impl HeaderEdits<'_> for Head {
        fn remove(&mut self, name: &str) {
            self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
        fn append(&mut self, name: &str, value: &str) {
            self.0.push((name.to_string(), value.to_string()));
        }
    }

    fn filter(kind: http_filter::Kind) -> HttpFilter {
        HttpFilter { kind: Some(kind) }
    }

    #[test]
    fn responses_lose_the_backends_cors_fields_and_keep_its_vary() {
        let mut head = Head(
            [("Access-Control-Allow-Origin", "*"), ("access-control-allow-credentials", "true"), ("vary", "accept")]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        );
        let fields = [("vary", "Origin".to_string()), ("access-control-allow-origin", "https://a.com".to_string())];
        cors_fields(&mut head, &fields);
        let expected: Vec<(String, String)> =
            [("vary", "accept"), ("vary", "Origin"), ("access-control-allow-origin", "https://a.com")]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
        assert_eq!(head.0, expected);
    }

    #[test]
    fn request_edits_apply_in_order_and_return_the_rewritten_path() {
        let header = |name: &str, value: &str| Header { name: name.into(), value: value.into() };
        let modifier = HeaderModifier {
            set: vec![header("X-Set", "set")],
            add: vec![header("x-add", "one"), header("x-gone", "added")],
            remove: vec!["X-GONE".into()],
        };
        let filters = [
            filter(http_filter::Kind::RequestHeaderModifier(modifier)),
            filter(http_filter::Kind::UrlRewrite(UrlRewrite {
                hostname: "internal.example".into(),
                path: Some(PathModifier { kind: Some(path_modifier::Kind::ReplacePrefixMatch("/v2".into())) }),
            })),
            // A later (backend) filter sees the rule's edits.
            filter(http_filter::Kind::RequestHeaderModifier(HeaderModifier {
                set: vec![],
                add: vec![header("x-add", "two")],
                remove: vec![],
            })),
        ];
        let mut head = Head(
            [("Host", "a.example"), ("x-set", "old"), ("x-add", "zero"), ("x-gone", "client")]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        );
        let path = request(&mut head, filters.iter(), Some("/v1"), "/v1/items");
        assert_eq!(path.as_deref(), Some("/v2/items"));
        let fields: Vec<(&str, &str)> = head.0.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            fields,
            [("x-add", "zero"), ("X-Set", "set"), ("x-add", "one"), ("host", "internal.example"), ("x-add", "two")]
        );
        // No rewrite of the path: none returned.
        assert_eq!(request(&mut Head::default(), filters[..1].iter(), None, "/x"), None);
    }

    #[test]
    fn forwarded_for_keeps_only_trusted_hops() {
        assert_eq!(forwarded_for(Some("1.1.1.1, 2.2.2.2"), "10.0.0.1", 0), "10.0.0.1");
        assert_eq!(forwarded_for(Some("1.1.1.1, 2.2.2.2"), "10.0.0.1", 1), "2.2.2.2, 10.0.0.1");
        assert_eq!(forwarded_for(Some("1.1.1.1,2.2.2.2"), "10.0.0.1", 5), "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(forwarded_for(None, "10.0.0.1", 2), "10.0.0.1");
        assert_eq!(forwarded_for(Some(" , "), "", 2), "");
    }

    #[test]
    fn prefix_rewrites() {
        let replace = |replacement: &str, prefix: &str, path: &str| {
            rewrite_path(&path_modifier::Kind::ReplacePrefixMatch(replacement.into()), Some(prefix), path)
        };
        assert_eq!(replace("/bar", "/foo", "/foo/baz"), "/bar/baz");
        assert_eq!(replace("/bar", "/foo", "/foo"), "/bar");
        assert_eq!(replace("/", "/foo", "/foo/baz"), "/baz");
        assert_eq!(replace("/", "/foo", "/foo"), "/");
        assert_eq!(replace("/bar/", "/foo/", "/foo/baz"), "/bar/baz");
        assert_eq!(replace("/new", "/", "/x/y"), "/new/x/y");
    }

    #[test]
    fn an_h2_clients_cookie_fields_are_joined_for_http1() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(joined_cookies(&headers), None);
        headers.append(http::header::COOKIE, http::HeaderValue::from_static("a=1"));
        assert_eq!(joined_cookies(&headers), None, "one field passes as it is");
        headers.append(http::header::COOKIE, http::HeaderValue::from_static("b=2"));
        assert_eq!(joined_cookies(&headers).as_deref(), Some(&b"a=1; b=2"[..]));
    }
}
