//! Disputes, as Stripe documents them for its dispute test cards.
//!
//! A charge of `pm_card_createDispute` (fraudulent) or
//! `pm_card_createDisputeProductNotReceived` is charged back at once:
//! `needs_response`, its funds withdrawn (`charge.dispute.funds_withdrawn`,
//! a balance transaction on the dispute), the charge no longer refundable
//! (`charge_disputed`). `pm_card_createDisputeInquiry` opens an inquiry:
//! `warning_needs_response`, nothing withdrawn, the charge still refundable.
//!
//! Evidence is sent by updating the dispute (`evidence[...]`, `submit`,
//! true by default). Submitted, it is `under_review` (`warning_under_review`
//! for an inquiry) and takes no more evidence. A chargeback's evidence
//! carrying Stripe's test values in `evidence[uncategorized_text]` decides
//! it: `winning_evidence` wins it (`won`, the amount and the fee
//! reinstated, the charge refundable again), `losing_evidence` loses it
//! (`lost`). The simulator decides at once, in the same request; Stripe
//! may take a while. Closing a dispute (`POST /v1/disputes/{id}/close`)
//! accepts it: `lost` (an inquiry: `warning_closed`). A closed dispute
//! takes no more evidence. Every change is an event
//! (`charge.dispute.updated`, `charge.dispute.closed`).

use super::params;
use crate::{
    Data, Sim,
    error::{ApiError, ApiResult},
    fixtures, ids,
};
use serde_json::{Map, Value, json};

/// Days a merchant has to answer a dispute.
const DAYS_TO_RESPOND: i64 = 7;

/// Stripe's dispute fee, in the charge's minor unit (USD's 15.00).
const FEE: i64 = 1500;

const CLOSED: &[&str] = &["won", "lost", "warning_closed"];
const UNDER_REVIEW: &[&str] = &["under_review", "warning_under_review"];

fn is_inquiry(d: &Value) -> bool {
    d["payment_method_details"]["card"]["case_type"] == "inquiry"
}

fn get<'a>(data: &'a mut Data, id: &str) -> Result<&'a mut Value, ApiError> {
    data.disputes.get_mut(id).ok_or_else(|| ApiError::missing_object("dispute", id, "dispute"))
}

/// A balance transaction moving `amount` (negative: withdrawn) for a dispute.
fn movement(d: &Value, amount: i64, fee: i64, description: &str) -> Value {
    json!({
        "id": ids::new_id("txn"), "object": "balance_transaction",
        "amount": amount, "fee": fee, "net": amount - fee,
        "currency": d["currency"].clone(), "created": ids::now(),
        "available_on": ids::now(), "description": description,
        "reporting_category": "dispute", "type": "adjustment", "status": "available",
        "source": d["id"].clone(), "fee_details": if fee != 0 {
            json!([{"amount": fee, "currency": d["currency"].clone(), "description": "Dispute fee", "type": "stripe_fee"}])
        } else { json!([]) },
        "exchange_rate": null,
    })
}

/// The cardholder disputes the charge `charge_id`.
pub fn open(data: &mut Data, charge_id: &str, reason: &str, inquiry: bool) {
    let Some(ch) = data.charges.get_mut(charge_id) else { return };
    ch["disputed"] = json!(true);
    let ch = ch.clone();
    let mut d = fixtures::template("dispute");
    let now = ids::now();
    for (k, v) in [
        ("id", json!(ids::new_id("dp"))),
        ("amount", ch["amount"].clone()),
        ("charge", json!(charge_id)),
        ("currency", ch["currency"].clone()),
        ("created", json!(now)),
        ("payment_intent", ch["payment_intent"].clone()),
        ("reason", json!(reason)),
        ("status", json!(if inquiry { "warning_needs_response" } else { "needs_response" })),
        ("is_charge_refundable", json!(inquiry)),
        ("livemode", json!(false)),
        ("metadata", json!({})),
        ("balance_transactions", json!([])),
    ] {
        d[k] = v;
    }
    for field in d["evidence"].as_object_mut().into_iter().flat_map(|e| e.values_mut()) {
        if !field.is_object() {
            *field = Value::Null;
        }
    }
    d["evidence_details"] = json!({
        "due_by": now + DAYS_TO_RESPOND * 24 * 3600, "has_evidence": false, "past_due": false,
        "submission_count": 0, "enhanced_eligibility": {},
    });
    let card = &mut d["payment_method_details"]["card"];
    card["brand"] = ch["payment_method_details"]["card"]["brand"].clone();
    card["case_type"] = json!(if inquiry { "inquiry" } else { "chargeback" });
    if !inquiry {
        let withdrawn =
            movement(&d, -ch["amount"].as_i64().unwrap_or(0), FEE, &format!("Chargeback withdrawal for {charge_id}"));
        d["balance_transactions"] = json!([withdrawn]);
    }
    let seq = data.next_seq();
    data.disputes.insert(seq, d.clone());
    data.emit("charge.dispute.created", &d, None);
    if !inquiry {
        data.emit("charge.dispute.funds_withdrawn", &d, None);
    }
}

/// Whether `charge_id` was charged back and may not be refunded: a
/// chargeback open or lost (an inquiry, or a chargeback won, may be).
pub fn charged_back(data: &Data, charge_id: &str) -> bool {
    data.disputes.values().any(|d| d["charge"] == charge_id && d["is_charge_refundable"] != true)
}

