//! Compiled tables of the TLS listeners (protocol TLS): on each port, the listener a
//! ClientHello's SNI selects and, on that listener, the TLSRoute.
//!
//! ```text
//!  SNI ──► TlsPortTable: listener by hostname (exact > longest wildcard > no hostname)
//!            └─► TlsListenerTable: Terminate (its certificate) or Passthrough
//!                  └─► route by hostname (exact > longest wildcard > no hostnames;
//!                      several routes with one hostname: the first in the snapshot)
//! ```
//!
//! Listeners are isolated as HTTP ones are: once the SNI chose a listener, only that
//! listener's routes are considered.

use std::collections::HashMap;
use std::sync::Arc;

use pingora_rustls::ServerConfig;
use pingora_rustls::sign::CertifiedKey;
use sluice_snapshot::{Listener, Piece, TlsMode};

use super::clusters::{Backends, ClusterLookup, backend_target};
use super::dropped::Dropped;
use super::host_index::longest_wildcard_suffix;

/// The TLS listeners sharing one port.
#[derive(Debug, Default)]
pub struct TlsPortTable {
    listeners: HostTable<Arc<TlsListenerTable>>,
}

/// One TLS listener.
#[derive(Debug)]
pub struct TlsListenerTable {
    pub name: String,
    /// Terminate: the handshake configuration serving the listener's certificate.
    /// None: the TLS stream passes through to the backend.
    pub terminate: Option<Arc<ServerConfig>>,
    routes: HostTable<Arc<TlsRouteTable>>,
}

/// One TLSRoute on a listener.
#[derive(Debug)]
pub struct TlsRouteTable {
    pub name: String,
    pub backends: Backends,
}

/// Values by hostname: exact names, wildcards and one value for any name. A lookup takes
/// the exact name, else the longest matching wildcard, else the value for any name; the
/// first value inserted for a hostname stays.
#[derive(Debug)]
struct HostTable<T> {
    exact: HashMap<String, T>,
    /// By the wildcard's suffix with its dot (`.example.com` for `*.example.com`).
    wildcard: HashMap<String, T>,
    any: Option<T>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        HostTable { exact: HashMap::new(), wildcard: HashMap::new(), any: None }
    }
}

impl<T> HostTable<T> {
    /// Adds `value` for `hostname` ("" for any name) unless one is there already.
    fn insert(&mut self, hostname: &str, value: T) {
        match hostname.strip_prefix('*') {
            _ if hostname.is_empty() => {
                self.any.get_or_insert(value);
            }
            Some(suffix) => {
                self.wildcard.entry(suffix.to_string()).or_insert(value);
            }
            None => {
                self.exact.entry(hostname.to_string()).or_insert(value);
            }
        }
    }

    /// The value for a server name (lower case); without one, only the value for any name.
    fn lookup(&self, name: Option<&str>) -> Option<&T> {
        let Some(name) = name else { return self.any.as_ref() };
        self.exact
            .get(name)
            .or_else(|| {
                longest_wildcard_suffix(name, |s| self.wildcard.contains_key(s)).and_then(|s| self.wildcard.get(s))
            })
            .or(self.any.as_ref())
    }
}

impl TlsPortTable {
    /// The listener and route a ClientHello with `server_name` selects. The listener
    /// alone when it has no route for the name (the connection is closed).
    pub fn select(&self, server_name: Option<&str>) -> Option<(&Arc<TlsListenerTable>, Option<&Arc<TlsRouteTable>>)> {
        let listener = self.listeners.lookup(server_name)?;
        Some((listener, listener.routes.lookup(server_name)))
    }

    /// Adds a TLS listener of the snapshot. `key` is its certificate when it terminates.
    /// Routes that cannot be compiled (in `broken`) are kept without backends, so that
    /// their connections are closed, and reported in `dropped`.
    pub(crate) fn add(
        &mut self,
        listener: &Listener,
        key: Option<Arc<CertifiedKey>>,
        clusters: &(impl ClusterLookup + ?Sized),
        broken: &HashMap<Piece, String>,
        dropped: &mut Vec<Dropped>,
    ) -> Result<(), String> {
        let terminate = match (listener.tls_mode(), key) {
            (TlsMode::Terminate, Some(key)) => Some(server_config(key)?),
            (TlsMode::Terminate, None) => return Err("no certificate".into()),
            (TlsMode::Passthrough, _) => None,
            (TlsMode::Unspecified, _) => return Err("neither Terminate nor Passthrough".into()),
        };
        let mut routes = HostTable::default();
        for route in &listener.tls_routes {
            let targets = match broken.get(&Piece::Route(route.name.clone())) {
                Some(problem) => Err(problem.clone()),
                None => route
                    .backends
                    .iter()
                    .map(|b| backend_target(b, clusters).map(|t| (b.weight, t, Vec::new())))
                    .collect::<Result<Vec<_>, String>>(),
            };
            let backends = targets.map(Backends::new).unwrap_or_else(|problem| {
                dropped.push(Dropped { name: route.name.clone(), problem });
                Backends::default()
            });
            let table = Arc::new(TlsRouteTable { name: route.name.clone(), backends });
            if route.hostnames.is_empty() {
                routes.insert("", table.clone());
            }
            for hostname in &route.hostnames {
                routes.insert(hostname, table.clone());
            }
        }
        let table = Arc::new(TlsListenerTable { name: listener.name.clone(), terminate, routes });
        self.listeners.insert(&listener.hostname, table);
        Ok(())
    }
}

/// The handshake configuration of a terminating listener: its one certificate, no ALPN
/// (the bytes inside are whatever the backend speaks).
fn server_config(key: Arc<CertifiedKey>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS configuration: {error}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_prefer_exact_then_longest_wildcard_then_any_and_keep_the_first() {
        let mut table = HostTable::default();
        table.insert("*.example.com", "wildcard");
        table.insert("*.a.example.com", "longer wildcard");
        table.insert("x.a.example.com", "exact");
        table.insert("x.a.example.com", "exact, second");
        table.insert("", "any");
        for (name, want) in [
            (Some("x.a.example.com"), Some("exact")),
            (Some("y.a.example.com"), Some("longer wildcard")),
            (Some("b.example.com"), Some("wildcard")),
            (Some("example.com"), Some("any")),
            (None, Some("any")),
        ] {
            assert_eq!(table.lookup(name).copied(), want, "{name:?}");
        }
        let mut no_any = HostTable::default();
        no_any.insert("*.com", 1);
        assert_eq!(no_any.lookup(Some("a.b.com")), Some(&1), "a wildcard covers several labels");
        assert_eq!(no_any.lookup(None), None);
        assert_eq!(no_any.lookup(Some("com")), None);
    }
}
