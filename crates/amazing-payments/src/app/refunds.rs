//! Refunds: in full or in part, several times, never more than was captured
//! (counting refunds still in flight), following the same record, call,
//! apply pattern as payments.

use super::{
    App, AppError, Call,
    operations::{not_found, refused, stays_pending, still_pending},
    stripe_failure, sync,
};
use crate::{
    domain::operation::{Operation, State},
    store::payments::{self, Cause, NewOperation, OperationRow, PaymentRow, RefundRow, Source},
    stripe::{Form, types::Refund},
};

/// What applying a Stripe Refund gave.
pub(crate) enum Applied {
    Row(RefundRow),
    /// Stripe's refund does not match ours: the payment is held.
    Held(String),
}

pub(crate) fn refund_not_found(id: i64) -> AppError {
    AppError::not_found("REFUND_NOT_FOUND", format!("refund {id} does not exist")).detail("refundID", id.to_string())
}

impl App {
    /// Refunds `amount` of a captured payment (all that remains when `None`);
    /// the refund and its currency. With a client idempotency key already
    /// used, resumes that refund.
    pub async fn refund_payment(
        &self,
        payment_id: i64,
        amount: Option<i64>,
        reason: Option<&str>,
        call: &Call,
    ) -> Result<(RefundRow, String), AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            let refund = done.refund()?;
            let payment =
                payments::get(&self.db, refund.payment_id).await?.ok_or_else(|| not_found(refund.payment_id))?;
            return Ok((refund, payment.currency));
        }
        let mut tx = crate::store::begin(&self.db).await?;
        let row = payments::lock(&mut tx, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        if let Some(a) = amount {
            super::operations::fits(payment_id, a, &row.currency)?;
        }
        // A chargeback open or lost: Stripe refuses the refund (the money
        // is with the bank); nothing is written or sent.
        if crate::store::disputes::blocks_refunds(&mut tx, payment_id).await? {
            return Err(super::disputes::charge_disputed().detail("paymentID", payment_id.to_string()));
        }
        let in_flight = payments::refunds_in_flight(&mut tx, payment_id).await?;
        let amount = row.ledger().plan_refund(amount, in_flight).map_err(|r| refused(payment_id, r))?;
        let refund = payments::insert_refund(&mut tx, payment_id, amount, reason, Source::api(call.by)).await?;
        let (request, claim) = key.map(super::RequestKey::binding).unwrap_or_default();
        let new = NewOperation {
            op: Operation::Refund { payment_id, refund_id: refund.id, amount },
            request,
            claim,
            api_key_id: call.by,
        };
        let op = payments::insert_operation(&mut tx, new).await?;
        tx.commit().await?;
        Ok((self.drive(&op).await?.refund()?, row.currency))
    }

    /// Sends a refund operation to Stripe and applies the answer.
    pub(crate) async fn drive_refund(
        &self,
        op: &OperationRow,
        payment: &PaymentRow,
        source: Source,
    ) -> Result<RefundRow, AppError> {
        let payment_id = payment.id;
        let refund_id = op
            .op
            .refund_id()
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("operation {} is not a refund", op.id)))?;
        let refund = payments::get_refund(&self.db, refund_id).await?.ok_or_else(|| refund_not_found(refund_id))?;
        let pi = payment.stripe_payment_intent_id.as_deref().unwrap_or_default();
        let mut ids = vec![("refundID", refund.id.to_string()), ("paymentID", payment_id.to_string())];
        ids.extend(op.reference().map(|r| (super::operations::OPERATION_METADATA, r.to_string())));
        let form = Form::new()
            .set("payment_intent", pi)
            .set("amount", refund.amount)
            .set_opt("reason", refund.reason.as_deref())
            .map("metadata", ids.iter().map(|(k, v)| (*k, v.as_str())));
        match self.stripe.create_refund(&form, &op.idempotency_key).await {
            Ok(reply) => self.finish_refund(op, &refund, &reply.object, reply.request_id.as_deref(), source).await,
            Err(e) if e.is_replayed_failure() => {
                payments::note_attempt(&self.db, op.id, &e.to_string()).await?;
                tracing::warn!(payment_id, operation = op.id, error = %e, "stripe replays a saved failure for this key: looking the refund up");
                Box::pin(self.settle_by_lookup(op, source)).await?.refund()
            }
            Err(e) if stays_pending(&e, op) => {
                payments::note_attempt(&self.db, op.id, &e.to_string()).await?;
                Err(still_pending("refund", payment_id).detail("refundID", refund.id.to_string()))
            }
            Err(e) => {
                let failure = super::operations::failure_of(&e);
                let message = if failure.code.as_deref() == Some("charge_disputed") {
                    super::disputes::CHARGE_DISPUTED_NOTE.to_string()
                } else {
                    failure.message.unwrap_or_else(|| e.to_string())
                };
                if !self.fail_refund(op, refund.id, &message, source, e.never_sent()).await? {
                    return self.answer_of_settled_refund(op, refund.id).await;
                }
                let err = stripe_failure(e);
                if err.reason == "CHARGE_DISPUTED"
                    && let Err(e) = self.refresh_disputes_of(payment_id, pi, source).await
                {
                    tracing::warn!(payment_id, reason = e.reason, "the payment's disputes could not be read back");
                }
                Err(err.detail("paymentID", payment_id.to_string()).detail("refundID", refund.id.to_string()))
            }
        }
    }

    /// Applies the Stripe Refund that `op` made and closes `op`.
    pub(crate) async fn finish_refund(
        &self,
        op: &OperationRow,
        refund: &RefundRow,
        re: &Refund,
        request_id: Option<&str>,
        source: Source,
    ) -> Result<RefundRow, AppError> {
        let payment_id = refund.payment_id;
        let mut tx = crate::store::begin(&self.db).await?;
        let payment = payments::lock(&mut tx, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        match payments::operation_state(&mut tx, op.id).await? {
            State::Pending => {}
            // Another driver (a retry, the reconciler) settled it already:
            // its answer, a refusal included.
            State::Failed => {
                tx.commit().await?;
                return Err(self.refusal_of(op).await?);
            }
            State::Succeeded => {
                tx.commit().await?;
                return self.answer_of_refund(refund.id).await;
            }
        }
        match self.apply_refund(&mut tx, payment_id, refund.id, re, request_id, source).await? {
            Applied::Row(updated) => {
                payments::finish_operation(&mut tx, op.id, State::Succeeded, None).await?;
                let currency = payment.currency;
                let answered = || super::answer::Answered::Refund { refund: updated.clone(), currency };
                super::answer::save_with(&mut tx, op, answered).await?;
                tx.commit().await?;
                tracing::info!(payment_id, refund_id = refund.id, amount = refund.amount, status = %updated.status, "refund created");
                Ok(updated)
            }
            Applied::Held(m) => {
                payments::finish_operation(&mut tx, op.id, State::Failed, Some(&m)).await?;
                tx.commit().await?;
                Err(super::operations::mismatch(payment_id).detail("refundID", refund.id.to_string()))
            }
        }
    }

    /// Closes a refund's operation and the refund as failed: Stripe refused
    /// it, or did nothing. Under the payment's lock, and only while the
    /// operation is still pending and the refund still unsettled: another
    /// driver may have applied Stripe's refund meanwhile. Whether it failed
    /// them (else the caller answers what the other driver recorded). A
    /// call that was `never_sent` fails nothing once a reconciler took the
    /// operation: the refund stays pending, and the caller is told so.
    pub(crate) async fn fail_refund(
        &self,
        op: &OperationRow,
        refund_id: i64,
        message: &str,
        source: Source,
        never_sent: bool,
    ) -> Result<bool, AppError> {
        let mut tx = crate::store::begin(&self.db).await?;
        let payment_id = super::operations::payment_of(op)?;
        payments::lock(&mut tx, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        if payments::operation_state(&mut tx, op.id).await? != State::Pending {
            tx.commit().await?;
            return Ok(false);
        }
        // A call that never left proves nothing once a reconciler took the
        // operation: its send may be in flight.
        if never_sent && !payments::lock_untaken(&mut tx, op.id).await? {
            tx.rollback().await?;
            payments::note_attempt(&self.db, op.id, message).await?;
            return Err(still_pending("refund", payment_id).detail("refundID", refund_id.to_string()));
        }
        let current = payments::lock_refund(&mut tx, refund_id).await?.ok_or_else(|| refund_not_found(refund_id))?;
        let failed =
            matches!(current.status.as_str(), "pending" | "requires_action") && current.stripe_refund_id.is_none();
        if failed {
            payments::update_refund(&mut tx, refund_id, "failed", None, Some(message), source).await?;
            payments::finish_operation(&mut tx, op.id, State::Failed, Some(message)).await?;
        } else {
            // Stripe's refund reached us another way (a webhook matched it
            // by our id): the operation did its work.
            payments::finish_operation(&mut tx, op.id, State::Succeeded, None).await?;
        }
        tx.commit().await?;
        Ok(failed)
    }

    /// What a refund operation that someone else settled answers: its
    /// refusal if it failed (never a 2xx for a refund that did not happen),
    /// else the refund.
    pub(crate) async fn answer_of_settled_refund(
        &self,
        op: &OperationRow,
        refund_id: i64,
    ) -> Result<RefundRow, AppError> {
        match payments::get_operation(&self.db, op.id).await?.map(|o| o.state) {
            Some(State::Failed) => Err(self.refusal_of(op).await?),
            _ => self.answer_of_refund(refund_id).await,
        }
    }

    /// What a refund whose operation someone else finished answers: the
    /// refund, or the hold of its payment.
    pub(crate) async fn answer_of_refund(&self, id: i64) -> Result<RefundRow, AppError> {
        let refund = payments::get_refund(&self.db, id).await?.ok_or_else(|| refund_not_found(id))?;
        let payment = payments::get(&self.db, refund.payment_id).await?.ok_or_else(|| not_found(refund.payment_id))?;
        if payment.integrity_error.is_some() {
            return Err(super::operations::mismatch(payment.id).detail("refundID", id.to_string()));
        }
        Ok(refund)
    }

    /// Applies a Stripe Refund to our refund and its payment, both locked
    /// (payment, then refund) and re-read in the caller's transaction: the
    /// API call, a webhook, the reconciler, or one event delivered twice may
    /// all bring the same news, and it counts once. The payment's refunded
    /// amount moves by the refund's amount exactly when the refund enters or
    /// leaves `succeeded`. A Refund that does not match ours holds the
    /// payment, with a history line.
    pub(crate) async fn apply_refund(
        &self,
        tx: &mut sqlx::PgConnection,
        payment_id: i64,
        refund_id: i64,
        re: &Refund,
        stripe_request_id: Option<&str>,
        source: Source,
    ) -> Result<Applied, AppError> {
        let before = payments::lock(tx, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        let current = payments::lock_refund(tx, refund_id).await?.ok_or_else(|| refund_not_found(refund_id))?;
        if let Err(m) = sync::check_refund(&before, &current, re) {
            if before.integrity_error.is_some() {
                return Ok(Applied::Held(m));
            }
            let mut held = before.clone();
            held.integrity_error = Some(m.clone());
            let note = format!("integrity check failed: Stripe's refund {} differs from refund {}", re.id, current.id);
            let cause = Cause { refund_id: Some(current.id), stripe_request_id, note: Some(&note) };
            payments::save(tx, &before, &held, source, &cause).await?;
            tracing::error!(payment_id, refund_id, mismatch = %m, "stripe's refund does not match ours: payment held");
            return Ok(Applied::Held(m));
        }
        let bound = current.stripe_refund_id.as_deref() == Some(re.id.as_str());
        let status = if sync::refund_may_move(&current, sync::refund_status(re)) {
            sync::refund_status(re)
        } else {
            // A stale read (an older answer applied late): what is recorded
            // is newer. Only the Stripe id is bound if it was not yet.
            current.status.as_str()
        };
        if status == current.status && bound {
            return Ok(Applied::Row(current));
        }
        let status = status.to_string();
        let status = status.as_str();
        let updated =
            payments::update_refund(tx, refund_id, status, Some(&re.id), re.failure_reason.as_deref(), source).await?;
        let counted = |s: &str| i64::from(s == "succeeded");
        let delta = current.amount * (counted(status) - counted(&current.status));
        if delta != 0 {
            let next =
                before.ledger().set_refunded(before.amount_refunded + delta).map_err(|r| refused(payment_id, r))?;
            let mut after = before.clone();
            after.set_ledger(next);
            let note = format!("refund {} {status}", current.id);
            let cause = Cause { refund_id: Some(current.id), stripe_request_id, note: Some(&note) };
            payments::save(tx, &before, &after, source, &cause).await?;
        }
        Ok(Applied::Row(updated))
    }

    /// Reads a Stripe refund of `payment` back and applies it. Ours is found
    /// by its Stripe id or, when the news comes before our API call has
    /// bound it, by our id in its metadata; a refund made at Stripe outside
    /// this service is recorded as a new refund of the payment.
    pub(crate) async fn refresh_refund(
        &self,
        stripe_refund: &str,
        payment: &PaymentRow,
        source: Source,
    ) -> Result<(), AppError> {
        let reply = self.stripe.retrieve_refund(stripe_refund).await.map_err(stripe_failure)?;
        let re = reply.object;
        let bound = payments::refund_by_stripe_id(&self.db, &re.id).await?;
        let ours = match (bound, re.metadata.get("refundID").and_then(|id| id.parse::<i64>().ok())) {
            (Some(r), _) => Some(r),
            (None, Some(id)) => payments::get_refund(&self.db, id).await?.filter(|r| r.payment_id == payment.id),
            (None, None) => None,
        };
        let mut tx = crate::store::begin(&self.db).await?;
        let refund_id = match ours {
            Some(r) => r.id,
            None => {
                payments::lock(&mut tx, payment.id).await?.ok_or_else(|| not_found(payment.id))?;
                // Looked up again under the payment's lock: two deliveries
                // of its news record it once.
                match payments::refund_by_stripe_id(&mut *tx, &re.id).await? {
                    Some(r) => r.id,
                    None => {
                        tracing::info!(payment_id = payment.id, "refund made outside this service: recorded");
                        payments::insert_refund(&mut tx, payment.id, re.amount, re.reason.as_deref(), source).await?.id
                    }
                }
            }
        };
        // Our refund whose request's answer has not come yet: this news is
        // the outcome of what its key asked for.
        let source = match source.api_key_id {
            Some(_) => source,
            None => {
                source.for_key(payments::asker_of_pending(&mut tx, payment.id, Some(refund_id), &["refund"]).await?)
            }
        };
        let applied =
            self.apply_refund(&mut tx, payment.id, refund_id, &re, reply.request_id.as_deref(), source).await?;
        tx.commit().await?;
        match applied {
            Applied::Row(_) => Ok(()),
            Applied::Held(_) => Err(super::operations::mismatch(payment.id).detail("refundID", refund_id.to_string())),
        }
    }

    pub async fn get_refund(&self, id: i64) -> Result<(RefundRow, String), AppError> {
        let found = self
            .read(|db| async move {
                let Some(refund) = payments::get_refund(&db, id).await? else { return Ok(None) };
                let payment = payments::get(&db, refund.payment_id).await?;
                Ok(Some((refund, payment)))
            })
            .await?;
        let (refund, payment) = found.ok_or_else(|| refund_not_found(id))?;
        let payment = payment.ok_or_else(|| not_found(refund.payment_id))?;
        Ok((refund, payment.currency))
    }

    pub async fn list_refunds(&self, payment_id: i64) -> Result<(Vec<RefundRow>, String), AppError> {
        let (payment, refunds) = self
            .read(|db| async move {
                let Some(payment) = payments::get(&db, payment_id).await? else { return Ok((None, Vec::new())) };
                Ok((Some(payment), payments::refunds_of(&db, payment_id).await?))
            })
            .await?;
        let payment = payment.ok_or_else(|| not_found(payment_id))?;
        Ok((refunds, payment.currency))
    }
}
