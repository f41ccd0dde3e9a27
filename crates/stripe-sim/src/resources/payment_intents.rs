//! PaymentIntents: create (and confirm), confirm, retrieve, list, capture,
//! cancel; and completing 3-D Secure as the customer's browser would
//! (`POST /_sim/payment_intents/{id}/authenticate`, simulator only).
//!
//! Statuses move as Stripe documents: a successful confirmation leaves
//! `requires_capture` (manual) or `succeeded`; a decline answers 402 and
//! leaves `requires_payment_method` with `last_payment_error`; a card that
//! wants 3-D Secure leaves `requires_action` with `next_action`.

use super::{
    cards::{self, Behaviour},
    money, params, payment_methods,
};
use crate::{
    Data, Sim,
    error::{ApiError, ApiResult},
    fixtures, ids,
};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// How long an authorization may wait for capture.
const AUTHORIZATION_WINDOW: i64 = 7 * 24 * 60 * 60;

const CANCELABLE: &[&str] =
    &["requires_payment_method", "requires_capture", "requires_confirmation", "requires_action", "processing"];

fn unexpected_state(pi: &Value, action: &str, allowed: &[&str]) -> ApiError {
    let mut e = ApiError::state(
        "payment_intent_unexpected_state",
        format!(
            "This PaymentIntent's {action} could not be performed because it has a status of {}. Only a PaymentIntent with one of the following statuses may be {action}d: {}.",
            pi["status"].as_str().unwrap_or(""),
            allowed.join(", ")
        ),
    );
    e.payment_intent = Some(pi.clone());
    e
}

fn get<'a>(data: &'a mut Data, id: &str) -> Result<&'a mut Value, ApiError> {
    data.payment_intents.get_mut(id).ok_or_else(|| ApiError::missing_object("payment_intent", id, "intent"))
}

pub fn create(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(
        p,
        &[
            "amount",
            "currency",
            "customer",
            "payment_method",
            "confirm",
            "capture_method",
            "description",
            "metadata",
            "receipt_email",
            "off_session",
            "return_url",
            "payment_method_types",
            "setup_future_usage",
            "statement_descriptor",
            "automatic_payment_methods",
        ],
    )?;
    let amount = params::int(p, "amount")?.ok_or_else(|| ApiError::missing("amount"))?;
    let currency = money::currency(params::required(p, "currency")?)?;
    money::charge_amount(amount, &currency, "amount")?;
    let capture_method =
        params::one_of(p, "capture_method", &["automatic", "automatic_async", "manual"])?.unwrap_or("automatic_async");
    let confirm = params::flag(p, "confirm")?.unwrap_or(false);
    let metadata = params::metadata(p)?.unwrap_or_default();
    let mut data = sim.data.lock();
    let customer = params::text(p, "customer")?.filter(|c| !c.is_empty());
    if let Some(c) = customer
        && data.customers.get(c).is_none()
    {
        return Err(ApiError::missing_object("customer", c, "customer").with_status(StatusCode::BAD_REQUEST));
    }
    let pm = match params::text(p, "payment_method")?.filter(|s| !s.is_empty()) {
        Some(id) => Some(payment_methods::resolve(&mut data, id, "payment_method")?.0),
        None => None,
    };
    if confirm && pm.is_none() {
        return Err(ApiError::missing("payment_method"));
    }
    // A saved card is charged for its own customer only.
    if let Some(owner) = pm.as_ref().and_then(|m| m["customer"].as_str())
        && customer != Some(owner)
    {
        return Err(ApiError::invalid(
            "payment_method",
            match customer {
                None => "The provided PaymentMethod belongs to a Customer: pass that Customer as well.",
                Some(_) => "The provided PaymentMethod does not belong to the Customer you supplied.",
            },
        ));
    }
    let mut pi = fixtures::template("payment_intent");
    let id = ids::new_id("pi");
    let secret: String = ids::new_id("secret");
    for (k, v) in [
        ("id", json!(id)),
        ("amount", json!(amount)),
        ("amount_capturable", json!(0)),
        ("amount_received", json!(0)),
        ("currency", json!(currency)),
        ("customer", json!(customer)),
        ("capture_method", json!(capture_method)),
        ("client_secret", json!(format!("{id}_{secret}"))),
        ("confirmation_method", json!("automatic")),
        ("created", json!(ids::now())),
        ("description", json!(params::text(p, "description")?)),
        ("metadata", Value::Object(metadata)),
        ("payment_method", json!(pm.as_ref().map(|m| m["id"].clone()))),
        ("payment_method_types", json!(["card"])),
        ("receipt_email", json!(params::text(p, "receipt_email")?)),
        ("status", json!(if pm.is_some() { "requires_confirmation" } else { "requires_payment_method" })),
        ("setup_future_usage", json!(params::one_of(p, "setup_future_usage", &["on_session", "off_session"])?)),
        ("latest_charge", Value::Null),
        ("last_payment_error", Value::Null),
        ("next_action", Value::Null),
        ("canceled_at", Value::Null),
        ("cancellation_reason", Value::Null),
        ("livemode", json!(false)),
    ] {
        pi[k] = v;
    }
    let seq = data.next_seq();
    data.emit("payment_intent.created", &pi, None);
    data.payment_intents.insert(seq, pi);
    if confirm {
        let return_url = params::text(p, "return_url")?.map(str::to_string);
        return confirm_intent(&mut data, &id, return_url, off_session(p)?);
    }
    Ok(data.payment_intents.get(&id).cloned().expect("just inserted"))
}

