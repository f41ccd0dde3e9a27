//! In-memory object collections with Stripe's list semantics: newest first,
//! paged by `limit`, `starting_after` and `ending_before`, filtered by
//! `created` (`created=<t>` or `created[gt|gte|lt|lte]=<t>`). Each object
//! also remembers when it was stored, for the search index's lag.

use crate::error::ApiError;
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// The objects of one kind, such as all customers.
#[derive(Default)]
pub struct Collection {
    objects: HashMap<String, Entry>,
}

struct Entry {
    /// Creation order across all collections.
    seq: u64,
    /// When it was stored.
    at: Instant,
    object: Value,
}

/// The paging parameters of a list request.
pub struct Page {
    pub limit: usize,
    pub starting_after: Option<String>,
    pub ending_before: Option<String>,
    pub created: Created,
}

/// A `created` filter: bounds in Unix seconds, all optional.
#[derive(Default)]
pub struct Created {
    gt: Option<i64>,
    gte: Option<i64>,
    lt: Option<i64>,
    lte: Option<i64>,
}

impl Created {
    fn from_params(params: &Value) -> Result<Self, ApiError> {
        let int = |v: &Value, name: &str| -> Result<Option<i64>, ApiError> {
            match v.as_str() {
                None => Ok(None),
                Some(s) => {
                    s.trim().parse().map(Some).map_err(|_| ApiError::invalid(name, format!("Invalid integer: {s}")))
                }
            }
        };
        match params.get("created") {
            None => Ok(Self::default()),
            Some(Value::Object(bounds)) => {
                let mut c = Self::default();
                for (op, v) in bounds {
                    let param = format!("created[{op}]");
                    let slot = match op.as_str() {
                        "gt" => &mut c.gt,
                        "gte" => &mut c.gte,
                        "lt" => &mut c.lt,
                        "lte" => &mut c.lte,
                        _ => return Err(ApiError::unknown_param(&param)),
                    };
                    *slot = int(v, &param)?;
                }
                Ok(c)
            }
            Some(v) => {
                let at = int(v, "created")?;
                Ok(Self { gte: at, lte: at, ..Self::default() })
            }
        }
    }

    fn contains(&self, object: &Value) -> bool {
        let Some(t) = object["created"].as_i64() else { return true };
        self.gt.is_none_or(|b| t > b)
            && self.gte.is_none_or(|b| t >= b)
            && self.lt.is_none_or(|b| t < b)
            && self.lte.is_none_or(|b| t <= b)
    }
}

impl Page {
    /// Reads `limit` (1 to 100, default 10), `starting_after`,
    /// `ending_before` and `created`.
    pub fn from_params(params: &Value) -> Result<Self, ApiError> {
        let text = |k: &str| params.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
        Ok(Self {
            limit: limit(params)?,
            starting_after: text("starting_after"),
            ending_before: text("ending_before"),
            created: Created::from_params(params)?,
        })
    }
}

/// `limit`: 1 to 100, default 10, as for every list and search.
pub fn limit(params: &Value) -> Result<usize, ApiError> {
    match params.get("limit").and_then(Value::as_str) {
        None => Ok(10),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n as usize),
            Ok(_) => Err(ApiError::invalid("limit", "This value must be between 1 and 100 (inclusive).")),
            Err(_) => Err(ApiError::invalid("limit", format!("Invalid integer: {s}"))),
        },
    }
}

impl Collection {
    pub fn insert(&mut self, seq: u64, object: Value) {
        let id = object["id"].as_str().expect("objects have ids").to_string();
        self.objects.insert(id, Entry { seq, at: Instant::now(), object });
    }

    pub fn get(&self, id: &str) -> Option<&Value> {
        self.objects.get(id).map(|e| &e.object)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.objects.get_mut(id).map(|e| &mut e.object)
    }

    pub fn remove(&mut self, id: &str) -> Option<Value> {
        self.objects.remove(id).map(|e| e.object)
    }

    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.objects.values().map(|e| &e.object)
    }

    /// The objects that pass `keep`, newest first.
    fn newest_first(&self, keep: impl Fn(&Entry) -> bool) -> Vec<&Entry> {
        let mut all: Vec<&Entry> = self.objects.values().filter(|e| keep(e)).collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.seq));
        all
    }

    /// A Stripe list object of the objects that pass `keep`, newest first.
    pub fn list(&self, url: &str, page: &Page, what: &str, keep: impl Fn(&Value) -> bool) -> Result<Value, ApiError> {
        let all = self.newest_first(|e| keep(&e.object) && page.created.contains(&e.object));
        let position = |id: &str, param: &str| {
            all.iter().position(|e| e.object["id"] == id).ok_or_else(|| ApiError::missing_object(what, id, param))
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
        let data: Vec<Value> = slice.iter().map(|e| e.object.clone()).collect();
        Ok(json!({ "object": "list", "data": data, "has_more": has_more, "url": url }))
    }

    /// The objects that pass `keep` and were stored at least `lag` ago,
    /// newest first: what a search index that lags behind the writes sees.
    pub fn indexed(&self, lag: Duration, keep: impl Fn(&Value) -> bool) -> Vec<&Value> {
        self.newest_first(|e| e.at.elapsed() >= lag && keep(&e.object)).into_iter().map(|e| &e.object).collect()
    }
}
