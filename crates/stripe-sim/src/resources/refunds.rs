//! Refunds: create (of a PaymentIntent or a Charge), retrieve, list. Several
//! partial refunds are allowed until the captured amount is used up; an
//! uncaptured payment cannot be refunded (it is canceled instead).
//!
//! A refund may start `pending` ([`crate::refund_settlement`]) and settle
//! later as `succeeded` or `failed`. The charge's `amount_refunded` counts
//! every refund that is `pending` or `succeeded` from the moment it is
//! created, so money being refunded cannot be refunded twice; a refund that
//! fails gives its amount back to the charge (`amount_refunded` goes down,
//! `refunded` turns false), and may then be refunded again.

use super::params;
use crate::{
    Data, Sim,
    error::{ApiError, ApiResult},
    fixtures, ids,
    store::Page,
};
use axum::http::StatusCode;
use serde_json::{Value, json};

pub fn create(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["payment_intent", "charge", "amount", "reason", "metadata", "instructions_email"])?;
    let reason = params::one_of(p, "reason", &["duplicate", "fraudulent", "requested_by_customer"])?;
    let metadata = params::metadata(p)?.unwrap_or_default();
    let mut data = sim.data.lock();
    let charge_id = match (params::text(p, "payment_intent")?, params::text(p, "charge")?) {
        (Some(pi), _) => {
            let intent = data.payment_intents.get(pi).ok_or_else(|| {
                ApiError::missing_object("payment_intent", pi, "payment_intent").with_status(StatusCode::BAD_REQUEST)
            })?;
            if intent["status"] == "requires_capture" {
                return Err(ApiError::invalid(
                    "payment_intent",
                    format!("This PaymentIntent ({pi}) has not been captured: cancel it to release the authorization instead of refunding."),
                )
                .code("charge_not_refundable"));
            }
            if intent["status"] != "succeeded" {
                return Err(ApiError::invalid(
                    "payment_intent",
                    format!("This PaymentIntent ({pi}) does not have a successful charge to refund."),
                )
                .code("charge_not_refundable"));
            }
            intent["latest_charge"].as_str().unwrap_or_default().to_string()
        }
        (None, Some(ch)) => ch.to_string(),
        (None, None) => return Err(ApiError::missing("payment_intent")),
    };
    let charge =
        data.charges.get(&charge_id).cloned().ok_or_else(|| {
            ApiError::missing_object("charge", &charge_id, "charge").with_status(StatusCode::BAD_REQUEST)
        })?;
    if super::disputes::charged_back(&data, &charge_id) {
        return Err(ApiError::invalid(
            "charge",
            format!("Charge {charge_id} has been charged back; cannot issue a refund."),
        )
        .code("charge_disputed"));
    }
    if charge["captured"] != true || charge["status"] != "succeeded" {
        return Err(ApiError::invalid(
            "charge",
            format!("Charge {charge_id} has not been captured and cannot be refunded."),
        )
        .code("charge_not_refundable"));
    }
    let captured = charge["amount_captured"].as_i64().unwrap_or(0);
    let refunded = charge["amount_refunded"].as_i64().unwrap_or(0);
    let remaining = captured - refunded;
    if remaining <= 0 {
        return Err(ApiError::invalid("charge", format!("Charge {charge_id} has already been refunded."))
            .code("charge_already_refunded"));
    }
    let amount = params::int(p, "amount")?.unwrap_or(remaining);
    if amount <= 0 {
        return Err(ApiError::invalid("amount", "This value must be greater than or equal to 1."));
    }
    if amount > remaining {
        return Err(ApiError::invalid(
            "amount",
            format!("Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})"),
        )
        .code("amount_too_large"));
    }
    let pending = sim.refunds.starts_pending();
    let mut re = fixtures::template("refund");
    let id = ids::new_id("re");
    for (k, v) in [
        ("id", json!(id)),
        ("amount", json!(amount)),
        ("balance_transaction", Value::Null),
        ("charge", json!(charge_id)),
        ("created", json!(ids::now())),
        ("currency", charge["currency"].clone()),
        ("metadata", Value::Object(metadata)),
        ("payment_intent", charge["payment_intent"].clone()),
        ("reason", json!(reason)),
        ("receipt_number", Value::Null),
        ("status", json!(if pending { "pending" } else { "succeeded" })),
    ] {
        re[k] = v;
    }
    if pending {
        re["pending_reason"] = json!("processing");
    }
    if let Some(ch) = data.charges.get_mut(&charge_id) {
        ch["amount_refunded"] = json!(refunded + amount);
        ch["refunded"] = json!(refunded + amount == captured);
    }
    let seq = data.next_seq();
    data.refunds.insert(seq, re.clone());
    data.emit("refund.created", &re, None);
    let ch = data.charges.get(&charge_id).cloned().unwrap_or(Value::Null);
    data.emit("charge.refunded", &ch, Some(json!({"amount_refunded": refunded})));
    if pending {
        sim.refunds.schedule(&id);
    }
    Ok(re)
}

