//! The benchmark baseline: a minimal Pingora proxy. Routes are lines `host prefix port`
//! in a file; a request goes to the first route with its Host whose prefix starts its
//! path. Nothing else: the gap between this and Sluice is Sluice's own per-request cost.
//!
//! With TLS_ADDR, CERT and KEY it also terminates TLS on TLS_ADDR (Pingora's rustls
//! settings, HTTP/2 or HTTP/1.1 by ALPN), serving the same routes.
//!
//! Usage: `minimal-pingora LISTEN_ADDR ROUTES_FILE [TLS_ADDR CERT_PEM KEY_PEM]`

use std::collections::HashMap;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::{ProxyHttp, Session};

struct Minimal {
    routes: HashMap<String, Vec<(String, String)>>,
}

#[async_trait]
impl ProxyHttp for Minimal {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let header = session.req_header();
        // HTTP/1.1 names the host in `Host`; HTTP/2 in `:authority`, which Pingora keeps
        // in the URI (a `host` header is optional there).
        let host =
            header.headers.get("host").and_then(|h| h.to_str().ok()).or_else(|| header.uri.host()).unwrap_or_default();
        let host = host.split(':').next().unwrap_or_default();
        let path = header.uri.path();
        let upstream = self
            .routes
            .get(host)
            .and_then(|routes| routes.iter().find(|(prefix, _)| path.starts_with(prefix.as_str())))
            .map(|(_, upstream)| upstream.clone())
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(404), "no route"))?;
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(file)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: minimal-pingora LISTEN_ADDR ROUTES_FILE [TLS_ADDR CERT_PEM KEY_PEM]");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut routes: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [host, prefix, port] = parts[..] {
            routes.entry(host.to_string()).or_default().push((prefix.to_string(), format!("127.0.0.1:{port}")));
        }
    }
    let Ok(mut server) = Server::new(None) else {
        eprintln!("cannot create the server");
        std::process::exit(1);
    };
    server.bootstrap();
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, Minimal { routes });
    service.add_tcp(listen);
    if let (Some(tls_listen), Some(cert), Some(key)) = (args.get(3), args.get(4), args.get(5)) {
        // Pingora's stock rustls settings for a certificate and key file, plus ALPN h2.
        let mut settings = match TlsSettings::intermediate(cert, key) {
            Ok(settings) => settings,
            Err(e) => {
                eprintln!("TLS settings: {e}");
                std::process::exit(1);
            }
        };
        settings.enable_h2();
        service.add_tls_with_settings(tls_listen, None, settings);
    }
    server.add_service(service);
    server.run_forever()
}
