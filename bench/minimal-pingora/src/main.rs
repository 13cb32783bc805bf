//! The benchmark baseline: a minimal Pingora proxy. Routes are lines `host prefix port`
//! in a file; a request goes to the first route with its Host whose prefix starts its
//! path. Nothing else: the gap between this and Sluice is Sluice's own per-request cost.
//!
//! Usage: `minimal-pingora LISTEN_ADDR ROUTES_FILE`

use std::collections::HashMap;

use async_trait::async_trait;
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
        let host = header.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default();
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
        eprintln!("usage: minimal-pingora LISTEN_ADDR ROUTES_FILE");
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
    server.add_service(service);
    server.run_forever()
}
