//! `GET /v1/balance`: the account balance. Stripe's client libraries and this
//! service's start-up check use it to test an API key.

use crate::{Sim, error::ApiResult, fixtures};
use serde_json::Value;

pub fn retrieve(_sim: &Sim, params: &Value, _path: &[&str]) -> ApiResult {
    super::params::only(params, &[])?;
    let mut balance = fixtures::template("balance");
    balance["livemode"] = Value::Bool(false);
    Ok(balance)
}
