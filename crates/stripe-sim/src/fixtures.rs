//! Stripe's own example objects (`fixtures/fixtures3.json`, MIT, from Stripe),
//! used as templates: every object the simulator answers with starts as a
//! copy of Stripe's example and has its values replaced, so it carries exactly
//! the keys Stripe's objects carry.

use serde_json::Value;
use std::sync::OnceLock;

static FIXTURES: &str = include_str!("../fixtures/fixtures3.json");

/// All fixtures, by resource name (`customer`, `payment_intent`, ...).
pub fn all() -> &'static serde_json::Map<String, Value> {
    static PARSED: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    PARSED.get_or_init(|| {
        let mut doc: Value = serde_json::from_str(FIXTURES).expect("fixtures3.json is valid JSON");
        match doc["resources"].take() {
            Value::Object(map) => map,
            _ => panic!("fixtures3.json has no resources object"),
        }
    })
}

/// A fresh copy of Stripe's example object for `resource`.
///
/// Panics on an unknown resource name: that is a bug in the simulator.
pub fn template(resource: &str) -> Value {
    all().get(resource).cloned().unwrap_or_else(|| panic!("no fixture named {resource}"))
}
