//! The answer a request with a client key will be replayed with, saved in
//! the transaction that settles its operation rather than in one of its own:
//! a payment's happy path then commits twice (its record before Stripe, its
//! outcome after), the key's claim and its answer folded into them.
//!
//! The door that took the request knows how its answer is written; it runs
//! the use case inside [`Answer::scope`] with a function from the result
//! to that answer. Whoever settles the request's own operation in this task
//! ([`save_with`]) saves it, under the holder's fencing token. Other drivers
//! (the reconciler, webhooks, another request) run in other tasks and save
//! nothing.

use crate::store::{
    idempotency,
    payments::{OperationRow, PaymentRow, RefundRow},
};
use serde_json::Value;
use sqlx::PgConnection;
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};
use uuid::Uuid;

/// What an operation's outcome gives its request to answer with.
#[derive(Debug)]
pub enum Answered {
    Payment(Box<PaymentRow>),
    Refund { refund: RefundRow, currency: String },
}

/// From an outcome to the answer saved for the key, when the door answers
/// that outcome as it is.
pub type Render = Box<dyn Fn(&Answered) -> Option<Value> + Send + Sync>;

/// What one keyed request will answer, and whether it is saved yet.
pub struct Answer {
    scope: i64,
    key: String,
    holder: Uuid,
    render: Render,
    saved: AtomicBool,
}

tokio::task_local! {
    static ANSWER: Arc<Answer>;
}

impl Answer {
    pub fn new(scope: i64, key: String, holder: Uuid, render: Render) -> Arc<Self> {
        Arc::new(Self { scope, key, holder, render, saved: AtomicBool::new(false) })
    }

    /// Runs `f` (the use case) as this request.
    pub async fn scope<F: Future>(self: Arc<Self>, f: F) -> F::Output {
        ANSWER.scope(self, f).await
    }

    /// Whether the answer was saved with the operation's outcome (and
    /// committed, if the use case then succeeded).
    pub fn saved(&self) -> bool {
        self.saved.load(Ordering::Relaxed)
    }
}

/// Saves in `conn`'s transaction the answer of the request that asked for
/// `op`, made from `result`, if that request runs in this task and its door
/// answers such a result as it is.
pub(crate) async fn save_with(
    conn: &mut PgConnection,
    op: &OperationRow,
    result: impl FnOnce() -> Answered,
) -> Result<(), sqlx::Error> {
    let Ok(answer) = ANSWER.try_with(Arc::clone) else { return Ok(()) };
    if op.request_key.as_deref() != Some(answer.key.as_str()) {
        return Ok(());
    }
    let Some(response) = (answer.render)(&result()) else { return Ok(()) };
    if idempotency::complete_in(conn, answer.scope, &answer.key, answer.holder, &response).await? {
        answer.saved.store(true, Ordering::Relaxed);
    }
    Ok(())
}
