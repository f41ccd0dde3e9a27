//! Disputes: a customer's bank taking a charge back (a chargeback) or
//! asking about it (an inquiry). Stripe opens and decides them; the service
//! keeps each one as Stripe last reported it (its webhooks, read back, and
//! the answers of our own calls), shows them, and answers them: evidence
//! (submitted now or saved for later) or acceptance. A chargeback open or
//! lost keeps the charge from being refunded.

use super::{App, AppError, Call, Kind, page::Page, replayed_failure, stripe_failure, stripe_key};
use crate::{
    store::{
        disputes::{self, DisputeRow, is_closed},
        payments::Source,
    },
    stripe::{form::Form, types::Dispute},
};
use std::collections::BTreeMap;

/// What a refund Stripe refused for a chargeback (`charge_disputed`) is
/// recorded with (its operation's error, the refund's failure reason), so
/// that whoever later answers for it says `CHARGE_DISPUTED` too.
pub const CHARGE_DISPUTED_NOTE: &str = "the charge is disputed (charge_disputed)";

pub fn charge_disputed() -> AppError {
    AppError::new(
        Kind::Conflict,
        "CHARGE_DISPUTED",
        "the payment's charge is disputed (a chargeback open or lost) and cannot be refunded: answer the dispute instead",
    )
}

fn not_found(id: i64) -> AppError {
    AppError::not_found("DISPUTE_NOT_FOUND", format!("dispute {id} not found"))
}

/// Why a dispute takes no answer now, if it does not.
fn refuse_answer(row: &DisputeRow) -> Result<(), AppError> {
    if is_closed(&row.status) {
        return Err(closed(row));
    }
    if row.status.ends_with("under_review") {
        return Err(AppError::new(
            Kind::Conflict,
            "DISPUTE_UNDER_REVIEW",
            format!("dispute {}'s evidence was submitted and is under review: it can no longer be changed", row.id),
        ));
    }
    Ok(())
}

fn closed(row: &DisputeRow) -> AppError {
    AppError::new(Kind::Conflict, "DISPUTE_CLOSED", format!("dispute {} is closed ({})", row.id, row.status))
        .detail("status", row.status.clone())
}

impl App {
    /// Reads `stripe_id` back from Stripe and applies it to the payment
    /// `payment_id` (a webhook's news, in whatever order it came).
    pub(crate) async fn refresh_dispute(
        &self,
        payment_id: i64,
        stripe_id: &str,
        source: Source,
    ) -> Result<(), AppError> {
        let d = self.stripe.retrieve_dispute(stripe_id).await.map_err(stripe_failure)?.object;
        self.apply_dispute(payment_id, &d, source).await.map(|_| ())
    }

