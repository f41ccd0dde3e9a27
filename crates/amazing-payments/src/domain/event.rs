//! Notification events: what the outbox records at each state change and the
//! queue carries to consumers (the e-mail notifier, or anyone reading the
//! SQS queue). The envelope is documented in `docs/events.md` and
//! `docs/events.schema.json`; [`SCHEMA_VERSION`] changes when a field is
//! removed or changes meaning (adding a field does not change it).

use super::payment::{Ledger, Status};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// The version of the envelope and its `data`.
pub const SCHEMA_VERSION: i32 = 1;

/// What happened. The names are the `type` field of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    PaymentCreated,
    PaymentRequiresAction,
    PaymentProcessing,
    PaymentAuthorized,
    /// Captured at once (automatic capture).
    PaymentSucceeded,
    /// Captured after an authorization, in full or in part.
    PaymentCaptured,
    PaymentFailed,
    PaymentCanceled,
    /// A refund succeeded (`data.refund` says which).
    PaymentRefunded,
    RefundCreated,
    RefundFailed,
    RefundCanceled,
    DisputeCreated,
    /// A dispute moved (evidence submitted, under review, funds withdrawn
    /// or reinstated) without closing.
    DisputeUpdated,
    /// A dispute ended: `data.dispute.status` is won, lost or
    /// warning_closed (an inquiry closed).
    DisputeClosed,
    CustomerCreated,
    /// A customer's name, e-mail or charge date changed (`data.customer` is
    /// the customer after the change).
    CustomerUpdated,
}

impl EventType {
    pub const ALL: [EventType; 17] = [
        EventType::PaymentCreated,
        EventType::PaymentRequiresAction,
        EventType::PaymentProcessing,
        EventType::PaymentAuthorized,
        EventType::PaymentSucceeded,
        EventType::PaymentCaptured,
        EventType::PaymentFailed,
        EventType::PaymentCanceled,
        EventType::PaymentRefunded,
        EventType::RefundCreated,
        EventType::RefundFailed,
        EventType::RefundCanceled,
        EventType::DisputeCreated,
        EventType::DisputeUpdated,
        EventType::DisputeClosed,
        EventType::CustomerCreated,
        EventType::CustomerUpdated,
    ];

