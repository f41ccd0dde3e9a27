//! Rate limits per API key: GCRA (the generic cell rate algorithm, a token
//! bucket kept as one instant per key), per instance.
//!
//! Per instance, not shared: a shared limit would put a database round trip
//! (or another service) in front of every request, and PostgreSQL is the one
//! part every instance already waits on. N instances behind a load balancer
//! therefore let a key make up to N times its rate, spread as the balancer
//! spreads it; set `RATE_LIMIT` to the rate you want divided by the number
//! of instances (README, "Rate limits").
//!
//! A key may make `rate` requests a second, and up to `rate` at once after a
//! quiet second (the burst). Past that it is refused at once with 429 /
//! RESOURCE_EXHAUSTED, reason `RATE_LIMITED`, and `Retry-After`; nothing is
//! read, written or sent. Every answer carries the IETF `RateLimit-Policy`
//! and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers) so that a
//! client can pace itself.

use super::{AppError, Kind};
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// The limits of one instance.
#[derive(Clone)]
pub struct Limiter {
    /// Requests a second for a key without its own limit; `None`: no limit.
    default_rate: Option<u32>,
    /// When each key's next request is "due" (GCRA's theoretical arrival time).
    due: Arc<Mutex<HashMap<Option<i64>, Instant>>>,
    /// Tests only: time stands still at this instant (no refill), so that a
    /// test's requests meet the limit whatever its machine's speed.
    frozen: Option<Instant>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("default_rate", &self.default_rate).finish()
    }
}

/// What a request may still do in the current second, for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests a second (and the burst).
    pub limit: u32,
    /// Requests that could be made at once right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

impl Quota {
    /// `RateLimit-Policy` and `RateLimit` (structured fields), by name.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            ("ratelimit-policy", format!("\"per-key\";q={};w=1", self.limit)),
            ("ratelimit", format!("\"per-key\";r={};t={}", self.remaining, self.reset)),
        ]
    }
}

impl Limiter {
    pub fn new(default_rate: Option<u32>) -> Self {
        Self { default_rate, due: Default::default(), frozen: None }
    }

    /// A limiter whose clock never moves: buckets never refill (tests).
    pub fn frozen(default_rate: Option<u32>) -> Self {
        Self { frozen: Some(Instant::now()), ..Self::new(default_rate) }
    }

    /// No limit at all (tools, tests that measure something else).
    pub fn off() -> Self {
        Self::new(None)
    }

    /// Admits one request of `key` (whose own limit is `own`), or refuses it.
    pub fn admit(&self, key: Option<i64>, own: Option<u32>) -> Result<Option<Quota>, AppError> {
        let Some(rate) = own.or(self.default_rate) else { return Ok(None) };
        self.admit_at(key, rate.clamp(1, 1_000_000), self.frozen.unwrap_or_else(Instant::now))
    }

    fn admit_at(&self, key: Option<i64>, rate: u32, now: Instant) -> Result<Option<Quota>, AppError> {
        let interval = Duration::from_secs(1) / rate;
        // A full bucket holds `rate` requests: the last may be due this far ahead.
        let tolerance = interval * (rate - 1);
        let mut due = self.due.lock();
        if due.len() > 100_000 {
            due.retain(|_, at| *at > now);
        }
        let at = due.get(&key).copied().unwrap_or(now).max(now);
        let ahead = at - now;
        if ahead > tolerance {
            let wait = ahead - tolerance;
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let quota =
                Quota { limit: rate, remaining: 0, reset: ahead.as_secs() + u64::from(ahead.subsec_nanos() > 0) };
            let mut e = AppError::new(
                Kind::ResourceExhausted,
                "RATE_LIMITED",
                format!("this API key may make {rate} requests a second; retry after {seconds} s"),
            );
            e.metadata.push(("retry-after", seconds.max(1).to_string()));
            e.metadata.extend(quota.headers());
            return Err(e);
        }
        let next = at + interval;
        due.insert(key, next);
        let used = next - now;
        let remaining = (tolerance + interval).saturating_sub(used).as_nanos() / interval.as_nanos().max(1);
        Ok(Some(Quota {
            limit: rate,
            remaining: remaining as u32,
            reset: used.as_secs() + u64::from(used.subsec_nanos() > 0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_one_request_per_interval() {
        let limiter = Limiter::new(Some(5));
        let t0 = Instant::now();
        let quotas: Vec<u32> = (0..5).map(|_| limiter.admit_at(Some(1), 5, t0).unwrap().unwrap().remaining).collect();
        assert_eq!(quotas, [4, 3, 2, 1, 0]);
        let refused = limiter.admit_at(Some(1), 5, t0).unwrap_err();
        assert_eq!((refused.kind, refused.reason), (Kind::ResourceExhausted, "RATE_LIMITED"));
        assert!(refused.metadata.iter().any(|(k, v)| *k == "retry-after" && v == "1"));
        assert!(limiter.admit_at(Some(2), 5, t0).is_ok(), "another key has its own bucket");
        assert!(limiter.admit_at(Some(1), 5, t0 + Duration::from_millis(200)).is_ok(), "one interval later, one more");
        assert!(limiter.admit_at(Some(1), 5, t0 + Duration::from_millis(200)).is_err());
    }

    #[test]
    fn without_a_limit_everything_passes_and_a_keys_own_limit_wins() {
        assert_eq!(Limiter::off().admit(Some(1), None).unwrap(), None);
        let limiter = Limiter::off();
        assert!(limiter.admit(Some(1), Some(1)).is_ok());
        assert!(limiter.admit(Some(1), Some(1)).is_err(), "its own limit of one a second");
    }
}
