//! The reconciler: keeps our records equal to Stripe's when a request could
//! not finish the job itself.
//!
//! Each pass, with bounded work:
//! 1. operations left pending (a crash, a timeout, a lost answer) and older
//!    than `min_age` are driven again with their own Stripe idempotency key,
//!    so Stripe either does them now or replays what it already did;
//! 2. payments waiting on something outside (3-D Secure, processing, an
//!    authorization past its deadline) are read back from Stripe;
//! 3. refunds Stripe may still settle (pending) are read back;
//! 4. expired client idempotency keys are purged (ending their binding).
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
    /// How often a failed payment (whose PaymentIntent Stripe keeps open)
    /// is read back.
    pub failed_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            batch: 100,
            min_age: Duration::from_secs(30),
            failed_every: Duration::from_secs(15 * 60),
        }
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
    /// Pending refunds read back.
    pub refunds: usize,
    /// Expired idempotency keys deleted.
    pub purged: u64,
}

impl Pass {
    /// Whether the pass found work.
    pub fn busy(&self) -> bool {
        self.operations + self.payments + self.refunds > 0
    }
}

/// One pass.
pub async fn pass(app: &App, s: &Settings) -> anyhow::Result<Pass> {
    let mut done = Pass::default();
    // Taken for longer than driving one operation can take, so that no
    // other reconciler drives it at the same time.
    let claim = app.stripe.settings().worst_case() + Duration::from_secs(10);
    for op in payments::take_due_operations(&app.db, s.batch, s.min_age, claim).await? {
        done.operations += 1;
        match app.drive_from(&op, payments::Source::RECONCILER).await {
            Ok(_) => done.finished += 1,
            // A refusal or a decline is a final answer too; only an unknown
            // outcome leaves the operation pending.
            Err(e) if e.kind != crate::app::Kind::Unavailable && e.kind != crate::app::Kind::Internal => {
                done.finished += 1
            }
            Err(e) => tracing::warn!(
                operation = op.id,
                payment_id = op.op.payment_id(),
                reason = e.reason,
                "operation still unfinished"
            ),
        }
    }
    for row in payments::take_waiting(&app.db, s.batch, s.min_age, s.failed_every).await? {
        done.payments += 1;
        let Some(pi) = row.stripe_payment_intent_id.clone() else { continue };
        match app.refresh_from(row.id, &pi, payments::Source::RECONCILER, "reconciled with Stripe").await {
            Ok(now) if now.status != row.status => done.corrected += 1,
            Ok(_) => {}
            Err(e) => tracing::warn!(payment_id = row.id, reason = e.reason, "payment could not be read back"),
        }
    }
    for refund in payments::take_waiting_refunds(&app.db, s.batch, s.min_age).await? {
        done.refunds += 1;
        let (Some(stripe_id), Some(payment)) =
            (refund.stripe_refund_id.as_deref(), payments::get(&app.db, refund.payment_id).await?)
        else {
            continue;
        };
        let before = refund.status.clone();
        match app.refresh_refund(stripe_id, &payment, payments::Source::RECONCILER).await {
            Ok(()) => {
                let now = payments::get_refund(&app.db, refund.id).await?.map(|r| r.status);
                if now.as_deref() != Some(before.as_str()) {
                    done.corrected += 1;
                }
            }
            Err(e) => tracing::warn!(refund_id = refund.id, reason = e.reason, "refund could not be read back"),
        }
    }
    crate::meter::reconciler_corrected("operation_finished", done.finished as u64);
    crate::meter::reconciler_corrected("record_corrected", done.corrected as u64);
    done.purged = idempotency::purge(&app.db, 1000).await?;
    if done.busy() || done.purged > 0 {
        tracing::info!(
            operations = done.operations,
            finished = done.finished,
            payments = done.payments,
            refunds = done.refunds,
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
        total.refunds += p.refunds;
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
        let passed = pass(&app, &s).await;
        crate::meter::reconciler_pass(passed.is_ok());
        let busy = match passed {
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