pub fn confirm(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["payment_method", "return_url", "off_session"])?;
    let mut data = sim.data.lock();
    let pi = get(&mut data, path[2])?.clone();
    if !["requires_payment_method", "requires_confirmation", "requires_action"]
        .contains(&pi["status"].as_str().unwrap_or(""))
    {
        return Err(unexpected_state(
            &pi,
            "confirm",
            &["requires_payment_method", "requires_confirmation", "requires_action"],
        ));
    }
    if let Some(pm) = params::text(p, "payment_method")?.filter(|s| !s.is_empty()) {
        let pm = payment_methods::resolve(&mut data, pm, "payment_method")?.0;
        get(&mut data, path[2])?["payment_method"] = pm["id"].clone();
    }
    if get(&mut data, path[2])?["payment_method"].is_null() {
        return Err(ApiError::missing("payment_method"));
    }
    confirm_intent(&mut data, path[2], params::text(p, "return_url")?.map(str::to_string), off_session(p)?)
}

/// `off_session`: `true`, `one_off` or `recurring` mean the customer is not
/// there to authenticate.
fn off_session(p: &Value) -> Result<bool, ApiError> {
    match params::text(p, "off_session")? {
        None | Some("false") => Ok(false),
        Some("true" | "one_off" | "recurring") => Ok(true),
        Some(_) => Err(ApiError::invalid(
            "off_session",
            "Invalid boolean or enum: must be one of true, false, one_off, recurring",
        )),
    }
}

/// Runs a confirmation with the intent's payment method. Off-session, a
/// card that wants the customer to authenticate is declined
/// `authentication_required` (the intent back to `requires_payment_method`,
/// so that it can be confirmed again on-session), unless it was set up for
/// off-session use and only asks on setup.
fn confirm_intent(data: &mut Data, id: &str, return_url: Option<String>, off_session: bool) -> ApiResult {
    let pm_id = get(data, id)?["payment_method"].as_str().unwrap_or_default().to_string();
    let behaviour = data.card_behaviour.get(&pm_id).copied().unwrap_or(Behaviour::Succeed);
    let set_up = data.set_up_off_session.contains(&pm_id);
    match behaviour {
        Behaviour::Succeed | Behaviour::Dispute { .. } => authorize(data, id),
        // Set up once, it asks no more, whoever starts the payment.
        Behaviour::AuthenticateOnSetup if set_up => authorize(data, id),
        Behaviour::RequireAuthentication | Behaviour::AuthenticateOnSetup if off_session => Err(decline(
            data,
            id,
            "authentication_required",
            "authentication_required",
            "Your card was declined. This transaction requires authentication.",
        )),
        Behaviour::RequireAuthentication | Behaviour::AuthenticateOnSetup => {
            let pi = get(data, id)?;
            pi["status"] = json!("requires_action");
            pi["next_action"] = match return_url {
                Some(url) => json!({"type": "redirect_to_url", "redirect_to_url": {
                    "url": format!("https://hooks.stripe.com/3d_secure_2/hosted?payment_intent={id}"),
                    "return_url": url,
                }}),
                None => {
                    json!({"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": format!("https://hooks.stripe.com/redirect/authenticate/{id}")}})
                }
            };
            let pi = pi.clone();
            data.emit("payment_intent.requires_action", &pi, Some(json!({"status": "requires_confirmation"})));
            Ok(pi)
        }
        Behaviour::Decline { code, decline_code, message } => Err(decline(data, id, code, decline_code, message)),
        Behaviour::AttachThenDecline => {
            let Behaviour::Decline { code, decline_code, message } = cards::CUSTOMER_FAIL else { unreachable!() };
            Err(decline(data, id, code, decline_code, message))
        }
    }
}