    /// The types that are e-mailed to the customer unless configured
    /// otherwise: the moments a customer's money moves or could not.
    pub const MAILED_BY_DEFAULT: [EventType; 7] = [
        EventType::PaymentAuthorized,
        EventType::PaymentSucceeded,
        EventType::PaymentCaptured,
        EventType::PaymentFailed,
        EventType::PaymentCanceled,
        EventType::PaymentRefunded,
        EventType::RefundFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PaymentCreated => "payment.created",
            EventType::PaymentRequiresAction => "payment.requires_action",
            EventType::PaymentProcessing => "payment.processing",
            EventType::PaymentAuthorized => "payment.authorized",
            EventType::PaymentSucceeded => "payment.succeeded",
            EventType::PaymentCaptured => "payment.captured",
            EventType::PaymentFailed => "payment.failed",
            EventType::PaymentCanceled => "payment.canceled",
            EventType::PaymentRefunded => "payment.refunded",
            EventType::RefundCreated => "refund.created",
            EventType::RefundFailed => "refund.failed",
            EventType::RefundCanceled => "refund.canceled",
            EventType::DisputeCreated => "dispute.created",
            EventType::DisputeUpdated => "dispute.updated",
            EventType::DisputeClosed => "dispute.closed",
            EventType::CustomerCreated => "customer.created",
            EventType::CustomerUpdated => "customer.updated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The event a payment's change gives, if any: `before` is `None` for a
    /// new payment. A refund that is given back (it failed after
    /// succeeding) gives no payment event: its `refund.failed` tells it.
    pub fn of_payment_change(before: Option<&Ledger>, after: &Ledger) -> Option<Self> {
        let Some(before) = before else {
            return Some(EventType::PaymentCreated);
        };
        if after.refunded != before.refunded {
            return (after.refunded > before.refunded).then_some(EventType::PaymentRefunded);
        }
        if after.status == before.status {
            return None;
        }
        match after.status {
            Status::Pending | Status::PartiallyRefunded | Status::Refunded => None,
            Status::RequiresAction => Some(EventType::PaymentRequiresAction),
            Status::Processing => Some(EventType::PaymentProcessing),
            Status::Authorized => Some(EventType::PaymentAuthorized),
            Status::Succeeded if before.status == Status::Authorized => Some(EventType::PaymentCaptured),
            Status::Succeeded => Some(EventType::PaymentSucceeded),
            Status::Failed => Some(EventType::PaymentFailed),
            Status::Canceled => Some(EventType::PaymentCanceled),
        }
    }

    /// The event a refund's move from `before` (`None`: new) to `after` gives.
    /// Success is told by `payment.refunded`, which carries the refund.
    pub fn of_refund_change(before: Option<&str>, after: &str) -> Option<Self> {
        if before == Some(after) {
            return None;
        }
        match after {
            "pending" if before.is_none() => Some(EventType::RefundCreated),
            "failed" => Some(EventType::RefundFailed),
            "canceled" => Some(EventType::RefundCanceled),
            _ => None,
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique; consumers deduplicate on it (delivery is at least once).
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub schema_version: i32,
    pub occurred_at: DateTime<Utc>,
    /// `api`, `webhook` or `reconciler`: what made the change.
    pub source: String,
    /// The API key whose request made the change (the audit trail); absent
    /// for Stripe's own changes (webhooks, the reconciler's corrections)
    /// and when the service runs without API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<i64>,
    pub data: EventData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    pub customer: CustomerSnapshot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<RefundSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispute: Option<DisputeSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerSnapshot {
    pub id: i64,
    #[serde(default)]
    pub name: Option<String>,
    pub email: String,
}

/// The payment after the change. Amounts are in the currency's smallest unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentSnapshot {
    pub id: i64,
    pub status: String,
    #[serde(default)]
    pub previous_status: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub amount_capturable: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub capture_method: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    /// Where the customer's receipts go instead of the customer's address.
    #[serde(default)]
    pub receipt_email: Option<String>,
    #[serde(default)]
    pub stripe_payment_intent_id: Option<String>,
    #[serde(default)]
    pub failure_code: Option<String>,
    #[serde(default)]
    pub failure_message: Option<String>,
    #[serde(default)]
    pub cancellation_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundSnapshot {
    pub id: i64,
    pub status: String,
    pub amount: i64,
    pub currency: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisputeSnapshot {
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// Ours (`GetDispute`); absent in events from before disputes had rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_dispute_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_due_by: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_charge_refundable: Option<bool>,
    /// What the dispute took from the balance, and gave back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_withdrawn: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_reinstated: Option<i64>,
}

impl Event {
    /// A new event of `kind`, now.
    pub fn new(kind: EventType, source: &str, data: EventData) -> Self {
        Event {
            id: Uuid::new_v4(),
            kind: kind.as_str().to_string(),
            schema_version: SCHEMA_VERSION,
            occurred_at: Utc::now(),
            source: source.to_string(),
            api_key_id: None,
            data,
        }
    }

    /// The same event, made at the request of the API key `api_key_id`.
    pub fn by(self, api_key_id: Option<i64>) -> Self {
        Event { api_key_id, ..self }
    }

    /// Where the customer's mail goes: the payment's receipt address if it
    /// has one, else the customer's.
    pub fn recipient(&self) -> &str {
        self.data.payment.as_ref().and_then(|p| p.receipt_email.as_deref()).unwrap_or(&self.data.customer.email)
    }

    /// The FIFO group: events of one payment (or one customer) keep their order.
    pub fn group(&self) -> String {
        match &self.data.payment {
            Some(p) => format!("payment-{}", p.id),
            None => format!("customer-{}", self.data.customer.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(status: Status, captured: i64, refunded: i64) -> Ledger {
        Ledger { status, amount: 1000, capturable: 0, captured, refunded }
    }

    #[test]
    fn type_names_round_trip_and_unknown_names_are_refused() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("payment.exploded"), None);
    }

    #[test]
    fn a_capture_after_authorization_is_captured_and_an_immediate_one_succeeded() {
        let authorized = Ledger { capturable: 1000, ..ledger(Status::Authorized, 0, 0) };
        let pending = ledger(Status::Pending, 0, 0);
        let done = ledger(Status::Succeeded, 600, 0);
        assert_eq!(EventType::of_payment_change(Some(&authorized), &done), Some(EventType::PaymentCaptured));
        assert_eq!(EventType::of_payment_change(Some(&pending), &done), Some(EventType::PaymentSucceeded));
        assert_eq!(EventType::of_payment_change(Some(&pending), &authorized), Some(EventType::PaymentAuthorized));
        assert_eq!(EventType::of_payment_change(None, &pending), Some(EventType::PaymentCreated));
    }

    #[test]
    fn every_refund_that_adds_money_is_an_event_even_without_a_status_change() {
        let once = ledger(Status::PartiallyRefunded, 1000, 100);
        let twice = ledger(Status::PartiallyRefunded, 1000, 300);
        assert_eq!(EventType::of_payment_change(Some(&once), &twice), Some(EventType::PaymentRefunded));
        assert_eq!(EventType::of_payment_change(Some(&twice), &once), None, "a refund given back is refund.failed");
        assert_eq!(EventType::of_payment_change(Some(&once), &once), None);
    }

    #[test]
    fn refund_events_follow_its_status() {
        assert_eq!(EventType::of_refund_change(None, "pending"), Some(EventType::RefundCreated));
        assert_eq!(EventType::of_refund_change(Some("pending"), "failed"), Some(EventType::RefundFailed));
        assert_eq!(EventType::of_refund_change(Some("succeeded"), "failed"), Some(EventType::RefundFailed));
        assert_eq!(EventType::of_refund_change(Some("failed"), "failed"), None);
        assert_eq!(EventType::of_refund_change(Some("pending"), "succeeded"), None);
    }
}
