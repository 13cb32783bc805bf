//! Loopback tests of CORS (HTTPRoute filter `CORS`): preflights answered by the data plane,
//! Access-Control-* fields on the backends' responses. The routes are those of the Gateway
//! API conformance test `HTTPRouteCORS` (v1.7.0), and the expectations follow it. CI runs
//! these with the HTTP/1.1 fast path on and off; HTTP/2 goes through Pingora's path.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

use sluice_snapshot::{
    Cluster, Cors, HttpFilter, HttpMatch, HttpRoute, Listener, PathMatch, PathMatchType, Protocol, Snapshot,
    http_filter,
};
use support::{DataPlane, Echo, Response, cluster, free_port, request, to};

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

struct Policy<'a> {
    origins: &'a [&'a str],
    methods: &'a [&'a str],
    headers: &'a [&'a str],
    expose: &'a [&'a str],
    credentials: bool,
    max_age: u32,
}

fn cors_route(prefix: &str, policy: Policy<'_>, backend: &str) -> HttpRoute {
    HttpRoute {
        name: format!("httproute/ns/cors{}/rule/0/match/0", prefix.replace('/', "-")),
        r#match: Some(HttpMatch {
            path: Some(PathMatch { r#type: PathMatchType::Prefix as i32, value: prefix.into() }),
            ..Default::default()
        }),
        filters: vec![HttpFilter {
            kind: Some(http_filter::Kind::Cors(Cors {
                allow_origins: list(policy.origins),
                allow_methods: list(policy.methods),
                allow_headers: list(policy.headers),
                expose_headers: list(policy.expose),
                allow_credentials: policy.credentials,
                max_age_seconds: policy.max_age,
            })),
        }],
        backends: vec![to(backend, 1)],
        ..Default::default()
    }
}

/// The conformance test's routes (httproute-cors.yaml), all to the cluster `a`, plus
/// `/own` to the cluster `own` (a backend that sets CORS fields of its own).
fn snapshot(port: u16, clusters: Vec<Cluster>) -> Snapshot {
    let routes = vec![
        cors_route(
            "/cors-1",
            Policy {
                origins: &["https://www.foo.com", "https://*.bar.com"],
                methods: &["GET", "OPTIONS"],
                headers: &["x-header-1", "x-header-2"],
                expose: &["x-header-3", "x-header-4"],
                credentials: true,
                max_age: 3600,
            },
            "a",
        ),
        cors_route(
            "/cors-2",
            Policy {
                origins: &["https://www.foo.com"],
                methods: &["*"],
                headers: &[],
                expose: &[],
                credentials: false,
                max_age: 5,
            },
            "a",
        ),
        cors_route(
            "/cors-wildcard-origin",
            Policy { origins: &["*"], methods: &["PUT"], headers: &[], expose: &[], credentials: false, max_age: 5 },
            "a",
        ),
        cors_route(
            "/cors-wildcard-methods-headers",
            Policy { origins: &["*"], methods: &["*"], headers: &["*"], expose: &[], credentials: true, max_age: 5 },
            "a",
        ),
        cors_route(
            "/cors-wildcard-methods-headers-unauth",
            Policy { origins: &["*"], methods: &["*"], headers: &["*"], expose: &[], credentials: false, max_age: 5 },
            "a",
        ),
        cors_route(
            "/own",
            Policy {
                origins: &["https://www.foo.com"],
                methods: &["GET"],
                headers: &[],
                expose: &["x-mine"],
                credentials: false,
                max_age: 5,
            },
            "own",
        ),
    ];
    Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![Listener {
            name: "gateway/test/gw/listener/http".into(),
            port: u32::from(port),
            protocol: Protocol::Http as i32,
            http_routes: routes,
            ..Default::default()
        }],
        clusters,
        ..Default::default()
    }
}

/// A backend that answers every request 200 with CORS fields and a Vary of its own.
fn own_cors_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    let answer = "HTTP/1.1 200 OK\r\naccess-control-allow-origin: https://evil.example\r\n\
                        access-control-allow-credentials: true\r\nvary: accept-encoding\r\nx-mine: 1\r\n\
                        content-length: 2\r\n\r\nok";
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn start() -> (Echo, DataPlane, u16) {
    let echo = Echo::start("a");
    let own = own_cors_backend();
    let port = free_port();
    let plane = DataPlane::start(&snapshot(port, vec![cluster("a", &[echo.port]), cluster("own", &[own])]));
    (echo, plane, port)
}

fn preflight(port: u16, path: &str, origin: &str, method: &str, headers: Option<&str>) -> Response {
    let origin = format!("origin: {origin}");
    let method = format!("access-control-request-method: {method}");
    let headers = headers.map(|h| format!("access-control-request-headers: {h}"));
    let mut extra = vec![origin.as_str(), method.as_str()];
    extra.extend(headers.as_deref());
    request(port, "OPTIONS", "cors.example.com", path, &extra)
}

