//! Proto messages to use-case inputs (parsed here, at the edge) and stored
//! rows to proto messages.

use crate::{
    app::{
        AppError,
        customers::{CreateCustomer, ListCustomers, UpdateCustomer},
        payments::{Charge, CreatePayment},
    },
    domain::{
        customer::{ChargeDate, CustomerId, CustomerName, Email},
        money::{Currency, Money},
        payment::CaptureMethod,
        request::{self, Metadata, PaymentMethodId},
    },
    proto,
    store::{
        customers::CustomerRow,
        payments::{HistoryRow, PaymentRow, RefundRow},
        products::{PriceRow, ProductRow},
    },
};
use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 in UTC, to the microsecond.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A non-empty string, or `None`.
fn given(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|t| !t.is_empty())
}

impl From<CustomerRow> for proto::Customer {
    fn from(r: CustomerRow) -> Self {
        Self {
            customer_id: r.id,
            name: r.name.unwrap_or_default(),
            email: r.email,
            stripe_customer_key: r.stripe_customer_key.unwrap_or_default(),
            stripe_charge_date: r.stripe_charge_date.unwrap_or_default(),
            created_at: timestamp(r.created_at),
            modified_at: timestamp(r.modified_at),
        }
    }
}

impl TryFrom<proto::CreateCustomerRequest> for CreateCustomer {
    type Error = AppError;
    fn try_from(r: proto::CreateCustomerRequest) -> Result<Self, AppError> {
        Ok(Self {
            name: CustomerName::parse(&r.name)?,
            email: Email::parse(&r.email)?,
            charge_date: given(&r.stripe_charge_date).map(ChargeDate::parse).transpose()?,
        })
    }
}

impl TryFrom<proto::UpdateCustomerRequest> for UpdateCustomer {
    type Error = AppError;
    fn try_from(r: proto::UpdateCustomerRequest) -> Result<Self, AppError> {
        Ok(Self {
            id: CustomerId::parse(r.customer_id)?,
            name: given(&r.name).map(CustomerName::parse).transpose()?,
            email: given(&r.email).map(Email::parse).transpose()?,
            charge_date: given(&r.stripe_charge_date).map(ChargeDate::parse).transpose()?,
            stripe_customer_key: given(&r.stripe_customer_key).map(str::to_string),
        })
    }
}

impl TryFrom<proto::ListCustomersRequest> for ListCustomers {
    type Error = AppError;
    fn try_from(r: proto::ListCustomersRequest) -> Result<Self, AppError> {
        let email = given(&r.email).map(Email::parse).transpose()?;
        ListCustomers::parse(r.page_size, &r.page_token, email)
    }
}

/// A positive id named `field` (paymentID, priceID, ...).
pub fn id(field: &'static str, raw: i64) -> Result<i64, AppError> {
    if raw > 0 {
        Ok(raw)
    } else {
        Err(AppError::invalid("INVALID_ID", format!("{field} must be a positive integer")).detail("field", field))
    }
}

/// An optional amount: 0 means "not given".
fn optional_amount(raw: i64) -> Result<Option<i64>, AppError> {
    match raw {
        0 => Ok(None),
        a if a > 0 => Ok(Some(a)),
        _ => Err(AppError::invalid("INVALID_AMOUNT", "amount must be positive").detail("field", "amount")),
    }
}

fn text_or_empty(s: Option<String>) -> String {
    s.unwrap_or_default()
}

impl TryFrom<proto::CreatePaymentRequest> for CreatePayment {
    type Error = AppError;
    fn try_from(r: proto::CreatePaymentRequest) -> Result<Self, AppError> {
        let customer = CustomerId::parse(r.customer_id)?;
        let by_amount = r.amount != 0 || !r.currency.is_empty();
        let charge = match (r.price_id, by_amount) {
            (0, true) => Charge::Amount(Money::charge(r.amount, Currency::parse(&r.currency)?)?),
            (0, false) => {
                return Err(AppError::invalid("MISSING_AMOUNT", "give amount and currency, or priceID and quantity")
                    .detail("field", "amount"));
            }
            (_, true) => {
                return Err(AppError::invalid(
                    "AMOUNT_AND_PRICE",
                    "give either amount and currency, or priceID and quantity, not both",
                )
                .detail("field", "priceID"));
            }
            (price, false) => {
                let quantity = if r.quantity == 0 { 1 } else { r.quantity };
                if !(1..=10_000).contains(&quantity) {
                    return Err(AppError::invalid("INVALID_QUANTITY", "quantity must be between 1 and 10000")
                        .detail("field", "quantity"));
                }
                Charge::Price { price_id: id("priceID", price)?, quantity }
            }
        };
        let capture = match r.capture_method.trim() {
            "" => CaptureMethod::Automatic,
            m => CaptureMethod::parse(m).ok_or_else(|| {
                AppError::invalid("INVALID_CAPTURE_METHOD", "capture_method must be automatic or manual")
                    .detail("field", "capture_method")
            })?,
        };
        Ok(Self {
            customer,
            charge,
            payment_method: PaymentMethodId::parse(&r.payment_method)?,
            capture,
            description: request::text("description", &r.description, 1000)?,
            metadata: Metadata::parse(r.metadata)?,
            receipt_email: given(&r.receipt_email).map(Email::parse).transpose()?,
            return_url: request::url("return_url", &r.return_url)?,
            off_session: r.off_session,
        })
    }
}

