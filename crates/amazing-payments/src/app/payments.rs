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

use super::{
    App, AppError, Call, Kind,
    operations::{fits, not_found, refused},
    page::Page,
    stripe_failure, sync,
};
use crate::{
    domain::{
        customer::{CustomerId, Email},
        money::{Currency, Money},
        operation::Operation,
        payment::{CaptureMethod, Status},
        request::{Metadata, PaymentMethodId},
    },
    store::{
        payments::{self, Cause, NewPayment, PaymentRow, Source},
        products,
    },
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
    /// The customer is away: a saved card charged for a renewal, say.
    pub off_session: bool,
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

impl App {
    /// Takes a payment. With a client idempotency key already used, resumes
    /// that payment instead.
    pub async fn create_payment(&self, cmd: CreatePayment, call: &Call) -> Result<PaymentRow, AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            return done.payment();
        }
        let customer = self.customer_on_primary(cmd.customer).await?;
        if customer.stripe_customer_key.as_deref().unwrap_or("").is_empty() {
            return Err(AppError::new(
                Kind::Conflict,
                "CUSTOMER_NOT_IN_STRIPE",
                "the customer has no Stripe customer to charge",
            ));
        }
        let (money, price_id, quantity) = match cmd.charge {
            Charge::Amount(m) => (m, None, None),
            Charge::Price { price_id, quantity } => {
                let m = self.price_charge(price_id, quantity).await?;
                (m, Some(price_id), Some(quantity))
            }
        };
        let (_, op) = payments::insert(
            &self.db,
            NewPayment {
                api_key_id: call.by,
                request: key.and_then(|k| k.binding().0),
                claim: key.and_then(|k| k.binding().1),
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
                off_session: cmd.off_session,
            },
        )
        .await?;
        let row = self.drive(&op).await?.payment()?;
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
                Kind::Conflict,
                "PRICE_INACTIVE",
                format!("price {price_id} (or its product) is deactivated"),
            ));
        }
        let currency = Currency::parse(&price.currency)?;
        // The price is stored data: an amount it cannot make is a conflict with
        // it, not a malformed request.
        let conflict =
            |reason, message: String| AppError::new(Kind::Conflict, reason, message).detail("field", "quantity");
        let amount = price
            .unit_amount
            .checked_mul(quantity)
            .ok_or_else(|| conflict("AMOUNT_TOO_LARGE", "unit_amount times quantity is too large".into()))?;
        Money::charge(amount, currency).map_err(|e| conflict(e.reason, e.message))
    }

    /// Captures `amount` (all that is capturable when `None`).
    pub async fn capture_payment(&self, id: i64, amount: Option<i64>, call: &Call) -> Result<PaymentRow, AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            return done.payment();
        }
        let (_, op) = self
            .begin_operation(id, call, |row| {
                if let Some(a) = amount {
                    fits(id, a, &row.currency)?;
                }
                let amount = row.ledger().plan_capture(amount).map_err(|r| refused(id, r))?;
                Ok(Operation::Capture { payment_id: id, amount })
            })
            .await?;
        self.drive(&op).await?.payment()
    }

    /// Cancels a payment that is not captured.
    pub async fn cancel_payment(&self, id: i64, reason: Option<&str>, call: &Call) -> Result<PaymentRow, AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            return done.payment();
        }
        let reason = reason.map(str::to_string);
        let (_, op) = self
            .begin_operation(id, call, |row| {
                row.ledger().plan_cancel().map_err(|r| refused(id, r))?;
                Ok(Operation::Cancel { payment_id: id, reason })
            })
            .await?;
        self.drive(&op).await?.payment()
    }

    /// A payment. One waiting for the customer (3-D Secure) or for its
    /// payment method is first re-read from Stripe, so that what happened in
    /// the customer's browser shows at once.
    pub async fn get_payment(&self, id: i64) -> Result<PaymentRow, AppError> {
        let row = self.read(|db| async move { payments::get(&db, id).await }).await?.ok_or_else(|| not_found(id))?;
        match (row.status(), &row.stripe_payment_intent_id) {
            (Status::RequiresAction | Status::Processing, Some(pi)) => self.refresh(row.clone(), pi).await.or(Ok(row)),
            _ => Ok(row),
        }
    }

    async fn refresh(&self, row: PaymentRow, pi: &str) -> Result<PaymentRow, AppError> {
        // No key made this change: Stripe did (the customer finished
        // authenticating, the bank answered); a read only learned of it.
        self.refresh_from(row.id, pi, Source::api(None), "re-read from Stripe").await
    }

    /// Reads the payment's PaymentIntent back from Stripe and applies it,
    /// recording the change as coming from `source`.
    pub(crate) async fn refresh_from(
        &self,
        id: i64,
        pi: &str,
        source: Source,
        note: &str,
    ) -> Result<PaymentRow, AppError> {
        // A change recorded after this read began may come from a fresher
        // read, which this one must not undo (a GET's read overtaken by a
        // webhook's), or from an older one that committed late: either way
        // Stripe is read again, so what is applied is never older than what
        // is recorded. The database's clock marks both.
        let mut reads = 0;
        let (reply, mut tx, before) = loop {
            let started: chrono::DateTime<chrono::Utc> =
                sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&self.db).await?;
            let reply = self.stripe.retrieve_payment_intent(pi).await.map_err(stripe_failure)?;
            let mut tx = crate::store::begin(&self.db).await?;
            let before = payments::lock(&mut tx, id).await?.ok_or_else(|| not_found(id))?;
            if before.updated_at <= started {
                break (reply, tx, before);
            }
            tx.commit().await?;
            reads += 1;
            if reads == 3 {
                return Err(AppError::unavailable(
                    "PAYMENT_BUSY",
                    "the payment keeps changing while it is read back; try again shortly",
                ));
            }
        };
        let mut next = before.clone();
        match sync::apply_intent(&mut next, &reply.object, None) {
            Ok(true) => {
                let cause =
                    Cause { stripe_request_id: reply.request_id.as_deref(), note: Some(note), ..Default::default() };
                let source = match source.api_key_id {
                    Some(_) => source,
                    None => source.for_key(self.asker(&mut tx, &before, &next).await?),
                };
                payments::save(&mut tx, &before, &next, source, &cause).await?;
            }
            Ok(false) => {}
            Err(sync::SyncError::Mismatch(m)) => {
                // Held, as on the API path: recorded on the payment and in
                // its history, never applied as a success.
                tracing::error!(payment_id = id, mismatch = %m, "stripe's PaymentIntent does not match the payment: held");
                let mut held = before.clone();
                if held.integrity_error.is_none() {
                    held.integrity_error = Some(m);
                    let cause = Cause {
                        stripe_request_id: reply.request_id.as_deref(),
                        note: Some("integrity check failed: Stripe's PaymentIntent differs from the payment"),
                        ..Default::default()
                    };
                    payments::save(&mut tx, &before, &held, source, &cause).await?;
                }
                tx.commit().await?;
                return Err(super::operations::mismatch(id));
            }
            Err(sync::SyncError::Refused(r)) => {
                tracing::warn!(
                    payment_id = id,
                    reason = r.reason,
                    "Stripe's PaymentIntent is older than our record: kept ours"
                );
                next = before;
            }
        }
        tx.commit().await?;
        Ok(next)
    }

    /// The key whose pending operation this change (`before` to `next`)
    /// carries out, when the news of it comes first by another way: the
    /// payment's creation leaving pending, a capture, a cancel.
    async fn asker(
        &self,
        tx: &mut sqlx::PgConnection,
        before: &PaymentRow,
        next: &PaymentRow,
    ) -> Result<Option<i64>, AppError> {
        let kinds: &[&str] = match (before.status(), next.status()) {
            (Status::Pending, _) => &["create_payment"],
            (_, Status::Canceled) => &["cancel"],
            _ if next.amount_captured > before.amount_captured => &["capture"],
            _ => return Ok(None),
        };
        Ok(payments::asker_of_pending(tx, before.id, None, kinds).await?)
    }

    pub async fn history(&self, id: i64) -> Result<Vec<payments::HistoryRow>, AppError> {
        Ok(self.read(|db| async move { payments::history(&db, id).await }).await?)
    }

    /// A page of payments, newest first, and the next page's token.
    pub async fn list_payments(&self, q: ListPayments) -> Result<(Vec<PaymentRow>, Option<String>), AppError> {
        let status = q.status.map(Status::as_str);
        let before = q.page.cursor.unwrap_or(i64::MAX);
        let (customer, size) = (q.customer.map(CustomerId::get), q.page.size + 1);
        let mut rows = self.read(|db| async move { payments::list(&db, customer, status, before, size).await }).await?;
        let next = q.page.finish(&mut rows, "payment", |r| r.id);
        Ok((rows, next))
    }
}