pub fn retrieve(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    let mut data = sim.data.lock();
    Ok(get(&mut data, path[2])?.clone())
}

pub fn list(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["limit", "starting_after", "ending_before", "charge", "payment_intent", "created"])?;
    let page = crate::store::Page::from_params(p)?;
    let charge = params::text(p, "charge")?.map(str::to_string);
    let intent = params::text(p, "payment_intent")?.map(str::to_string);
    let data = sim.data.lock();
    data.disputes.list("/v1/disputes", &page, "dispute", |d| {
        charge.as_deref().is_none_or(|c| d["charge"].as_str() == Some(c))
            && intent.as_deref().is_none_or(|i| d["payment_intent"].as_str() == Some(i))
    })
}

fn already_closed(d: &Value) -> ApiError {
    ApiError::invalid(
        "dispute",
        format!(
            "This dispute is already closed ({}): it can no longer be updated.",
            d["status"].as_str().unwrap_or("")
        ),
    )
}

/// Sends evidence (`evidence[...]`), and submits it unless `submit=false`.
pub fn update(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["evidence", "metadata", "submit"])?;
    let submit = params::flag(p, "submit")?.unwrap_or(true);
    let metadata = params::metadata(p)?;
    let mut data = sim.data.lock();
    let before = get(&mut data, path[2])?.clone();
    if CLOSED.contains(&before["status"].as_str().unwrap_or("")) {
        return Err(already_closed(&before));
    }
    if UNDER_REVIEW.contains(&before["status"].as_str().unwrap_or("")) && (p.get("evidence").is_some() || submit) {
        return Err(ApiError::invalid(
            "evidence",
            "This dispute's evidence was already submitted and is under review: it can no longer be changed.",
        ));
    }
    let mut evidence: Map<String, Value> = Map::new();
    if let Some(given) = p.get("evidence") {
        let Some(given) = given.as_object() else { return Err(ApiError::invalid("evidence", "Invalid hash")) };
        for (k, v) in given {
            if before["evidence"].get(k).is_none() || before["evidence"][k].is_object() {
                return Err(ApiError::unknown_param(&format!("evidence[{k}]")));
            }
            let Some(text) = v.as_str() else {
                return Err(ApiError::invalid(&format!("evidence[{k}]"), "Invalid string"));
            };
            if text.len() > 20_000 {
                return Err(ApiError::invalid(
                    &format!("evidence[{k}]"),
                    "The evidence is too long (20,000 characters at most).",
                ));
            }
            evidence.insert(k.clone(), json!(text));
        }
    }
    let inquiry = is_inquiry(&before);
    let d = get(&mut data, path[2])?;
    for (k, v) in &evidence {
        d["evidence"][k] = v.clone();
    }
    if let Some(m) = metadata {
        for (k, v) in m {
            d["metadata"][k] = v;
        }
    }
    if !evidence.is_empty() {
        d["evidence_details"]["has_evidence"] = json!(true);
    }
    if submit {
        let count = d["evidence_details"]["submission_count"].as_i64().unwrap_or(0);
        d["evidence_details"]["submission_count"] = json!(count + 1);
        d["status"] = json!(if inquiry { "warning_under_review" } else { "under_review" });
    }
    let updated = d.clone();
    data.emit(
        "charge.dispute.updated",
        &updated,
        Some(json!({"status": before["status"].clone(), "evidence": before["evidence"].clone()})),
    );
    if !submit {
        return Ok(updated);
    }
    match updated["evidence"]["uncategorized_text"].as_str() {
        Some("winning_evidence") if !inquiry => Ok(settle(&mut data, path[2], "won")),
        Some("losing_evidence") if !inquiry => Ok(settle(&mut data, path[2], "lost")),
        _ => Ok(updated),
    }
}

/// Accepts the dispute: the merchant will not contest it.
pub fn close(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    let mut data = sim.data.lock();
    let d = get(&mut data, path[2])?.clone();
    if CLOSED.contains(&d["status"].as_str().unwrap_or("")) {
        return Err(already_closed(&d));
    }
    Ok(settle(&mut data, path[2], if is_inquiry(&d) { "warning_closed" } else { "lost" }))
}

/// Ends the dispute in `status`; a chargeback won has its funds reinstated.
fn settle(data: &mut Data, id: &str, status: &str) -> Value {
    let Ok(d) = get(data, id) else { return Value::Null };
    let before = d["status"].clone();
    d["status"] = json!(status);
    if status == "won" {
        let amount = d["amount"].as_i64().unwrap_or(0);
        let charge = d["charge"].as_str().unwrap_or_default().to_string();
        // The amount and the dispute fee are credited back.
        let reinstated = movement(d, amount, -FEE, &format!("Chargeback reversal for {charge}"));
        if let Some(list) = d["balance_transactions"].as_array_mut() {
            list.push(reinstated);
        }
        d["is_charge_refundable"] = json!(true);
    }
    let closed = d.clone();
    data.emit("charge.dispute.closed", &closed, Some(json!({"status": before})));
    if status == "won" {
        data.emit("charge.dispute.funds_reinstated", &closed, None);
    }
    closed
}
