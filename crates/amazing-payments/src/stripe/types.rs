//! The Stripe objects we read, parsed tolerantly: unknown fields are ignored
//! and absent or null fields take their default, so a Stripe API upgrade that
//! adds or drops a nullable field does not break us.

use serde::Deserialize;
use std::collections::HashMap;

/// A Stripe Customer (or the stub of a deleted one).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Customer {
    pub id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub metadata: HashMap<String, String>,
    pub created: i64,
    pub livemode: bool,
    pub deleted: Option<bool>,
}

/// An amount of money in one currency, in minor units.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Money {
    pub amount: i64,
    pub currency: String,
}

/// The account balance: used at start-up to check the key.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Balance {
    pub available: Vec<Money>,
    pub pending: Vec<Money>,
    pub livemode: bool,
}

/// A page of a Stripe list.
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub url: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    /// Stripe's own example object for `resource`, from the fixtures the
    /// simulator vendors.
    pub fn fixture(resource: &str) -> Value {
        let raw = include_str!("../../../stripe-sim/fixtures/fixtures3.json");
        let all: Value = serde_json::from_str(raw).unwrap();
        all["resources"][resource].clone()
    }

    /// Parses `v`, then again with every null field removed, and with one
    /// unknown field added: all three must parse.
    pub fn parses_tolerantly<T: DeserializeOwned>(v: Value) -> T {
        let mut sparse = v.clone();
        if let Value::Object(map) = &mut sparse {
            map.retain(|_, v| !v.is_null());
            map.insert("a_field_from_the_future".into(), Value::Bool(true));
        }
        serde_json::from_value::<T>(sparse).expect("parses without nullable fields");
        serde_json::from_value(v).expect("parses Stripe's example object")
    }

    #[test]
    fn stripes_example_customer_parses() {
        let c: Customer = parses_tolerantly(fixture("customer"));
        assert_eq!(c.id, "cus_QXg1o8vcGmoR32");
        assert_eq!(c.created, 1234567890);
    }

    #[test]
    fn stripes_example_deleted_customer_parses() {
        let c: Customer = parses_tolerantly(fixture("deleted_customer"));
        assert_eq!(c.deleted, Some(true));
    }

    #[test]
    fn stripes_example_balance_parses() {
        let b: Balance = parses_tolerantly(fixture("balance"));
        assert_eq!(b.available[0].currency, "usd");
    }
}
