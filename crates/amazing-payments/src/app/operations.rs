//! Operations on Stripe, and how they are carried through. Every change of
//! money is recorded first as an operation (`payment.operation`), then sent
//! to Stripe with the operation's idempotency key by [`App::drive`], which
//! builds the request from what was recorded. Our API's first attempt, a
//! client's retry with the same idempotency key ([`App::resume`]) and the
//! reconciler all go through `drive`, so the same operation always sends the
//! same request under the same key, and Stripe does it at most once.

use super::{App, AppError, Kind, RequestKey, stripe_failure, sync};
use crate::{
    domain::{
        money::{Currency, Money},
        operation::{Operation, State},
        payment::Refused,
    },
    store::{
        customers::{self, CustomerRow},
        payments::{self, Cause, NewOperation, OperationRow, PaymentRow, RefundRow, Source},
        products::{self, PriceRow, ProductRow},
    },
    stripe::{Form, Reply, StripeError, types::PaymentIntent},
};

/// What driving an operation gave.
#[derive(Debug)]
pub enum Driven {
    Payment(Box<PaymentRow>),
    Refund(RefundRow),
    Customer(Box<CustomerRow>),
    Product(Box<(ProductRow, Vec<PriceRow>)>),
    Price(PriceRow),
}

/// A client key bound to an operation of another kind (a key once used for
/// another rpc): the caller's mistake, never ours.
fn wrong(what: &str) -> AppError {
    AppError::invalid(
        "IDEMPOTENCY_KEY_REUSED",
        format!("this idempotency key was already used for a request other than this {what} request"),
    )
}

impl Driven {
    pub fn product(p: (ProductRow, Vec<PriceRow>)) -> Self {
        Driven::Product(Box::new(p))
    }

    pub fn customer(self) -> Result<CustomerRow, AppError> {
        match self {
            Driven::Customer(c) => Ok(*c),
            _ => Err(wrong("customer")),
        }
    }

    pub fn product_with_prices(self) -> Result<(ProductRow, Vec<PriceRow>), AppError> {
        match self {
            Driven::Product(p) => Ok(*p),
            _ => Err(wrong("product")),
        }
    }

    pub fn price(self) -> Result<PriceRow, AppError> {
        match self {
            Driven::Price(p) => Ok(p),
            _ => Err(wrong("price")),
        }
    }

    pub fn payment(self) -> Result<PaymentRow, AppError> {
        match self {
            Driven::Payment(p) => Ok(*p),
            _ => Err(wrong("payment")),
        }
    }

    pub fn refund(self) -> Result<RefundRow, AppError> {
        match self {
            Driven::Refund(r) => Ok(r),
            _ => Err(wrong("refund")),
        }
    }
}

pub(crate) fn not_found(id: i64) -> AppError {
    AppError::not_found("PAYMENT_NOT_FOUND", format!("payment {id} does not exist")).detail("paymentID", id.to_string())
}

/// The `failure_code` of a payment whose PaymentMethod Stripe did not know.
pub(crate) const UNKNOWN_PAYMENT_METHOD: &str = "payment_method_not_found";

/// Whether `amount` is one the payment's currency can move (three-decimal
/// currencies: a multiple of 10). It depends on the stored payment, so a
/// misfit is a conflict with it (409 over REST), not a malformed request.
pub(crate) fn fits(id: i64, amount: i64, currency: &str) -> Result<(), AppError> {
    let currency = Currency::parse(currency)?;
    Money::part(amount, currency)
        .map(|_| ())
        .map_err(|e| AppError::new(Kind::Conflict, e.reason, e.message).detail("paymentID", id.to_string()))
}

pub(crate) fn refused(id: i64, r: Refused) -> AppError {
    AppError::new(Kind::Conflict, r.reason, r.message).detail("paymentID", id.to_string())
}

