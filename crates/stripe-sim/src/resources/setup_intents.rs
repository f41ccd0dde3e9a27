//! SetupIntents: saving a card for later charges, as Stripe documents it.
//! Create (and confirm), retrieve, update, confirm, cancel, list; and
//! completing 3-D Secure as the customer's browser would
//! (`POST /_sim/setup_intents/{id}/authenticate`, simulator only).
//!
//! Statuses: `requires_payment_method` (no method, or the last one failed,
//! with `last_setup_error`), `requires_confirmation`, `requires_action`
//! (the card wants 3-D Secure: `next_action`), `succeeded` (the method is
//! attached to the customer, and set up for off-session charges when
//! `usage` is `off_session`, the default), `canceled`. A declined card
//! answers 402 with the SetupIntent in the error, as Stripe does.

use super::{
    cards::Behaviour,
    params,
    payment_methods::{self, card_error},
};
use crate::{
    Data, Sim,
    error::{ApiError, ApiResult},
    fixtures, ids,
};
use axum::http::StatusCode;
use serde_json::{Value, json};

const CONFIRMABLE: &[&str] = &["requires_payment_method", "requires_confirmation", "requires_action"];
const CANCELABLE: &[&str] = &["requires_payment_method", "requires_confirmation", "requires_action"];

fn unexpected_state(si: &Value, action: &str, allowed: &[&str]) -> ApiError {
    let mut e = ApiError::state(
        "setup_intent_unexpected_state",
        format!(
            "You cannot {action} this SetupIntent because it has a status of {}. Only a SetupIntent with one of the following statuses allows it: {}.",
            si["status"].as_str().unwrap_or(""),
            allowed.join(", ")
        ),
    );
    e.setup_intent = Some(si.clone());
    e
}

fn get<'a>(data: &'a mut Data, id: &str) -> Result<&'a mut Value, ApiError> {
    data.setup_intents.get_mut(id).ok_or_else(|| ApiError::missing_object("setup_intent", id, "intent"))
}

fn customer_of(data: &Data, p: &Value) -> Result<Option<String>, ApiError> {
    match params::text(p, "customer")?.filter(|c| !c.is_empty()) {
        Some(c) if data.customers.get(c).is_none() => {
            Err(ApiError::missing_object("customer", c, "customer").with_status(StatusCode::BAD_REQUEST))
        }
        other => Ok(other.map(str::to_string)),
    }
}

pub fn create(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(
        p,
        &[
            "customer",
            "payment_method",
            "confirm",
            "usage",
            "description",
            "metadata",
            "payment_method_types",
            "return_url",
            "automatic_payment_methods",
        ],
    )?;
    let usage = params::one_of(p, "usage", &["on_session", "off_session"])?.unwrap_or("off_session");
    let confirm = params::flag(p, "confirm")?.unwrap_or(false);
    let metadata = params::metadata(p)?.unwrap_or_default();
    let mut data = sim.data.lock();
    let customer = customer_of(&data, p)?;
    let pm = match params::text(p, "payment_method")?.filter(|s| !s.is_empty()) {
        Some(id) => Some(payment_methods::resolve(&mut data, id, "payment_method")?.0),
        None => None,
    };
    if confirm && pm.is_none() {
        return Err(ApiError::missing("payment_method"));
    }
    if !confirm && params::text(p, "return_url")?.is_some() {
        return Err(ApiError::invalid("return_url", "You may only specify `return_url` when `confirm` is true."));
    }
    if let (Some(pm), Some(c)) = (&pm, &customer) {
        payment_methods::owned_by_none_but(pm, c, "payment_method")?;
    }
    let mut si = fixtures::template("setup_intent");
    let id = ids::new_id("seti");
    let secret = ids::new_id("secret");
    for (k, v) in [
        ("id", json!(id)),
        ("client_secret", json!(format!("{id}_{secret}"))),
        ("created", json!(ids::now())),
        ("customer", json!(customer)),
        ("description", json!(params::text(p, "description")?)),
        ("metadata", Value::Object(metadata)),
        ("payment_method", json!(pm.as_ref().map(|m| m["id"].clone()))),
        ("payment_method_types", json!(["card"])),
        ("status", json!(if pm.is_some() { "requires_confirmation" } else { "requires_payment_method" })),
        ("usage", json!(usage)),
        ("last_setup_error", Value::Null),
        ("latest_attempt", Value::Null),
        ("next_action", Value::Null),
        ("cancellation_reason", Value::Null),
        ("livemode", json!(false)),
    ] {
        si[k] = v;
    }
    let seq = data.next_seq();
    data.emit("setup_intent.created", &si, None);
    data.setup_intents.insert(seq, si);
    if confirm {
        let return_url = params::text(p, "return_url")?.map(str::to_string);
        return confirm_setup(&mut data, &id, return_url);
    }
    Ok(data.setup_intents.get(&id).cloned().expect("just inserted"))
}

