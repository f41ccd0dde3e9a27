//! Proto messages to use-case inputs (parsed here, at the edge) and stored
//! rows to proto messages.

use crate::{
    app::{
        AppError,
        customers::{CreateCustomer, ListCustomers, UpdateCustomer},
    },
    domain::customer::{ChargeDate, CustomerId, CustomerName, Email},
    proto,
    store::customers::CustomerRow,
};
use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 in UTC, to the microsecond.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A non-empty string, or `None`.
fn given(s: &str) -> Option<&str> {
    (!s.trim().is_empty()).then_some(s)
}

impl From<CustomerRow> for proto::Customer {
    fn from(r: CustomerRow) -> Self {
        Self {
            customer_id: r.id,
            name: r.name.unwrap_or_default(),
            email: r.email,
            stripe_customer_key: r.stripe_customer_key.unwrap_or_default(),
            stripe_charge_date: r.stripe_charge_date.unwrap_or_default(),
            created_at: timestamp(r.created_at),
            modified_at: timestamp(r.modified_at),
        }
    }
}

impl TryFrom<proto::CreateCustomerRequest> for CreateCustomer {
    type Error = AppError;
    fn try_from(r: proto::CreateCustomerRequest) -> Result<Self, AppError> {
        Ok(Self {
            name: CustomerName::parse(&r.name)?,
            email: Email::parse(&r.email)?,
            charge_date: given(&r.stripe_charge_date).map(ChargeDate::parse).transpose()?,
        })
    }
}

impl TryFrom<proto::UpdateCustomerRequest> for UpdateCustomer {
    type Error = AppError;
    fn try_from(r: proto::UpdateCustomerRequest) -> Result<Self, AppError> {
        Ok(Self {
            id: CustomerId::parse(r.customer_id)?,
            name: given(&r.name).map(CustomerName::parse).transpose()?,
            email: given(&r.email).map(Email::parse).transpose()?,
            charge_date: given(&r.stripe_charge_date).map(ChargeDate::parse).transpose()?,
            stripe_customer_key: given(&r.stripe_customer_key).map(str::to_string),
        })
    }
}

impl TryFrom<proto::ListCustomersRequest> for ListCustomers {
    type Error = AppError;
    fn try_from(r: proto::ListCustomersRequest) -> Result<Self, AppError> {
        let email = given(&r.email).map(Email::parse).transpose()?;
        ListCustomers::parse(r.page_size, &r.page_token, email)
    }
}