/// A declined card: 402 over REST, FAILED_PRECONDITION over gRPC. One
/// declined off-session because the bank wants the customer
/// (`AUTHENTICATION_REQUIRED`) can be confirmed again with them there: the
/// payment keeps its client secret for Stripe.js.
fn declined(row: &PaymentRow, e: &crate::stripe::ApiError) -> AppError {
    let (reason, fallback) = match e.code.as_deref() {
        Some("authentication_required") => (
            "AUTHENTICATION_REQUIRED",
            "the bank wants the customer to authenticate: confirm the payment with Stripe.js and its client_secret, the customer present",
        ),
        _ => ("CARD_DECLINED", "the card was declined"),
    };
    let mut err = AppError::new(Kind::FailedPrecondition, reason, e.message.clone().unwrap_or_else(|| fallback.into()))
        .detail("paymentID", row.id.to_string());
    for (k, v) in [("decline_code", &e.decline_code), ("stripe_code", &e.code), ("stripe_request_id", &e.request_id)] {
        if let Some(v) = v {
            err = err.detail(k, v.clone());
        }
    }
    err
}

/// The metadata key under which an object created at Stripe carries the
/// reference of the operation that created it.
pub(crate) const OPERATION_METADATA: &str = "ap_operation";

/// How long Stripe keeps an idempotency key: after that, sending an
/// operation's request again could do it twice, so an operation still in
/// doubt is settled by looking its object up instead. A little less than
/// Stripe's 24 hours, to stay clear of the edge.
pub(crate) const STRIPE_KEY_RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(23);

/// Where an operation of this age stands: its request may still be sent,
/// it must be settled by reading Stripe back, or neither, for a while: a
/// call sent just before the lookup would start could otherwise still be
/// running (with its retries) while the lookup concludes that nothing was
/// done.
pub(crate) enum Age {
    Send,
    Wait,
    LookUp,
}

impl Age {
    pub(crate) fn of(op: &OperationRow, longest_call: std::time::Duration) -> Self {
        let age = chrono::Utc::now() - op.created_at;
        let quiet = chrono::TimeDelta::from_std(longest_call).unwrap_or(chrono::TimeDelta::hours(1))
            + chrono::TimeDelta::minutes(1);
        if age > STRIPE_KEY_RETENTION {
            Age::LookUp
        } else if age > STRIPE_KEY_RETENTION - quiet {
            Age::Wait
        } else {
            Age::Send
        }
    }
}

/// Whether a failed Stripe call leaves its operation pending. Its outcome
/// is unknown (the request may have reached Stripe, whatever later attempts
/// said): it is finished by the caller's retry or by the reconciler. A call
/// that was certainly never sent closes its operation as failed only on the
/// operation's very first attempt, by the request that recorded it, when no
/// client key is bound to it: that caller's retry will be a new request, so
/// nothing may happen behind its back. Any later attempt proves nothing about
/// the earlier ones (which may have reached Stripe), and a keyed caller
/// resumes with its key; either way the operation stays pending. Otherwise
/// only Stripe's own refusal closes an operation as failed.
pub(crate) fn stays_pending(e: &StripeError, op: &OperationRow) -> bool {
    let first_and_keyless = op.fresh && op.request_key.is_none();
    e.outcome_unknown() || (matches!(e, StripeError::Network { .. }) && !first_and_keyless)
}

/// What a failed call that ends its operation tells the record: Stripe's
/// error, or that Stripe could not be reached.
pub(crate) fn failure_of(e: &StripeError) -> crate::stripe::ApiError {
    match e {
        StripeError::Network { message, .. } => crate::stripe::ApiError {
            code: Some("provider_unreachable".into()),
            message: Some(message.clone()),
            ..Default::default()
        },
        other => other.api().cloned().unwrap_or_default(),
    }
}

pub(crate) fn still_pending(kind: &str, id: i64) -> AppError {
    AppError::unavailable(
        "STRIPE_UNAVAILABLE",
        format!(
            "the payment provider did not answer; the {kind} is recorded and will be completed: \
             retry with the same idempotency key, or read the payment, to learn its outcome"
        ),
    )
    .detail("paymentID", id.to_string())
}

