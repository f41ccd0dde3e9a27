//! Refunds that are not settled at once. On Stripe a refund can be answered
//! `pending` and become `succeeded` or `failed` later, which a client learns
//! from `refund.updated` / `refund.failed` or by reading the refund again.
//! By default every simulated refund succeeds at once; with
//! `POST /_sim/refunds {"pending_rate": 0.5, "settle_after_ms": 300,
//! "fail_rate": 0.2}` (or `--refunds` at start-up) a share of new refunds
//! start `pending` and a background task settles each one
//! `settle_after_ms` later: `failed` with probability `fail_rate`, else
//! `succeeded`. `"settle_after_ms": null` leaves them pending until a test
//! settles them with `POST /_sim/refunds/{id}/succeed` or `/fail`.

use crate::Sim;
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc;

/// How new refunds settle.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Options {
    /// Probability that a new refund starts `pending`.
    #[serde(default)]
    pub pending_rate: f64,
    /// Milliseconds until a pending refund settles; `null`: never by itself.
    #[serde(default = "default_settle_after_ms")]
    pub settle_after_ms: Option<u64>,
    /// Probability that a pending refund settles as `failed`.
    #[serde(default)]
    pub fail_rate: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self { pending_rate: 0.0, settle_after_ms: default_settle_after_ms(), fail_rate: 0.0 }
    }
}

fn default_settle_after_ms() -> Option<u64> {
    Some(300)
}

/// A pending refund and how it will settle.
struct Due {
    refund: String,
    after: Duration,
    fail: bool,
}

/// The options and the queue of refunds to settle.
pub struct Settlement {
    pub options: Mutex<Options>,
    queue: mpsc::UnboundedSender<Due>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Due>>>,
}

impl Default for Settlement {
    fn default() -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        Self { options: Mutex::default(), queue, receiver: Mutex::new(Some(receiver)) }
    }
}

impl Settlement {
    /// Whether a new refund starts pending.
    pub fn starts_pending(&self) -> bool {
        rand::rng().random::<f64>() < self.options.lock().pending_rate
    }

    /// Schedules the settling of a refund that started pending, as the
    /// options say now.
    pub fn schedule(&self, refund: &str) {
        let options = self.options.lock().clone();
        let Some(ms) = options.settle_after_ms else { return };
        let fail = rand::rng().random::<f64>() < options.fail_rate;
        let _ = self.queue.send(Due { refund: refund.to_string(), after: Duration::from_millis(ms), fail });
    }
}

/// Settles scheduled refunds until the simulator stops. A refund settled
/// meanwhile by a test (`/_sim/refunds/{id}/succeed` or `/fail`) is left
/// as it is.
pub async fn run(sim: Arc<Sim>) {
    let Some(mut receiver) = sim.refunds.receiver.lock().take() else { return };
    while let Some(due) = receiver.recv().await {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(due.after).await;
            if let Err(e) = crate::resources::refunds::settle_pending(&sim, &due.refund, !due.fail) {
                tracing::debug!(refund = %due.refund, error = %e.message, "refund already settled");
            }
            sim.flush_events();
        });
    }
}
