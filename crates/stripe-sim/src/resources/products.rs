//! Products and prices: create, retrieve, update (e.g. `active=false`), list.

use super::{money, params};
use crate::{
    Sim,
    error::{ApiError, ApiResult},
    fixtures, ids,
    store::Page,
};
use axum::http::StatusCode;
use serde_json::{Value, json};

pub fn create_product(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["name", "description", "active", "metadata", "id", "url", "images", "statement_descriptor"])?;
    let name = params::required(p, "name")?;
    let mut pr = fixtures::template("product");
    let id = params::text(p, "id")?.map(str::to_string).unwrap_or_else(|| ids::new_id("prod"));
    let mut data = sim.data.lock();
    if data.products.get(&id).is_some() {
        return Err(ApiError::invalid("id", format!("Product already exists: {id}")).code("resource_already_exists"));
    }
    let now = ids::now();
    for (k, v) in [
        ("id", json!(id)),
        ("name", json!(name)),
        ("description", json!(params::text(p, "description")?)),
        ("active", json!(params::flag(p, "active")?.unwrap_or(true))),
        ("metadata", Value::Object(params::metadata(p)?.unwrap_or_default())),
        ("created", json!(now)),
        ("updated", json!(now)),
        ("default_price", Value::Null),
        ("livemode", json!(false)),
        ("images", json!([])),
    ] {
        pr[k] = v;
    }
    let seq = data.next_seq();
    data.products.insert(seq, pr.clone());
    Ok(pr)
}

pub fn retrieve_product(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    sim.data.lock().products.get(path[2]).cloned().ok_or_else(|| ApiError::missing_object("product", path[2], "id"))
}

pub fn update_product(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["name", "description", "active", "metadata"])?;
    let active = params::flag(p, "active")?;
    let metadata = params::metadata(p)?;
    let mut data = sim.data.lock();
    let pr = data.products.get_mut(path[2]).ok_or_else(|| ApiError::missing_object("product", path[2], "id"))?;
    if let Some(n) = params::text(p, "name")? {
        pr["name"] = json!(n);
    }
    if let Some(d) = params::text(p, "description")? {
        pr["description"] = json!(d);
    }
    if let Some(a) = active {
        pr["active"] = json!(a);
    }
    if let Some(m) = metadata {
        params::merge_metadata(&mut pr["metadata"], m);
    }
    pr["updated"] = json!(ids::now());
    Ok(pr.clone())
}

pub fn list_products(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["limit", "starting_after", "ending_before", "active", "created", "ids"])?;
    let page = Page::from_params(p)?;
    let active = params::flag(p, "active")?;
    sim.data.lock().products.list("/v1/products", &page, "product", |pr| active.is_none_or(|a| pr["active"] == a))
}

pub fn create_price(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(
        p,
        &["product", "unit_amount", "currency", "active", "metadata", "nickname", "recurring", "lookup_key"],
    )?;
    let product = params::required(p, "product")?;
    let currency = money::currency(params::required(p, "currency")?)?;
    let unit_amount = params::int(p, "unit_amount")?.ok_or_else(|| ApiError::missing("unit_amount"))?;
    if !(0..=99_999_999).contains(&unit_amount) {
        return Err(ApiError::invalid("unit_amount", "unit_amount must be between 0 and 99999999"));
    }
    let mut data = sim.data.lock();
    if data.products.get(product).is_none() {
        return Err(ApiError::missing_object("product", product, "product").with_status(StatusCode::BAD_REQUEST));
    }
    let mut price = fixtures::template("price");
    for (k, v) in [
        ("id", json!(ids::new_id("price"))),
        ("product", json!(product)),
        ("unit_amount", json!(unit_amount)),
        ("unit_amount_decimal", json!(unit_amount.to_string())),
        ("currency", json!(currency)),
        ("active", json!(params::flag(p, "active")?.unwrap_or(true))),
        ("metadata", Value::Object(params::metadata(p)?.unwrap_or_default())),
        ("nickname", json!(params::text(p, "nickname")?)),
        ("created", json!(ids::now())),
        ("type", json!("one_time")),
        ("recurring", Value::Null),
        ("livemode", json!(false)),
        ("lookup_key", Value::Null),
    ] {
        price[k] = v;
    }
    let seq = data.next_seq();
    data.prices.insert(seq, price.clone());
    Ok(price)
}

pub fn retrieve_price(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &[])?;
    sim.data.lock().prices.get(path[2]).cloned().ok_or_else(|| ApiError::missing_object("price", path[2], "price"))
}

pub fn update_price(sim: &Sim, p: &Value, path: &[&str]) -> ApiResult {
    params::only(p, &["active", "metadata", "nickname"])?;
    let active = params::flag(p, "active")?;
    let metadata = params::metadata(p)?;
    let mut data = sim.data.lock();
    let price = data.prices.get_mut(path[2]).ok_or_else(|| ApiError::missing_object("price", path[2], "price"))?;
    if let Some(a) = active {
        price["active"] = json!(a);
    }
    if let Some(n) = params::text(p, "nickname")? {
        price["nickname"] = json!(n);
    }
    if let Some(m) = metadata {
        params::merge_metadata(&mut price["metadata"], m);
    }
    Ok(price.clone())
}

pub fn list_prices(sim: &Sim, p: &Value, _path: &[&str]) -> ApiResult {
    params::only(p, &["limit", "starting_after", "ending_before", "active", "product", "currency", "created", "type"])?;
    let page = Page::from_params(p)?;
    let active = params::flag(p, "active")?;
    let product = params::text(p, "product")?.map(str::to_string);
    sim.data.lock().prices.list("/v1/prices", &page, "price", |pr| {
        active.is_none_or(|a| pr["active"] == a) && product.as_deref().is_none_or(|x| pr["product"].as_str() == Some(x))
    })
}
