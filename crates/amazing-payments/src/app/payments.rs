//! Payments: create (authorize, and capture when automatic), capture, cancel,
//! read and list.
//!
//! Every change follows one pattern, so that a crash or a lost answer always
//! leaves something the reconciler can finish:
//! 1. in one short transaction, check the request against the payment's state
//!    (the state machine, under a row lock) and record the operation;
//! 2. call Stripe, with no connection held, with the idempotency key derived
//!    from the operation;
//! 3. in one short transaction, apply Stripe's answer through the state
//!    machine, with a history line, and close the operation.

use super::{App, AppError, Kind, page::Page, stripe_failure, sync};
use crate::{
    domain::{
        customer::{CustomerId, Email},
        money::{Currency, Money},
        payment::{CaptureMethod, Ledger, Refused, Status},
        request::{Metadata, PaymentMethodId},
    },
    store::{
        payments::{self, Cause, NewPayment, OperationRow, PaymentRow, Source},
        products,
    },
    stripe::{Form, Reply, StripeError, types::PaymentIntent},
};

/// What is charged: an amount, or a price times a quantity.
#[derive(Debug)]
pub enum Charge {
    Amount(Money),
    Price { price_id: i64, quantity: i64 },
}

/// A payment to take, checked.
#[derive(Debug)]
pub struct CreatePayment {
    pub customer: CustomerId,
    pub charge: Charge,
    pub payment_method: PaymentMethodId,
    pub capture: CaptureMethod,
    pub description: Option<String>,
    pub metadata: Metadata,
    pub receipt_email: Option<Email>,
    pub return_url: Option<String>,
}

/// A page request of payments.
#[derive(Debug)]
pub struct ListPayments {
    pub customer: Option<CustomerId>,
    pub status: Option<Status>,
    pub page: Page,
}

impl ListPayments {
    pub fn parse(customer: Option<CustomerId>, status: &str, page_size: i32, token: &str) -> Result<Self, AppError> {
        let status = match status.trim() {
            "" => None,
            s => Some(Status::parse(s).ok_or_else(|| {
                let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                AppError::invalid("INVALID_STATUS", format!("status must be one of: {}", all.join(", ")))
                    .detail("field", "status")
            })?),
        };
        Ok(Self { customer, status, page: Page::parse(page_size, token, "payment")? })
    }
}

pub(crate) fn not_found(id: i64) -> AppError {
    AppError::not_found("PAYMENT_NOT_FOUND", format!("payment {id} does not exist")).detail("paymentID", id.to_string())
}

pub(crate) fn refused(id: i64, r: Refused) -> AppError {
    AppError::new(Kind::FailedPrecondition, r.reason, r.message).detail("paymentID", id.to_string())
}

/// A declined card: 402 over REST, FAILED_PRECONDITION over gRPC.
fn declined(row: &PaymentRow, e: &crate::stripe::ApiError) -> AppError {
    let mut err = AppError::new(
        Kind::FailedPrecondition,
        "CARD_DECLINED",
        e.message.clone().unwrap_or_else(|| "the card was declined".into()),
    )
    .detail("paymentID", row.id.to_string());
    for (k, v) in [("decline_code", &e.decline_code), ("stripe_code", &e.code), ("stripe_request_id", &e.request_id)] {
        if let Some(v) = v {
            err = err.detail(k, v.clone());
        }
    }
    err
}

/// Whether Stripe may or may not have done the work: the operation stays
/// pending for the reconciler.
pub(crate) fn outcome_unknown(e: &StripeError) -> bool {
    match e {
        StripeError::Network { sent, .. } => *sent,
        StripeError::Api(a) => a.status == 409 || a.status == 429 || a.status >= 500,
        StripeError::Decode { .. } => true,
    }
}

pub(crate) fn still_pending(kind: &str, id: i64) -> AppError {
    AppError::unavailable(
        "STRIPE_UNAVAILABLE",
        format!("the payment provider did not answer; the {kind} is recorded and will be completed, check it later"),
    )
    .detail("paymentID", id.to_string())
}