/// A header's value with whitespace removed (the conformance test ignores it).
fn squeezed(response: &Response, name: &str) -> Option<String> {
    response.header(name).map(|v| v.replace(' ', ""))
}

#[test]
fn preflights_are_answered_by_the_data_plane() {
    let (echo, _plane, port) = start();

    for origin in ["https://www.foo.com", "https://www.bar.com", "https://xpto.www.bar.com"] {
        let answer = preflight(port, "/cors-1", origin, "GET", Some("x-header-1, x-header-2"));
        assert!(matches!(answer.status, 200 | 204), "{answer:?}");
        assert_eq!(answer.header("access-control-allow-origin"), Some(origin), "{answer:?}");
        assert_eq!(squeezed(&answer, "access-control-allow-methods").as_deref(), Some("GET,OPTIONS"));
        assert_eq!(squeezed(&answer, "access-control-allow-headers").as_deref(), Some("x-header-1,x-header-2"));
        assert_eq!(squeezed(&answer, "access-control-expose-headers").as_deref(), Some("x-header-3,x-header-4"));
        assert_eq!(answer.header("access-control-max-age"), Some("3600"));
        assert_eq!(answer.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(answer.header("content-length"), Some("0"));
        assert!(answer.header("vary").is_some_and(|v| v.contains("Origin")), "{answer:?}");
        assert_eq!(answer.body, "");
    }

    // An origin that is not allowed: answered, without any Access-Control-* field (the
    // conformance test wants no backend answer: the echo's path must not show up).
    let denied = preflight(port, "/cors-1", "https://foobar.com", "GET", None);
    assert!(matches!(denied.status, 200 | 204 | 403), "{denied:?}");
    assert!(denied.headers.iter().all(|(name, _)| !name.starts_with("access-control-")), "{denied:?}");
    assert_eq!(denied.body, "");

    // allowMethods "*" without credentials: the method asked for (or "*"), no credentials.
    let any_method = preflight(port, "/cors-2", "https://www.foo.com", "POST", None);
    assert!(matches!(any_method.status, 200 | 204), "{any_method:?}");
    assert!(matches!(any_method.header("access-control-allow-methods"), Some("POST" | "*")), "{any_method:?}");
    assert_eq!(any_method.header("access-control-allow-origin"), Some("https://www.foo.com"));
    assert_eq!(any_method.header("access-control-allow-credentials"), None);
    assert_eq!(any_method.header("access-control-max-age"), Some("5"));

    // allowOrigins "*": the origin (with its port) or "*".
    for origin in ["https://foobar.com", "https://foobar.com:12345"] {
        let any_origin = preflight(port, "/cors-wildcard-origin", origin, "PUT", None);
        assert!(matches!(any_origin.status, 200 | 204), "{any_origin:?}");
        let allowed = any_origin.header("access-control-allow-origin");
        assert!(allowed == Some(origin) || allowed == Some("*"), "{any_origin:?}");
        assert_eq!(any_origin.header("access-control-allow-methods"), Some("PUT"));
        assert_eq!(any_origin.header("access-control-allow-credentials"), None);
    }

    // Wildcards with credentials: never "*", always what was asked for.
    let with_credentials = preflight(
        port,
        "/cors-wildcard-methods-headers",
        "https://other.foo.com",
        "PUT",
        Some("x-header-1, x-header-2"),
    );
    assert!(matches!(with_credentials.status, 200 | 204), "{with_credentials:?}");
    assert_eq!(with_credentials.header("access-control-allow-origin"), Some("https://other.foo.com"));
    assert_eq!(with_credentials.header("access-control-allow-methods"), Some("PUT"));
    assert_eq!(squeezed(&with_credentials, "access-control-allow-headers").as_deref(), Some("x-header-1,x-header-2"));
    assert_eq!(with_credentials.header("access-control-allow-credentials"), Some("true"));

    let without = preflight(
        port,
        "/cors-wildcard-methods-headers-unauth",
        "https://other.foo.com",
        "PUT",
        Some("x-header-1, x-header-2"),
    );
    assert!(matches!(without.status, 200 | 204), "{without:?}");
    assert!(matches!(without.header("access-control-allow-origin"), Some("https://other.foo.com" | "*")));
    assert!(matches!(without.header("access-control-allow-methods"), Some("PUT" | "*")));
    assert!(matches!(
        squeezed(&without, "access-control-allow-headers").as_deref(),
        Some("x-header-1,x-header-2" | "x-header-2,x-header-1" | "*")
    ));
    assert_eq!(without.header("access-control-allow-credentials"), None);

    // No preflight ever reached the backend.
    assert!(echo.seen().iter().all(|line| !line.starts_with("OPTIONS")), "{:?}", echo.seen());

    // OPTIONS without Access-Control-Request-Method is an ordinary request: forwarded.
    let plain_options = request(port, "OPTIONS", "cors.example.com", "/cors-1", &["origin: https://www.foo.com"]);
    assert_eq!(plain_options.status, 200, "{plain_options:?}");
    assert_eq!(plain_options.echo("method"), Some("OPTIONS"));
    assert_eq!(plain_options.header("access-control-allow-origin"), Some("https://www.foo.com"));
}

#[test]
fn responses_to_allowed_origins_get_cors_fields() {
    let (_echo, _plane, port) = start();
    let get = |path: &str, method: &str, origin: &str| {
        request(port, method, "cors.example.com", path, &[&format!("origin: {origin}")])
    };

    for origin in ["https://www.foo.com", "https://www.bar.com"] {
        let answer = get("/cors-1", "GET", origin);
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.echo("backend"), Some("a"), "{answer:?}");
        assert_eq!(answer.header("access-control-allow-origin"), Some(origin));
        assert_eq!(answer.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(squeezed(&answer, "access-control-expose-headers").as_deref(), Some("x-header-3,x-header-4"));
        assert_eq!(answer.header("vary"), Some("Origin"));
        // Preflight-only fields stay on preflights.
        assert_eq!(answer.header("access-control-max-age"), None);
        assert_eq!(answer.header("access-control-allow-methods"), None);
    }

    let denied = get("/cors-1", "GET", "https://foobar.com");
    assert_eq!(denied.status, 200, "{denied:?}");
    assert_eq!(denied.echo("backend"), Some("a"));
    assert!(denied.headers.iter().all(|(name, _)| !name.starts_with("access-control-")), "{denied:?}");

    for origin in ["https://foobar.com", "https://foobar.com:12345"] {
        let any = get("/cors-wildcard-origin", "PUT", origin);
        assert_eq!(any.status, 200, "{any:?}");
        let allowed = any.header("access-control-allow-origin");
        assert!(allowed == Some(origin) || allowed == Some("*"), "{any:?}");
        assert_eq!(any.header("access-control-allow-credentials"), None);
    }

    let credentials = get("/cors-wildcard-methods-headers", "GET", "https://other.foo.com");
    assert_eq!(credentials.header("access-control-allow-origin"), Some("https://other.foo.com"));
    assert_eq!(credentials.header("access-control-allow-credentials"), Some("true"));
    let unauth = get("/cors-wildcard-methods-headers-unauth", "GET", "https://other.foo.com");
    assert!(matches!(unauth.header("access-control-allow-origin"), Some("https://other.foo.com" | "*")));
    assert_eq!(unauth.header("access-control-allow-credentials"), None);

    // The route's policy replaces the backend's own CORS fields; its Vary is kept.
    let own = get("/own", "GET", "https://www.foo.com");
    assert_eq!(own.status, 200, "{own:?}");
    let values =
        |name: &str| own.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(values("access-control-allow-origin"), ["https://www.foo.com"]);
    assert!(values("access-control-allow-credentials").is_empty(), "{own:?}");
    assert_eq!(values("access-control-expose-headers"), ["x-mine"]);
    assert_eq!(values("vary"), ["accept-encoding", "Origin"]);
    let own_denied = get("/own", "GET", "https://evil.example");
    assert!(own_denied.headers.iter().all(|(name, _)| !name.starts_with("access-control-")), "{own_denied:?}");
}

/// HTTP/2 (h2c) requests take Pingora's path, whatever the fast-path setting.
#[test]
fn http2_preflights_and_responses_alike() {
    let (_echo, _plane, port) = start();
    let curl = |extra: &[&str]| {
        let output = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-", "--http2-prior-knowledge"])
            .args(extra)
            .output()
            .expect("curl (with HTTP/2) is needed for these tests; .ci/run installs it");
        support::parse_response(&output.stdout)
    };
    let url = format!("http://127.0.0.1:{port}/cors-1");
    let answer =
        curl(&["-X", "OPTIONS", "-H", "origin: https://x.bar.com", "-H", "access-control-request-method: GET", &url]);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some("https://x.bar.com"));
    assert_eq!(answer.header("access-control-max-age"), Some("3600"));
    let actual = curl(&["-H", "origin: https://www.foo.com", &url]);
    assert_eq!(actual.status, 200, "{actual:?}");
    assert_eq!(actual.header("access-control-allow-origin"), Some("https://www.foo.com"));
    assert_eq!(actual.header("access-control-allow-credentials"), Some("true"));
}
