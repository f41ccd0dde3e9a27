//! PaymentMethods: created from card details or from Stripe's test ids
//! (`pm_card_visa`, ...), retrieved, attached to a customer and detached,
//! listed (a customer's, by `GET /v1/customers/{id}/payment_methods` or
//! `GET /v1/payment_methods?customer=`).

use super::{
    cards::{self, Behaviour},
    params,
};
use crate::{
    Data, Sim,
    error::{ApiError, ApiResult},
    fixtures, ids,
};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// A 402 card error, as Stripe sends for a bad card.
pub fn card_error(code: &'static str, decline_code: Option<&str>, message: &str, param: Option<&str>) -> ApiError {
    let mut e = ApiError::invalid(param.unwrap_or(""), message).code(code).with_status(StatusCode::PAYMENT_REQUIRED);
    e.kind = "card_error";
    e.decline_code = decline_code.map(str::to_string);
    if param.is_none() {
        e.param = None;
    }
    e.started_executing = true;
    e
}

fn new_method(data: &mut Data, brand: &str, last4: &str, exp_month: i64, exp_year: i64, behaviour: Behaviour) -> Value {
    let mut pm = fixtures::template("payment_method");
    let id = ids::new_id("pm");
    pm["id"] = json!(id);
    pm["created"] = json!(ids::now());
    pm["customer"] = Value::Null;
    pm["livemode"] = json!(false);
    pm["metadata"] = json!({});
    pm["type"] = json!("card");
    let card = &mut pm["card"];
    card["brand"] = json!(brand);
    card["last4"] = json!(last4);
    card["exp_month"] = json!(exp_month);
    card["exp_year"] = json!(exp_year);
    card["funding"] = json!("credit");
    card["country"] = json!("US");
    card["fingerprint"] = json!(format!("fp{last4}{brand}"));
    let seq = data.next_seq();
    data.payment_methods.insert(seq, pm.clone());
    data.card_behaviour.insert(id, behaviour);
    pm
}

/// The PaymentMethod `id`: an existing one, or a fresh one for a test id.
/// One detached from its customer may not be used again.
pub fn resolve(data: &mut Data, id: &str, param: &str) -> Result<(Value, Behaviour), ApiError> {
    if data.detached.contains(id) {
        return Err(ApiError::invalid(
            param,
            "The provided PaymentMethod was previously used with a PaymentIntent without Customer attachment, shared with a connected account without Customer attachment, or was detached from a Customer. It may not be used again. To use a PaymentMethod multiple times, you must attach it to a Customer first.",
        ));
    }
    if let Some(pm) = data.payment_methods.get(id) {
        let behaviour = data.card_behaviour.get(id).copied().unwrap_or(Behaviour::Succeed);
        return Ok((pm.clone(), behaviour));
    }
    let card = cards::by_test_id(id)
        .ok_or_else(|| ApiError::missing_object("PaymentMethod", id, param).with_status(StatusCode::BAD_REQUEST))?;
    let pm = new_method(data, card.brand, &card.number[card.number.len() - 4..], 12, 2034, card.behaviour);
    Ok((pm, card.behaviour))
}

pub fn create(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["type", "card", "billing_details", "metadata"])?;
    if params::required(p, "type")? != "card" {
        return Err(ApiError::invalid("type", "The simulator supports card PaymentMethods only."));
    }
    let card = p.get("card").ok_or_else(|| ApiError::missing("card"))?;
    if card.get("token").is_some() {
        return Err(ApiError::invalid(
            "card[token]",
            "Card tokens are not simulated: use card[number] or a test PaymentMethod id.",
        ));
    }
    let number = params::required(card, "number").map_err(|_| ApiError::missing("card[number]"))?;
    let exp_month = params::int(card, "exp_month")?.ok_or_else(|| ApiError::missing("card[exp_month]"))?;
    let exp_year = params::int(card, "exp_year")?.ok_or_else(|| ApiError::missing("card[exp_year]"))?;
    let Some((brand, behaviour)) = cards::by_number(number) else {
        return Err(card_error("incorrect_number", None, "Your card number is incorrect.", Some("card[number]")));
    };
    if !(1..=12).contains(&exp_month) {
        return Err(card_error(
            "invalid_expiry_month",
            None,
            "Your card's expiration month is invalid.",
            Some("card[exp_month]"),
        ));
    }
    let year = if exp_year < 100 { 2000 + exp_year } else { exp_year };
    if year < 2026 {
        return Err(card_error(
            "invalid_expiry_year",
            None,
            "Your card's expiration year is invalid.",
            Some("card[exp_year]"),
        ));
    }
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let mut data = sim.data.lock();
    let mut pm = new_method(&mut data, brand, &digits[digits.len() - 4..], exp_month, year, behaviour);
    if let Some(m) = params::metadata(p)? {
        pm["metadata"] = Value::Object(m);
        let id = pm["id"].as_str().unwrap_or_default().to_string();
        if let Some(stored) = data.payment_methods.get_mut(&id) {
            *stored = pm.clone();
        }
    }
    Ok(pm)
}