impl App {
    pub async fn create_payment(&self, cmd: CreatePayment) -> Result<PaymentRow, AppError> {
        let customer = self.get_customer(cmd.customer).await?;
        let stripe_customer = customer.stripe_customer_key.clone().filter(|k| !k.is_empty()).ok_or_else(|| {
            AppError::new(
                Kind::FailedPrecondition,
                "CUSTOMER_NOT_IN_STRIPE",
                "the customer has no Stripe customer to charge",
            )
        })?;
        let (money, price_id, quantity) = match cmd.charge {
            Charge::Amount(m) => (m, None, None),
            Charge::Price { price_id, quantity } => {
                let m = self.price_charge(price_id, quantity).await?;
                (m, Some(price_id), Some(quantity))
            }
        };
        let (row, op) = payments::insert(
            &self.db,
            NewPayment {
                customer_id: customer.id,
                amount: money.amount(),
                currency: money.currency().code(),
                capture_method: cmd.capture.as_str(),
                price_id,
                quantity,
                payment_method: cmd.payment_method.as_str(),
                description: cmd.description.as_deref(),
                metadata: cmd.metadata.entries(),
                receipt_email: cmd.receipt_email.as_ref().map(Email::as_str),
                return_url: cmd.return_url.as_deref(),
            },
        )
        .await?;
        let ids = [("paymentID", row.id.to_string()), ("customerID", customer.id.to_string())];
        let form = Form::new()
            .set("amount", money.amount())
            .set("currency", money.currency().code())
            .set("customer", &stripe_customer)
            .set("payment_method", cmd.payment_method.as_str())
            .set("confirm", "true")
            .set("capture_method", cmd.capture.as_str())
            .list("payment_method_types", ["card"])
            .set_opt("description", cmd.description.as_deref())
            .set_opt("receipt_email", cmd.receipt_email.as_ref().map(Email::as_str))
            .set_opt("return_url", cmd.return_url.as_deref())
            .map("metadata", cmd.metadata.entries().iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map("metadata", ids.iter().map(|(k, v)| (*k, v.as_str())));
        let result = self.stripe.create_payment_intent(&form, &op.idempotency_key).await;
        let row = self.finish_intent_operation(&op, result, Some(&stripe_customer)).await?;
        tracing::info!(payment_id = row.id, status = %row.status, amount = row.amount, currency = %row.currency, "payment created");
        Ok(row)
    }

    /// The amount of `quantity` of an active price of an active product.
    async fn price_charge(&self, price_id: i64, quantity: i64) -> Result<Money, AppError> {
        let price = products::get_price(&self.db, price_id)
            .await?
            .ok_or_else(|| AppError::not_found("PRICE_NOT_FOUND", format!("price {price_id} does not exist")))?;
        let product = products::get_product(&self.db, price.product_id)
            .await?
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("price without product")))?;
        if !price.active || !product.active {
            return Err(AppError::new(
                Kind::FailedPrecondition,
                "PRICE_INACTIVE",
                format!("price {price_id} (or its product) is deactivated"),
            ));
        }
        let currency = Currency::parse(&price.currency)?;
        let amount = price
            .unit_amount
            .checked_mul(quantity)
            .ok_or_else(|| AppError::invalid("AMOUNT_TOO_LARGE", "unit_amount times quantity is too large"))?;
        Ok(Money::charge(amount, currency)?)
    }

    /// Applies the answer to an operation that returns a PaymentIntent
    /// (create, capture, cancel).
    pub(crate) async fn finish_intent_operation(
        &self,
        op: &OperationRow,
        result: Result<Reply<PaymentIntent>, StripeError>,
        stripe_customer: Option<&str>,
    ) -> Result<PaymentRow, AppError> {
        let id = op.payment_id;
        match result {
            Ok(reply) => self.apply_intent(op, &reply.object, reply.request_id.as_deref(), stripe_customer).await,
            Err(StripeError::Api(e)) if e.kind == "card_error" => {
                let embedded = e.payment_intent.clone().and_then(|v| serde_json::from_value::<PaymentIntent>(v).ok());
                let row = match embedded {
                    Some(pi) => self.apply_intent(op, &pi, e.request_id.as_deref(), stripe_customer).await?,
                    None => self.fail_operation(op, &e, true).await?,
                };
                Err(declined(&row, &e))
            }
            Err(e) if outcome_unknown(&e) => {
                payments::note_attempt(&self.db, op.id, &e.to_string()).await?;
                tracing::warn!(payment_id = id, operation = op.id, error = %e, "stripe outcome unknown: left for the reconciler");
                Err(still_pending(&op.kind.replace('_', " "), id))
            }
            Err(StripeError::Network { message, .. }) => {
                // Never sent: nothing happened in Stripe.
                let e = crate::stripe::ApiError {
                    code: Some("provider_unreachable".into()),
                    message: Some(message),
                    ..Default::default()
                };
                self.fail_operation(op, &e, op.kind == "create_payment").await?;
                Err(AppError::unavailable(
                    "STRIPE_UNAVAILABLE",
                    "the payment provider could not be reached; try again later",
                )
                .detail("paymentID", id.to_string()))
            }
            Err(e) => {
                let api = e.api().cloned().unwrap_or_default();
                self.fail_operation(op, &api, op.kind == "create_payment").await?;
                Err(stripe_failure(e).detail("paymentID", id.to_string()))
            }
        }
    }

    /// Applies a PaymentIntent Stripe returned for `op`, and closes `op`.
    async fn apply_intent(
        &self,
        op: &OperationRow,
        pi: &PaymentIntent,
        request_id: Option<&str>,
        stripe_customer: Option<&str>,
    ) -> Result<PaymentRow, AppError> {
        let mut tx = self.db.begin().await?;
        let before = payments::lock(&mut tx, op.payment_id).await?.ok_or_else(|| not_found(op.payment_id))?;
        let mut row = before.clone();
        match sync::apply_intent(&mut row, pi, stripe_customer) {
            Ok(_) => {
                payments::save(
                    &mut tx,
                    &before,
                    &row,
                    Source::Api,
                    &Cause { stripe_request_id: request_id, ..Default::default() },
                )
                .await?;
                payments::finish_operation(&mut tx, op.id, "succeeded", None).await?;
                tx.commit().await?;
                Ok(row)
            }
            Err(sync::SyncError::Refused(r)) => {
                // Our record is already further on (a webhook was faster):
                // keep it; the operation did complete.
                tracing::warn!(
                    payment_id = op.payment_id,
                    reason = r.reason,
                    "stripe answer older than our record: kept ours"
                );
                payments::finish_operation(&mut tx, op.id, "succeeded", None).await?;
                tx.commit().await?;
                Ok(before)
            }
            Err(sync::SyncError::Mismatch(m)) => {
                let mut row = before.clone();
                row.integrity_error = Some(m.clone());
                let cause = Cause {
                    stripe_request_id: request_id,
                    note: Some("integrity check failed: Stripe's answer differs from the request"),
                    ..Default::default()
                };
                payments::save(&mut tx, &before, &row, Source::Api, &cause).await?;
                payments::finish_operation(&mut tx, op.id, "failed", Some(&m)).await?;
                tx.commit().await?;
                tracing::error!(payment_id = op.payment_id, mismatch = %m, "stripe's answer does not match the request");
                Err(AppError::new(
                    Kind::Internal,
                    "STRIPE_MISMATCH",
                    "the payment provider's answer did not match the request; the payment is held for review",
                )
                .detail("paymentID", op.payment_id.to_string()))
            }
        }
    }

    /// Closes `op` as failed; a payment being created fails with Stripe's code.
    async fn fail_operation(
        &self,
        op: &OperationRow,
        e: &crate::stripe::ApiError,
        payment_fails: bool,
    ) -> Result<PaymentRow, AppError> {
        let mut tx = self.db.begin().await?;
        let before = payments::lock(&mut tx, op.payment_id).await?.ok_or_else(|| not_found(op.payment_id))?;
        let mut row = before.clone();
        if payment_fails {
            if let Ok(next) = before.ledger().fail() {
                row.set_ledger(next);
                row.failure_code = e.code.clone().or(Some(e.kind.clone()));
                row.failure_message = e.message.clone();
                row.decline_code = e.decline_code.clone();
            }
        }
        let cause = Cause { stripe_request_id: e.request_id.as_deref(), ..Default::default() };
        payments::save(&mut tx, &before, &row, Source::Api, &cause).await?;
        payments::finish_operation(&mut tx, op.id, "failed", e.message.as_deref()).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Checks a request against the payment under a row lock and records the
    /// operation; returns the payment and the operation.
    pub(crate) async fn begin_operation(
        &self,
        id: i64,
        kind: &str,
        plan: impl FnOnce(&Ledger) -> Result<Option<i64>, Refused>,
    ) -> Result<(PaymentRow, OperationRow), AppError> {
        let mut tx = self.db.begin().await?;
        let row = payments::lock(&mut tx, id).await?.ok_or_else(|| not_found(id))?;
        let amount = plan(&row.ledger()).map_err(|r| refused(id, r))?;
        if row.stripe_payment_intent_id.is_none() {
            return Err(refused(
                id,
                Refused { reason: "NOT_CAPTURABLE", message: "the payment has no Stripe PaymentIntent yet".into() },
            ));
        }
        let op = match payments::pending_operation(&mut tx, id).await? {
            // The same request again, while the first one's outcome is
            // unknown: resume it, with the same idempotency key.
            Some(op) if op.kind == kind && op.amount == amount => op,
            Some(_) => {
                return Err(AppError::new(
                    Kind::Aborted,
                    "OPERATION_IN_PROGRESS",
                    "another capture or cancel of this payment is in progress; try again shortly",
                )
                .detail("paymentID", id.to_string()));
            }
            None => payments::insert_operation(&mut tx, kind, id, None, amount).await?,
        };
        tx.commit().await?;
        Ok((row, op))
    }

    /// Captures `amount` (all that is capturable when `None`).
    pub async fn capture_payment(&self, id: i64, amount: Option<i64>) -> Result<PaymentRow, AppError> {
        let current = payments::get(&self.db, id).await?.ok_or_else(|| not_found(id))?;
        if let Some(a) = amount {
            Money::part(a, Currency::parse(&current.currency)?)?;
        }
        let (row, op) = self.begin_operation(id, "capture", |l| l.plan_capture(amount).map(Some)).await?;
        let to_capture = op.amount.filter(|a| *a != row.amount_capturable);
        let pi = row.stripe_payment_intent_id.as_deref().expect("checked by begin_operation");
        let result = self.stripe.capture_payment_intent(pi, to_capture, &op.idempotency_key).await;
        self.finish_intent_operation(&op, result, None).await
    }

    /// Cancels a payment that is not captured.
    pub async fn cancel_payment(&self, id: i64, reason: Option<&str>) -> Result<PaymentRow, AppError> {
        let (row, op) = self.begin_operation(id, "cancel", |l| l.plan_cancel().map(|_| None)).await?;
        let pi = row.stripe_payment_intent_id.as_deref().expect("checked by begin_operation");
        let result = self.stripe.cancel_payment_intent(pi, reason, &op.idempotency_key).await;
        self.finish_intent_operation(&op, result, None).await
    }

    /// A payment. One waiting for the customer (3-D Secure) or for its
    /// payment method is first re-read from Stripe, so that what happened in
    /// the customer's browser shows at once.
    pub async fn get_payment(&self, id: i64) -> Result<PaymentRow, AppError> {
        let row = payments::get(&self.db, id).await?.ok_or_else(|| not_found(id))?;
        match (row.status(), &row.stripe_payment_intent_id) {
            (Status::RequiresAction | Status::Processing, Some(pi)) => self.refresh(row.clone(), pi).await.or(Ok(row)),
            _ => Ok(row),
        }
    }

    async fn refresh(&self, row: PaymentRow, pi: &str) -> Result<PaymentRow, AppError> {
        let reply = self.stripe.retrieve_payment_intent(pi).await.map_err(stripe_failure)?;
        let mut tx = self.db.begin().await?;
        let before = payments::lock(&mut tx, row.id).await?.ok_or_else(|| not_found(row.id))?;
        let mut next = before.clone();
        if let Ok(true) = sync::apply_intent(&mut next, &reply.object, None) {
            let cause = Cause {
                stripe_request_id: reply.request_id.as_deref(),
                note: Some("re-read from Stripe"),
                ..Default::default()
            };
            payments::save(&mut tx, &before, &next, Source::Api, &cause).await?;
        }
        tx.commit().await?;
        Ok(next)
    }

    pub async fn history(&self, id: i64) -> Result<Vec<payments::HistoryRow>, AppError> {
        Ok(payments::history(&self.db, id).await?)
    }

    /// A page of payments, newest first, and the next page's token.
    pub async fn list_payments(&self, q: ListPayments) -> Result<(Vec<PaymentRow>, Option<String>), AppError> {
        let status = q.status.map(Status::as_str);
        let before = q.page.cursor.unwrap_or(i64::MAX);
        let mut rows =
            payments::list(&self.db, q.customer.map(CustomerId::get), status, before, q.page.size + 1).await?;
        let next = q.page.finish(&mut rows, "payment", |r| r.id);
        Ok((rows, next))
    }
}
