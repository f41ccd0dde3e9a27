//! In-memory object collections with Stripe's list semantics: newest first,
//! paged by `limit`, `starting_after` and `ending_before`.

use crate::error::ApiError;
use serde_json::{Value, json};
use std::collections::HashMap;

/// The objects of one kind, such as all customers.
#[derive(Default)]
pub struct Collection {
    /// id -> (creation sequence number, object)
    objects: HashMap<String, (u64, Value)>,
}

/// The paging parameters of a list request.
pub struct Page {
    pub limit: usize,
    pub starting_after: Option<String>,
    pub ending_before: Option<String>,
}

impl Page {
    /// Reads `limit` (1 to 100, default 10), `starting_after`, `ending_before`.
    pub fn from_params(params: &Value) -> Result<Self, ApiError> {
        let limit = match params.get("limit").and_then(Value::as_str) {
            None => 10,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=100).contains(&n) => n as usize,
                Ok(_) => {
                    return Err(ApiError::invalid("limit", "This value must be between 1 and 100 (inclusive)."));
                }
                Err(_) => return Err(ApiError::invalid("limit", format!("Invalid integer: {s}"))),
            },
        };
        let text = |k: &str| params.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
        Ok(Self { limit, starting_after: text("starting_after"), ending_before: text("ending_before") })
    }
}

impl Collection {
    pub fn insert(&mut self, seq: u64, object: Value) {
        let id = object["id"].as_str().expect("objects have ids").to_string();
        self.objects.insert(id, (seq, object));
    }

    pub fn get(&self, id: &str) -> Option<&Value> {
        self.objects.get(id).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.objects.get_mut(id).map(|(_, v)| v)
    }

    pub fn remove(&mut self, id: &str) -> Option<Value> {
        self.objects.remove(id).map(|(_, v)| v)
    }

    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.objects.values().map(|(_, v)| v)
    }

    /// A Stripe list object of the objects that pass `keep`, newest first.
    pub fn list(&self, url: &str, page: &Page, what: &str, keep: impl Fn(&Value) -> bool) -> Result<Value, ApiError> {
        let mut all: Vec<&(u64, Value)> = self.objects.values().filter(|(_, v)| keep(v)).collect();
        all.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        let position = |id: &str, param: &str| {
            all.iter().position(|(_, v)| v["id"] == id).ok_or_else(|| ApiError::missing_object(what, id, param))
        };
        let (slice, has_more) = if let Some(id) = &page.starting_after {
            let start = position(id, "starting_after")? + 1;
            let end = (start + page.limit).min(all.len());
            (&all[start..end], end < all.len())
        } else if let Some(id) = &page.ending_before {
            let end = position(id, "ending_before")?;
            let start = end.saturating_sub(page.limit);
            (&all[start..end], start > 0)
        } else {
            let end = page.limit.min(all.len());
            (&all[..end], end < all.len())
        };
        let data: Vec<Value> = slice.iter().map(|(_, v)| v.clone()).collect();
        Ok(json!({ "object": "list", "data": data, "has_more": has_more, "url": url }))
    }
}
