//! Stripe's webhooks: verified, stored once, then applied.
//!
//! Delivery is at least once and in no order, so an event is never applied
//! as it came: the object it is about is read back from Stripe and applied
//! through the payment state machine, which never moves a payment backwards.
//! An event about a payment whose row has no PaymentIntent yet (its API call
//! still in flight) fails for now and is retried; a PaymentIntent made outside
//! this service for a customer we know is adopted; other unknown objects are
//! acknowledged and logged.

use super::{App, AppError, Kind};
use crate::{
    store::{
        customers,
        payments::{self, Source},
        webhooks::{self, EventRow},
    },
    stripe::webhook::{SignatureError, verify},
};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// Deliveries refused for their signature, since start (for metrics).
pub static REFUSED_DELIVERIES: AtomicU64 = AtomicU64::new(0);

fn refused(e: SignatureError) -> AppError {
    REFUSED_DELIVERIES.fetch_add(1, Ordering::Relaxed);
    crate::meter::webhook("refused");
    tracing::warn!(reason = e.reason(), "webhook delivery refused");
    // The signature is the sender's credential: a delivery without a good one
    // is unauthenticated (401). Stripe retries any answer that is not 2xx.
    AppError::unauthenticated(e.reason(), "the webhook's Stripe-Signature does not check out")
}

impl App {
    /// Checks a delivery and stores its event; false for a duplicate.
    pub async fn receive_webhook(&self, signature: Option<&str>, body: &[u8]) -> Result<bool, AppError> {
        if self.webhooks.secrets.is_empty() {
            return Err(AppError::new(
                Kind::Unavailable,
                "WEBHOOK_NOT_CONFIGURED",
                "no STRIPE_WEBHOOK_SECRET is configured",
            ));
        }
        let now = chrono::Utc::now().timestamp();
        verify(signature, body, &self.webhooks.secrets, self.webhooks.tolerance.as_secs() as i64, now)
            .map_err(refused)?;
        let event: Value =
            serde_json::from_slice(body).map_err(|_| AppError::invalid("MALFORMED_EVENT", "the event is not JSON"))?;
        let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
            return Err(AppError::invalid("MALFORMED_EVENT", "the event has no id or type"));
        };
        let new = webhooks::store(&self.db, id, kind, &event).await?;
        tracing::info!(event = id, kind, duplicate = !new, "webhook received");
        crate::meter::webhook(if new { "stored" } else { "duplicate" });
        Ok(new)
    }

    /// Applies one stored event; an error means "try again later".
    pub async fn apply_event(&self, e: &EventRow) -> Result<(), AppError> {
        let object = &e.payload.0["data"]["object"];
        let kind = e.kind.as_str();
        let intent = if kind.starts_with("payment_intent.") {
            object["id"].as_str()
        } else if kind.starts_with("charge.") || kind.starts_with("refund.") {
            object["payment_intent"].as_str()
        } else {
            None
        };
        let Some(pi) = intent else {
            tracing::debug!(event = %e.id, kind, "event not about a payment: acknowledged");
            return Ok(());
        };
        let row = match payments::by_intent(&self.db, pi).await? {
            Some(row) => row,
            None => match self.unknown_intent(pi).await? {
                Some(row) => row,
                None => return Ok(()),
            },
        };
        if kind.starts_with("charge.dispute.") {
            // The dispute as Stripe holds it now, whatever this event said.
            let id = object["id"].as_str().unwrap_or_default();
            return self.refresh_dispute(row.id, id, Source::WEBHOOK).await;
        }
        if kind.starts_with("refund.") {
            self.refresh_refund(object["id"].as_str().unwrap_or_default(), &row, Source::WEBHOOK).await?;
        }
        self.refresh_from(row.id, pi, Source::WEBHOOK, &format!("webhook {kind}")).await?;
        Ok(())
    }

    /// A PaymentIntent that names a payment by our id but is bound to none:
    /// ours while its create operation is still running (wait), ours after
    /// that operation was closed without it (a lookup that missed it: bind
    /// it now, and the payment follows Stripe), or another deployment's
    /// (acknowledged). Ours is told by the create operation's reference in
    /// its metadata, or, for operations older than references, by its
    /// customer.
    async fn unbound_intent(
        &self,
        id: &str,
        intent: &crate::stripe::types::PaymentIntent,
    ) -> Result<Option<payments::PaymentRow>, AppError> {
        let not_ours = || {
            tracing::info!(intent = %intent.id, "PaymentIntent of another deployment or payment: acknowledged");
            Ok(None)
        };
        let Ok(id) = id.parse::<i64>() else { return not_ours() };
        let (Some(row), Some(op)) =
            (payments::get(&self.db, id).await?, payments::create_operation_of(&self.db, id).await?)
        else {
            return not_ours();
        };
        let ours = match op.reference() {
            Some(r) => intent.metadata.get(super::operations::OPERATION_METADATA).is_some_and(|v| v == r),
            None => {
                let customer = customers::get(&self.db, crate::domain::customer::CustomerId::parse(row.customer_id)?)
                    .await?
                    .and_then(|c| c.stripe_customer_key);
                customer.is_some() && intent.customer.as_ref().map(|c| c.id().to_string()) == customer
            }
        };
        match row.stripe_payment_intent_id.as_deref() {
            // Bound meanwhile (our API call finished while we read Stripe).
            Some(bound) if bound == intent.id => return Ok(Some(row)),
            Some(_) => return not_ours(),
            None if !ours => return not_ours(),
            None => {}
        }
        if op.state == crate::domain::operation::State::Pending {
            return Err(AppError::unavailable(
                "PAYMENT_NOT_READY",
                format!("payment {id} is not bound to {} yet", intent.id),
            ));
        }
        // Its operation was closed without it (a lookup that missed it): the
        // operation did its work after all, and its client key says so.
        tracing::warn!(payment_id = id, "a PaymentIntent of ours found after its operation was closed: bound");
        let mut conn = self.db.acquire().await?;
        payments::succeeded_after_all(&mut conn, op.id).await?;
        Ok(Some(row))
    }

    /// A PaymentIntent with no payment here: one of ours whose row is not
    /// bound yet (retry later), or one made outside (adopted if its customer
    /// is ours), or nothing of ours.
    async fn unknown_intent(&self, pi: &str) -> Result<Option<payments::PaymentRow>, AppError> {
        let reply = self.stripe.retrieve_payment_intent(pi).await.map_err(super::stripe_failure)?;
        let intent = reply.object;
        if let Some(id) = intent.metadata.get("paymentID") {
            return self.unbound_intent(id, &intent).await;
        }
        let Some(customer) = intent.customer.as_ref().map(|c| c.id().to_string()) else {
            tracing::info!(intent = pi, "PaymentIntent of no customer of ours: acknowledged");
            return Ok(None);
        };
        let Some(customer_id) = customers::by_stripe_key(&self.db, &customer).await?.map(|c| c.id) else {
            tracing::info!(intent = pi, "PaymentIntent of a customer we do not know: acknowledged");
            return Ok(None);
        };
        let capture = if intent.capture_method == "manual" { "manual" } else { "automatic" };
        Ok(Some(payments::adopt(&self.db, customer_id, pi, intent.amount, &intent.currency, capture).await?))
    }
}
