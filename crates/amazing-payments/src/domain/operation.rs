//! The operation journal's types: what an operation on Stripe is (its kind
//! and every parameter its request is built from) and where it stands. The
//! journal is the heart of exactly once: the first attempt, a client's retry
//! and the reconciler all rebuild the same request from it. So a row is read
//! into these types strictly: an unknown kind or state, or a missing or
//! mistyped parameter, is an error, never a default such as "id 0".

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// An operation on Stripe, with everything its request is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operation {
    /// Create (and confirm) the payment's PaymentIntent.
    CreatePayment { payment_id: i64 },
    /// Capture `amount` of the payment.
    Capture { payment_id: i64, amount: i64 },
    /// Cancel the payment.
    Cancel {
        payment_id: i64,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Make the refund.
    Refund { payment_id: i64, refund_id: i64, amount: i64 },
    /// Create the customer in Stripe (its id reserved here).
    CreateCustomer {
        customer_id: i64,
        name: String,
        email: String,
        #[serde(default)]
        charge_date: Option<String>,
    },
    /// Change what is given; `None` leaves a field as it is.
    UpdateCustomer {
        customer_id: i64,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        charge_date: Option<String>,
        #[serde(default)]
        stripe_customer_key: Option<String>,
    },
    /// Create a product and its first price.
    CreateProduct {
        product_id: i64,
        price_id: i64,
        name: String,
        #[serde(default)]
        description: Option<String>,
        unit_amount: i64,
        currency: String,
    },
    /// Add a price to a product already in Stripe (rows of an earlier
    /// version may lack the product's Stripe id: such a price is refused).
    CreatePrice {
        product_id: i64,
        price_id: i64,
        unit_amount: i64,
        currency: String,
        #[serde(default)]
        stripe_product_id: Option<String>,
    },
    DeactivateProduct {
        product_id: i64,
        #[serde(default)]
        stripe_id: Option<String>,
    },
    DeactivatePrice {
        price_id: i64,
        #[serde(default)]
        stripe_id: Option<String>,
    },
}

/// A journal row that cannot be read as an operation.
#[derive(Debug, thiserror::Error)]
#[error("operation {id} cannot be read: {reason}")]
pub struct CorruptOperation {
    pub id: i64,
    pub reason: String,
}

impl Operation {
    /// The kind, as stored in the `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::CreatePayment { .. } => "create_payment",
            Operation::Capture { .. } => "capture",
            Operation::Cancel { .. } => "cancel",
            Operation::Refund { .. } => "refund",
            Operation::CreateCustomer { .. } => "create_customer",
            Operation::UpdateCustomer { .. } => "update_customer",
            Operation::CreateProduct { .. } => "create_product",
            Operation::CreatePrice { .. } => "create_price",
            Operation::DeactivateProduct { .. } => "deactivate_product",
            Operation::DeactivatePrice { .. } => "deactivate_price",
        }
    }

    /// The payment it changes, for operations on payments.
    pub fn payment_id(&self) -> Option<i64> {
        match self {
            Operation::CreatePayment { payment_id }
            | Operation::Capture { payment_id, .. }
            | Operation::Cancel { payment_id, .. }
            | Operation::Refund { payment_id, .. } => Some(*payment_id),
            _ => None,
        }
    }

    /// The refund it makes, for refunds.
    pub fn refund_id(&self) -> Option<i64> {
        match self {
            Operation::Refund { refund_id, .. } => Some(*refund_id),
            _ => None,
        }
    }

    /// The amount it moves: the payment's, a capture's or a refund's.
    pub fn amount(&self) -> Option<i64> {
        match self {
            Operation::Capture { amount, .. } | Operation::Refund { amount, .. } => Some(*amount),
            _ => None,
        }
    }

    /// What goes in the `params` column: everything but the kind and what
    /// has columns of its own (payment, refund, amount).
    pub fn params(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("an operation is plain data");
        if let Some(m) = v.as_object_mut() {
            for column in ["kind", "payment_id", "refund_id", "amount"] {
                m.remove(column);
            }
        }
        v
    }

    /// Reads a journal row: its kind, its columns and its `params`.
    pub fn from_row(
        id: i64,
        kind: &str,
        payment_id: Option<i64>,
        refund_id: Option<i64>,
        amount: Option<i64>,
        params: &Value,
    ) -> Result<Self, CorruptOperation> {
        let corrupt = |reason: String| CorruptOperation { id, reason };
        let mut fields: Map<String, Value> = match params {
            Value::Object(m) => m.clone(),
            Value::Null => Map::new(),
            other => return Err(corrupt(format!("params are {other}, not an object"))),
        };
        fields.insert("kind".into(), Value::from(kind));
        for (name, column) in [("payment_id", payment_id), ("refund_id", refund_id), ("amount", amount)] {
            if let Some(v) = column {
                fields.insert(name.into(), Value::from(v));
            }
        }
        serde_json::from_value(Value::Object(fields)).map_err(|e| corrupt(e.to_string()))
    }
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Recorded; Stripe's outcome not known yet (or not sent yet).
    Pending,
    Succeeded,
    /// Refused by Stripe, or settled as never done.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [State::Pending, State::Succeeded, State::Failed].into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_operation_goes_into_its_columns_and_comes_back_the_same() {
        let ops = [
            Operation::Capture { payment_id: 7, amount: 500 },
            Operation::Cancel { payment_id: 7, reason: Some("duplicate".into()) },
            Operation::Refund { payment_id: 7, refund_id: 3, amount: 200 },
            Operation::CreateCustomer {
                customer_id: 9,
                name: "Ada".into(),
                email: "a@example.com".into(),
                charge_date: None,
            },
            Operation::CreatePrice {
                product_id: 1,
                price_id: 2,
                unit_amount: 100,
                currency: "eur".into(),
                stripe_product_id: Some("prod_1".into()),
            },
        ];
        for op in ops {
            let back = Operation::from_row(1, op.kind(), op.payment_id(), op.refund_id(), op.amount(), &op.params());
            assert_eq!(back.unwrap(), op);
        }
    }

    #[test]
    fn a_row_missing_a_parameter_is_an_error_never_a_default() {
        let e = Operation::from_row(4, "capture", Some(7), None, None, &json!({})).unwrap_err();
        assert!(e.reason.contains("amount"), "{e}");
        let e = Operation::from_row(5, "create_customer", None, None, None, &json!({"name": "A"})).unwrap_err();
        assert!(e.reason.contains("customer_id"), "{e}");
        assert!(Operation::from_row(6, "refund", Some(1), None, Some(5), &json!({})).is_err(), "no refund id");
    }

    #[test]
    fn an_unknown_kind_or_state_is_an_error() {
        assert!(Operation::from_row(8, "teleport", Some(1), None, None, &json!({})).is_err());
        assert!(Operation::from_row(9, "capture", Some(1), None, Some(5), &json!("x")).is_err());
        assert_eq!(State::parse("pending"), Some(State::Pending));
        assert_eq!(State::parse("done"), None);
    }
}
