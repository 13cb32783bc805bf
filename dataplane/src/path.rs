//! Request path normalization. The proxy routes on the normalized path and forwards the
//! same normalized path, so that no `..`, `//` or encoded variant can reach a backend
//! path that routing did not see.

use std::borrow::Cow;

/// Normalizes an origin-form path (without query): decodes percent-encoded unreserved
/// characters (RFC 3986 §2.3; `%2F` stays encoded, it is not a separator), merges repeated
/// slashes and removes `.` and `..` segments (§5.2.4), also those carrying `;` path
/// parameters. Always returns a path starting with `/`.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if is_normal(path) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    let trailing_slash = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for segment in decoded.split('/') {
        // A dot-segment with path parameters (`..;x`, `.;x`) is a dot-segment to servers
        // that strip parameters (Tomcat, Jetty): `/public/..;/admin` must not reach a
        // backend as `/admin` behind a route for `/public`, so it is resolved here.
        match segment.split(';').next().unwrap_or_default() {
            "" if segment.is_empty() => {}
            "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing_slash && !out.ends_with('/')) {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Fast path: already normal (the common case costs one scan, no allocation).
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut previous = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => return false,
            b'/' if previous == b'/' => return false,
            b'.' if previous == b'/' => {
                let next = bytes.get(i + 1).copied();
                if next.is_none() || next == Some(b'/') || next == Some(b'.') || next == Some(b';') {
                    return false;
                }
            }
            _ => {}
        }
        previous = b;
    }
    true
}

/// Decodes `%XX` escapes of unreserved characters; other escapes stay, in upper case. A
/// `%` that starts no escape becomes `%25` (unless it ends the path), so that characters
/// decoded after it can never form a new escape (`%%32e` must not become `%2e`).
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(value) = bytes.get(i + 1..i + 3).and_then(|pair| hex_pair(pair[0], pair[1])) {
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                    out.push(value);
                } else {
                    // Keep the escape, with upper-case hex so equal paths compare equal.
                    out.extend_from_slice(&[
                        b'%',
                        bytes[i + 1].to_ascii_uppercase(),
                        bytes[i + 2].to_ascii_uppercase(),
                    ]);
                }
                i += 3;
                continue;
            }
            if i + 1 < bytes.len() {
                out.extend_from_slice(b"%25");
                i += 1;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Only ASCII bytes were decoded or inserted, between whole characters: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let h = (high as char).to_digit(16)?;
    let l = (low as char).to_digit(16)?;
    u8::try_from(h * 16 + l).ok()
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalizes_like_rfc3986() {
        for (input, expected) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/%61dmin", "/admin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/.well-known/x", "/.well-known/x"),
            ("", "/"),
            ("/100%", "/100%"),
            ("/public/..;/admin", "/admin"),
            ("/public/..;jsessionid=x/admin", "/admin"),
            ("/a/.;x/b", "/a/b"),
            ("/a/%2e%2e;/b", "/b"),
            ("/a/b;v=1/c", "/a/b;v=1/c"),
            ("/a/;x/b", "/a/;x/b"),
            ("/café//x", "/café/x"),
            ("/a/%%32e%%32e/secret", "/a/%252e%252e/secret"),
            ("/%f%39", "/%25f9"),
            ("/a%zz", "/a%25zz"),
        ] {
            assert_eq!(normalize(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize("/api/v1/items"), std::borrow::Cow::Borrowed(_)));
        assert!(matches!(normalize("/a/.hidden"), std::borrow::Cow::Borrowed(_)));
    }
}
