//! Prometheus metrics of the data plane, recorded with atomics only on the request path.
//!
//! Counters live per route name and survive snapshot swaps (a route keeps its series when
//! the config changes); `/metrics` renders them through a prometheus-client collector.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Distinct status codes tracked per route; rarer codes count under their class.
const STATUS_SLOTS: usize = 12;

/// The label of requests that matched no route.
pub const NO_ROUTE: &str = "none";

/// Every metric of one data plane.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    pub generation: AtomicU64,
    pub reloads_applied: AtomicU64,
    pub reloads_rejected: AtomicU64,
    /// Pushed messages applied, by kind: whole snapshots and deltas.
    pub snapshots_applied: AtomicU64,
    pub deltas_applied: AtomicU64,
    /// Deltas that did not apply (base not served, or the result's hash differs): a whole
    /// snapshot was asked for.
    pub resyncs_requested: AtomicU64,
    udp_ports: Mutex<BTreeMap<u16, Arc<UdpMetrics>>>,
    tls_ports: Mutex<BTreeMap<u16, Arc<TlsMetrics>>>,
    listeners: Mutex<BTreeMap<u16, Arc<ListenerMetrics>>>,
    /// Pieces of the current snapshot that are not served (could not be compiled).
    pub dropped_pieces: AtomicU64,
    /// 1 while the snapshot served was read from `--state-dir` at start and the control
    /// plane has not sent one yet.
    pub stale: std::sync::atomic::AtomicBool,
}

/// Connections of one TCP-based listener port (HTTP, HTTPS, TLS, TCP).
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub open: std::sync::atomic::AtomicUsize,
    /// Connections closed at accept because the port had its maximum open.
    pub refused: AtomicU64,
}

/// One open connection of a listener port, counted until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<ListenerMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ListenerMetrics {
    /// Counts a new connection, or refuses it (None) when `max` are open already.
    pub fn admit(self: &Arc<Self>, max: usize) -> Option<OpenConnection> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(OpenConnection(self.clone()))
    }
}

/// Counters of one UDP port.
#[derive(Debug, Default)]
pub struct UdpMetrics {
    /// Sessions alive now.
    pub sessions: AtomicU64,
    /// Datagrams from clients forwarded to backends.
    pub datagrams_in: AtomicU64,
    /// Datagrams from backends forwarded to clients.
    pub datagrams_out: AtomicU64,
    /// Client datagrams of new sessions without a usable backend (invalid backend, no
    /// backend, no endpoint).
    pub dropped_no_backend: AtomicU64,
    /// Client datagrams of new sessions while the port has its maximum of sessions.
    pub dropped_session_limit: AtomicU64,
    /// Datagrams that could not be sent on (either direction), or whose upstream socket
    /// could not be opened.
    pub dropped_send_error: AtomicU64,
}

/// What became of a connection to a TLS listener (protocol TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOutcome {
    /// Served: the TLS stream passed through to a backend.
    Passthrough,
    /// Served: the data plane terminated TLS and copied the plaintext.
    Terminate,
    /// Closed: no complete ClientHello within the deadline.
    ClientHelloTimeout,
    /// Closed: the ClientHello did not fit in the size cap.
    ClientHelloTooLarge,
    /// Closed: not TLS.
    ClientHelloInvalid,
    /// The client left before its ClientHello was complete (or sent nothing, as a TCP
    /// health check does).
    ClientClosed,
    /// Closed: no listener or route for the SNI.
    NoRoute,
    /// Closed: an invalid backend's share, no endpoint, or the backend refused.
    NoBackend,
    /// Closed: the client's handshake with a terminating listener failed or was too slow.
    HandshakeFailed,
}

impl TlsOutcome {
    const ALL: [TlsOutcome; 9] = [
        TlsOutcome::Passthrough,
        TlsOutcome::Terminate,
        TlsOutcome::ClientHelloTimeout,
        TlsOutcome::ClientHelloTooLarge,
        TlsOutcome::ClientHelloInvalid,
        TlsOutcome::ClientClosed,
        TlsOutcome::NoRoute,
        TlsOutcome::NoBackend,
        TlsOutcome::HandshakeFailed,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            TlsOutcome::Passthrough => "passthrough",
            TlsOutcome::Terminate => "terminate",
            TlsOutcome::ClientHelloTimeout => "client_hello_timeout",
            TlsOutcome::ClientHelloTooLarge => "client_hello_too_large",
            TlsOutcome::ClientHelloInvalid => "client_hello_invalid",
            TlsOutcome::ClientClosed => "client_closed",
            TlsOutcome::NoRoute => "no_route",
            TlsOutcome::NoBackend => "no_backend",
            TlsOutcome::HandshakeFailed => "handshake_failed",
        }
    }
}

