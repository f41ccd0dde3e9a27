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
    operations::{Driven, OPERATION_METADATA, not_found, payment_of, settled_payment},
    stripe_failure,
};
use crate::{
    domain::{
        customer::CustomerId,
        operation::{Operation, State},
    },
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

/// Why an operation failed that Stripe, read back, did nothing for: kept on
/// the operation, so that a later retry with the client's key gets the same
/// answer.
pub(crate) const NOTHING_DONE: &str =
    "the payment provider failed the request and did nothing; send it again with a new idempotency key";

/// The error of an operation that Stripe did nothing for.
fn nothing_done() -> ApiError {
    ApiError {
        kind: "api_error".into(),
        code: Some("stripe_failed".into()),
        message: Some(NOTHING_DONE.into()),
        ..Default::default()
    }
}

/// When (unix seconds, from and to) what `op` may have made was created: from
/// its recording (less a margin for clocks) to a day later, when its key was
/// forgotten and it was sent no more.
fn since(op: &OperationRow) -> (i64, i64) {
    let at = op.created_at.timestamp();
    (at - 600, at + 25 * 3600)
}

/// Pages of 100 read at most by one lookup.
const MAX_PAGES: usize = 50;

/// A lookup that could not read everything it had to: nothing is
/// concluded, and the operation stays pending.
fn incomplete(op: &OperationRow) -> AppError {
    tracing::warn!(operation = op.id, pages = MAX_PAGES, "lookup did not reach the end of the list: left pending");
    AppError::unavailable("STRIPE_UNAVAILABLE", "the payment provider could not be read back in full; retry later")
}

pub(crate) fn failed(op: &OperationRow) -> AppError {
    let mut err = AppError::new(Kind::FailedPrecondition, "STRIPE_FAILED", NOTHING_DONE);
    if let Some(id) = op.op.payment_id() {
        err = err.detail("paymentID", id.to_string());
    }
    err
}

impl App {
    /// Settles `op` by looking its object up at Stripe (see the module doc).
    pub(crate) async fn settle_by_lookup(&self, op: &OperationRow, source: Source) -> Result<Driven, AppError> {
        tracing::warn!(operation = op.id, kind = op.op.kind(), "settling an operation by reading Stripe back");
        match &op.op {
            Operation::CreatePayment { .. } => self.settle_create_payment(op, source).await,
            Operation::Capture { .. } | Operation::Cancel { .. } => self.settle_intent_change(op, source).await,
            Operation::Refund { .. } => self.settle_refund(op, source).await,
            Operation::CreateCustomer { .. } => self.settle_create_customer(op).await,
            Operation::CreateProduct { .. } | Operation::CreatePrice { .. } => self.settle_create_price(op).await,
            // Updates change nothing twice: sent again, they converge.
            Operation::UpdateCustomer { .. } => self.drive_customer(op).await.map(|c| Driven::Customer(Box::new(c))),
            other => Err(AppError::unavailable(
                "STRIPE_UNAVAILABLE",
                format!("a {} operation cannot be settled by reading Stripe back; it stays recorded", other.kind()),
            )),
        }
    }

    async fn settle_create_payment(&self, op: &OperationRow, source: Source) -> Result<Driven, AppError> {
        let payment_id = payment_of(op)?;
        let row = payments::get(&self.db, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        let customer = customers::get(&self.db, CustomerId::parse(row.customer_id)?).await?;
        let stripe_customer = customer.and_then(|c| c.stripe_customer_key).unwrap_or_default();
        let (mut found, mut more, mut after, mut request_id) = (None, true, None::<String>, None);
        for _ in 0..MAX_PAGES {
            let page = self
                .stripe
                .list_payment_intents(&stripe_customer, since(op), after.as_deref())
                .await
                .map_err(stripe_failure)?;
            (more, after, request_id) =
                (page.object.has_more, page.object.data.last().map(|p| p.id.clone()), page.request_id);
            found = page.object.data.into_iter().find(|pi| ours(&pi.metadata, op, "paymentID", row.id));
            if found.is_some() || !more {
                break;
            }
        }
        match found {
            Some(pi) => {
                // Read whole (lists do not expand the charge, which carries
                // the authorization's deadline).
                let reply = match self.stripe.retrieve_payment_intent(&pi.id).await {
                    Ok(full) => Ok(full),
                    Err(_) => Ok(Reply { object: pi, request_id }),
                };
                let row = self.finish_intent_operation(op, reply, Some(&stripe_customer), source).await?;
                // Answered as the request itself would have been: a decline
                // is a 402, never a 2xx.
                Ok(Driven::Payment(Box::new(settled_payment(row)?)))
            }
            None if more => Err(incomplete(op)),
            None => {
                self.fail_operation(op, &nothing_done(), true, source).await?;
                Err(failed(op))
            }
        }
    }

    /// A capture or cancel: the PaymentIntent says whether it happened.
    async fn settle_intent_change(&self, op: &OperationRow, source: Source) -> Result<Driven, AppError> {
        let payment_id = payment_of(op)?;
        let row = payments::get(&self.db, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        let pi = row.stripe_payment_intent_id.clone().unwrap_or_default();
        let reply = self.stripe.retrieve_payment_intent(&pi).await.map_err(stripe_failure)?;
        let capture = matches!(op.op, Operation::Capture { .. });
        let done = if capture { reply.object.status == "succeeded" } else { reply.object.status == "canceled" };
        if done {
            let row = self.finish_intent_operation(op, Ok(reply), None, source).await?;
            return Ok(Driven::Payment(Box::new(row)));
        }
        let still_possible =
            if capture { reply.object.status == "requires_capture" } else { reply.object.status != "succeeded" };
        if !still_possible {
            // It can no longer happen (captured already, or canceled): the
            // operation is refused, and the payment follows Stripe's state.
            let refusal = ApiError {
                kind: "invalid_request_error".into(),
                code: Some("payment_intent_unexpected_state".into()),
                message: Some(format!("the PaymentIntent is {}", reply.object.status)),
                ..Default::default()
            };
            self.fail_operation(op, &refusal, false, source).await?;
            // What Stripe's state says happened was not this key's doing.
            self.refresh_from(row.id, &pi, source.for_key(None), "read back from Stripe").await?;
            return Err(self.refusal_of(op).await?);
        }
        self.fail_operation(op, &nothing_done(), false, source).await?;
        Err(failed(op))
    }

    async fn settle_refund(&self, op: &OperationRow, source: Source) -> Result<Driven, AppError> {
        let payment_id = payment_of(op)?;
        let row = payments::get(&self.db, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        let refund_id = op
            .op
            .refund_id()
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("operation {} is not a refund", op.id)))?;
        let refund = payments::get_refund(&self.db, refund_id)
            .await?
            .ok_or_else(|| super::refunds::refund_not_found(refund_id))?;
        let pi = row.stripe_payment_intent_id.clone().unwrap_or_default();
        let (mut found, mut more, mut after, mut request_id) = (None, true, None::<String>, None);
        for _ in 0..MAX_PAGES {
            let page = self.stripe.list_refunds(&pi, since(op), after.as_deref()).await.map_err(stripe_failure)?;
            (more, after, request_id) =
                (page.object.has_more, page.object.data.last().map(|r| r.id.clone()), page.request_id);
            found = page.object.data.into_iter().find(|re| ours(&re.metadata, op, "refundID", refund.id));
            if found.is_some() || !more {
                break;
            }
        }
        match found {
            Some(re) => {
                let done = self.finish_refund(op, &refund, &re, request_id.as_deref(), source).await?;
                Ok(Driven::Refund(done))
            }
            None if more => Err(incomplete(op)),
            None => {
                let message = nothing_done().message.unwrap_or_default();
                if !self.fail_refund(op, refund.id, &message, source, false).await? {
                    return self.answer_of_settled_refund(op, refund.id).await.map(Driven::Refund);
                }
                Err(failed(op).detail("refundID", refund.id.to_string()))
            }
        }
    }

    /// A product and its price, or a price: found by our ids in their
    /// metadata (products and prices carry no operation reference: their
    /// requests were fixed before references existed). Both found: recorded.
    /// Otherwise nothing usable was made, and the operation fails.
    async fn settle_create_price(&self, op: &OperationRow) -> Result<Driven, AppError> {
        let (product_id, price_id, stripe_product) = match &op.op {
            Operation::CreateProduct { product_id, price_id, .. } => (*product_id, *price_id, None),
            Operation::CreatePrice { product_id, price_id, stripe_product_id, .. } => {
                (*product_id, *price_id, stripe_product_id.clone())
            }
            _ => unreachable!("only products and prices come here"),
        };
        let stripe_product = match stripe_product {
            Some(p) => Some(p),
            None => {
                let (mut found, mut after, mut more) = (None, None::<String>, true);
                for _ in 0..MAX_PAGES {
                    let page = self.stripe.list_products(since(op), after.as_deref()).await.map_err(stripe_failure)?;
                    more = page.object.has_more;
                    after = page.object.data.last().map(|p| p.id.clone());
                    found = page
                        .object
                        .data
                        .into_iter()
                        .find(|p| p.metadata.get("productID").is_some_and(|v| *v == product_id.to_string()));
                    if found.is_some() || !more || after.is_none() {
                        break;
                    }
                }
                if found.is_none() && more && after.is_some() {
                    // The list was not read to its end: nothing is concluded.
                    return Err(incomplete(op));
                }
                found.map(|p| p.id)
            }
        };
        let price = match &stripe_product {
            Some(product) => {
                let page = self.stripe.list_prices(product, since(op), None).await.map_err(stripe_failure)?;
                page.object
                    .data
                    .into_iter()
                    .find(|p| p.metadata.get("priceID").is_some_and(|v| *v == price_id.to_string()))
            }
            None => None,
        };
        match (stripe_product, price) {
            (Some(product), Some(price)) => self.finish_catalog_create(op, &product, &price.id).await,
            _ => {
                payments::close_operation(&self.db, op.id, State::Failed, Some(NOTHING_DONE)).await?;
                Err(failed(op))
            }
        }
    }

    async fn settle_create_customer(&self, op: &OperationRow) -> Result<Driven, AppError> {
        let Operation::CreateCustomer { customer_id: id, email, .. } = &op.op else {
            return Err(AppError::internal(anyhow::anyhow!("operation {} does not create a customer", op.id)));
        };
        let id = *id;
        let (mut found, mut more, mut after) = (None, true, None::<String>);
        for _ in 0..MAX_PAGES {
            let page = self.stripe.list_customers(email, since(op), after.as_deref()).await.map_err(stripe_failure)?;
            (more, after) = (page.object.has_more, page.object.data.last().map(|c| c.id.clone()));
            found = page.object.data.into_iter().find(|c| ours(&c.metadata, op, "customerID", id));
            if found.is_some() || !more {
                break;
            }
        }
        match found {
            Some(c) => Ok(Driven::Customer(Box::new(self.finish_customer_create(op, &c.id).await?))),
            None if more => Err(incomplete(op)),
            None => {
                payments::close_operation(&self.db, op.id, State::Failed, Some(NOTHING_DONE)).await?;
                Err(failed(op))
            }
        }
    }
}
