//! What a request looks like to the tables (route matching) and to CORS, whichever
//! request path holds it.

/// What a request looks like to the matcher.
pub struct RequestView<'a> {
    pub host: &'a str,
    /// Normalized path, without query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a http::Method,
    pub headers: Headers<'a>,
}

/// A request's header fields: Pingora's parsed map, or the raw fields of the HTTP/1.1
/// fast path (names compared case-insensitively).
#[derive(Clone, Copy)]
pub enum Headers<'a> {
    Map(&'a http::HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

impl<'a> Headers<'a> {
    /// The first value of header `name` (lower case), when it is visible ASCII.
    pub fn first(&self, name: &str) -> Option<&'a str> {
        match *self {
            Headers::Map(map) => map.get(name).and_then(|value| value.to_str().ok()),
            Headers::Raw(fields) => fields
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name))
                .filter(|f| f.value.iter().all(|b| *b == b'\t' || (32..127).contains(b)))
                .and_then(|f| std::str::from_utf8(f.value).ok()),
        }
    }

    /// Whether any value of header `name` is visible ASCII (what `HeaderValue::to_str`
    /// accepts) and satisfies `test`.
    pub(crate) fn any_value(&self, name: &http::HeaderName, test: impl Fn(&str) -> bool) -> bool {
        match self {
            Headers::Map(map) => map.get_all(name).iter().any(|value| value.to_str().is_ok_and(&test)),
            Headers::Raw(fields) => fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name.as_str())).any(|f| {
                f.value.iter().all(|b| *b == b'\t' || (32..127).contains(b))
                    && std::str::from_utf8(f.value).is_ok_and(&test)
            }),
        }
    }
}
