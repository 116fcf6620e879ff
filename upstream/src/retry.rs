//! When to try an upstream again: which failures, how long to wait (exponential backoff
//! with full jitter, or the upstream's `Retry-After`). Pure.

use std::time::{Duration, SystemTime};

/// Retries of one upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub retries: u32,
    /// The first backoff's upper bound; doubled per try.
    pub backoff: Duration,
    /// No wait is longer than this (a longer `Retry-After` ends the retries).
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 2,
            backoff: Duration::from_millis(200),
            max_wait: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before try number `attempt` (1 = the first retry), `jitter` in [0, 1):
    /// the upstream's own `Retry-After` when it gave one, else a uniformly random share of
    /// `backoff * 2^(attempt-1)`. `None`: do not retry (no tries left, or the upstream asks
    /// for a longer wait than `max_wait`).
    pub fn wait(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt == 0 || attempt > self.retries {
            return None;
        }
        if let Some(asked) = retry_after {
            return (asked <= self.max_wait).then_some(asked);
        }
        let ceiling = self
            .backoff
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.max_wait);
        Some(ceiling.mul_f64(jitter.clamp(0.0, 1.0)))
    }
}

/// Reads a `Retry-After` value: delay seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_under_full_jitter_and_stops_when_tries_are_spent() {
        let p = RetryPolicy {
            retries: 3,
            backoff: Duration::from_millis(100),
            max_wait: Duration::from_millis(300),
        };
        assert_eq!(p.wait(0, None, 0.5), None);
        assert_eq!(p.wait(1, None, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(p.wait(2, None, 0.5), Some(Duration::from_millis(100)));
        // 400 ms capped at max_wait.
        assert_eq!(p.wait(3, None, 1.0), Some(Duration::from_millis(300)));
        assert_eq!(p.wait(3, None, 0.0), Some(Duration::ZERO));
        assert_eq!(p.wait(4, None, 0.5), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_longest_wait() {
        let p = RetryPolicy {
            retries: 2,
            backoff: Duration::from_millis(100),
            max_wait: Duration::from_secs(5),
        };
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(2)), 0.9),
            Some(Duration::from_secs(2))
        );
        assert_eq!(p.wait(1, Some(Duration::from_secs(6)), 0.9), None);
        assert_eq!(p.wait(3, Some(Duration::from_secs(1)), 0.9), None);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
