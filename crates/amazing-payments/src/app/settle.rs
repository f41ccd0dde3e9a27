//! Settling an operation that its idempotency key can no longer finish.
//!
//! Two cases leave an operation's outcome beyond the reach of its key:
//! - Stripe saved a failure for the key (a 500 of a request that had begun
//!   executing) and replays it for every retry: the work may or may not
//!   have been done, and the same key will only ever say "500";
//! - the operation is older than Stripe keeps keys (24 hours): sending its
//!   request again would be a new request, and could do the work twice.
//!
//! Either way the operation is settled by reading Stripe's objects back, by
//! what we put in them (our ids and the operation's reference in the
//! metadata), through list endpoints, which show an object as soon as it
//! exists (search may lag). Found: applied as if its answer had come.
//! Not found: nothing was done, and the operation fails with
//! `STRIPE_FAILED`; its request is never sent again.

use super::{
    App, AppError, Kind,
    operations::{Driven, OPERATION_METADATA, not_found},
    stripe_failure,
};
use crate::{
    domain::customer::CustomerId,
    store::{
        customers,
        payments::{self, OperationRow, Source},
    },
    stripe::{ApiError, Reply},
};
use std::collections::HashMap;

/// Whether Stripe's object carries our operation's reference, or (for an
/// operation recorded before references existed) our id under `id_key`.
fn ours(metadata: &HashMap<String, String>, op: &OperationRow, id_key: &str, id: i64) -> bool {
    let same_id = metadata.get(id_key).is_some_and(|v| *v == id.to_string());
    match op.reference() {
        Some(r) => same_id && metadata.get(OPERATION_METADATA).is_some_and(|v| v == r),
        None => same_id,
    }
}

/// The error of an operation that Stripe did nothing for.
fn nothing_done() -> ApiError {
    ApiError {
        kind: "api_error".into(),
        code: Some("stripe_failed".into()),
        message: Some("the payment provider failed the request and did nothing; send it again with a new idempotency key".into()),
        ..Default::default()
    }
}

fn failed(op: &OperationRow) -> AppError {
    let e = nothing_done();
    let mut err = AppError::new(Kind::FailedPrecondition, "STRIPE_FAILED", e.message.unwrap_or_default());
    if op.payment_id != 0 {
        err = err.detail("paymentID", op.payment_id.to_string());
    }
    err
}

impl App {
    /// Settles `op` by looking its object up at Stripe (see the module doc).
    pub(crate) async fn settle_by_lookup(&self, op: &OperationRow, source: Source) -> Result<Driven, AppError> {
        tracing::warn!(operation = op.id, kind = %op.kind, "settling an operation by reading Stripe back");
        match op.kind.as_str() {
            "create_payment" => self.settle_create_payment(op, source).await,
            "capture" | "cancel" => self.settle_intent_change(op, source).await,
            "refund" => self.settle_refund(op, source).await,
            "create_customer" => self.settle_create_customer(op).await,
            // Updates change nothing twice: sent again, they converge.
            "update_customer" => self.drive_customer(op).await.map(|c| Driven::Customer(Box::new(c))),
            other => Err(AppError::unavailable(
                "STRIPE_UNAVAILABLE",
                format!("a {other} operation cannot be settled by reading Stripe back; it stays recorded"),
            )),
        }
    }

    async fn settle_create_payment(&self, op: &OperationRow, source: Source) -> Result<Driven, AppError> {
        let row = payments::get(&self.db, op.payment_id).await?.ok_or_else(|| not_found(op.payment_id))?;
        let customer = customers::get(&self.db, CustomerId::parse(row.customer_id)?).await?;
        let stripe_customer = customer.and_then(|c| c.stripe_customer_key).unwrap_or_default();
        let page = self.stripe.list_payment_intents(&stripe_customer).await.map_err(stripe_failure)?;
        let found = page.object.data.into_iter().find(|pi| ours(&pi.metadata, op, "paymentID", row.id));
        match found {
            Some(pi) => {
                let reply = Ok(Reply { object: pi, request_id: page.request_id });
                let row = self.finish_intent_operation(op, reply, Some(&stripe_customer), source).await?;
                Ok(Driven::Payment(Box::new(row)))
            }
            None => {
                self.fail_operation(op, &nothing_done(), true, source).await?;
                Err(failed(op))
            }
        }
    }

    /// A capture or cancel: the PaymentIntent says whether it happened.
    async fn settle_intent_change(&self, op: &OperationRow, source: Source) -> Result<Driven, AppError> {
        let row = payments::get(&self.db, op.payment_id).await?.ok_or_else(|| not_found(op.payment_id))?;
        let pi = row.stripe_payment_intent_id.clone().unwrap_or_default();
        let reply = self.stripe.retrieve_payment_intent(&pi).await.map_err(stripe_failure)?;
        let done = match op.kind.as_str() {
            // Captured, or gone (canceled, expired): either way no longer
            // waiting for this capture.
            "capture" => reply.object.status != "requires_capture",
            _ => reply.object.status == "canceled" || reply.object.status == "succeeded",
        };
        if done {
            let row = self.finish_intent_operation(op, Ok(reply), None, source).await?;
            return Ok(Driven::Payment(Box::new(row)));
        }
        self.fail_operation(op, &nothing_done(), false, source).await?;
        Err(failed(op))
    }

    async fn settle_refund(&self, op: &OperationRow, source: Source) -> Result<Driven, AppError> {
        let row = payments::get(&self.db, op.payment_id).await?.ok_or_else(|| not_found(op.payment_id))?;
        let refund_id = op.refund_id.unwrap_or_default();
        let refund =
            payments::get_refund(&self.db, refund_id).await?.ok_or_else(|| super::refunds::refund_not_found(refund_id))?;
        let pi = row.stripe_payment_intent_id.clone().unwrap_or_default();
        let page = self.stripe.list_refunds(&pi).await.map_err(stripe_failure)?;
        match page.object.data.into_iter().find(|re| ours(&re.metadata, op, "refundID", refund.id)) {
            Some(re) => {
                let done = self.finish_refund(op, &refund, &re, page.request_id.as_deref(), source).await?;
                Ok(Driven::Refund(done))
            }
            None => {
                let message = nothing_done().message.unwrap_or_default();
                self.fail_refund(op, refund.id, &message, source).await?;
                Err(failed(op).detail("refundID", refund.id.to_string()))
            }
        }
    }

    async fn settle_create_customer(&self, op: &OperationRow) -> Result<Driven, AppError> {
        let p = &op.params.0;
        let id = p["customer_id"].as_i64().unwrap_or(0);
        let email = p["email"].as_str().unwrap_or_default();
        let page = self.stripe.list_customers(email).await.map_err(stripe_failure)?;
        match page.object.data.into_iter().find(|c| ours(&c.metadata, op, "customerID", id)) {
            Some(c) => Ok(Driven::Customer(Box::new(self.finish_customer_create(op, &c.id).await?))),
            None => {
                payments::close_operation(&self.db, op.id, "failed", nothing_done().message.as_deref()).await?;
                Err(failed(op))
            }
        }
    }
}