fn new_charge(data: &mut Data, pi: &Value, status: &str, captured: bool, manual: bool) -> String {
    let mut ch = fixtures::template("charge");
    let id = ids::new_id("ch");
    let amount = pi["amount"].as_i64().unwrap_or(0);
    let succeeded = status == "succeeded";
    for (k, v) in [
        ("id", json!(id)),
        ("amount", json!(amount)),
        ("amount_captured", json!(if captured { amount } else { 0 })),
        ("amount_refunded", json!(0)),
        ("captured", json!(captured)),
        ("created", json!(ids::now())),
        ("currency", pi["currency"].clone()),
        ("customer", pi["customer"].clone()),
        ("description", pi["description"].clone()),
        ("disputed", json!(false)),
        ("failure_code", Value::Null),
        ("failure_message", Value::Null),
        ("livemode", json!(false)),
        ("metadata", pi["metadata"].clone()),
        ("paid", json!(succeeded)),
        ("payment_intent", pi["id"].clone()),
        ("payment_method", pi["payment_method"].clone()),
        ("receipt_email", pi["receipt_email"].clone()),
        ("refunded", json!(false)),
        ("status", json!(status)),
    ] {
        ch[k] = v;
    }
    let pm = data.payment_methods.get(pi["payment_method"].as_str().unwrap_or("")).cloned().unwrap_or(Value::Null);
    let card = &mut ch["payment_method_details"]["card"];
    card["brand"] = pm["card"]["brand"].clone();
    card["last4"] = pm["card"]["last4"].clone();
    card["exp_month"] = pm["card"]["exp_month"].clone();
    card["exp_year"] = pm["card"]["exp_year"].clone();
    card["capture_before"] = if manual && succeeded { json!(ids::now() + AUTHORIZATION_WINDOW) } else { Value::Null };
    ch["payment_method_details"]["type"] = json!("card");
    ch["outcome"]["type"] = json!(if succeeded { "authorized" } else { "issuer_declined" });
    ch["outcome"]["network_status"] = json!(if succeeded { "approved_by_network" } else { "declined_by_network" });
    let seq = data.next_seq();
    data.charges.insert(seq, ch);
    id
}

/// A successful authorization: captured at once unless capture is manual.
/// With `setup_future_usage` and a customer, the method is saved to the
/// customer and set up for later (off-session) charges.
fn authorize(data: &mut Data, id: &str) -> ApiResult {
    let pi = get(data, id)?.clone();
    if let (Some(usage), Some(customer), Some(pm)) =
        (pi["setup_future_usage"].as_str(), pi["customer"].as_str(), pi["payment_method"].as_str())
    {
        payment_methods::attach_to(data, pm, customer);
        if usage == "off_session" {
            data.set_up_off_session.insert(pm.to_string());
        }
    }
    let manual = pi["capture_method"] == "manual";
    let charge = new_charge(data, &pi, "succeeded", !manual, manual);
    let amount = pi["amount"].clone();
    let pi = get(data, id)?;
    pi["latest_charge"] = json!(charge);
    pi["next_action"] = Value::Null;
    pi["last_payment_error"] = Value::Null;
    let before = pi["status"].clone();
    if manual {
        pi["status"] = json!("requires_capture");
        pi["amount_capturable"] = amount;
    } else {
        pi["status"] = json!("succeeded");
        pi["amount_received"] = amount;
    }
    let pi = pi.clone();
    let ch = data.charges.get(&charge).cloned().unwrap_or(Value::Null);
    data.emit("charge.succeeded", &ch, None);
    if manual {
        data.emit(
            "payment_intent.amount_capturable_updated",
            &pi,
            Some(json!({"status": before, "amount_capturable": 0})),
        );
    } else {
        data.emit("payment_intent.succeeded", &pi, Some(json!({"status": before, "amount_received": 0})));
    }
    let pm = pi["payment_method"].as_str().unwrap_or_default().to_string();
    // Only money taken can be disputed: a manual capture's at its capture.
    if !manual && let Some(Behaviour::Dispute { reason, inquiry }) = data.card_behaviour.get(&pm).copied() {
        super::disputes::open(data, &charge, reason, inquiry);
    }
    Ok(pi)
}