/// The request that creates a payment's PaymentIntent, built from the
/// recorded payment only, so that every attempt sends the same parameters.
pub(crate) fn create_form(row: &PaymentRow, stripe_customer: &str, op: &OperationRow) -> Form {
    let mut ids = vec![("paymentID", row.id.to_string()), ("customerID", row.customer_id.to_string())];
    ids.extend(op.reference().map(|r| (OPERATION_METADATA, r.to_string())));
    let mut metadata: Vec<(&String, &String)> = row.metadata.0.iter().collect();
    metadata.sort();
    Form::new()
        .set("amount", row.amount)
        .set("currency", &row.currency)
        .set("customer", stripe_customer)
        .set("payment_method", &row.payment_method)
        .set("confirm", "true")
        .set("capture_method", &row.capture_method)
        .list("payment_method_types", ["card"])
        .set_opt("description", row.description.as_deref())
        .set_opt("receipt_email", row.receipt_email.as_deref())
        .set_opt("return_url", row.return_url.as_deref())
        .set_opt("off_session", row.off_session.then_some("true"))
        .map("metadata", metadata.into_iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map("metadata", ids.iter().map(|(k, v)| (*k, v.as_str())))
}

/// The error for a Stripe call that failed, and whether that ends the
/// operation (Stripe refused it) rather than leaving it pending.
pub(crate) fn unfinished(e: StripeError, op: &OperationRow) -> (AppError, bool) {
    if stays_pending(&e, op) {
        return (left_pending(), false);
    }
    (stripe_failure(e), true)
}

/// The error for an operation (not a payment's) left pending.
pub(crate) fn left_pending() -> AppError {
    AppError::unavailable(
        "STRIPE_UNAVAILABLE",
        "the payment provider did not answer; the request is recorded and will be completed: \
         retry with the same idempotency key, or read it, to learn its outcome",
    )
}

/// The answer a settled payment gives to the request that created it.
pub(crate) fn settled_payment(row: PaymentRow) -> Result<PaymentRow, AppError> {
    if row.integrity_error.is_some() {
        return Err(mismatch(row.id));
    }
    if row.status() == crate::domain::payment::Status::Failed && row.failure_code.as_deref() == Some("stripe_failed") {
        // Settled by reading Stripe back: nothing was done.
        return Err(AppError::new(Kind::FailedPrecondition, "STRIPE_FAILED", super::settle::NOTHING_DONE)
            .detail("paymentID", row.id.to_string()));
    }
    if row.status() == crate::domain::payment::Status::Failed {
        let e = crate::stripe::ApiError {
            kind: "card_error".into(),
            code: row.failure_code.clone(),
            decline_code: row.decline_code.clone(),
            message: row.failure_message.clone(),
            ..Default::default()
        };
        // A decline, also one with no decline code (an off-session charge
        // the bank wants the customer for): answered again as the first time.
        return Err(if row.decline_code.is_some() || row.failure_code.as_deref() == Some("authentication_required") {
            declined(&row, &e)
        } else if row.failure_code.as_deref() == Some(UNKNOWN_PAYMENT_METHOD) {
            super::unknown_payment_method(None).detail("paymentID", row.id.to_string())
        } else {
            AppError::new(
                Kind::FailedPrecondition,
                "STRIPE_REFUSED",
                format!(
                    "the payment provider refused the request: {}",
                    row.failure_message.clone().unwrap_or_default()
                ),
            )
            .detail("paymentID", row.id.to_string())
        });
    }
    Ok(row)
}

/// The answer of an operation someone else already applied.
fn settled(op: &OperationRow, row: PaymentRow) -> Result<PaymentRow, AppError> {
    match op.op {
        Operation::CreatePayment { .. } => settled_payment(row),
        _ => Ok(row),
    }
}

/// The payment an operation changes: an operation on a payment always has
/// one (the journal is read strictly).
pub(crate) fn payment_of(op: &OperationRow) -> Result<i64, AppError> {
    op.op.payment_id().ok_or_else(|| {
        AppError::internal(anyhow::anyhow!("operation {} ({}) is not about a payment", op.id, op.op.kind()))
    })
}

/// An operation's payment, locked: still to be settled, or settled already.
enum Locked {
    Pending(crate::store::Tx, Box<PaymentRow>),
    Settled(Box<Result<PaymentRow, AppError>>),
}

pub(crate) fn mismatch(id: i64) -> AppError {
    AppError::new(
        Kind::Internal,
        "STRIPE_MISMATCH",
        "the payment provider's answer did not match the request; the payment is held for review",
    )
    .detail("paymentID", id.to_string())
}

impl App {
    /// Sends an operation's Stripe request, with its idempotency key, and
    /// applies the answer.
    pub(crate) async fn drive(&self, op: &OperationRow) -> Result<Driven, AppError> {
        self.drive_from(op, Source::api(op.api_key_id)).await
    }

    /// [`App::drive`], recording the changes as coming from `source`.
    pub(crate) async fn drive_from(&self, op: &OperationRow, source: Source) -> Result<Driven, AppError> {
        // Whoever carries it out, the change is the asking key's.
        let source = source.for_key(op.api_key_id);
        match Age::of(op, self.stripe.settings().worst_case()) {
            Age::Send => {}
            // Sent again, these converge: nothing to look up.
            Age::LookUp
                if matches!(
                    op.op,
                    Operation::UpdateCustomer { .. }
                        | Operation::DeactivateProduct { .. }
                        | Operation::DeactivatePrice { .. }
                ) => {}
            Age::LookUp => return self.settle_by_lookup(op, source).await,
            Age::Wait => {
                return Err(AppError::unavailable(
                    "STRIPE_UNAVAILABLE",
                    "the request is recorded and about to be settled by reading the payment provider back; retry shortly",
                ));
            }
        }
        let key = op.idempotency_key.as_str();
        let payment_id = match &op.op {
            Operation::CreateCustomer { .. } | Operation::UpdateCustomer { .. } => {
                return self.drive_customer(op).await.map(|c| Driven::Customer(Box::new(c)));
            }
            Operation::CreateProduct { .. }
            | Operation::CreatePrice { .. }
            | Operation::DeactivateProduct { .. }
            | Operation::DeactivatePrice { .. } => return self.drive_catalog(op).await,
            Operation::CreatePayment { payment_id }
            | Operation::Capture { payment_id, .. }
            | Operation::Cancel { payment_id, .. }
            | Operation::Refund { payment_id, .. } => *payment_id,
        };
        let row = payments::get(&self.db, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        let pi = row.stripe_payment_intent_id.clone().unwrap_or_default();
        let result = match &op.op {
            Operation::CreatePayment { .. } => {
                let customer =
                    customers::get(&self.db, crate::domain::customer::CustomerId::parse(row.customer_id)?).await?;
                let stripe_customer = customer.and_then(|c| c.stripe_customer_key).unwrap_or_default();
                let result = self.stripe.create_payment_intent(&create_form(&row, &stripe_customer, op), key).await;
                return self
                    .finish_intent_operation(op, result, Some(&stripe_customer), source)
                    .await
                    .map(|p| Driven::Payment(Box::new(p)));
            }
            Operation::Capture { amount, .. } => self.stripe.capture_payment_intent(&pi, Some(*amount), key).await,
            Operation::Cancel { reason, .. } => self.stripe.cancel_payment_intent(&pi, reason.as_deref(), key).await,
            Operation::Refund { .. } => return self.drive_refund(op, &row, source).await.map(Driven::Refund),
            _ => unreachable!("operations on customers and the catalog returned above"),
        };
        self.finish_intent_operation(op, result, None, source).await.map(|p| Driven::Payment(Box::new(p)))
    }

    /// The operation a client's idempotency key already asked for, if any:
    /// driven again while its outcome is unknown, else answered from what
    /// was recorded.
    pub(crate) async fn resume(&self, key: Option<&RequestKey>) -> Result<Option<Driven>, AppError> {
        // A key still to be claimed was never seen: nothing is bound to it.
        let Some(key) = key.filter(|k| k.claim.is_none()) else { return Ok(None) };
        let Some(op) = payments::operation_by_request_key(&self.db, key.scope, &key.key).await? else {
            return Ok(None);
        };
        match op.state {
            State::Pending => return self.drive(&op).await.map(Some),
            // Never a 2xx: the request was refused, and its retry says so.
            State::Failed => return Err(self.refusal_of(&op).await?),
            State::Succeeded => {}
        }
        Ok(Some(match &op.op {
            Operation::CreateCustomer { customer_id, .. } | Operation::UpdateCustomer { customer_id, .. } => {
                let c = self.customer_on_primary(crate::domain::customer::CustomerId::parse(*customer_id)?).await?;
                Driven::Customer(Box::new(c))
            }
            Operation::CreateProduct { product_id, .. } | Operation::DeactivateProduct { product_id, .. } => {
                Driven::product(self.product_on_primary(*product_id).await?)
            }
            Operation::CreatePrice { price_id, .. } | Operation::DeactivatePrice { price_id, .. } => {
                let price = products::get_price(&self.db, *price_id)
                    .await?
                    .ok_or_else(|| super::products::price_not_found(*price_id))?;
                Driven::Price(price)
            }
            Operation::CreatePayment { payment_id } => {
                let row = payments::get(&self.db, *payment_id).await?.ok_or_else(|| not_found(*payment_id))?;
                Driven::Payment(Box::new(settled_payment(row)?))
            }
            Operation::Refund { refund_id, .. } => Driven::Refund(
                payments::get_refund(&self.db, *refund_id)
                    .await?
                    .ok_or_else(|| super::refunds::refund_not_found(*refund_id))?,
            ),
            Operation::Capture { payment_id, .. } | Operation::Cancel { payment_id, .. } => Driven::Payment(Box::new(
                payments::get(&self.db, *payment_id).await?.ok_or_else(|| not_found(*payment_id))?,
            )),
        }))
    }

    /// What the request of a failed operation was answered: Stripe's
    /// refusal, a decline, or a held payment.
    pub(crate) async fn refusal_of(&self, op: &OperationRow) -> Result<AppError, AppError> {
        // As recorded now: another driver may have closed it since `op` was read.
        let op = &payments::get_operation(&self.db, op.id).await?.unwrap_or_else(|| op.clone());
        let refused = AppError::new(
            Kind::FailedPrecondition,
            "STRIPE_REFUSED",
            format!(
                "the payment provider refused the request: {}",
                op.last_error.as_deref().unwrap_or("no reason given")
            ),
        );
        if op.last_error.as_deref() == Some(super::settle::NOTHING_DONE) {
            let err = super::settle::failed(op);
            return Ok(match op.op.refund_id() {
                Some(id) => err.detail("refundID", id.to_string()),
                None => err,
            });
        }
        let Some(payment_id) = op.op.payment_id() else {
            return Ok(refused);
        };
        let row = payments::get(&self.db, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        if row.integrity_error.is_some() {
            return Ok(mismatch(row.id));
        }
        let refused = refused.detail("paymentID", row.id.to_string());
        Ok(match &op.op {
            Operation::CreatePayment { .. } => settled_payment(row).err().unwrap_or(refused),
            Operation::Refund { refund_id, .. }
                if op.last_error.as_deref() == Some(super::disputes::CHARGE_DISPUTED_NOTE) =>
            {
                super::disputes::charge_disputed()
                    .detail("paymentID", row.id.to_string())
                    .detail("refundID", refund_id.to_string())
            }
            Operation::Refund { refund_id, .. } => refused.detail("refundID", refund_id.to_string()),
            _ => refused,
        })
    }

    /// Applies the answer to an operation that returns a PaymentIntent
    /// (create, capture, cancel).
    pub(crate) async fn finish_intent_operation(
        &self,
        op: &OperationRow,
        result: Result<Reply<PaymentIntent>, StripeError>,
        stripe_customer: Option<&str>,
        source: Source,
    ) -> Result<PaymentRow, AppError> {
        let id = payment_of(op)?;
        let creates = matches!(op.op, Operation::CreatePayment { .. });
        match result {
            Ok(reply) => {
                let answers = true;
                self.apply_intent(op, &reply.object, reply.request_id.as_deref(), stripe_customer, source, answers)
                    .await
            }
            Err(StripeError::Api(e)) if e.kind == "card_error" => {
                let embedded = e.payment_intent.clone().and_then(|v| serde_json::from_value::<PaymentIntent>(v).ok());
                let row = match embedded {
                    Some(pi) => {
                        self.apply_intent(op, &pi, e.request_id.as_deref(), stripe_customer, source, false).await?
                    }
                    None => self.fail_operation(op, &e, true, source).await?,
                };
                Err(declined(&row, &e))
            }
            Err(e) if e.is_replayed_failure() => {
                payments::note_attempt(&self.db, op.id, &e.to_string()).await?;
                tracing::warn!(payment_id = id, operation = op.id, error = %e, "stripe replays a saved failure for this key: looking the object up");
                Box::pin(self.settle_by_lookup(op, source)).await?.payment()
            }
            Err(e) if stays_pending(&e, op) => {
                payments::note_attempt(&self.db, op.id, &e.to_string()).await?;
                tracing::warn!(payment_id = id, operation = op.id, error = %e, "stripe outcome unknown: left for a retry or the reconciler");
                Err(still_pending(&op.op.kind().replace('_', " "), id))
            }
            Err(e) => {
                self.close_failed(op, &failure_of(&e), creates, source, e.never_sent()).await?;
                Err(stripe_failure(e).detail("paymentID", id.to_string()))
            }
        }
    }

    /// Locks `op`'s payment; while `op` is pending, the transaction and the
    /// payment as it stands. Once another driver (a retry, the reconciler)
    /// settled it: that settlement's answer, a refusal included (never a
    /// 2xx for a change that did not happen).
    async fn lock_pending(&self, op: &OperationRow) -> Result<Locked, AppError> {
        let payment_id = payment_of(op)?;
        let mut tx = crate::store::begin(&self.db).await?;
        let before = payments::lock(&mut tx, payment_id).await?.ok_or_else(|| not_found(payment_id))?;
        let state = payments::operation_state(&mut tx, op.id).await?;
        if state == State::Pending {
            return Ok(Locked::Pending(tx, Box::new(before)));
        }
        tx.commit().await?;
        Ok(Locked::Settled(Box::new(match state {
            State::Failed => Err(self.refusal_of(op).await?),
            _ => settled(op, before),
        })))
    }

    /// Applies a PaymentIntent Stripe returned for `op`, and closes `op`.
    /// When the payment it records `answers` the request that asked for
    /// `op`, that request's answer is saved with it ([`super::answer`]).
    async fn apply_intent(
        &self,
        op: &OperationRow,
        pi: &PaymentIntent,
        request_id: Option<&str>,
        stripe_customer: Option<&str>,
        source: Source,
        answers: bool,
    ) -> Result<PaymentRow, AppError> {
        let (mut tx, before) = match self.lock_pending(op).await? {
            Locked::Pending(tx, before) => (tx, *before),
            Locked::Settled(answer) => return *answer,
        };
        let payment_id = before.id;
        let mut row = before.clone();
        match sync::apply_intent(&mut row, pi, stripe_customer) {
            Ok(_) => {
                payments::save(
                    &mut tx,
                    &before,
                    &row,
                    source,
                    &Cause { stripe_request_id: request_id, ..Default::default() },
                )
                .await?;
                payments::finish_operation(&mut tx, op.id, State::Succeeded, None).await?;
                // A failed payment is answered as a refusal on some paths
                // (read back after a saved failure): saved after, as answered.
                if answers && row.status() != crate::domain::payment::Status::Failed {
                    super::answer::save_with(&mut tx, op, || super::answer::Answered::Payment(Box::new(row.clone())))
                        .await?;
                }
                tx.commit().await?;
                Ok(row)
            }
            Err(sync::SyncError::Refused(r)) => {
                // Our record is already further on (a webhook was faster):
                // keep it; the operation did complete.
                tracing::warn!(payment_id, reason = r.reason, "stripe answer older than our record: kept ours");
                payments::finish_operation(&mut tx, op.id, State::Succeeded, None).await?;
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
                payments::save(&mut tx, &before, &row, source, &cause).await?;
                payments::finish_operation(&mut tx, op.id, State::Failed, Some(&m)).await?;
                tx.commit().await?;
                tracing::error!(payment_id, mismatch = %m, "stripe's answer does not match the request");
                Err(AppError::new(
                    Kind::Internal,
                    "STRIPE_MISMATCH",
                    "the payment provider's answer did not match the request; the payment is held for review",
                )
                .detail("paymentID", payment_id.to_string()))
            }
        }
    }

    /// Closes `op` as failed; a payment being created fails with Stripe's code.
    pub(crate) async fn fail_operation(
        &self,
        op: &OperationRow,
        e: &crate::stripe::ApiError,
        payment_fails: bool,
        source: Source,
    ) -> Result<PaymentRow, AppError> {
        self.close_failed(op, e, payment_fails, source, false).await
    }

    /// [`Self::fail_operation`]; for a call that was `never_sent`, only while
    /// no other driver (the reconciler, a request resuming it) has taken the
    /// operation (its own send may be in flight and may charge): else the
    /// operation stays pending and the caller is told so.
    async fn close_failed(
        &self,
        op: &OperationRow,
        e: &crate::stripe::ApiError,
        payment_fails: bool,
        source: Source,
        never_sent: bool,
    ) -> Result<PaymentRow, AppError> {
        let (mut tx, before) = match self.lock_pending(op).await? {
            Locked::Pending(tx, before) => (tx, *before),
            Locked::Settled(answer) => return *answer,
        };
        if never_sent && !payments::lock_untaken(&mut tx, op.id).await? {
            tx.rollback().await?;
            let message = e.message.as_deref().unwrap_or("stripe could not be reached");
            payments::note_attempt(&self.db, op.id, message).await?;
            tracing::warn!(
                payment_id = before.id,
                operation = op.id,
                "stripe unreachable while another driver has the operation: left pending"
            );
            return Err(still_pending(&op.op.kind().replace('_', " "), before.id));
        }
        let mut row = before.clone();
        if payment_fails && let Ok(next) = before.ledger().fail() {
            row.set_ledger(next);
            // A pm_ Stripe does not know is named so on the payment, so that
            // every later answer about it (a retry, the reconciler's close)
            // says the same as the first: 404 PAYMENT_METHOD_NOT_FOUND.
            row.failure_code = if super::is_unknown_payment_method(e) {
                Some(UNKNOWN_PAYMENT_METHOD.into())
            } else {
                e.code.clone().or(Some(e.kind.clone()))
            };
            row.failure_message = e.message.clone();
            row.decline_code = e.decline_code.clone();
        }
        let cause = Cause { stripe_request_id: e.request_id.as_deref(), ..Default::default() };
        payments::save(&mut tx, &before, &row, source, &cause).await?;
        payments::finish_operation(&mut tx, op.id, State::Failed, e.message.as_deref()).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Checks a request against the payment under a row lock and records the
    /// operation; returns the payment and the operation. The same capture or
    /// cancel sent again while the first is unanswered resumes that one.
    pub(crate) async fn begin_operation(
        &self,
        id: i64,
        call: &super::Call,
        plan: impl FnOnce(&PaymentRow) -> Result<Operation, AppError>,
    ) -> Result<(PaymentRow, OperationRow), AppError> {
        let request = call.key();
        let mut tx = crate::store::begin(&self.db).await?;
        let row = payments::lock(&mut tx, id).await?.ok_or_else(|| not_found(id))?;
        let asked = plan(&row)?;
        if row.stripe_payment_intent_id.is_none() {
            return Err(refused(
                id,
                Refused { reason: "NOT_CAPTURABLE", message: "the payment has no Stripe PaymentIntent yet".into() },
            ));
        }
        let op = match payments::pending_operation(&mut tx, id).await? {
            // The same request again, while the first one's outcome is
            // unknown: resume it, with the same idempotency key.
            Some(op) if op.op == asked => {
                // The request's key points at the operation it resumes, so
                // that its own retry finds it.
                if let Some(k) = request {
                    match &k.claim {
                        Some(claim) => {
                            crate::store::idempotency::claim_in(&mut tx, k.scope, &k.key, claim, op.id).await?
                        }
                        None => crate::store::idempotency::point_at(&mut tx, k.scope, &k.key, op.id).await?,
                    }
                }
                // This request may send it while the one that recorded it
                // still retries: that one must no longer fail it as never sent.
                payments::mark_taken(&mut tx, op.id).await?;
                OperationRow { fresh: false, ..op }
            }
            Some(_) => {
                return Err(AppError::new(
                    Kind::Aborted,
                    "OPERATION_IN_PROGRESS",
                    "another capture or cancel of this payment is in progress; try again shortly",
                )
                .detail("paymentID", id.to_string()));
            }
            None => {
                let (request, claim) = request.map(RequestKey::binding).unwrap_or_default();
                let new = NewOperation { op: asked, request, claim, api_key_id: call.by };
                payments::insert_operation(&mut tx, new).await?
            }
        };
        tx.commit().await?;
        Ok((row, op))
    }
}
