//! Customers: kept in our database and mirrored as Stripe Customers.
//!
//! A create or an update is recorded as an operation first (the customer's
//! id is taken from the sequence, so the Stripe customer carries it), sent to
//! Stripe under the operation's idempotency key, and written to our table
//! with the operation closed in one transaction. A Stripe refusal writes no
//! customer; an unknown outcome leaves the operation for a retry with the
//! same client key, or for the reconciler.

use super::{
    App, AppError, Call, RequestKey,
    operations::{left_pending, unfinished},
    page::Page,
};
use crate::{
    domain::{
        customer::{ChargeDate, CustomerId, CustomerName, Email},
        operation::{Operation, State},
    },
    store::{
        customers::{self, Changes, CustomerRow, NewCustomer},
        payments::{self as ops, NewOperation, OperationRow},
    },
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

pub(crate) fn not_found(id: CustomerId) -> AppError {
    AppError::not_found("CUSTOMER_NOT_FOUND", format!("customer {id} does not exist"))
        .detail("customerID", id.to_string())
}

impl App {
    pub async fn create_customer(&self, cmd: CreateCustomer, call: &Call) -> Result<CustomerRow, AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            return done.customer();
        }
        let id = customers::reserve_id(&self.db).await?;
        let op = Operation::CreateCustomer {
            customer_id: id.get(),
            name: cmd.name.as_str().to_string(),
            email: cmd.email.as_str().to_string(),
            charge_date: cmd.charge_date.as_ref().map(|d| d.as_str().to_string()),
        };
        let op = self.record(call, op).await?;
        let row = self.drive(&op).await?.customer()?;
        tracing::info!(customer_id = row.id, email = %cmd.email.masked(), "customer created");
        Ok(row)
    }

    /// Records an operation that has no payment.
    pub(crate) async fn record(&self, call: &Call, op: Operation) -> Result<OperationRow, AppError> {
        let (request, claim) = call.key().map(RequestKey::binding).unwrap_or_default();
        let new = NewOperation { op, request, claim, api_key_id: call.by };
        Ok(ops::record_operation(&self.db, new).await?)
    }

    /// Sends a customer operation to Stripe and writes the result.
    pub(crate) async fn drive_customer(&self, op: &OperationRow) -> Result<CustomerRow, AppError> {
        match &op.op {
            Operation::CreateCustomer { customer_id, name, email, .. } => {
                let (name, email) = (CustomerName::parse(name)?, Email::parse(email)?);
                let id_text = customer_id.to_string();
                let mut metadata = vec![("customerID", id_text.as_str())];
                metadata.extend(op.reference().map(|r| (super::operations::OPERATION_METADATA, r)));
                let form =
                    Form::new().set("name", name.as_str()).set("email", email.as_str()).map("metadata", metadata);
                match self.stripe.create_customer(&form, &op.idempotency_key).await {
                    Ok(reply) => self.finish_customer_create(op, &reply.object.id).await,
                    Err(e) if e.is_replayed_failure() => {
                        Box::pin(self.settle_by_lookup(op, ops::Source::api(op.api_key_id))).await?.customer()
                    }
                    Err(e) => Err(self.unfinished_op(op, e).await),
                }
            }
            Operation::UpdateCustomer { customer_id, name, email, charge_date, stripe_customer_key } => {
                let id = CustomerId::parse(*customer_id)?;
                let name = name.as_deref().map(CustomerName::parse).transpose()?;
                let email = email.as_deref().map(Email::parse).transpose()?;
                let charge_date = charge_date.as_deref().map(ChargeDate::parse).transpose()?;
                let form = Form::new()
                    .set_opt("name", name.as_ref().map(CustomerName::as_str))
                    .set_opt("email", email.as_ref().map(Email::as_str));
                if let (Some(stripe_id), false) = (stripe_customer_key, form.is_empty())
                    && let Err(e) = self.stripe.update_customer(stripe_id, &form, &op.idempotency_key).await
                {
                    return Err(self.unfinished_op(op, e).await);
                }
                let mut tx = crate::store::begin(&self.db).await?;
                if ops::lock_operation_state(&mut tx, op.id).await? == State::Pending {
                    let changes =
                        Changes { name: name.as_ref(), email: email.as_ref(), charge_date: charge_date.as_ref() };
                    // An event only for a change that happened.
                    if customers::update(&mut tx, id, changes).await? {
                        crate::store::outbox::customer_updated(&mut tx, id.get(), op.api_key_id).await?;
                    }
                    ops::finish_operation(&mut tx, op.id, State::Succeeded, None).await?;
                }
                tx.commit().await?;
                self.customer_on_primary(id).await
            }
            other => {
                Err(AppError::internal(anyhow::anyhow!("operation {} ({}) is not a customer's", op.id, other.kind())))
            }
        }
    }

    /// Records the customer that `op` created in Stripe, and closes `op`
    /// (once, whoever gets there first: the operation is locked).
    pub(crate) async fn finish_customer_create(
        &self,
        op: &OperationRow,
        stripe_customer: &str,
    ) -> Result<CustomerRow, AppError> {
        let Operation::CreateCustomer { customer_id, name, email, charge_date } = &op.op else {
            return Err(AppError::internal(anyhow::anyhow!("operation {} does not create a customer", op.id)));
        };
        let id = CustomerId::parse(*customer_id)?;
        let (name, email) = (CustomerName::parse(name)?, Email::parse(email)?);
        let charge_date = charge_date.as_deref().map(ChargeDate::parse).transpose()?;
        let mut tx = crate::store::begin(&self.db).await?;
        if ops::lock_operation_state(&mut tx, op.id).await? == State::Pending {
            let new = NewCustomer {
                id,
                name: &name,
                email: &email,
                stripe_customer_key: stripe_customer,
                charge_date: charge_date.as_ref(),
                api_key_id: op.api_key_id,
            };
            customers::insert(&mut tx, new).await?;
            ops::finish_operation(&mut tx, op.id, State::Succeeded, None).await?;
        }
        tx.commit().await?;
        self.customer_on_primary(id).await
    }

    /// Closes `op` as failed when Stripe refused it or it never left; keeps it
    /// pending when the outcome is unknown. The error for the caller.
    /// A call that never left closes nothing once a reconciler took the
    /// operation: that one's send may be in flight.
    pub(crate) async fn unfinished_op(&self, op: &OperationRow, e: crate::stripe::StripeError) -> AppError {
        let never_sent = e.never_sent();
        let (error, finished) = unfinished(e, op);
        let closed = match (finished, never_sent) {
            (true, true) => match ops::close_untaken(&self.db, op.id, &error.message).await {
                Ok(true) => Ok(error),
                Ok(false) => ops::note_attempt(&self.db, op.id, &error.message).await.map(|()| left_pending()),
                Err(db) => Err(db),
            },
            (true, false) => {
                ops::close_operation(&self.db, op.id, State::Failed, Some(&error.message)).await.map(|()| error)
            }
            (false, _) => ops::note_attempt(&self.db, op.id, &error.message).await.map(|()| error),
        };
        closed.unwrap_or_else(AppError::from)
    }

    /// The customer as the primary has it, for a change to build on.
    pub(crate) async fn customer_on_primary(&self, id: CustomerId) -> Result<CustomerRow, AppError> {
        customers::get(&self.db, id).await?.ok_or_else(|| not_found(id))
    }

    pub async fn get_customer(&self, id: CustomerId) -> Result<CustomerRow, AppError> {
        self.read(|db| async move { customers::get(&db, id).await }).await?.ok_or_else(|| not_found(id))
    }

    pub async fn update_customer(&self, cmd: UpdateCustomer, call: &Call) -> Result<CustomerRow, AppError> {
        let key = call.key();
        if let Some(done) = self.resume(key).await? {
            return done.customer();
        }
        let current = self.customer_on_primary(cmd.id).await?;
        if let Some(stripe_key) = &cmd.stripe_customer_key
            && current.stripe_customer_key.as_deref() != Some(stripe_key.as_str())
        {
            return Err(AppError::new(
                super::Kind::Conflict,
                "STRIPE_CUSTOMER_KEY_IMMUTABLE",
                "stripe_customer_key cannot be changed",
            )
            .detail("field", "stripe_customer_key"));
        }
        let op = Operation::UpdateCustomer {
            customer_id: cmd.id.get(),
            name: cmd.name.as_ref().map(|n| n.as_str().to_string()),
            email: cmd.email.as_ref().map(|e| e.as_str().to_string()),
            charge_date: cmd.charge_date.as_ref().map(|d| d.as_str().to_string()),
            stripe_customer_key: current.stripe_customer_key,
        };
        let op = self.record(call, op).await?;
        self.drive(&op).await?.customer()
    }

    /// A page of customers and the token of the next page, if there is one.
    pub async fn list_customers(&self, q: ListCustomers) -> Result<(Vec<CustomerRow>, Option<String>), AppError> {
        let after = q.page.cursor.unwrap_or(0);
        let (size, email) = (q.page.size + 1, q.email.as_ref());
        let mut rows = self.read(|db| async move { customers::list(&db, after, size, email).await }).await?;
        let next = q.page.finish(&mut rows, "customer", |r| r.id);
        Ok((rows, next))
    }
}
