//! Notifications: every payment, refund, dispute and customer change writes
//! an event to the outbox in its own transaction (`store::outbox`); the
//! [`relay`] publishes the outbox in order to a [`queue`] (built-in or SQS);
//! the [`notifier`] mails the customer, at most once per event, retrying
//! with backoff and leaving what cannot be delivered in the dead-letter
//! queue for `amazing-payments dlq list|redrive`.

pub mod mailer;
pub mod notifier;
pub mod queue;
pub mod relay;
pub mod sqs;
pub mod templates;
