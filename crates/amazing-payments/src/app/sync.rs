//! Reading what Stripe reports into our records. One place maps a Stripe
//! PaymentIntent or Refund onto our payment and refund rows, through the
//! payment state machine, whoever brought the news (our API call, a webhook,
//! the reconciler).

use crate::{
    domain::payment::{Refused, Status},
    store::payments::{PaymentRow, RefundRow},
    stripe::types::{PaymentIntent, Refund},
};
use chrono::{DateTime, Utc};
use serde_json::json;

/// Why a Stripe object could not be applied.
#[derive(Debug)]
pub enum SyncError {
    /// Stripe's object disagrees with what we asked: never stored as success.
    Mismatch(String),
    /// The move is not allowed from the payment's state (e.g. a stale read).
    Refused(Refused),
}

/// Checks Stripe's answer against what we asked: amount, currency, customer,
/// capture method and our id.
pub fn check_integrity(row: &PaymentRow, pi: &PaymentIntent, stripe_customer: Option<&str>) -> Result<(), String> {
    let mut wrong = Vec::new();
    if pi.amount != row.amount {
        wrong.push(format!("amount {} instead of {}", pi.amount, row.amount));
    }
    if pi.currency != row.currency {
        wrong.push(format!("currency {} instead of {}", pi.currency, row.currency));
    }
    if let (Some(expected), Some(got)) = (stripe_customer, pi.customer.as_ref())
        && got.id() != expected
    {
        wrong.push(format!("customer {} instead of {expected}", got.id()));
    }
    let method_ok = match row.capture_method.as_str() {
        "manual" => pi.capture_method == "manual",
        _ => pi.capture_method == "automatic" || pi.capture_method == "automatic_async",
    };
    if !method_ok {
        wrong.push(format!("capture_method {} instead of {}", pi.capture_method, row.capture_method));
    }
    if let Some(id) = pi.metadata.get("paymentID")
        && *id != row.id.to_string()
    {
        wrong.push(format!("metadata paymentID {id} instead of {}", row.id));
    }
    if wrong.is_empty() { Ok(()) } else { Err(format!("Stripe's PaymentIntent {} has {}", pi.id, wrong.join(", "))) }
}

