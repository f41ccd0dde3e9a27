//! Customers: create, retrieve, update, delete, list (with `email` filter).

use super::params::{self, merge_metadata};
use crate::{
    Sim,
    error::{ApiError, ApiResult},
    fixtures, ids,
    store::Page,
};
use serde_json::{Value, json};

const FIELDS: &[&str] = &[
    "address",
    "description",
    "email",
    "metadata",
    "name",
    "phone",
    "preferred_locales",
    "shipping",
    "tax_exempt",
    "payment_method",
];

fn check_email(email: &str) -> Result<(), ApiError> {
    let valid = email.len() <= 512
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !email.contains(char::is_whitespace);
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid("email", format!("Invalid email address: {email}")).code("email_invalid"))
    }
}

/// Checks the customer fields given and writes them onto `customer`.
fn apply(customer: &mut Value, p: &Value) -> Result<(), ApiError> {
    params::only(p, FIELDS)?;
    if let Some(email) = params::text(p, "email")?
        && !email.is_empty()
    {
        check_email(email)?;
    }
    for (field, max) in [("name", 256), ("description", 350), ("phone", 20)] {
        if let Some(v) = params::text(p, field)?
            && v.chars().count() > max
        {
            return Err(ApiError::invalid(field, format!("{field} must be at most {max} characters")));
        }
    }
    let metadata = params::metadata(p)?;
    for field in ["email", "name", "description", "phone"] {
        if let Some(v) = params::text(p, field)? {
            customer[field] = if v.is_empty() { Value::Null } else { json!(v) };
        }
    }
    if let Some(t) = params::text(p, "tax_exempt")? {
        if !["none", "exempt", "reverse"].contains(&t) {
            return Err(ApiError::invalid("tax_exempt", "Invalid tax_exempt"));
        }
        customer["tax_exempt"] = json!(t);
    }
    if let Some(m) = metadata {
        merge_metadata(&mut customer["metadata"], m);
    }
    Ok(())
}

pub fn create(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    let mut c = fixtures::template("customer");
    let id = ids::new_id("cus");
    c["id"] = json!(id);
    c["created"] = json!(ids::now());
    c["livemode"] = json!(false);
    c["invoice_prefix"] = json!(format!("{:08X}", rand::random::<u32>()));
    for field in
        ["address", "currency", "default_source", "description", "discount", "email", "name", "phone", "shipping"]
    {
        c[field] = Value::Null;
    }
    c["metadata"] = json!({});
    c["balance"] = json!(0);
    apply(&mut c, p)?;
    let mut data = sim.data.lock();
    let seq = data.next_seq();
    data.customers.insert(seq, c.clone());
    data.emit("customer.created", &c, None);
    Ok(c)
}

pub fn retrieve(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    let data = sim.data.lock();
    if let Some(c) = data.customers.get(path[2]) {
        return Ok(c.clone());
    }
    if data.deleted_customers.contains(path[2]) {
        return Ok(deleted(path[2]));
    }
    Err(ApiError::missing_object("customer", path[2], "id"))
}

pub fn update(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    let mut data = sim.data.lock();
    let c = data.customers.get_mut(path[2]).ok_or_else(|| ApiError::missing_object("customer", path[2], "id"))?;
    let mut updated = c.clone();
    apply(&mut updated, p)?;
    *c = updated.clone();
    data.emit("customer.updated", &updated, None);
    Ok(updated)
}

fn deleted(id: &str) -> Value {
    let mut d = fixtures::template("deleted_customer");
    d["id"] = json!(id);
    d
}

pub fn delete(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    let mut data = sim.data.lock();
    data.customers.remove(path[2]).ok_or_else(|| ApiError::missing_object("customer", path[2], "id"))?;
    data.deleted_customers.insert(path[2].to_string());
    let gone = deleted(path[2]);
    data.emit("customer.deleted", &gone, None);
    Ok(gone)
}

pub fn list(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["limit", "starting_after", "ending_before", "email", "created", "test_clock"])?;
    let page = Page::from_params(p)?;
    let email = params::text(p, "email")?.map(str::to_string);
    let data = sim.data.lock();
    data.customers
        .list("/v1/customers", &page, "customer", |c| email.as_deref().is_none_or(|e| c["email"].as_str() == Some(e)))
}