/// `payment` as the API shows it; with `history` when asked for.
pub fn payment(p: PaymentRow, history: Vec<HistoryRow>) -> proto::Payment {
    let waiting = p.status == "requires_action";
    // Failed off-session for want of the customer: confirmable again by
    // Stripe.js with the secret, the customer there.
    let recoverable = p.status == "failed" && p.failure_code.as_deref() == Some("authentication_required");
    let authorized = p.status == "authorized";
    let next_action = p.next_action.as_ref().filter(|_| waiting).map(|a| proto::NextAction {
        r#type: a.0["type"].as_str().unwrap_or_default().to_string(),
        redirect_url: a.0["redirect_url"].as_str().unwrap_or_default().to_string(),
        return_url: a.0["return_url"].as_str().unwrap_or_default().to_string(),
    });
    proto::Payment {
        payment_id: p.id,
        customer_id: p.customer_id,
        status: p.status,
        amount: p.amount,
        currency: p.currency,
        amount_capturable: p.amount_capturable,
        amount_captured: p.amount_captured,
        amount_refunded: p.amount_refunded,
        capture_method: p.capture_method,
        capture_before: p.capture_before.filter(|_| authorized).map(timestamp).unwrap_or_default(),
        stripe_payment_intent_id: text_or_empty(p.stripe_payment_intent_id),
        client_secret: if waiting || recoverable { text_or_empty(p.client_secret) } else { String::new() },
        next_action,
        failure_code: text_or_empty(
            p.failure_code.or(p.integrity_error.as_ref().map(|_| "integrity_mismatch".to_string())),
        ),
        failure_message: text_or_empty(p.failure_message.or(p.integrity_error)),
        created_at: timestamp(p.created_at),
        decline_code: text_or_empty(p.decline_code),
        description: text_or_empty(p.description),
        metadata: p.metadata.0,
        receipt_email: text_or_empty(p.receipt_email),
        price_id: p.price_id.unwrap_or_default(),
        quantity: p.quantity.unwrap_or_default(),
        payment_method: p.payment_method,
        cancellation_reason: text_or_empty(p.cancellation_reason),
        history: history
            .into_iter()
            .map(|h| proto::PaymentEvent {
                from_status: text_or_empty(h.from_status),
                to_status: h.to_status,
                amount_capturable: h.amount_capturable,
                amount_captured: h.amount_captured,
                amount_refunded: h.amount_refunded,
                source: h.source,
                stripe_request_id: text_or_empty(h.stripe_request_id),
                note: text_or_empty(h.note),
                created_at: timestamp(h.created_at),
                refund_id: h.refund_id.unwrap_or_default(),
                api_key_id: h.api_key_id.unwrap_or_default(),
            })
            .collect(),
        updated_at: timestamp(p.updated_at),
        dispute_status: p.dispute_status.unwrap_or_default(),
        amount_disputed: p.amount_disputed,
    }
}

pub fn refund(r: RefundRow, currency: &str) -> proto::Refund {
    proto::Refund {
        refund_id: r.id,
        payment_id: r.payment_id,
        status: r.status,
        amount: r.amount,
        reason: text_or_empty(r.reason),
        stripe_refund_id: text_or_empty(r.stripe_refund_id),
        currency: currency.to_string(),
        failure_reason: text_or_empty(r.failure_reason),
        created_at: timestamp(r.created_at),
    }
}

pub fn price(p: PriceRow) -> proto::Price {
    proto::Price {
        price_id: p.id,
        product_id: p.product_id,
        unit_amount: p.unit_amount,
        currency: p.currency,
        active: p.active,
        stripe_price_id: text_or_empty(p.stripe_price_id),
        created_at: timestamp(p.created_at),
    }
}

pub fn product(p: ProductRow, prices: Vec<PriceRow>) -> proto::Product {
    proto::Product {
        product_id: p.id,
        name: p.name,
        description: text_or_empty(p.description),
        active: p.active,
        prices: prices.into_iter().map(price).collect(),
        stripe_product_id: text_or_empty(p.stripe_product_id),
        created_at: timestamp(p.created_at),
    }
}

/// A price's money: positive, of the currency's shape (no minimum: a
/// quantity may make up the minimum charge).
pub fn price_money(unit_amount: i64, currency: &str) -> Result<Money, AppError> {
    Ok(Money::part(unit_amount, Currency::parse(currency)?)?)
}

pub fn capture_amount(raw: i64) -> Result<Option<i64>, AppError> {
    optional_amount(raw)
}

