//! Customers: kept in our database and mirrored as Stripe Customers.
//!
//! Create: take an id from the sequence, create the Stripe customer (carrying
//! our id in metadata, with an idempotency key derived from it), then insert
//! our row. If Stripe fails nothing is written; a retry after a lost answer
//! reuses nothing, so it may leave an unused Stripe customer but never two
//! rows for one request.

use super::{App, AppError, stripe_failure};
use crate::{
    domain::customer::{ChargeDate, CustomerId, CustomerName, Email},
    store::customers::{self, Changes, CustomerRow, NewCustomer},
    stripe::Form,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// A new customer, checked.
#[derive(Debug)]
pub struct CreateCustomer {
    pub name: CustomerName,
    pub email: Email,
    pub charge_date: Option<ChargeDate>,
}

/// The fields to change; `None` keeps the value.
#[derive(Debug)]
pub struct UpdateCustomer {
    pub id: CustomerId,
    pub name: Option<CustomerName>,
    pub email: Option<Email>,
    pub charge_date: Option<ChargeDate>,
    /// If given, must equal the stored key: it cannot be changed.
    pub stripe_customer_key: Option<String>,
}

/// A page request of customers.
#[derive(Debug)]
pub struct ListCustomers {
    pub page_size: i64,
    pub after: i64,
    pub email: Option<Email>,
}

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 100;

impl ListCustomers {
    /// Checks `page_size` (0 means the default) and decodes `page_token`.
    pub fn parse(page_size: i32, page_token: &str, email: Option<Email>) -> Result<Self, AppError> {
        let page_size = match i64::from(page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(AppError::invalid(
                    "INVALID_PAGE_SIZE",
                    format!("page_size must be between 1 and {MAX_PAGE_SIZE}"),
                )
                .detail("field", "page_size"));
            }
        };
        let after = if page_token.is_empty() { 0 } else { decode_token(page_token)? };
        Ok(Self { page_size, after, email })
    }
}

fn encode_token(last_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("customer:{last_id}"))
}

fn decode_token(token: &str) -> Result<i64, AppError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("customer:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            AppError::invalid("INVALID_PAGE_TOKEN", "page_token is not one this service gave")
                .detail("field", "page_token")
        })
}

fn not_found(id: CustomerId) -> AppError {
    AppError::not_found("CUSTOMER_NOT_FOUND", format!("customer {id} does not exist"))
        .detail("customerID", id.to_string())
}

impl App {
    pub async fn create_customer(&self, cmd: CreateCustomer) -> Result<CustomerRow, AppError> {
        let id = customers::reserve_id(&self.db).await?;
        let id_text = id.to_string();
        let form = Form::new()
            .set("name", cmd.name.as_str())
            .set("email", cmd.email.as_str())
            .map("metadata", [("customerID", id_text.as_str())]);
        let stripe_customer =
            self.stripe.create_customer(&form, &format!("customer-{id}-create")).await.map_err(stripe_failure)?.object;
        let row = customers::insert(
            &self.db,
            NewCustomer {
                id,
                name: &cmd.name,
                email: &cmd.email,
                stripe_customer_key: &stripe_customer.id,
                charge_date: cmd.charge_date.as_ref(),
            },
        )
        .await?;
        tracing::info!(customer_id = row.id, email = %cmd.email.masked(), "customer created");
        Ok(row)
    }

    pub async fn get_customer(&self, id: CustomerId) -> Result<CustomerRow, AppError> {
        customers::get(&self.db, id).await?.ok_or_else(|| not_found(id))
    }

    pub async fn update_customer(&self, cmd: UpdateCustomer) -> Result<CustomerRow, AppError> {
        let current = self.get_customer(cmd.id).await?;
        if let Some(key) = &cmd.stripe_customer_key {
            if current.stripe_customer_key.as_deref() != Some(key.as_str()) {
                return Err(AppError::invalid(
                    "STRIPE_CUSTOMER_KEY_IMMUTABLE",
                    "stripe_customer_key cannot be changed",
                )
                .detail("field", "stripe_customer_key"));
            }
        }
        let form = Form::new()
            .set_opt("name", cmd.name.as_ref().map(CustomerName::as_str))
            .set_opt("email", cmd.email.as_ref().map(Email::as_str));
        if let (Some(stripe_id), false) = (&current.stripe_customer_key, form.is_empty()) {
            // The key covers the exact change, so a retried update is one
            // Stripe update.
            let key = format!("customer-{}-update-{}", cmd.id, short_hash(&form.encode()));
            self.stripe.update_customer(stripe_id, &form, &key).await.map_err(stripe_failure)?;
        }
        let changes =
            Changes { name: cmd.name.as_ref(), email: cmd.email.as_ref(), charge_date: cmd.charge_date.as_ref() };
        customers::update(&self.db, cmd.id, changes).await?.ok_or_else(|| not_found(cmd.id))
    }

    /// A page of customers and the token of the next page, if there is one.
    pub async fn list_customers(&self, q: ListCustomers) -> Result<(Vec<CustomerRow>, Option<String>), AppError> {
        let mut rows = customers::list(&self.db, q.after, q.page_size + 1, q.email.as_ref()).await?;
        let next = if rows.len() as i64 > q.page_size {
            rows.truncate(q.page_size as usize);
            rows.last().map(|r| encode_token(r.id))
        } else {
            None
        };
        Ok((rows, next))
    }
}

fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_round_trips_and_a_forged_one_is_refused() {
        let q = ListCustomers::parse(10, &encode_token(41), None).unwrap();
        assert_eq!((q.page_size, q.after), (10, 41));
        assert_eq!(ListCustomers::parse(10, "bm9wZQ", None).unwrap_err().reason, "INVALID_PAGE_TOKEN");
    }

    #[test]
    fn page_size_zero_means_the_default_and_out_of_range_is_refused() {
        assert_eq!(ListCustomers::parse(0, "", None).unwrap().page_size, DEFAULT_PAGE_SIZE);
        assert_eq!(ListCustomers::parse(101, "", None).unwrap_err().reason, "INVALID_PAGE_SIZE");
        assert_eq!(ListCustomers::parse(-1, "", None).unwrap_err().reason, "INVALID_PAGE_SIZE");
    }
}
