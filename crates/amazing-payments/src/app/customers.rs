//! Customers: kept in our database and mirrored as Stripe Customers.
//!
//! Create: take an id from the sequence, create the Stripe customer (carrying
//! our id in metadata, with an idempotency key derived from it), then insert
//! our row. If Stripe fails nothing is written; a retry after a lost answer
//! reuses nothing, so it may leave an unused Stripe customer but never two
//! rows for one request.

use super::{App, AppError, page::Page, stripe_failure};
use crate::{
    domain::customer::{ChargeDate, CustomerId, CustomerName, Email},
    store::customers::{self, Changes, CustomerRow, NewCustomer},
    stripe::Form,
};

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
    pub page: Page,
    pub email: Option<Email>,
}

impl ListCustomers {
    pub fn parse(page_size: i32, page_token: &str, email: Option<Email>) -> Result<Self, AppError> {
        Ok(Self { page: Page::parse(page_size, page_token, "customer")?, email })
    }
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
        let after = q.page.cursor.unwrap_or(0);
        let mut rows = customers::list(&self.db, after, q.page.size + 1, q.email.as_ref()).await?;
        let next = q.page.finish(&mut rows, "customer", |r| r.id);
        Ok((rows, next))
    }
}

fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}
