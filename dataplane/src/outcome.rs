//! How a request ended, written once for both request paths: the status a failure is
//! answered with, and the request's metrics and access-log line.

use std::net::SocketAddr;
use std::time::Duration;

use pingora_core::{Error, ErrorSource, ErrorType};

use crate::metrics::RouteMetrics;
use crate::tables::Route;

/// Why a request failed before a response from its backend reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The backend refused the connection (or could not be reached): 503.
    ConnectRefused,
    /// Connecting or waiting for the backend took too long (a Gateway API timeout or
    /// the idle timeout): 504.
    UpstreamTimeout,
    /// Connecting took too long (the fast path's; a rule's retry may try again): 504.
    ConnectTimeout,
    /// The backend broke the exchange (a malformed or missing response): 502.
    Upstream,
    /// The client's request (body) did not arrive in time: 408.
    ClientTimeout,
    /// The client went away: nothing to answer.
    ClientGone,
    /// The request is malformed (a broken chunked body, say): 400.
    BadRequest,
    /// The proxy itself failed: 500.
    Internal,
    /// An answer already decided (a retried status, a refused backend certificate).
    Status(u16),
}

impl Failure {
    /// The status the client is answered with; 0: none.
    pub(crate) fn status(self) -> u16 {
        match self {
            Failure::ConnectRefused => 503,
            Failure::UpstreamTimeout | Failure::ConnectTimeout => 504,
            Failure::Upstream => 502,
            Failure::ClientTimeout => 408,
            Failure::ClientGone => 0,
            Failure::BadRequest => 400,
            Failure::Internal => 500,
            Failure::Status(code) => code,
        }
    }

    /// Whether the backend failed (counted in the route's upstream errors).
    pub(crate) fn upstream(self) -> bool {
        matches!(self, Failure::ConnectRefused | Failure::UpstreamTimeout | Failure::ConnectTimeout | Failure::Upstream)
    }

    /// A Pingora error as a failure.
    pub(crate) fn of_pingora(error: &Error) -> Failure {
        match error.etype() {
            ErrorType::HTTPStatus(code) => Failure::Status(*code),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if error.esource() == &ErrorSource::Upstream =>
            {
                Failure::UpstreamTimeout
            }
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => Failure::ConnectRefused,
            _ => match error.esource() {
                ErrorSource::Upstream => Failure::Upstream,
                ErrorSource::Downstream => match error.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => Failure::ClientGone,
                    ErrorType::ReadTimedout => Failure::ClientTimeout,
                    _ => Failure::BadRequest,
                },
                ErrorSource::Internal | ErrorSource::Unset => Failure::Internal,
            },
        }
    }
}

/// One finished request.
pub(crate) struct Finished<'a> {
    /// The route it matched; `None`: none.
    pub route: Option<&'a Route>,
    /// The status the client got (0: none was written).
    pub status: u16,
    pub elapsed: Duration,
    /// The backend's gRPC status, if it sent one.
    pub grpc_status: Option<u32>,
}

/// What the access log says of a request besides its outcome.
pub(crate) struct AccessLog<'a> {
    pub client: Option<SocketAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub upstream: Option<SocketAddr>,
}

impl Finished<'_> {
    /// Counts the request in its route's metrics (`unmatched`: the metrics of requests
    /// no route matched) and prints its access-log line when `log` is given.
    pub(crate) fn record(&self, unmatched: &RouteMetrics, log: Option<AccessLog<'_>>) {
        let metrics = self.route.map_or(unmatched, |route| &route.metrics);
        metrics.record(self.status, self.elapsed);
        if let Some(code) = self.grpc_status {
            metrics.record_grpc(code);
        }
        if let Some(log) = log {
            let line = serde_json::json!({
                "client": log.client.map(|a| a.to_string()),
                "method": log.method,
                "host": log.host,
                "path": log.path,
                "status": self.status,
                "route": self.route.map(|r| r.name.as_str()),
                "upstream": log.upstream.map(|a| a.to_string()),
                "duration_ms": self.elapsed.as_secs_f64() * 1000.0,
            });
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_errors_map_to_the_statuses_both_paths_answer() {
        let upstream = |etype| Error::new_up(etype);
        let downstream = |etype| Error::new_down(etype);
        for (error, status) in [
            (upstream(ErrorType::ConnectRefused), 503),
            (upstream(ErrorType::ConnectTimedout), 504),
            (upstream(ErrorType::ReadTimedout), 504),
            (upstream(ErrorType::ReadError), 502),
            (upstream(ErrorType::HTTPStatus(429)), 429),
            (downstream(ErrorType::ReadTimedout), 408),
            (downstream(ErrorType::ConnectionClosed), 0),
            (downstream(ErrorType::InvalidHTTPHeader), 400),
            (Error::new(ErrorType::InternalError), 500),
        ] {
            assert_eq!(Failure::of_pingora(&error).status(), status, "{error}");
        }
        assert!(Failure::of_pingora(&upstream(ErrorType::ReadError)).upstream());
        assert!(!Failure::of_pingora(&downstream(ErrorType::ReadTimedout)).upstream());
    }
}