pub fn retrieve(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["client_secret"])?;
    let mut data = sim.data.lock();
    Ok(get(&mut data, path[2])?.clone())
}

pub fn update(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["customer", "payment_method", "description", "metadata", "payment_method_types"])?;
    let mut data = sim.data.lock();
    let si = get(&mut data, path[2])?.clone();
    if ["succeeded", "canceled"].contains(&si["status"].as_str().unwrap_or("")) {
        return Err(unexpected_state(&si, "update", CONFIRMABLE));
    }
    let customer = customer_of(&data, p)?;
    let pm = match params::text(p, "payment_method")?.filter(|s| !s.is_empty()) {
        Some(id) => Some(payment_methods::resolve(&mut data, id, "payment_method")?.0),
        None => None,
    };
    let description = params::text(p, "description")?.map(str::to_string);
    let metadata = params::metadata(p)?;
    let si = get(&mut data, path[2])?;
    if let Some(c) = customer {
        si["customer"] = json!(c);
    }
    if let Some(pm) = pm {
        si["payment_method"] = pm["id"].clone();
        si["status"] = json!("requires_confirmation");
    }
    if let Some(d) = description {
        si["description"] = json!(d);
    }
    if let Some(m) = metadata {
        for (k, v) in m {
            si["metadata"][k] = v;
        }
    }
    Ok(si.clone())
}

pub fn confirm(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["payment_method", "return_url", "client_secret"])?;
    let mut data = sim.data.lock();
    let si = get(&mut data, path[2])?.clone();
    if !CONFIRMABLE.contains(&si["status"].as_str().unwrap_or("")) {
        return Err(unexpected_state(&si, "confirm", CONFIRMABLE));
    }
    if let Some(pm) = params::text(p, "payment_method")?.filter(|s| !s.is_empty()) {
        let pm = payment_methods::resolve(&mut data, pm, "payment_method")?.0;
        if let Some(c) = si["customer"].as_str() {
            payment_methods::owned_by_none_but(&pm, c, "payment_method")?;
        }
        get(&mut data, path[2])?["payment_method"] = pm["id"].clone();
    }
    if get(&mut data, path[2])?["payment_method"].is_null() {
        return Err(ApiError::missing("payment_method"));
    }
    confirm_setup(&mut data, path[2], params::text(p, "return_url")?.map(str::to_string))
}

/// Runs a confirmation with the intent's payment method.
fn confirm_setup(data: &mut Data, id: &str, return_url: Option<String>) -> ApiResult {
    let pm_id = get(data, id)?["payment_method"].as_str().unwrap_or_default().to_string();
    let behaviour = data.card_behaviour.get(&pm_id).copied().unwrap_or(Behaviour::Succeed);
    match behaviour {
        // A card whose charges fail is still saved: the failure comes when
        // it is charged.
        Behaviour::Succeed | Behaviour::Dispute { .. } | Behaviour::AttachThenDecline => succeed(data, id),
        Behaviour::RequireAuthentication | Behaviour::AuthenticateOnSetup => {
            let si = get(data, id)?;
            si["status"] = json!("requires_action");
            si["next_action"] = match return_url {
                Some(url) => json!({"type": "redirect_to_url", "redirect_to_url": {
                    "url": format!("https://hooks.stripe.com/3d_secure_2/hosted?setup_intent={id}"),
                    "return_url": url,
                }}),
                None => json!({"type": "use_stripe_sdk", "use_stripe_sdk": {
                    "type": "three_d_secure_redirect",
                    "stripe_js": format!("https://hooks.stripe.com/redirect/authenticate/{id}"),
                }}),
            };
            let si = si.clone();
            data.emit("setup_intent.requires_action", &si, Some(json!({"status": "requires_confirmation"})));
            Ok(si)
        }
        Behaviour::Decline { code, decline_code, message } => {
            let failed = fail(
                data,
                id,
                json!({"type": "card_error", "code": code, "decline_code": decline_code, "message": message}),
            )?;
            let mut e = card_error(code, Some(decline_code), message, None);
            e.setup_intent = Some(failed);
            Err(e)
        }
    }
}

