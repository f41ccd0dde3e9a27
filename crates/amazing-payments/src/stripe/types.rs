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

/// A page of a Stripe list (`object: "list"`).
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
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

/// A field Stripe sends as an id, or as the object when expanded.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expandable<T> {
    Id(String),
    Object(Box<T>),
}

impl<T: HasId> Expandable<T> {
    pub fn id(&self) -> &str {
        match self {
            Expandable::Id(id) => id,
            Expandable::Object(o) => o.id(),
        }
    }

    pub fn object(&self) -> Option<&T> {
        match self {
            Expandable::Object(o) => Some(o),
            Expandable::Id(_) => None,
        }
    }
}

/// Objects with an `id`.
pub trait HasId {
    fn id(&self) -> &str;
}

/// The error that made a PaymentIntent fail (`last_payment_error`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct PaymentError {
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct RedirectToUrl {
    pub url: Option<String>,
    pub return_url: Option<String>,
}

/// What the customer must do (`next_action`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct NextAction {
    #[serde(rename = "type")]
    pub kind: String,
    pub redirect_to_url: Option<RedirectToUrl>,
}

/// A Stripe SetupIntent: a card being saved for later charges.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct SetupIntent {
    pub id: String,
    pub client_secret: Option<String>,
    pub status: String,
    pub customer: Option<String>,
    pub payment_method: Option<String>,
    pub next_action: Option<NextAction>,
    pub last_setup_error: Option<PaymentError>,
}

/// A card's details on a PaymentMethod.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Card {
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<i32>,
    pub exp_year: Option<i32>,
}

/// A Stripe PaymentMethod.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct PaymentMethod {
    pub id: String,
    pub customer: Option<String>,
    pub card: Option<Card>,
    pub created: i64,
}

/// A Stripe PaymentIntent.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct PaymentIntent {
    pub id: String,
    pub amount: i64,
    pub amount_capturable: i64,
    pub amount_received: i64,
    pub currency: String,
    pub customer: Option<Expandable<Customer>>,
    pub capture_method: String,
    pub status: String,
    pub client_secret: Option<String>,
    pub latest_charge: Option<Expandable<Charge>>,
    pub last_payment_error: Option<PaymentError>,
    pub next_action: Option<NextAction>,
    pub cancellation_reason: Option<String>,
    pub metadata: HashMap<String, String>,
    pub created: i64,
    pub livemode: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct CardDetails {
    pub brand: Option<String>,
    pub last4: Option<String>,
    /// The authorization's deadline (unix seconds).
    pub capture_before: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct PaymentMethodDetails {
    pub card: Option<CardDetails>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// A Stripe Charge.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Charge {
    pub id: String,
    pub amount: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub captured: bool,
    pub refunded: bool,
    pub status: String,
    pub currency: String,
    pub payment_intent: Option<String>,
    pub payment_method_details: Option<PaymentMethodDetails>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub disputed: bool,
}

/// A Stripe Refund.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub payment_intent: Option<String>,
    pub charge: Option<String>,
    pub failure_reason: Option<String>,
    pub metadata: HashMap<String, String>,
    pub created: i64,
}

/// A Stripe Dispute: a chargeback or an inquiry about a charge.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Dispute {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub reason: Option<String>,
    pub payment_intent: Option<String>,
    pub charge: Option<String>,
    pub is_charge_refundable: bool,
    pub evidence_details: EvidenceDetails,
    /// The money the dispute moved: negative withdrawn, positive reinstated.
    pub balance_transactions: Vec<DisputeMovement>,
    pub created: i64,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct EvidenceDetails {
    pub due_by: Option<i64>,
    pub has_evidence: bool,
    pub submission_count: i32,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct DisputeMovement {
    pub amount: i64,
}

impl Dispute {
    /// Whether Stripe has closed it (won, lost, or an inquiry closed).
    pub fn is_closed(&self) -> bool {
        matches!(self.status.as_str(), "won" | "lost" | "warning_closed")
    }

    /// (withdrawn, reinstated), both positive.
    pub fn movements(&self) -> (i64, i64) {
        self.balance_transactions.iter().fold(
            (0, 0),
            |(w, r), m| {
                if m.amount < 0 { (w - m.amount, r) } else { (w, r + m.amount) }
            },
        )
    }
}

/// A Stripe Product.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub active: bool,
    pub metadata: HashMap<String, String>,
}

/// A Stripe Price.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Price {
    pub id: String,
    pub product: Option<String>,
    pub unit_amount: Option<i64>,
    pub currency: String,
    pub active: bool,
    pub metadata: HashMap<String, String>,
}

macro_rules! has_id {
    ($($t:ty),*) => { $(impl HasId for $t { fn id(&self) -> &str { &self.id } })* };
}
has_id!(Customer, PaymentIntent, Charge, Refund, Product, Price);

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
    fn stripes_example_payment_objects_parse() {
        let pi: PaymentIntent = parses_tolerantly(fixture("payment_intent"));
        assert!(pi.id.starts_with("pi_"));
        let ch: Charge = parses_tolerantly(fixture("charge"));
        assert!(ch.id.starts_with("ch_"));
        let re: Refund = parses_tolerantly(fixture("refund"));
        assert!(re.id.starts_with("re_"));
        let pr: Product = parses_tolerantly(fixture("product"));
        assert!(pr.id.starts_with("prod_"));
        let price: Price = parses_tolerantly(fixture("price"));
        assert!(price.id.starts_with("price_"));
    }

    #[test]
    fn an_expanded_charge_and_a_charge_id_both_parse() {
        let mut pi = fixture("payment_intent");
        pi["latest_charge"] = fixture("charge");
        let expanded: PaymentIntent = serde_json::from_value(pi.clone()).unwrap();
        assert!(expanded.latest_charge.as_ref().unwrap().object().is_some());
        pi["latest_charge"] = serde_json::json!("ch_123");
        let id: PaymentIntent = serde_json::from_value(pi).unwrap();
        assert_eq!(id.latest_charge.unwrap().id(), "ch_123");
    }

    #[test]
    fn stripes_example_balance_parses() {
        let b: Balance = parses_tolerantly(fixture("balance"));
        assert_eq!(b.available[0].currency, "usd");
    }
}