pub fn cancellation_reason(raw: &str) -> Result<Option<&'static str>, AppError> {
    Ok(request::choice("reason", raw, request::CANCELLATION_REASONS)?)
}

pub fn refund_reason(raw: &str) -> Result<Option<&'static str>, AppError> {
    Ok(request::choice("reason", raw, request::REFUND_REASONS)?)
}

impl TryFrom<proto::SetupPaymentMethodRequest> for crate::app::saved_cards::SetupPaymentMethod {
    type Error = AppError;
    fn try_from(r: proto::SetupPaymentMethodRequest) -> Result<Self, AppError> {
        Ok(Self { customer: crate::domain::customer::CustomerId::parse(r.customer_id)? })
    }
}

/// A SetupIntent as the API shows it: its client secret only while the
/// customer still has something to do.
pub fn setup_intent(si: crate::stripe::types::SetupIntent, customer_id: i64) -> proto::SetupIntent {
    let open = !matches!(si.status.as_str(), "succeeded" | "canceled");
    let next_action = si.next_action.filter(|_| si.status == "requires_action").map(|a| proto::NextAction {
        redirect_url: a.redirect_to_url.as_ref().and_then(|r| r.url.clone()).unwrap_or_default(),
        return_url: a.redirect_to_url.as_ref().and_then(|r| r.return_url.clone()).unwrap_or_default(),
        r#type: a.kind,
    });
    proto::SetupIntent {
        setup_intent_id: si.id,
        client_secret: if open { si.client_secret.unwrap_or_default() } else { String::new() },
        status: si.status,
        payment_method: si.payment_method.unwrap_or_default(),
        next_action,
        customer_id,
    }
}

/// A saved card as the API shows it.
pub fn payment_method(pm: crate::stripe::types::PaymentMethod) -> proto::PaymentMethod {
    let card = pm.card.unwrap_or_default();
    proto::PaymentMethod {
        payment_method: pm.id,
        brand: card.brand.unwrap_or_default(),
        last4: card.last4.unwrap_or_default(),
        exp_month: card.exp_month.unwrap_or_default(),
        exp_year: card.exp_year.unwrap_or_default(),
        created_at: chrono::DateTime::from_timestamp(pm.created, 0).map(timestamp).unwrap_or_default(),
    }
}

/// An endpoint; its secret only in the answer that made it (`with_secret`).
pub fn endpoint(e: crate::store::hooks::EndpointRow, with_secret: bool) -> proto::WebhookEndpoint {
    let overlapping = e.previous_secret.is_some() && e.previous_secret_until.is_some_and(|t| t > Utc::now());
    proto::WebhookEndpoint {
        endpoint_id: e.id,
        url: e.url,
        description: e.description,
        event_types: e.event_types,
        secret: if with_secret { e.secret } else { String::new() },
        status: if e.disabled { "disabled" } else { "enabled" }.into(),
        disabled_reason: e.disabled_reason.unwrap_or_default(),
        failing_since: e.failing_since.map(timestamp).unwrap_or_default(),
        previous_secret_expires_at: if overlapping {
            e.previous_secret_until.map(timestamp).unwrap_or_default()
        } else {
            String::new()
        },
        created_at: timestamp(e.created_at),
        updated_at: timestamp(e.updated_at),
    }
}

pub fn delivery(d: crate::app::endpoints::Delivery) -> proto::WebhookDelivery {
    let r = d.row;
    proto::WebhookDelivery {
        delivery_id: r.id,
        endpoint_id: r.endpoint_id,
        event_id: r.event_id.to_string(),
        event_type: r.event_type,
        next_attempt_at: if r.state == "pending" { timestamp(r.next_attempt_at) } else { String::new() },
        state: r.state,
        attempts: r.attempts,
        created_at: timestamp(r.created_at),
        delivered_at: r.delivered_at.map(timestamp).unwrap_or_default(),
        attempt_log: d
            .attempts
            .into_iter()
            .map(|a| proto::WebhookAttempt {
                attempted_at: timestamp(a.attempted_at),
                response_status: a.response_status.unwrap_or(0),
                latency_ms: a.latency_ms,
                error: a.error.unwrap_or_default(),
            })
            .collect(),
    }
}

pub fn dispute(d: crate::store::disputes::DisputeRow) -> proto::Dispute {
    proto::Dispute {
        dispute_id: d.id,
        payment_id: d.payment_id,
        stripe_dispute_id: d.stripe_dispute_id,
        status: d.status,
        reason: d.reason.unwrap_or_default(),
        amount: d.amount,
        currency: d.currency,
        evidence_due_by: d.evidence_due_by.map(timestamp).unwrap_or_default(),
        is_charge_refundable: d.is_charge_refundable,
        evidence_submission_count: d.submission_count,
        amount_withdrawn: d.amount_withdrawn,
        amount_reinstated: d.amount_reinstated,
        created_at: timestamp(d.created_at),
        updated_at: timestamp(d.updated_at),
    }
}
