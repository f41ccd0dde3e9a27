//! Refunds: in full or in part, several times, never more than was captured
//! (counting refunds still in flight), following the same record, call,
//! apply pattern as payments.

use super::{
    App, AppError, RequestKey,
    operations::{not_found, outcome_unknown, refused, still_pending},
    stripe_failure, sync,
};
use crate::{
    domain::money::{Currency, Money},
    store::payments::{self, Cause, NewOperation, OperationRow, PaymentRow, RefundRow, Source},
    stripe::{Form, StripeError},
};

pub(crate) fn refund_not_found(id: i64) -> AppError {
    AppError::not_found("REFUND_NOT_FOUND", format!("refund {id} does not exist")).detail("refundID", id.to_string())
}

impl App {
    /// Refunds `amount` of a captured payment (all that remains when `None`).
    /// With a client idempotency key already used, resumes that refund.
    pub async fn refund_payment(
        &self,
        payment_id: i64,
        amount: Option<i64>,
        reason: Option<&str>,
        key: Option<&RequestKey>,
    ) -> Result<RefundRow, AppError> {
        if let Some(done) = self.resume(key).await? {
            return done.refund();
        }
        let mut tx = self.db.begin().await?;
        let row = payments::lock(&mut tx, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        if let Some(a) = amount {
            Money::part(a, Currency::parse(&row.currency)?)?;
        }
        let in_flight = payments::refunds_in_flight(&mut tx, payment_id).await?;
        let amount = row.ledger().plan_refund(amount, in_flight).map_err(|r| refused(payment_id, r))?;
        let refund = payments::insert_refund(&mut tx, payment_id, amount, reason).await?;
        let new = NewOperation {
            kind: "refund",
            payment_id,
            refund_id: Some(refund.id),
            amount: Some(amount),
            params: serde_json::json!({}),
            request: key.map(|k| (k.scope, k.key.as_str())),
        };
        let op = payments::insert_operation(&mut tx, new).await?;
        tx.commit().await?;
        self.drive(&op).await?.refund()
    }

    /// Sends a refund operation to Stripe and applies the answer.
    pub(crate) async fn drive_refund(
        &self,
        op: &OperationRow,
        payment: &PaymentRow,
        source: Source,
    ) -> Result<RefundRow, AppError> {
        let payment_id = payment.id;
        let refund = payments::get_refund(&self.db, op.refund_id.unwrap_or_default())
            .await?
            .ok_or_else(|| refund_not_found(op.refund_id.unwrap_or_default()))?;
        let pi = payment.stripe_payment_intent_id.as_deref().unwrap_or_default();
        let ids = [("refundID", refund.id.to_string()), ("paymentID", payment_id.to_string())];
        let form = Form::new()
            .set("payment_intent", pi)
            .set("amount", refund.amount)
            .set_opt("reason", refund.reason.as_deref())
            .map("metadata", ids.iter().map(|(k, v)| (*k, v.as_str())));
        match self.stripe.create_refund(&form, &op.idempotency_key).await {
            Ok(reply) => {
                let mut tx = self.db.begin().await?;
                let before = payments::lock(&mut tx, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
                if payments::operation_state(&mut tx, op.id).await? != "pending" {
                    // Another driver (a retry, the reconciler) applied this
                    // answer already.
                    tx.commit().await?;
                    return payments::get_refund(&self.db, refund.id).await?.ok_or_else(|| refund_not_found(refund.id));
                }
                let status = sync::refund_status(&reply.object);
                let updated = payments::update_refund(
                    &mut tx,
                    refund.id,
                    status,
                    Some(&reply.object.id),
                    reply.object.failure_reason.as_deref(),
                    source,
                )
                .await?;
                if status == "succeeded" {
                    let mut after = before.clone();
                    let next = before
                        .ledger()
                        .set_refunded(before.amount_refunded + refund.amount)
                        .map_err(|r| refused(payment_id, r))?;
                    after.set_ledger(next);
                    let cause = Cause {
                        refund_id: Some(refund.id),
                        stripe_request_id: reply.request_id.as_deref(),
                        ..Default::default()
                    };
                    payments::save(&mut tx, &before, &after, source, &cause).await?;
                }
                payments::finish_operation(&mut tx, op.id, "succeeded", None).await?;
                tx.commit().await?;
                tracing::info!(payment_id, refund_id = refund.id, amount = refund.amount, status, "refund created");
                Ok(updated)
            }
            Err(e) if outcome_unknown(&e) => {
                payments::note_attempt(&self.db, op.id, &e.to_string()).await?;
                Err(still_pending("refund", payment_id).detail("refundID", refund.id.to_string()))
            }
            Err(e) => {
                let message = e.api().and_then(|a| a.message.clone()).unwrap_or_else(|| e.to_string());
                let mut tx = self.db.begin().await?;
                payments::update_refund(&mut tx, refund.id, "failed", None, Some(&message), source).await?;
                payments::finish_operation(&mut tx, op.id, "failed", Some(&message)).await?;
                tx.commit().await?;
                let err = match e {
                    StripeError::Network { .. } => AppError::unavailable(
                        "STRIPE_UNAVAILABLE",
                        "the payment provider could not be reached; try again later",
                    ),
                    other => stripe_failure(other),
                };
                Err(err.detail("paymentID", payment_id.to_string()).detail("refundID", refund.id.to_string()))
            }
        }
    }

    pub async fn get_refund(&self, id: i64) -> Result<(RefundRow, String), AppError> {
        let refund = payments::get_refund(&self.db, id).await?.ok_or_else(|| refund_not_found(id))?;
        let payment = payments::get(&self.db, refund.payment_id).await?.ok_or_else(|| not_found(refund.payment_id))?;
        Ok((refund, payment.currency))
    }

    pub async fn list_refunds(&self, payment_id: i64) -> Result<(Vec<RefundRow>, String), AppError> {
        let payment = payments::get(&self.db, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        Ok((payments::refunds_of(&self.db, payment_id).await?, payment.currency))
    }
}