/// A declined confirmation: a failed charge, the intent back to
/// `requires_payment_method`, and a 402 that embeds the intent.
fn decline(
    data: &mut Data,
    id: &str,
    code: &'static str,
    decline_code: &'static str,
    message: &'static str,
) -> ApiError {
    let pi = data.payment_intents.get(id).cloned().unwrap_or(Value::Null);
    let charge = new_charge(data, &pi, "failed", false, false);
    if let Some(ch) = data.charges.get_mut(&charge) {
        ch["failure_code"] = json!(code);
        ch["failure_message"] = json!(message);
    }
    let pm = data.payment_methods.get(pi["payment_method"].as_str().unwrap_or("")).cloned().unwrap_or(Value::Null);
    let Some(stored) = data.payment_intents.get_mut(id) else {
        return ApiError::missing_object("payment_intent", id, "intent");
    };
    stored["status"] = json!("requires_payment_method");
    stored["latest_charge"] = json!(charge);
    stored["next_action"] = Value::Null;
    stored["last_payment_error"] = json!({
        "type": "card_error", "code": code, "decline_code": decline_code, "message": message,
        "charge": charge, "payment_method": pm, "doc_url": crate::error::doc_url(code),
    });
    let stored = stored.clone();
    let ch = data.charges.get(&charge).cloned().unwrap_or(Value::Null);
    data.emit("charge.failed", &ch, None);
    data.emit(
        "payment_intent.payment_failed",
        &stored,
        Some(json!({"status": pi["status"].clone(), "last_payment_error": null})),
    );
    let mut e = payment_methods::card_error(code, Some(decline_code), message, None);
    e.payment_intent = Some(stored);
    e
}

pub fn retrieve(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["client_secret"])?;
    let mut data = sim.data.lock();
    Ok(get(&mut data, path[2])?.clone())
}

pub fn list(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["limit", "starting_after", "ending_before", "customer", "created"])?;
    let page = crate::store::Page::from_params(p)?;
    let customer = params::text(p, "customer")?.map(str::to_string);
    let data = sim.data.lock();
    data.payment_intents.list("/v1/payment_intents", &page, "payment_intent", |pi| {
        customer.as_deref().is_none_or(|c| pi["customer"].as_str() == Some(c))
    })
}

pub fn capture(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["amount_to_capture", "metadata", "final_capture"])?;
    let mut data = sim.data.lock();
    let pi = get(&mut data, path[2])?.clone();
    if pi["status"] != "requires_capture" {
        return Err(unexpected_state(&pi, "capture", &["requires_capture"]));
    }
    let capturable = pi["amount_capturable"].as_i64().unwrap_or(0);
    let amount = params::int(p, "amount_to_capture")?.unwrap_or(capturable);
    if amount <= 0 {
        return Err(ApiError::invalid("amount_to_capture", "This value must be greater than or equal to 1."));
    }
    if amount > capturable {
        return Err(ApiError::invalid(
            "amount_to_capture",
            format!(
                "The amount to capture ({amount}) must be less than or equal to the amount capturable ({capturable})."
            ),
        )
        .code("amount_too_large"));
    }
    let charge_id = pi["latest_charge"].as_str().unwrap_or_default().to_string();
    if let Some(ch) = data.charges.get_mut(&charge_id) {
        ch["captured"] = json!(true);
        ch["amount_captured"] = json!(amount);
        ch["payment_method_details"]["card"]["capture_before"] = Value::Null;
    }
    let pi = get(&mut data, path[2])?;
    pi["status"] = json!("succeeded");
    pi["amount_received"] = json!(amount);
    pi["amount_capturable"] = json!(0);
    let pi = pi.clone();
    let ch = data.charges.get(&charge_id).cloned().unwrap_or(Value::Null);
    data.emit("charge.captured", &ch, Some(json!({"captured": false, "amount_captured": 0})));
    data.emit(
        "payment_intent.succeeded",
        &pi,
        Some(json!({"status": "requires_capture", "amount_received": 0, "amount_capturable": capturable})),
    );
    let pm = pi["payment_method"].as_str().unwrap_or_default();
    if let Some(Behaviour::Dispute { reason, inquiry }) = data.card_behaviour.get(pm).copied() {
        super::disputes::open(&mut data, &charge_id, reason, inquiry);
    }
    Ok(pi)
}

