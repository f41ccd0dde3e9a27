//! Stripe-shaped identifiers and timestamps.

use rand::{Rng, distr::Alphanumeric};

/// A new id such as `cus_Q4B8kd2L0aP1xz`: the prefix and 14 letters or digits.
pub fn new_id(prefix: &str) -> String {
    let tail: String = rand::rng().sample_iter(&Alphanumeric).take(14).map(char::from).collect();
    format!("{prefix}_{tail}")
}

/// Seconds since the Unix epoch, as Stripe's `created`.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
