//! Saved cards: a customer's cards, kept by Stripe for later charges.
//! Nothing of a card is stored here (Stripe holds it, out of our PCI
//! scope): the service starts the saving (a SetupIntent, which Stripe.js
//! confirms with the card the customer gives), lists what Stripe
//! holds for the customer, and detaches a card. None of this moves money,
//! so no operation is recorded; the Stripe idempotency key still comes from
//! the client's key, so a retry does not make a second SetupIntent.

use super::{App, AppError, Call, replayed_failure, stripe_failure, stripe_key};
use crate::{
    domain::{customer::CustomerId, request::PaymentMethodId},
    stripe::{StripeError, form::Form, types},
};

/// A card to save for `customer`: Stripe.js takes it, with the client
/// secret of the SetupIntent made here.
#[derive(Debug)]
pub struct SetupPaymentMethod {
    pub customer: CustomerId,
}

fn not_in_stripe(id: CustomerId) -> AppError {
    AppError::unavailable("CUSTOMER_PENDING", format!("customer {} is not yet in Stripe; try again shortly", id.get()))
}

impl App {
    /// The customer's Stripe Customer id.
    async fn stripe_customer(&self, id: CustomerId) -> Result<String, AppError> {
        self.customer_on_primary(id).await?.stripe_customer_key.ok_or_else(|| not_in_stripe(id))
    }

    /// Starts saving a card: a SetupIntent for off-session use.
    pub async fn setup_payment_method(
        &self,
        cmd: SetupPaymentMethod,
        call: &Call,
    ) -> Result<types::SetupIntent, AppError> {
        let customer = self.stripe_customer(cmd.customer).await?;
        let form = Form::new()
            .set("customer", &customer)
            .set("usage", "off_session")
            .set("metadata[customerID]", cmd.customer.get());
        let reply = self
            .stripe
            .create_setup_intent(&form, &stripe_key("setup", call))
            .await
            .map_err(|e| if e.is_replayed_failure() { replayed_failure() } else { stripe_failure(e) })?;
        Ok(reply.object)
    }

    /// The customer's saved cards, newest first.
    pub async fn list_payment_methods(&self, id: CustomerId) -> Result<Vec<types::PaymentMethod>, AppError> {
        let customer = self.stripe_customer(id).await?;
        let reply = self.stripe.list_customer_payment_methods(&customer).await.map_err(stripe_failure)?;
        Ok(reply.object.data)
    }

    /// Detaches one of the customer's saved cards; a card that is not the
    /// customer's is not found. A retry with the client's key of a detach
    /// whose answer was lost finds the card detached already: it sends the
    /// same detach again, which Stripe answers as it did the first time.
    pub async fn detach_payment_method(
        &self,
        id: CustomerId,
        pm: PaymentMethodId,
        call: &Call,
    ) -> Result<types::PaymentMethod, AppError> {
        let customer = self.stripe_customer(id).await?;
        let not_found = || {
            AppError::not_found("PAYMENT_METHOD_NOT_FOUND", "the customer has no such saved card")
                .detail("field", "payment_method")
        };
        let found = match self.stripe.retrieve_payment_method(pm.as_str()).await {
            Ok(found) => found.object,
            Err(StripeError::Api(a)) if a.status == 404 => return Err(not_found()),
            Err(e) => return Err(stripe_failure(e)),
        };
        let detached_already = found.customer.is_none() && call.key().is_some();
        if found.customer.as_deref() != Some(customer.as_str()) && !detached_already {
            return Err(not_found());
        }
        // The customer is in the key: the same client key for another
        // customer's call is another request to Stripe, never its replay.
        let key = stripe_key(&format!("detach-{}-{}", id.get(), pm.as_str()), call);
        match self.stripe.detach_payment_method(pm.as_str(), &key).await {
            Ok(reply) => Ok(reply.object),
            // Not attached: detached before, and not by this request.
            Err(StripeError::Api(a))
                if a.status == 400
                    && (a.code.as_deref() == Some("payment_method_unexpected_state")
                        || a.message.as_deref().is_some_and(|m| m.contains("not attached"))) =>
            {
                Err(not_found())
            }
            // A failure Stripe saved under the key: whether the card is
            // detached is read, not guessed.
            Err(e) if e.is_replayed_failure() => {
                let now = self.stripe.retrieve_payment_method(pm.as_str()).await.map_err(stripe_failure)?.object;
                if now.customer.is_none() { Ok(now) } else { Err(replayed_failure()) }
            }
            Err(e) => Err(stripe_failure(e)),
        }
    }
}