pub fn cancel(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["cancellation_reason"])?;
    let reason =
        params::one_of(p, "cancellation_reason", &["duplicate", "fraudulent", "requested_by_customer", "abandoned"])?;
    let mut data = sim.data.lock();
    let pi = get(&mut data, path[2])?.clone();
    if !CANCELABLE.contains(&pi["status"].as_str().unwrap_or("")) {
        return Err(unexpected_state(&pi, "cancel", CANCELABLE));
    }
    let before_cancel = pi["status"].clone();
    if pi["status"] == "requires_capture" {
        // The authorization is released: the uncaptured charge is refunded.
        let charge_id = pi["latest_charge"].as_str().unwrap_or_default().to_string();
        if let Some(ch) = data.charges.get_mut(&charge_id) {
            ch["refunded"] = json!(true);
            ch["amount_refunded"] = ch["amount"].clone();
        }
    }
    let pi = get(&mut data, path[2])?;
    pi["status"] = json!("canceled");
    pi["canceled_at"] = json!(ids::now());
    pi["cancellation_reason"] = json!(reason);
    pi["amount_capturable"] = json!(0);
    pi["next_action"] = Value::Null;
    let canceled = pi.clone();
    data.emit("payment_intent.canceled", &canceled, Some(json!({"status": before_cancel})));
    Ok(canceled)
}

/// Simulator only: the customer finishes (`succeed`) or fails (`fail`)
/// 3-D Secure in the browser.
pub fn authenticate(sim: &Sim, id: &str, succeed: bool) -> ApiResult {
    let mut data = sim.data.lock();
    let pi = get(&mut data, id)?.clone();
    if pi["status"] != "requires_action" {
        return Err(unexpected_state(&pi, "authenticate", &["requires_action"]));
    }
    if succeed {
        return authorize(&mut data, id);
    }
    let pm = data.payment_methods.get(pi["payment_method"].as_str().unwrap_or("")).cloned().unwrap_or(Value::Null);
    let pi = get(&mut data, id)?;
    pi["status"] = json!("requires_payment_method");
    pi["next_action"] = Value::Null;
    pi["last_payment_error"] = json!({
        "type": "card_error",
        "code": "payment_intent_authentication_failure",
        "message": "The provided PaymentMethod has failed authentication. You can provide payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
        "payment_method": pm,
    });
    let failed = pi.clone();
    data.emit("payment_intent.payment_failed", &failed, Some(json!({"status": "requires_action"})));
    Ok(failed)
}

/// Simulator only: an authorization not captured in time is released, as
/// Stripe does after the window: the intent is canceled (`automatic`) and
/// its charge expires.
pub fn expire(sim: &Sim, id: &str) -> ApiResult {
    let mut data = sim.data.lock();
    let pi = get(&mut data, id)?.clone();
    if pi["status"] != "requires_capture" {
        return Err(unexpected_state(&pi, "expire", &["requires_capture"]));
    }
    let charge_id = pi["latest_charge"].as_str().unwrap_or_default().to_string();
    if let Some(ch) = data.charges.get_mut(&charge_id) {
        ch["refunded"] = json!(true);
        ch["amount_refunded"] = ch["amount"].clone();
        ch["status"] = json!("failed");
    }
    let pi = get(&mut data, id)?;
    pi["status"] = json!("canceled");
    pi["canceled_at"] = json!(ids::now());
    pi["cancellation_reason"] = json!("automatic");
    pi["amount_capturable"] = json!(0);
    let pi = pi.clone();
    let ch = data.charges.get(&charge_id).cloned().unwrap_or(Value::Null);
    data.emit("charge.expired", &ch, None);
    data.emit("payment_intent.canceled", &pi, Some(json!({"status": "requires_capture"})));
    Ok(pi)
}