/// The method is saved: attached to the customer (if any), and set up for
/// off-session charges when the intent's usage says so.
fn succeed(data: &mut Data, id: &str) -> ApiResult {
    let si = get(data, id)?.clone();
    let pm = si["payment_method"].as_str().unwrap_or_default().to_string();
    if let Some(customer) = si["customer"].as_str() {
        payment_methods::attach_to(data, &pm, customer);
    }
    if si["usage"] == "off_session" {
        data.set_up_off_session.insert(pm);
    }
    let before = si["status"].clone();
    let si = get(data, id)?;
    si["status"] = json!("succeeded");
    si["next_action"] = Value::Null;
    si["last_setup_error"] = Value::Null;
    let si = si.clone();
    data.emit("setup_intent.succeeded", &si, Some(json!({"status": before})));
    Ok(si)
}

/// The attempt failed: back to `requires_payment_method`, the error kept.
fn fail(data: &mut Data, id: &str, mut error: Value) -> ApiResult {
    let si = get(data, id)?.clone();
    let pm = data.payment_methods.get(si["payment_method"].as_str().unwrap_or("")).cloned().unwrap_or(Value::Null);
    if let Some(code) = error["code"].as_str() {
        error["doc_url"] = json!(crate::error::doc_url(code));
    }
    error["payment_method"] = pm;
    let stored = get(data, id)?;
    stored["status"] = json!("requires_payment_method");
    stored["next_action"] = Value::Null;
    stored["last_setup_error"] = error;
    let stored = stored.clone();
    data.emit("setup_intent.setup_failed", &stored, Some(json!({"status": si["status"].clone()})));
    Ok(stored)
}

pub fn cancel(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["cancellation_reason"])?;
    let reason = params::one_of(p, "cancellation_reason", &["abandoned", "requested_by_customer", "duplicate"])?;
    let mut data = sim.data.lock();
    let si = get(&mut data, path[2])?.clone();
    if !CANCELABLE.contains(&si["status"].as_str().unwrap_or("")) {
        return Err(unexpected_state(&si, "cancel", CANCELABLE));
    }
    let stored = get(&mut data, path[2])?;
    stored["status"] = json!("canceled");
    stored["cancellation_reason"] = json!(reason);
    stored["next_action"] = Value::Null;
    let canceled = stored.clone();
    data.emit("setup_intent.canceled", &canceled, Some(json!({"status": si["status"].clone()})));
    Ok(canceled)
}

pub fn list(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["limit", "starting_after", "ending_before", "customer", "payment_method", "created"])?;
    let page = crate::store::Page::from_params(p)?;
    let customer = params::text(p, "customer")?.map(str::to_string);
    let method = params::text(p, "payment_method")?.map(str::to_string);
    let data = sim.data.lock();
    data.setup_intents.list("/v1/setup_intents", &page, "setup_intent", |si| {
        customer.as_deref().is_none_or(|c| si["customer"].as_str() == Some(c))
            && method.as_deref().is_none_or(|m| si["payment_method"].as_str() == Some(m))
    })
}

/// Simulator only: the customer finishes (`succeed`) or fails (`fail`)
/// 3-D Secure for the setup in the browser.
pub fn authenticate(sim: &Sim, id: &str, succeeded: bool) -> ApiResult {
    let mut data = sim.data.lock();
    let si = get(&mut data, id)?.clone();
    if si["status"] != "requires_action" {
        return Err(unexpected_state(&si, "authenticate", &["requires_action"]));
    }
    if succeeded {
        return succeed(&mut data, id);
    }
    fail(
        &mut data,
        id,
        json!({
            "type": "card_error",
            "code": "setup_intent_authentication_failure",
            "message": "The latest attempt to set up the payment method has failed because authentication failed.",
        }),
    )
}