impl From<&crate::client_hello::HelloError> for TlsOutcome {
    fn from(error: &crate::client_hello::HelloError) -> Self {
        use crate::client_hello::HelloError;
        match error {
            HelloError::TimedOut => TlsOutcome::ClientHelloTimeout,
            HelloError::TooLarge => TlsOutcome::ClientHelloTooLarge,
            HelloError::NotTls(_) => TlsOutcome::ClientHelloInvalid,
            HelloError::Closed | HelloError::Io(_) => TlsOutcome::ClientClosed,
        }
    }
}

/// Connections of one TLS port, by outcome (counted when they end).
#[derive(Debug, Default)]
pub struct TlsMetrics {
    outcomes: [AtomicU64; TlsOutcome::ALL.len()],
}

impl TlsMetrics {
    pub fn count(&self, outcome: TlsOutcome) {
        if let Some(index) = TlsOutcome::ALL.iter().position(|o| *o == outcome)
            && let Some(counter) = self.outcomes.get(index)
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counters of one route. They are allocated on the route's first request: a route that
/// sees no traffic costs a few bytes, not the ~420 of its counters (2 MB at 5000 routes).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    counters: std::sync::OnceLock<Box<Counters>>,
}

#[derive(Debug, Default)]
struct Counters {
    status_codes: [AtomicU16; STATUS_SLOTS],
    status_counts: [AtomicU64; STATUS_SLOTS],
    /// Codes that found no slot, by class (1xx..5xx).
    other_by_class: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    upstream_errors: AtomicU64,
    retries: AtomicU64,
    /// gRPC answers by `grpc-status` (0 OK … 16 UNAUTHENTICATED).
    grpc_statuses: [AtomicU64; GRPC_CODES.len()],
}

/// The gRPC status codes by number, as the metric labels them.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl RouteMetrics {
    fn counters(&self) -> &Counters {
        self.counters.get_or_init(Box::default)
    }

    /// Counts one retry (HTTPRoute `retry`) of a request of this route.
    pub fn retried(&self) {
        self.counters().retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one finished request.
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.counters().record(status, elapsed);
    }