fn timestamp(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

/// Applies a PaymentIntent to `row`. Returns whether the payment's state or
/// money changed.
pub fn apply_intent(
    row: &mut PaymentRow,
    pi: &PaymentIntent,
    stripe_customer: Option<&str>,
) -> Result<bool, SyncError> {
    check_integrity(row, pi, stripe_customer).map_err(SyncError::Mismatch)?;
    let l = row.ledger();
    let next = match pi.status.as_str() {
        "requires_payment_method" if pi.last_payment_error.is_some() || l.status == Status::Pending => l.fail(),
        // Made but never confirmed (a request that failed half-way):
        // nothing was charged, and nobody here will confirm it.
        "requires_confirmation" if l.status == Status::Pending => l.fail(),
        "requires_payment_method" | "requires_confirmation" => Ok(l),
        "requires_action" => l.wait(Status::RequiresAction),
        "processing" => l.wait(Status::Processing),
        "requires_capture" => l.authorize(pi.amount_capturable),
        "succeeded" if l.status.is_captured() => {
            if l.captured != pi.amount_received {
                return Err(SyncError::Mismatch(format!(
                    "Stripe's PaymentIntent {} received {} but {} is recorded as captured",
                    pi.id, pi.amount_received, l.captured
                )));
            }
            Ok(l)
        }
        "succeeded" => l.capture(pi.amount_received),
        "canceled" => l.cancel(),
        other => {
            return Err(SyncError::Mismatch(format!("Stripe's PaymentIntent {} has an unknown status {other}", pi.id)));
        }
    }
    .map_err(SyncError::Refused)?;

    row.stripe_payment_intent_id = Some(pi.id.clone());
    let waiting = next.status == Status::RequiresAction;
    // An off-session charge the bank wants the customer for: the secret
    // lets Stripe.js confirm it again with the customer there.
    let recoverable = next.status == Status::Failed && needs_customer(pi);
    row.client_secret = if waiting || recoverable { pi.client_secret.clone() } else { None };
    row.next_action = match (&pi.next_action, waiting) {
        (Some(a), true) => Some(sqlx::types::Json(json!({
            "type": a.kind,
            "redirect_url": a.redirect_to_url.as_ref().and_then(|r| r.url.clone()),
            "return_url": a.redirect_to_url.as_ref().and_then(|r| r.return_url.clone()),
        }))),
        _ => None,
    };
    if let Some(charge) = &pi.latest_charge {
        row.stripe_charge_id = Some(charge.id().to_string());
        if let Some(before) =
            charge.object().and_then(|c| c.payment_method_details.as_ref()?.card.as_ref()?.capture_before)
        {
            row.capture_before = timestamp(before);
        }
    }
    if next.status == Status::Failed
        && let Some(e) = &pi.last_payment_error
    {
        row.failure_code = e.code.clone();
        row.failure_message = e.message.clone();
        row.decline_code = e.decline_code.clone();
    } else if l.status == Status::Failed && next.status != Status::Failed {
        // The customer came back and it went on: the old failure no
        // longer describes the payment.
        row.failure_code = None;
        row.failure_message = None;
        row.decline_code = None;
    }
    if next.status == Status::Canceled {
        row.cancellation_reason = pi.cancellation_reason.clone().or(row.cancellation_reason.take());
    }
    let changed = next != l;
    row.set_ledger(next);
    Ok(changed)
}

/// Whether a PaymentIntent failed because the bank wants the customer to
/// authenticate (an off-session charge): it can be confirmed again
/// on-session, with the same card.
pub fn needs_customer(pi: &PaymentIntent) -> bool {
    pi.status == "requires_payment_method"
        && pi.last_payment_error.as_ref().is_some_and(|e| e.code.as_deref() == Some("authentication_required"))
}

/// Our status of a Stripe Refund.
pub fn refund_status(re: &Refund) -> &'static str {
    match re.status.as_deref() {
        Some("succeeded") => "succeeded",
        Some("failed") => "failed",
        Some("canceled") => "canceled",
        Some("requires_action") => "requires_action",
        _ => "pending",
    }
}

/// Whether a refund recorded as `ours` may move to `to`, as Stripe's refunds
/// move: from pending (or waiting on the customer) to anything, from
/// succeeded to failed or canceled (a refund can fail later), and never
/// out of failed or canceled, so that a stale read applied late cannot move
/// it back. One exception: a refund failed here without a Stripe id was
/// failed because Stripe, read back, had nothing; if Stripe's refund turns up
/// after all, Stripe is right.
pub fn refund_may_move(ours: &RefundRow, to: &str) -> bool {
    match (ours.status.as_str(), to) {
        (from, to) if from == to => false,
        ("pending" | "requires_action", _) => true,
        ("succeeded", "failed" | "canceled") => true,
        ("failed", _) => ours.stripe_refund_id.is_none(),
        _ => false,
    }
}

/// Checks a Stripe Refund against our refund and its payment: the same
/// PaymentIntent, amount and currency, our refund id in its metadata when it
/// carries one, and no other Stripe refund already bound to ours.
pub fn check_refund(payment: &PaymentRow, ours: &RefundRow, re: &Refund) -> Result<(), String> {
    let mut wrong = Vec::new();
    if re.amount != ours.amount {
        wrong.push(format!("amount {} instead of {}", re.amount, ours.amount));
    }
    if !re.currency.is_empty() && re.currency != payment.currency {
        wrong.push(format!("currency {} instead of {}", re.currency, payment.currency));
    }
    if let (Some(got), Some(expected)) = (&re.payment_intent, &payment.stripe_payment_intent_id)
        && got != expected
    {
        wrong.push(format!("payment_intent {got} instead of {expected}"));
    }
    if let Some(id) = re.metadata.get("refundID")
        && *id != ours.id.to_string()
    {
        wrong.push(format!("metadata refundID {id} instead of {}", ours.id));
    }
    if let Some(bound) = &ours.stripe_refund_id
        && *bound != re.id
    {
        wrong.push(format!("it is not {bound}, the refund already bound"));
    }
    if wrong.is_empty() { Ok(()) } else { Err(format!("Stripe's refund {} has {}", re.id, wrong.join(", "))) }
}
