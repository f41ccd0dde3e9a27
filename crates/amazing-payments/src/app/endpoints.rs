//! Callers' webhook endpoints: registering, changing and removing them,
//! rolling their secrets, and reading and replaying their delivery log.
//! Delivering is the deliverer's (`crate::hooks`).

use super::{App, AppError, Kind, page::Page};
use crate::{
    hooks::{guard, sign},
    store::hooks::{self as store, AttemptRow, Changes, DeliveryRow, EndpointRow},
};
use std::time::Duration;

/// More endpoints than any shop needs: a bound on the deliveries one event makes.
pub const MAX_ENDPOINTS: i64 = 250;

/// How long a rolled secret still signs unless the roll says otherwise.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct NewEndpoint {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
}

#[derive(Debug, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub disabled: Option<bool>,
}

/// A delivery with its attempts.
#[derive(Debug)]
pub struct Delivery {
    pub row: DeliveryRow,
    pub attempts: Vec<AttemptRow>,
}

fn endpoint_not_found(id: i64) -> AppError {
    AppError::not_found("WEBHOOK_ENDPOINT_NOT_FOUND", format!("webhook endpoint {id} not found"))
}

/// The types, each once, in a stable order.
fn types(mut t: Vec<String>) -> Vec<String> {
    for v in &mut t {
        *v = v.trim().to_string();
    }
    t.sort();
    t.dedup();
    t
}

impl App {
    /// Checks a URL for an endpoint: its form, and where it leads.
    async fn endpoint_url(&self, raw: &str) -> Result<String, AppError> {
        match guard::check_url(raw.trim(), self.hooks.allow_private).await {
            Ok(url) => Ok(url.to_string()),
            Err(guard::Refusal::Invalid(why)) => Err(AppError::invalid("INVALID_URL", why).detail("field", "url")),
            Err(guard::Refusal::NotAllowed(why)) => Err(AppError::invalid(
                "WEBHOOK_URL_NOT_ALLOWED",
                format!("url leads to a loopback, private or reserved address ({why}): deliveries go to public addresses only"),
            )
            .detail("field", "url")),
        }
    }

    pub async fn create_endpoint(&self, new: NewEndpoint, by: Option<i64>) -> Result<EndpointRow, AppError> {
        let url = self.endpoint_url(&new.url).await?;
        if store::count_endpoints(&self.db).await? >= MAX_ENDPOINTS {
            return Err(AppError::new(
                Kind::Conflict,
                "TOO_MANY_WEBHOOK_ENDPOINTS",
                format!("there are {MAX_ENDPOINTS} webhook endpoints already; delete one first"),
            ));
        }
        let secret = sign::new_secret();
        let row = store::insert_endpoint(&self.db, &url, new.description.trim(), &types(new.event_types), &secret, by)
            .await?;
        tracing::info!(endpoint = row.id, "webhook endpoint registered");
        Ok(row)
    }

    pub async fn list_endpoints(&self) -> Result<Vec<EndpointRow>, AppError> {
        Ok(self.read(|db| async move { store::endpoints(&db).await }).await?)
    }

    pub async fn get_endpoint(&self, id: i64) -> Result<EndpointRow, AppError> {
        self.read(|db| async move { store::endpoint(&db, id).await }).await?.ok_or_else(|| endpoint_not_found(id))
    }

    pub async fn update_endpoint(&self, id: i64, changes: EndpointChanges) -> Result<EndpointRow, AppError> {
        let url = match changes.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            Some(u) => Some(self.endpoint_url(u).await?),
            None => None,
        };
        let event_types = changes.event_types.filter(|t| !t.is_empty()).map(types);
        let description = changes.description.as_deref().map(str::trim).filter(|d| !d.is_empty());
        let row = store::update_endpoint(
            &self.db,
            id,
            &Changes {
                url: url.as_deref(),
                description,
                event_types: event_types.as_deref(),
                disabled: changes.disabled,
            },
        )
        .await?
        .ok_or_else(|| endpoint_not_found(id))?;
        Ok(row)
    }

    pub async fn delete_endpoint(&self, id: i64) -> Result<(), AppError> {
        if store::delete_endpoint(&self.db, id).await? { Ok(()) } else { Err(endpoint_not_found(id)) }
    }

    /// A new secret; the previous one signs beside it for `overlap` (0:
    /// the default), or stops at once.
    pub async fn roll_endpoint_secret(
        &self,
        id: i64,
        overlap: Duration,
        expire_now: bool,
    ) -> Result<EndpointRow, AppError> {
        let overlap = if expire_now {
            None
        } else if overlap.is_zero() {
            Some(DEFAULT_OVERLAP)
        } else {
            Some(overlap)
        };
        let row = store::roll_secret(&self.db, id, &sign::new_secret(), overlap)
            .await?
            .ok_or_else(|| endpoint_not_found(id))?;
        tracing::info!(endpoint = id, "webhook endpoint secret rolled");
        Ok(row)
    }

    /// An endpoint's deliveries, newest first, a page at a time.
    pub async fn list_deliveries(
        &self,
        endpoint: i64,
        page_size: i32,
        token: &str,
    ) -> Result<(Vec<Delivery>, Option<String>), AppError> {
        let page = Page::parse(page_size, token, "delivery")?;
        let (found, mut rows, attempts) = self
            .read(|db| async move {
                if store::endpoint(&db, endpoint).await?.is_none() {
                    return Ok((false, Vec::new(), Vec::new()));
                }
                let rows = store::deliveries(&db, endpoint, page.cursor, page.size + 1).await?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let attempts = store::attempts_of(&db, &ids).await?;
                Ok((true, rows, attempts))
            })
            .await?;
        if !found {
            return Err(endpoint_not_found(endpoint));
        }
        let next = page.finish(&mut rows, "delivery", |r| r.id);
        let out = rows
            .into_iter()
            .map(|row| {
                let attempts = attempts.iter().filter(|a| a.delivery_id == row.id).cloned().collect();
                Delivery { row, attempts }
            })
            .collect();
        Ok((out, next))
    }

    /// Sends a delivery again now.
    pub async fn redeliver(&self, endpoint: i64, delivery: i64) -> Result<Delivery, AppError> {
        let e = store::endpoint(&self.db, endpoint).await?.ok_or_else(|| endpoint_not_found(endpoint))?;
        if e.disabled {
            return Err(AppError::new(
                Kind::Conflict,
                "WEBHOOK_ENDPOINT_DISABLED",
                format!("webhook endpoint {endpoint} is disabled: enable it, and its waiting deliveries go out"),
            ));
        }
        let row = store::redeliver(&self.db, endpoint, delivery).await?.ok_or_else(|| {
            AppError::not_found(
                "WEBHOOK_DELIVERY_NOT_FOUND",
                format!("delivery {delivery} of webhook endpoint {endpoint} not found"),
            )
        })?;
        let attempts = store::attempts_of(&self.db, &[row.id]).await?;
        Ok(Delivery { row, attempts })
    }
}