pub fn retrieve(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    let data = sim.data.lock();
    data.payment_methods.get(path[2]).cloned().ok_or_else(|| ApiError::missing_object("payment_method", path[2], "id"))
}

/// Attaches a PaymentMethod to a customer. Cards that are declined outright
/// fail here too; `pm_card_chargeCustomerFail` attaches, then fails to charge.
pub fn attach(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["customer"])?;
    let customer = params::required(p, "customer")?;
    let mut data = sim.data.lock();
    if data.customers.get(customer).is_none() {
        return Err(ApiError::missing_object("customer", customer, "customer").with_status(StatusCode::BAD_REQUEST));
    }
    let (pm, behaviour) = resolve(&mut data, path[2], "id")?;
    if let Behaviour::Decline { code, decline_code, message } = behaviour {
        return Err(card_error(code, Some(decline_code), message, None));
    }
    let id = pm["id"].as_str().unwrap_or_default().to_string();
    owned_by_none_but(&pm, customer, "id")?;
    Ok(attach_to(&mut data, &id, customer))
}

/// Refuses a PaymentMethod attached to a customer other than `customer`.
pub fn owned_by_none_but(pm: &Value, customer: &str, param: &str) -> Result<(), ApiError> {
    match pm["customer"].as_str() {
        Some(other) if other != customer => {
            Err(ApiError::invalid(param, "The payment method you provided has already been attached to a customer."))
        }
        _ => Ok(()),
    }
}

/// Attaches a known PaymentMethod to `customer` (no-op if it is), telling
/// of it (`payment_method.attached`).
pub fn attach_to(data: &mut Data, id: &str, customer: &str) -> Value {
    let Some(stored) = data.payment_methods.get_mut(id) else { return Value::Null };
    if stored["customer"] == customer {
        return stored.clone();
    }
    stored["customer"] = json!(customer);
    let pm = stored.clone();
    data.emit("payment_method.attached", &pm, Some(json!({"customer": null})));
    pm
}

/// Detaches a PaymentMethod from its customer: it can no longer be used
/// (nor attached again, as Stripe has it).
pub fn detach(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    let mut data = sim.data.lock();
    let Some(stored) = data.payment_methods.get_mut(path[2]) else {
        return Err(ApiError::missing_object("payment_method", path[2], "payment_method"));
    };
    let Some(was) = stored["customer"].as_str().map(str::to_string) else {
        return Err(ApiError::state(
            "payment_method_unexpected_state",
            "The payment method you provided is not attached to a customer so detachment is impossible.",
        ));
    };
    stored["customer"] = Value::Null;
    let pm = stored.clone();
    data.set_up_off_session.remove(path[2]);
    data.detached.insert(path[2].to_string());
    data.emit("payment_method.detached", &pm, Some(json!({"customer": was})));
    Ok(pm)
}

/// `GET /v1/payment_methods?customer=cus_...&type=card`.
pub fn list(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["customer", "type", "limit", "starting_after", "ending_before"])?;
    let customer = params::text(p, "customer")?.map(str::to_string);
    list_of(sim, p, customer, "/v1/payment_methods")
}

/// `GET /v1/customers/{id}/payment_methods`.
pub fn list_for_customer(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["type", "limit", "starting_after", "ending_before", "allow_redisplay"])?;
    if sim.data.lock().customers.get(path[2]).is_none() {
        return Err(ApiError::missing_object("customer", path[2], "customer"));
    }
    list_of(sim, p, Some(path[2].to_string()), &format!("/v1/customers/{}/payment_methods", path[2]))
}

fn list_of(sim: &Sim, p: &Value, customer: Option<String>, url: &str) -> ApiResult {
    if let Some(t) = params::text(p, "type")?
        && t != "card"
    {
        return Err(ApiError::invalid("type", "The simulator supports card PaymentMethods only."));
    }
    let page = crate::store::Page::from_params(p)?;
    let data = sim.data.lock();
    // Only attached methods are listed: a customer's, or any customer's.
    data.payment_methods.list(url, &page, "payment_method", |pm| match &customer {
        Some(c) => pm["customer"].as_str() == Some(c.as_str()),
        None => !pm["customer"].is_null(),
    })
}
