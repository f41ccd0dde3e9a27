//! Webhooks to callers: the events of the outbox, delivered to the
//! endpoints callers register, signed as the Standard Webhooks
//! specification says ([`sign`]), at least once, retried on a schedule of
//! about three days, to public addresses only ([`guard`]). The
//! [`deliverer`] runs inside `serve` (and alone, `amazing-payments
//! deliver`); any number may run, over one database.
//!
//! Order is not promised: a delivery that fails is retried while later
//! events go out. Every delivery carries the event's `sequence` (its place
//! in the outbox): the events of one payment are written one at a time
//! under that payment's row lock, so for one payment a larger `sequence`
//! is a later change, and a receiver keeps the largest it has seen.

pub mod deliverer;
pub mod guard;
pub mod sign;

use std::time::Duration;

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Deliver to loopback and private addresses, and over plain http
    /// (`WEBHOOK_ALLOW_PRIVATE`): for development and tests.
    pub allow_private: bool,
    /// The waits before each retry; after the last, the delivery fails.
    pub schedule: Vec<Duration>,
    /// An endpoint whose deliveries have all failed for this long is
    /// disabled (`WEBHOOK_DISABLE_AFTER`).
    pub disable_after: Duration,
    /// How long one attempt may take (`WEBHOOK_TIMEOUT`).
    pub timeout: Duration,
    /// Pause between passes when nothing is due.
    pub interval: Duration,
    /// Deliveries sent at once by one deliverer.
    pub batch: i64,
    /// How long finished deliveries stay in the log.
    pub keep: Duration,
}

/// The event the deliverer itself writes, to the endpoints that take it,
/// when it disables an endpoint; beside the types of [`EventType::ALL`].
///
/// [`EventType::ALL`]: crate::domain::event::EventType::ALL
pub const ENDPOINT_DISABLED: &str = "webhook_endpoint.disabled";

/// The retry schedule: about three days in all (71 h 35 min 5 s), the
/// first retries soon (a receiver restarting), then farther apart (one
/// down for a day).
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,14h,20h,20h";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allow_private: false,
            schedule: parse_schedule(DEFAULT_SCHEDULE).expect("the default schedule parses"),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            timeout: Duration::from_secs(15),
            interval: Duration::from_millis(500),
            batch: 32,
            keep: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// `5s,5m,2h,1d`: waits, each a number and a unit (s, m, h or d).
pub fn parse_schedule(raw: &str) -> Result<Vec<Duration>, String> {
    raw.split(',')
        .map(|part| {
            let part = part.trim();
            let (n, unit) = part.split_at(part.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(part.len()));
            let n: f64 = n.parse().map_err(|_| format!("{part:?} is not a number and a unit (s, m, h, d)"))?;
            let secs = match unit {
                "s" => n,
                "m" => n * 60.0,
                "h" => n * 3600.0,
                "d" => n * 86400.0,
                _ => return Err(format!("{part:?} is not a number and a unit (s, m, h, d)")),
            };
            if !(0.0..=30.0 * 86400.0).contains(&secs) {
                return Err(format!("{part:?} is not between 0 and 30 days"));
            }
            Ok(Duration::from_secs_f64(secs))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_retries_for_about_three_days() {
        let total: Duration = Settings::default().schedule.iter().sum();
        assert_eq!(total, Duration::from_secs(71 * 3600 + 35 * 60 + 5));
        assert_eq!(parse_schedule("1s, 0.5s,2m").unwrap(), [1000, 500, 120_000].map(Duration::from_millis));
        for bad in ["", "5", "s", "5w", "-1s", "31d"] {
            assert!(parse_schedule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_endpoint_may_take_every_event_type_and_only_those() {
        use crate::domain::event::EventType;
        let proto = include_str!("../../../../proto/payment/payment.proto");
        let mut expected: Vec<String> = EventType::ALL.iter().map(|t| format!("\"{t}\"")).collect();
        expected.extend(["\"*\"".to_string(), format!("\"{ENDPOINT_DISABLED}\"")]);
        expected.sort();
        let lists: Vec<&str> = proto
            .lines()
            .filter(|l| l.contains("repeated string event_types") && l.contains("rules.field"))
            .map(|l| l.split("in: [").nth(1).and_then(|r| r.split(']').next()).expect("an `in` list"))
            .collect();
        assert_eq!(lists.len(), 2, "CreateWebhookEndpointRequest and UpdateWebhookEndpointRequest");
        for list in lists {
            let mut listed: Vec<String> = list.split(", ").map(String::from).collect();
            listed.sort();
            assert_eq!(listed, expected);
        }
    }
}
