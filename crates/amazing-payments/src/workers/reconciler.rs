//! The reconciler: keeps our records equal to Stripe's when a request could
//! not finish the job itself.
//!
//! Each pass, with bounded work:
//! 1. operations left pending (a crash, a timeout, a lost answer) and older
//!    than `min_age` are driven again with their own Stripe idempotency key,
//!    so Stripe either does them now or replays what it already did;
//! 2. payments waiting on something outside (3-D Secure, processing, an
//!    authorization past its deadline) are read back from Stripe;
//! 3. expired client idempotency keys are purged.
//!
//! Corrections are recorded in the payment history with source
//! `reconciler`. Several instances may run it at once: operations are taken
//! with `FOR UPDATE SKIP LOCKED` and pushed back while they are worked on,
//! and applying Stripe's answer is idempotent.

use crate::{
    app::App,
    store::{idempotency, payments},
};
use std::time::Duration;
use tokio::sync::watch;

/// How the reconciler works.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between passes when there is nothing to do.
    pub interval: Duration,
    /// Operations and payments per pass.
    pub batch: i64,
    /// Leave younger operations to the request that started them.
    pub min_age: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { interval: Duration::from_secs(10), batch: 100, min_age: Duration::from_secs(30) }
    }
}

/// What one pass did, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Pending operations taken.
    pub operations: usize,
    /// Of those, finished (whatever Stripe's answer).
    pub finished: usize,
    /// Waiting payments read back.
    pub payments: usize,
    /// Of those, changed by what Stripe said.
    pub corrected: usize,
    /// Expired idempotency keys deleted.
    pub purged: u64,
}

impl Pass {
    /// Whether the pass found work.
    pub fn busy(&self) -> bool {
        self.operations + self.payments > 0
    }
}

/// One pass.
pub async fn pass(app: &App, s: &Settings) -> anyhow::Result<Pass> {
    let mut done = Pass::default();
    for op in payments::take_due_operations(&app.db, s.batch, s.min_age).await? {
        done.operations += 1;
        match app.drive_from(&op, payments::Source::Reconciler).await {
            Ok(_) => done.finished += 1,
            // A refusal or a decline is a final answer too; only an unknown
            // outcome leaves the operation pending.
            Err(e) if e.kind != crate::app::Kind::Unavailable && e.kind != crate::app::Kind::Internal => {
                done.finished += 1
            }
            Err(e) => tracing::warn!(
                operation = op.id,
                payment_id = op.payment_id,
                reason = e.reason,
                "operation still unfinished"
            ),
        }
    }
    for row in payments::waiting(&app.db, s.batch, s.min_age).await? {
        done.payments += 1;
        let Some(pi) = row.stripe_payment_intent_id.clone() else { continue };
        match app.refresh_from(row.id, &pi, payments::Source::Reconciler, "reconciled with Stripe").await {
            Ok(now) if now.status != row.status => done.corrected += 1,
            Ok(_) => {}
            Err(e) => tracing::warn!(payment_id = row.id, reason = e.reason, "payment could not be read back"),
        }
    }
    done.purged = idempotency::purge(&app.db, 1000).await?;
    if done.busy() || done.purged > 0 {
        tracing::info!(
            operations = done.operations,
            finished = done.finished,
            payments = done.payments,
            corrected = done.corrected,
            purged = done.purged,
            "reconciler pass"
        );
    }
    Ok(done)
}

/// Passes until nothing is left to do now (for `amazing-payments reconcile --once`).
pub async fn until_idle(app: &App, s: &Settings) -> anyhow::Result<Pass> {
    let mut total = Pass::default();
    loop {
        let p = pass(app, s).await?;
        total.operations += p.operations;
        total.finished += p.finished;
        total.payments += p.payments;
        total.corrected += p.corrected;
        total.purged += p.purged;
        if !p.busy() || p.finished + p.corrected == 0 {
            return Ok(total);
        }
    }
}

/// Passes until `stop` turns true: at once again after a busy pass, else
/// after `interval` (with jitter, so instances spread out).
pub async fn run(app: App, s: Settings, mut stop: watch::Receiver<bool>) {
    loop {
        let busy = match pass(&app, &s).await {
            Ok(p) => p.busy(),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reconciler pass failed");
                false
            }
        };
        let wait = if busy { Duration::from_millis(100) } else { s.interval.mul_f64(rand::random_range(0.8..1.2)) };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
