//! Disputes: a customer's bank taking a charge back (a chargeback) or
//! asking about it (an inquiry). Stripe opens and decides them; the service
//! keeps each one as Stripe last reported it (its webhooks, read back, and
//! the answers of our own calls), shows them, and answers them: evidence
//! (submitted now or saved for later) or acceptance. A chargeback open or
//! lost keeps the charge from being refunded.

use super::{
    App, AppError, Call, Kind,
    page::Page,
    saved_cards::{replayed_failure, stripe_key},
    stripe_failure,
};
use crate::{
    store::{
        disputes::{self, DisputeRow, is_closed},
        payments::Source,
    },
    stripe::{form::Form, types::Dispute},
};
use std::collections::BTreeMap;

/// The text evidence Stripe takes (`evidence[...]`); files are uploaded to
/// Stripe and named there, not through this service.
pub const EVIDENCE_FIELDS: &[&str] = &[
    "access_activity_log",
    "billing_address",
    "cancellation_policy_disclosure",
    "cancellation_rebuttal",
    "customer_email_address",
    "customer_name",
    "customer_purchase_ip",
    "duplicate_charge_explanation",
    "duplicate_charge_id",
    "product_description",
    "refund_policy_disclosure",
    "refund_refusal_explanation",
    "service_date",
    "shipping_address",
    "shipping_carrier",
    "shipping_date",
    "shipping_tracking_number",
    "uncategorized_text",
];

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
        let row = disputes::get(&self.db, id).await?.ok_or_else(|| not_found(id))?;
        if is_closed(&row.status) {
            return Err(closed(&row));
        }
        if row.status.ends_with("under_review") {
            return Err(AppError::new(
                Kind::Conflict,
                "DISPUTE_UNDER_REVIEW",
                format!("dispute {id}'s evidence was submitted and is under review: it can no longer be changed"),
            ));
        }
        let form =
            Form::new().map("evidence", evidence.iter().map(|(k, v)| (k.as_str(), v.trim()))).set("submit", submit);
        let key = stripe_key(&format!("dispute-evidence-{id}"), call);
        let d = match self.stripe.update_dispute(&row.stripe_dispute_id, &form, &key).await {
            Ok(reply) => reply.object,
            Err(e) if e.is_replayed_failure() => return Err(replayed_failure()),
            Err(e) => return Err(stripe_failure(e)),
        };
        self.apply_dispute(row.payment_id, &d, Source::api(call.by)).await
    }

    /// Accepts the dispute: Stripe closes it, lost (an inquiry: closed).
    pub async fn accept_dispute(&self, id: i64, call: &Call) -> Result<DisputeRow, AppError> {
        let row = disputes::get(&self.db, id).await?.ok_or_else(|| not_found(id))?;
        if is_closed(&row.status) {
            return Err(closed(&row));
        }
        let key = stripe_key(&format!("dispute-close-{id}"), call);
        let d = match self.stripe.close_dispute(&row.stripe_dispute_id, &key).await {
            Ok(reply) => reply.object,
            Err(e) if e.is_replayed_failure() => return Err(replayed_failure()),
            Err(e) => return Err(stripe_failure(e)),
        };
        self.apply_dispute(row.payment_id, &d, Source::api(call.by)).await
    }
}