    /// Records the `grpc-status` (0-16) a backend answered a gRPC request with.
    pub fn record_grpc(&self, code: u32) {
        if let Some(count) = usize::try_from(code).ok().and_then(|code| self.counters().grpc_statuses.get(code)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn upstream_error(&self) {
        self.counters().upstream_errors.fetch_add(1, Ordering::Relaxed);
    }
}

impl Counters {
    fn record(&self, status: u16, elapsed: Duration) {
        self.count_status(status);
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn count_status(&self, status: u16) {
        for (code, count) in self.status_codes.iter().zip(&self.status_counts) {
            let current = code.load(Ordering::Relaxed);
            let claimed = current == status
                || (current == 0
                    && match code.compare_exchange(0, status, Ordering::Relaxed, Ordering::Relaxed) {
                        Ok(_) => true,
                        Err(other) => other == status,
                    });
            if claimed {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.other_by_class[class].fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// The counters of `route`, created on first use and kept across snapshot swaps.
    pub fn route(&self, route: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        routes.entry(route.to_string()).or_default().clone()
    }

    /// Drops the counters of routes that no table holds any more: a route gone from the
    /// config loses its series (and its memory) once the tables that served it are
    /// released. Counters something still held at a call (a request in flight through an
    /// older table, a scrape rendering them) stay until a later call. Called after each
    /// swap of the served tables and before each scrape.
    pub fn prune_routes(&self) {
        let mut routes = self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The map's own reference is the only one left when no table (and no request)
        // holds the counters; new references are only handed out under this lock.
        routes.retain(|name, m| name == NO_ROUTE || Arc::strong_count(m) > 1);
        if routes.capacity() > 2 * routes.len() + 64 {
            routes.shrink_to_fit();
        }
    }

    /// The counters of UDP port `port`, created on first use.
    pub fn udp_port(&self, port: u16) -> Arc<UdpMetrics> {
        let mut ports = self.udp_ports.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ports.entry(port).or_default().clone()
    }

    /// The counters of TLS port `port`, created on first use.
    pub fn tls_port(&self, port: u16) -> Arc<TlsMetrics> {
        let mut ports = self.tls_ports.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ports.entry(port).or_default().clone()
    }

    /// The connection counters of listener port `port`, created on first use.
    pub fn listener(&self, port: u16) -> Arc<ListenerMetrics> {
        let mut ports = self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ports.entry(port).or_default().clone()
    }

    /// A registry exposing these metrics.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::with_prefix("sluice");
        registry.register_collector(Box::new(MetricsCollector(self.clone())));
        registry
    }
}

#[derive(Debug)]
struct MetricsCollector(Arc<Metrics>);

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = &self.0;
        // Routes no table serves any more are not rendered (a swap may have found them
        // still held).
        metrics.prune_routes();
        let routes: Vec<(String, Arc<RouteMetrics>)> = {
            let routes = metrics.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut list: Vec<_> = routes.iter().map(|(name, m)| (name.clone(), m.clone())).collect();
            list.sort_by(|a, b| a.0.cmp(&b.0));
            list
        };
        // A route without requests yet renders as zeros.
        let zero = Counters::default();
        let routes: Vec<(&String, &Counters)> =
            routes.iter().map(|(name, m)| (name, m.counters.get().map_or(&zero, |c| &**c))).collect();

        let mut family =
            encoder.encode_descriptor("requests", "Requests by route and status code", None, MetricType::Counter)?;
        for (route, m) in &routes {
            for (code, count) in m.status_codes.iter().zip(&m.status_counts) {
                let code = code.load(Ordering::Relaxed);
                if code != 0 {
                    let labels = [("route", (*route).clone()), ("code", code.to_string())];
                    ConstCounter::new(count.load(Ordering::Relaxed)).encode(family.encode_family(&labels)?)?;
                }
            }
            for (class, count) in m.other_by_class.iter().enumerate() {
                let value = count.load(Ordering::Relaxed);
                if value != 0 {
                    let labels = [("route", (*route).clone()), ("code", format!("{}xx", class + 1))];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "request_duration_seconds",
            "Time from request headers to the end of the response, by route",
            None,
            MetricType::Histogram,
        )?;
        for (route, m) in &routes {
            let buckets: Vec<(f64, u64)> =
                BUCKETS.iter().zip(&m.buckets).map(|(bound, count)| (*bound, count.load(Ordering::Relaxed))).collect();
            let count = m.count.load(Ordering::Relaxed);
            let sum = m.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let labels = [("route", (*route).clone())];
            family.encode_family(&labels)?.encode_histogram::<Vec<(String, String)>>(
                sum,
                count,
                &buckets_with_inf(buckets, count),
                None,
            )?;
        }

        let mut family = encoder.encode_descriptor(
            "upstream_errors",
            "Failed attempts to reach a backend, by route",
            None,
            MetricType::Counter,
        )?;
        for (route, m) in &routes {
            let labels = [("route", (*route).clone())];
            ConstCounter::new(m.upstream_errors.load(Ordering::Relaxed)).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "grpc_responses",
            "gRPC answers from backends by route and grpc-status",
            None,
            MetricType::Counter,
        )?;
        for (route, m) in &routes {
            for (code, count) in GRPC_CODES.iter().zip(&m.grpc_statuses) {
                let value = count.load(Ordering::Relaxed);
                if value != 0 {
                    let labels = [("route", (*route).clone()), ("grpc_status", (*code).to_string())];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "retries",
            "Requests sent to a backend again (HTTPRoute retry), by route",
            None,
            MetricType::Counter,
        )?;
        for (route, m) in &routes {
            let labels = [("route", (*route).clone())];
            ConstCounter::new(m.retries.load(Ordering::Relaxed)).encode(family.encode_family(&labels)?)?;
        }

        let gauge = ConstGauge::new(i64::try_from(metrics.generation.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "config_generation",
            "Generation of the snapshot being served",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family =
            encoder.encode_descriptor("config_reloads", "Snapshot reloads by result", None, MetricType::Counter)?;
        for (result, value) in [("applied", &metrics.reloads_applied), ("rejected", &metrics.reloads_rejected)] {
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(family.encode_family(&[("result", result)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "config_pushes_applied",
            "Pushed config messages applied, by kind (snapshot: whole, delta: the changes)",
            None,
            MetricType::Counter,
        )?;
        for (kind, value) in [("snapshot", &metrics.snapshots_applied), ("delta", &metrics.deltas_applied)] {
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(family.encode_family(&[("kind", kind)])?)?;
        }
        let family = encoder.encode_descriptor(
            "config_resyncs_requested",
            "Deltas that did not apply, so the whole snapshot was asked for",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(metrics.resyncs_requested.load(Ordering::Relaxed)).encode(family)?;
        let listeners: Vec<(String, Arc<ListenerMetrics>)> = {
            let ports = metrics.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            ports.iter().map(|(port, m)| (port.to_string(), m.clone())).collect()
        };
        let mut family = encoder.encode_descriptor(
            "connections_open",
            "Client connections open, by port",
            None,
            MetricType::Gauge,
        )?;
        for (port, m) in &listeners {
            let open = i64::try_from(m.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            ConstGauge::new(open).encode(family.encode_family(&[("port", port.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "connections_refused",
            "Client connections closed at accept because the port had --max-connections-per-listener open",
            None,
            MetricType::Counter,
        )?;
        for (port, m) in &listeners {
            ConstCounter::new(m.refused.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("port", port.as_str())])?)?;
        }
        ConstGauge::new(i64::from(metrics.stale.load(Ordering::Relaxed))).encode(encoder.encode_descriptor(
            "config_stale",
            "1 while serving the snapshot saved on disk, before the control plane sent one",
            None,
            MetricType::Gauge,
        )?)?;
        let dropped = i64::try_from(metrics.dropped_pieces.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        ConstGauge::new(dropped).encode(encoder.encode_descriptor(
            "snapshot_dropped_pieces",
            "Routes, listeners and certificates of the current snapshot that could not be compiled and are not served",
            None,
            MetricType::Gauge,
        )?)?;
        let udp_ports: Vec<(String, Arc<UdpMetrics>)> = {
            let ports = metrics.udp_ports.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            ports.iter().map(|(port, m)| (port.to_string(), m.clone())).collect()
        };
        let mut family = encoder.encode_descriptor(
            "udp_sessions",
            "UDP sessions (client addresses) alive, by port",
            None,
            MetricType::Gauge,
        )?;
        for (port, m) in &udp_ports {
            let sessions = i64::try_from(m.sessions.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            ConstGauge::new(sessions).encode(family.encode_family(&[("port", port.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "udp_datagrams",
            "UDP datagrams forwarded, by port and direction",
            None,
            MetricType::Counter,
        )?;
        for (port, m) in &udp_ports {
            for (direction, value) in [("in", &m.datagrams_in), ("out", &m.datagrams_out)] {
                let labels = [("port", port.as_str()), ("direction", direction)];
                ConstCounter::new(value.load(Ordering::Relaxed)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "udp_dropped_datagrams",
            "UDP datagrams dropped, by port and reason",
            None,
            MetricType::Counter,
        )?;
        for (port, m) in &udp_ports {
            for (reason, value) in [
                ("no_backend", &m.dropped_no_backend),
                ("session_limit", &m.dropped_session_limit),
                ("send_error", &m.dropped_send_error),
            ] {
                let labels = [("port", port.as_str()), ("reason", reason)];
                ConstCounter::new(value.load(Ordering::Relaxed)).encode(family.encode_family(&labels)?)?;
            }
        }
        let tls_ports: Vec<(String, Arc<TlsMetrics>)> = {
            let ports = metrics.tls_ports.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            ports.iter().map(|(port, m)| (port.to_string(), m.clone())).collect()
        };
        let mut family = encoder.encode_descriptor(
            "tls_connections",
            "Connections to TLS listeners (protocol TLS) that ended, by port and outcome",
            None,
            MetricType::Counter,
        )?;
        for (port, m) in &tls_ports {
            for (outcome, value) in TlsOutcome::ALL.iter().zip(&m.outcomes) {
                let labels = [("port", port.as_str()), ("outcome", outcome.label())];
                ConstCounter::new(value.load(Ordering::Relaxed)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn buckets_with_inf(mut buckets: Vec<(f64, u64)>, count: u64) -> Vec<(f64, u64)> {
    buckets.push((f64::INFINITY, count));
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let metrics = Arc::new(Metrics::default());
        let route = metrics.route("httproute/ns/r/rule/0/match/0");
        route.record(200, Duration::from_millis(3));
        route.record(200, Duration::from_millis(30));
        route.record(503, Duration::from_millis(1));
        for code in 0..20u16 {
            route.record(400 + code, Duration::from_millis(1));
        }
        let grpc = metrics.route("grpcroute/ns/g/rule/0/match/0");
        grpc.record_grpc(0);
        grpc.record_grpc(14);
        grpc.record_grpc(99);
        metrics.generation.store(7, Ordering::Relaxed);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).unwrap();
        let grpc_line = |code: &str| {
            format!(r#"sluice_grpc_responses_total{{route="grpcroute/ns/g/rule/0/match/0",grpc_status="{code}"}} 1"#)
        };
        assert!(text.contains(&grpc_line("OK")) && text.contains(&grpc_line("UNAVAILABLE")), "{text}");
        assert_eq!(text.matches("sluice_grpc_responses_total{").count(), 2, "an unknown code is not counted: {text}");
        assert!(
            text.contains(r#"sluice_requests_total{route="httproute/ns/r/rule/0/match/0",code="200"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"code="503"} 1"#), "{text}");
        // 20 distinct 4xx codes: the slots fill up and the rest count under 4xx.
        assert!(text.contains(r#"code="4xx"}"#), "{text}");
        assert!(
            text.contains(r#"sluice_request_duration_seconds_count{route="httproute/ns/r/rule/0/match/0"} 23"#),
            "{text}"
        );
        assert!(text.contains("sluice_config_generation 7"), "{text}");
    }

    #[test]
    fn pruning_drops_the_counters_no_table_holds() {
        let metrics = Arc::new(Metrics::default());
        let kept = metrics.route("httproute/ns/kept/rule/0/match/0");
        kept.record(200, Duration::from_millis(1));
        metrics.route("httproute/ns/gone/rule/0/match/0").record(200, Duration::from_millis(1));
        metrics.route(NO_ROUTE).record(404, Duration::from_millis(1));
        metrics.prune_routes();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).unwrap();
        assert!(text.contains(r#"sluice_requests_total{route="httproute/ns/kept/rule/0/match/0",code="200"} 1"#));
        assert!(text.contains(r#"sluice_requests_total{route="none",code="404"} 1"#), "{text}");
        assert!(!text.contains("httproute/ns/gone/"), "{text}");
        // Held again, the same counters come back; released, they go.
        assert!(Arc::ptr_eq(&kept, &metrics.route("httproute/ns/kept/rule/0/match/0")));
        drop(kept);
        metrics.prune_routes();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).unwrap();
        assert!(!text.contains("httproute/ns/kept/"), "{text}");
    }

    #[test]
    fn renders_tls_outcomes_per_port() {
        let metrics = Arc::new(Metrics::default());
        let port = metrics.tls_port(443);
        port.count(TlsOutcome::Passthrough);
        port.count(TlsOutcome::Passthrough);
        port.count(TlsOutcome::NoRoute);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).unwrap();
        for line in [
            r#"sluice_tls_connections_total{port="443",outcome="passthrough"} 2"#,
            r#"sluice_tls_connections_total{port="443",outcome="no_route"} 1"#,
            r#"sluice_tls_connections_total{port="443",outcome="handshake_failed"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn renders_udp_counters_per_port() {
        let metrics = Arc::new(Metrics::default());
        let dns = metrics.udp_port(53);
        dns.sessions.fetch_add(2, Ordering::Relaxed);
        dns.datagrams_in.fetch_add(5, Ordering::Relaxed);
        dns.dropped_session_limit.fetch_add(1, Ordering::Relaxed);
        metrics.udp_port(5353).dropped_no_backend.fetch_add(3, Ordering::Relaxed);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).unwrap();
        for line in [
            r#"sluice_udp_sessions{port="53"} 2"#,
            r#"sluice_udp_sessions{port="5353"} 0"#,
            r#"sluice_udp_datagrams_total{port="53",direction="in"} 5"#,
            r#"sluice_udp_datagrams_total{port="53",direction="out"} 0"#,
            r#"sluice_udp_dropped_datagrams_total{port="53",reason="session_limit"} 1"#,
            r#"sluice_udp_dropped_datagrams_total{port="5353",reason="no_backend"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }
}