    async fn apply_dispute(&self, payment_id: i64, d: &Dispute, source: Source) -> Result<DisputeRow, AppError> {
        let applied = disputes::apply(&self.db, payment_id, d, source)
            .await?
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("payment {payment_id} of dispute {} is gone", d.id)))?;
        for kind in &applied.events {
            tracing::info!(payment_id, dispute = applied.row.id, status = %applied.row.status, event = %kind, "dispute changed");
        }
        Ok(applied.row)
    }

    pub async fn get_dispute(&self, id: i64) -> Result<DisputeRow, AppError> {
        self.read(|db| async move { disputes::get(&db, id).await }).await?.ok_or_else(|| not_found(id))
    }

    /// Disputes, newest first (of one payment if given), a page at a time.
    pub async fn list_disputes(
        &self,
        payment_id: Option<i64>,
        page_size: i32,
        token: &str,
    ) -> Result<(Vec<DisputeRow>, Option<String>), AppError> {
        let page = Page::parse(page_size, token, "dispute")?;
        let mut rows =
            self.read(|db| async move { disputes::list(&db, payment_id, page.cursor, page.size + 1).await }).await?;
        let next = page.finish(&mut rows, "dispute", |r| r.id);
        Ok((rows, next))
    }

    /// Sends evidence to Stripe, submitted unless `submit` is false (then
    /// kept at Stripe, to be completed before the due date).
    pub async fn submit_dispute_evidence(
        &self,
        id: i64,
        evidence: BTreeMap<String, String>,
        submit: bool,
        call: &Call,
    ) -> Result<DisputeRow, AppError> {
        // Stripe decides whether the dispute still takes evidence, not the
        // row we hold (its news may be late: an inquiry escalated); a retry
        // with the client's key whose first attempt did the work gets
        // Stripe's replay of it. A refusal is told after a read back.
        let row = disputes::get(&self.db, id).await?.ok_or_else(|| not_found(id))?;
        // A value of only white space is not sent: to Stripe it would erase
        // what was saved before.
        let given = evidence.iter().map(|(k, v)| (k.as_str(), v.trim())).filter(|(_, v)| !v.is_empty());
        let form = Form::new().map("evidence", given).set("submit", submit);
        let key = stripe_key(&format!("dispute-evidence-{id}"), call);
        let answer = self.stripe.update_dispute(&row.stripe_dispute_id, &form, &key).await;
        let done = |d: &Dispute| submit && d.evidence_details.submission_count > row.submission_count;
        let d = self.answered(&row, answer, call, done).await?;
        self.apply_dispute(row.payment_id, &d, Source::api(call.by)).await
    }

    /// Accepts the dispute: Stripe closes it, lost (an inquiry: closed).
    pub async fn accept_dispute(&self, id: i64, call: &Call) -> Result<DisputeRow, AppError> {
        let row = disputes::get(&self.db, id).await?.ok_or_else(|| not_found(id))?;
        let key = stripe_key(&format!("dispute-close-{id}"), call);
        let answer = self.stripe.close_dispute(&row.stripe_dispute_id, &key).await;
        let d = self.answered(&row, answer, call, |d| is_closed(&d.status)).await?;
        self.apply_dispute(row.payment_id, &d, Source::api(call.by)).await
    }

    /// Stripe's answer to a call about `row`: the dispute, or why not.
    /// Whether the call did its work is read back, never guessed: a refusal
    /// of a dispute that moved on (closed, under review) is told as that,
    /// and a failure Stripe saved under the key and replays is final only if
    /// the dispute shows the work undone (`done` tells it done).
    async fn answered(
        &self,
        row: &DisputeRow,
        answer: Result<crate::stripe::Reply<Dispute>, crate::stripe::StripeError>,
        call: &Call,
        done: impl Fn(&Dispute) -> bool,
    ) -> Result<Dispute, AppError> {
        let e = match answer {
            Ok(reply) => return Ok(reply.object),
            Err(e)
                if e.is_replayed_failure() || matches!(&e, crate::stripe::StripeError::Api(a) if a.status == 400) =>
            {
                e
            }
            Err(e) => return Err(stripe_failure(e)),
        };
        let refusal = |e: crate::stripe::StripeError| {
            if e.is_replayed_failure() { replayed_failure() } else { stripe_failure(e) }
        };
        // Not read back: the answer as Stripe gave it.
        let Ok(now) = self.stripe.retrieve_dispute(&row.stripe_dispute_id).await else { return Err(refusal(e)) };
        // Only a replay can be this request's own work; a refusal is not.
        if e.is_replayed_failure() && done(&now.object) {
            return Ok(now.object);
        }
        let current = self.apply_dispute(row.payment_id, &now.object, Source::api(call.by)).await?;
        refuse_answer(&current)?;
        Err(refusal(e))
    }

    /// Reads the disputes of a payment back from Stripe (a refund Stripe
    /// refused for a chargeback our records did not know yet).
    pub(crate) async fn refresh_disputes_of(
        &self,
        payment_id: i64,
        intent: &str,
        source: Source,
    ) -> Result<(), AppError> {
        let list = self.stripe.list_disputes(intent).await.map_err(stripe_failure)?.object;
        for d in &list.data {
            self.apply_dispute(payment_id, d, source).await?;
        }
        Ok(())
    }
}