pub fn retrieve(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    let data = sim.data.lock();
    data.refunds.get(path[2]).cloned().ok_or_else(|| ApiError::missing_object("refund", path[2], "id"))
}

pub fn list(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["limit", "starting_after", "ending_before", "payment_intent", "charge", "created"])?;
    let page = Page::from_params(p)?;
    let pi = params::text(p, "payment_intent")?.map(str::to_string);
    let charge = params::text(p, "charge")?.map(str::to_string);
    let data = sim.data.lock();
    data.refunds.list("/v1/refunds", &page, "refund", |r| {
        pi.as_deref().is_none_or(|x| r["payment_intent"].as_str() == Some(x))
            && charge.as_deref().is_none_or(|x| r["charge"].as_str() == Some(x))
    })
}

/// Simulator only: a pending refund succeeds.
pub fn succeed(sim: &Sim, id: &str) -> ApiResult {
    let mut data = sim.data.lock();
    to_succeeded(&mut data, id)
}

/// Simulator only: a pending or succeeded refund fails (the card was
/// closed): its amount goes back to the charge as not refunded.
pub fn fail(sim: &Sim, id: &str) -> ApiResult {
    let mut data = sim.data.lock();
    to_failed(&mut data, id)
}

/// Settles a refund that is still pending; an error if it was settled
/// meanwhile.
pub fn settle_pending(sim: &Sim, id: &str, succeed: bool) -> ApiResult {
    let mut data = sim.data.lock();
    if data.refunds.get(id).is_some_and(|r| r["status"] != "pending") {
        return Err(ApiError::invalid("id", format!("Refund {id} is no longer pending.")));
    }
    if succeed { to_succeeded(&mut data, id) } else { to_failed(&mut data, id) }
}

fn to_succeeded(data: &mut Data, id: &str) -> ApiResult {
    let re = data.refunds.get_mut(id).ok_or_else(|| ApiError::missing_object("refund", id, "id"))?;
    if re["status"] != "pending" {
        return Err(ApiError::invalid("id", "only a pending refund can succeed"));
    }
    re["status"] = json!("succeeded");
    if let Some(fields) = re.as_object_mut() {
        fields.remove("pending_reason");
    }
    let re = re.clone();
    data.emit("refund.updated", &re, Some(json!({"status": "pending"})));
    Ok(re)
}

fn to_failed(data: &mut Data, id: &str) -> ApiResult {
    let re = data.refunds.get_mut(id).ok_or_else(|| ApiError::missing_object("refund", id, "id"))?;
    let before = re["status"].clone();
    if before != "succeeded" && before != "pending" {
        return Err(ApiError::invalid("id", "only a pending or succeeded refund can fail"));
    }
    re["status"] = json!("failed");
    re["failure_reason"] = json!("expired_or_canceled_card");
    if let Some(fields) = re.as_object_mut() {
        fields.remove("pending_reason");
    }
    let re = re.clone();
    let charge_id = re["charge"].as_str().unwrap_or_default().to_string();
    let amount = re["amount"].as_i64().unwrap_or(0);
    if let Some(ch) = data.charges.get_mut(&charge_id) {
        let refunded = ch["amount_refunded"].as_i64().unwrap_or(0) - amount;
        ch["amount_refunded"] = json!(refunded);
        ch["refunded"] = json!(false);
    }
    data.emit("refund.updated", &re, Some(json!({"status": before})));
    data.emit("refund.failed", &re, None);
    Ok(re)
}
