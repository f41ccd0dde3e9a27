//! The search endpoints: `GET /v1/payment_intents/search`,
//! `/v1/customers/search` and `/v1/charges/search`, with `query` in
//! Stripe's language ([`crate::search`]), `limit` (1 to 100, default 10) and
//! `page` (the `next_page` of the previous answer). The answer is Stripe's
//! search result: `{"object": "search_result", "url", "data", "has_more",
//! "next_page"}`, newest first, plus `total_count` when asked for with
//! `expand[]=total_count`.
//!
//! Stripe's index lags behind writes ("data is searchable in under 1
//! minute"; don't search "in read-after-write flows"). The simulator's index
//! is current unless told to lag: `POST /_sim/search {"lag_ms": 2000}` (or
//! `--search` at start-up) hides objects younger than that from search,
//! while lists and retrieval see them at once, as on Stripe.

use super::params;
use crate::{
    Sim,
    error::{ApiError, ApiResult},
    search::Query,
    store::{Collection, limit},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

/// Search options, for tests.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Options {
    /// Milliseconds before a new object can be found by search.
    #[serde(default)]
    pub lag_ms: u64,
}

/// Stripe's query fields for each searchable resource (those this
/// simulator's objects carry).
const PAYMENT_INTENT_FIELDS: &[&str] = &["amount", "created", "currency", "customer", "metadata", "status"];
const CUSTOMER_FIELDS: &[&str] = &["created", "email", "metadata", "name", "phone"];
const CHARGE_FIELDS: &[&str] =
    &["amount", "created", "currency", "customer", "disputed", "metadata", "refunded", "status"];

pub fn payment_intents(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    search(sim, p, "payment_intents", PAYMENT_INTENT_FIELDS, |d| &d.payment_intents)
}

pub fn customers(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    search(sim, p, "customers", CUSTOMER_FIELDS, |d| &d.customers)
}

pub fn charges(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    search(sim, p, "charges", CHARGE_FIELDS, |d| &d.charges)
}

fn search(
    sim: &Sim,
    p: &Value,
    resource: &str,
    fields: &[&str],
    collection: impl Fn(&crate::Data) -> &Collection,
) -> ApiResult {
    params::only(p, &["query", "limit", "page"])?;
    let query = Query::parse(params::required(p, "query")?, resource, fields)
        .map_err(|message| ApiError::invalid("query", message))?;
    let limit = limit(p)?;
    let after = params::text(p, "page")?.filter(|s| !s.is_empty()).map(decode_page).transpose()?;
    let lag = Duration::from_millis(sim.search.lock().lag_ms);
    let data = sim.data.lock();
    let found = collection(&data).indexed(lag, |o| query.matches(o));
    let start = match &after {
        None => 0,
        Some(id) => found.iter().position(|o| o["id"] == *id).map(|i| i + 1).unwrap_or(found.len()),
    };
    let end = (start + limit).min(found.len());
    let page: Vec<Value> = found[start..end].iter().map(|o| (*o).clone()).collect();
    let has_more = end < found.len();
    let next_page = match page.last() {
        Some(last) if has_more => json!(encode_page(last["id"].as_str().unwrap_or_default())),
        _ => Value::Null,
    };
    let mut result = json!({
        "object": "search_result",
        "url": format!("/v1/{resource}/search"),
        "has_more": has_more,
        "data": page,
        "next_page": next_page,
    });
    let wants_total = p.get("expand").and_then(Value::as_array).is_some_and(|e| e.iter().any(|f| f == "total_count"));
    if wants_total {
        result["total_count"] = json!(found.len());
    }
    Ok(result)
}

/// The opaque `next_page` cursor: the last id shown.
fn encode_page(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("after:{id}"))
}

fn decode_page(page: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(page)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("after:").map(str::to_string))
        .ok_or_else(|| ApiError::invalid("page", "Invalid page: use the next_page of a previous search result."))
}
