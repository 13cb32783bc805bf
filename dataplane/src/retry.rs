//! HTTPRoute retries: when a backend answer or a failed connection is retried, and how
//! long to wait first. Pingora's path runs them, and the HTTP/1.1 fast path for
//! body-less requests (`fast::Connection::exchange`).

use std::time::Duration;

use sluice_snapshot::Retry;

/// Whether an answer with `status` is retried: its code is listed, attempts remain, and
/// the request body (if any) is still whole in the retry buffer.
pub fn on_status(retry: &Retry, status: u16, retries_done: u32, body_truncated: bool) -> bool {
    retries_done < retry.attempts && !body_truncated && retry.codes.iter().any(|code| *code == u32::from(status))
}

/// The wait before a retry: 50-100% of `backoff_ms` (jitter spreads the retries of many
/// clients that failed together).
pub fn backoff(backoff_ms: u64) -> Duration {
    if backoff_ms == 0 {
        return Duration::ZERO;
    }
    let half = backoff_ms / 2;
    Duration::from_millis(half + rand::random_range(0..=backoff_ms - half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retried_codes_attempts_and_bodies() {
        let retry = Retry { codes: vec![500, 503], attempts: 2, backoff_ms: 0 };
        assert!(on_status(&retry, 500, 0, false));
        assert!(on_status(&retry, 503, 1, false));
        assert!(!on_status(&retry, 503, 2, false), "attempts used up");
        assert!(!on_status(&retry, 502, 0, false), "code not listed");
        assert!(!on_status(&retry, 200, 0, false));
        assert!(!on_status(&retry, 500, 0, true), "a body that no longer fits is never resent");
        let none = Retry { codes: vec![500], attempts: 0, backoff_ms: 0 };
        assert!(!on_status(&none, 500, 0, false));
    }

    #[test]
    fn backoff_has_jitter_within_bounds() {
        assert_eq!(backoff(0), Duration::ZERO);
        for _ in 0..100 {
            let wait = backoff(100);
            assert!(wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100), "{wait:?}");
        }
    }
}
