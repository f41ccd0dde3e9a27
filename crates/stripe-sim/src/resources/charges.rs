//! Charges: retrieve and list (by PaymentIntent). They are made by
//! PaymentIntents, never directly.

use super::params;
use crate::{
    Sim,
    error::{ApiError, ApiResult},
    store::Page,
};
use serde_json::Value;

pub fn retrieve(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    let data = sim.data.lock();
    data.charges.get(path[2]).cloned().ok_or_else(|| ApiError::missing_object("charge", path[2], "id"))
}

pub fn list(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["limit", "starting_after", "ending_before", "payment_intent", "customer", "created"])?;
    let page = Page::from_params(p)?;
    let pi = params::text(p, "payment_intent")?.map(str::to_string);
    let customer = params::text(p, "customer")?.map(str::to_string);
    let data = sim.data.lock();
    data.charges.list("/v1/charges", &page, "charge", |c| {
        pi.as_deref().is_none_or(|x| c["payment_intent"].as_str() == Some(x))
            && customer.as_deref().is_none_or(|x| c["customer"].as_str() == Some(x))
    })
}
