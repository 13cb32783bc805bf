//! Edits on the way through, written once for both request paths: header fields (over
//! `HeaderEdits`, which both paths' heads implement), the forwarding fields
//! (X-Forwarded-For and the fields about earlier hops) and URL rewrites.

use sluice_snapshot::path_modifier;

/// A head on its way through, as each request path holds it (Pingora's `RequestHeader`
/// and `ResponseHeader`, the fast path's field list).
pub(crate) trait HeaderEdits<'v> {
    /// Removes every field `name` (lower case; compared case-insensitively).
    fn remove(&mut self, name: &str);
    /// Appends a field (after any of the same name).
    fn append(&mut self, name: &'static str, value: &'v str);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
