//! The notifier: takes events from the queue and mails the customer.
//!
//! For each message: an event of a type that is not mailed is deleted; else
//! the event is claimed in `notify.mail` (one row per event id), rendered,
//! sent, marked sent, and the message deleted. A copy of an event already
//! mailed is deleted without a mail. A failed send is retried with backoff
//! (the message shows again later); after the last attempt it goes to the
//! dead-letter queue. The one window left is a crash between the SMTP
//! server's "250 OK" and the row marked sent: the event is then sent again,
//! with the same `Message-ID`, which mailboxes use to drop the repeat.

use super::{
    mailer::{Mailer, SendError},
    queue::{Delivery, Queue},
    templates::Templates,
};
use crate::{domain::event::EventType, store::mail};
use futures::StreamExt;
use sqlx::PgPool;
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Event types that are mailed; others are dropped.
    pub mailed: HashSet<EventType>,
    /// Receives of a message before it is dead (built-in queue; SQS uses
    /// its redrive policy's maxReceiveCount).
    pub max_attempts: i32,
    /// First retry delay; doubled at each attempt, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Messages taken per receive.
    pub batch: i64,
    /// Mails sent at once.
    pub concurrency: usize,
    /// Pause when the built-in queue is empty; SQS long-polls this long.
    pub interval: Duration,
    /// How long a received message stays hidden while it is being mailed.
    pub visibility: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mailed: EventType::MAILED_BY_DEFAULT.into_iter().collect(),
            max_attempts: 5,
            retry_base: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
            batch: 10,
            concurrency: 16,
            interval: Duration::from_secs(1),
            visibility: Duration::from_secs(60),
        }
    }
}

impl Settings {
    /// The delay before attempt `receives + 1`.
    pub fn backoff(&self, receives: i32) -> Duration {
        let factor = 2u32.saturating_pow(receives.saturating_sub(1).clamp(0, 16) as u32);
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub received: u64,
    pub sent: u64,
    /// Copies of events already mailed, dropped.
    pub duplicates: u64,
    /// Events of types not mailed, dropped.
    pub skipped: u64,
    pub retried: u64,
    /// Given up on: to the dead-letter queue.
    pub dead: u64,
}

impl Pass {
    fn add(&mut self, o: &Pass) {
        self.received += o.received;
        self.sent += o.sent;
        self.duplicates += o.duplicates;
        self.skipped += o.skipped;
        self.retried += o.retried;
        self.dead += o.dead;
    }
}

#[derive(Clone)]
pub struct Notifier {
    db: PgPool,
    queue: Queue,
    mailer: Mailer,
    templates: Arc<Templates>,
    settings: Settings,
}

impl Notifier {
    pub fn new(db: PgPool, queue: Queue, mailer: Mailer, templates: Templates, settings: Settings) -> Self {
        Notifier { db, queue, mailer, templates: Arc::new(templates), settings }
    }

    /// How mails leave, for people.
    pub fn transport(&self) -> String {
        self.mailer.describe()
    }

    /// Receives one batch and handles it, stopping between two messages
    /// once `stop` is set: a mail being sent is finished and recorded, and
    /// the messages not yet looked at come back after their visibility
    /// timeout.
    async fn pass_until(&self, stop: &watch::Receiver<bool>) -> anyhow::Result<Pass> {
        let batch = self.queue.receive(self.settings.batch, self.settings.interval, self.settings.visibility).await?;
        // Mails of one batch go out side by side: each waits mostly on the
        // SMTP server and the database, not on this process.
        let results: Vec<anyhow::Result<Pass>> = futures::stream::iter(batch)
            .map(|d| self.one(d, stop.clone()))
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut total = Pass::default();
        for r in results {
            total.add(&r?);
        }
        Ok(total)
    }

    /// One message, unless `stop` is set (it then comes back later).
    async fn one(&self, d: Delivery, stop: watch::Receiver<bool>) -> anyhow::Result<Pass> {
        let mut p = Pass::default();
        if !*stop.borrow() {
            p.received = 1;
            self.handle(&d, &mut p).await?;
        }
        Ok(p)
    }

    async fn handle(&self, d: &Delivery, p: &mut Pass) -> anyhow::Result<()> {
        let event = match &d.event {
            Ok(e) => e,
            Err(why) => {
                tracing::warn!(reason = %why, "a message that is not an event: to the dead-letter queue");
                self.queue.give_up(d, why).await?;
                p.dead += 1;
                return Ok(());
            }
        };
        let mailed = EventType::parse(&event.kind).is_some_and(|t| self.settings.mailed.contains(&t));
        if !mailed {
            self.queue.done(d).await?;
            p.skipped += 1;
            return Ok(());
        }
        match mail::claim(&self.db, event.id, &event.kind, self.settings.visibility).await? {
            mail::Claim::Done => {
                tracing::info!(event = %event.id, kind = %event.kind, "event mailed already: copy dropped");
                self.queue.done(d).await?;
                p.duplicates += 1;
                return Ok(());
            }
            mail::Claim::Busy => {
                self.queue
                    .retry_later(d, self.settings.retry_base, i32::MAX, "being mailed by another notifier")
                    .await?;
                return Ok(());
            }
            mail::Claim::Send(_) => {}
        }
        let outcome = match self.templates.render(event) {
            Ok(m) => self.mailer.send(&m).await,
            Err(e) => Err(SendError::Permanent(e)),
        };
        match outcome {
            Ok(()) => {
                mail::sent(&self.db, event.id).await?;
                self.queue.done(d).await?;
                tracing::info!(event = %event.id, kind = %event.kind, attempt = d.receives, "mailed");
                crate::meter::mail("sent");
                p.sent += 1;
            }
            Err(SendError::Permanent(why)) => {
                mail::failed(&self.db, event.id, &why).await?;
                tracing::warn!(event = %event.id, kind = %event.kind, reason = %why, "mail refused for good: to the dead-letter queue");
                crate::meter::mail("dead");
                self.queue.give_up(d, &why).await?;
                p.dead += 1;
            }
            Err(SendError::Transient(why)) => {
                mail::failed(&self.db, event.id, &why).await?;
                let delay = self.settings.backoff(d.receives);
                if self.queue.retry_later(d, delay, self.settings.max_attempts, &why).await? {
                    tracing::warn!(event = %event.id, kind = %event.kind, attempts = d.receives, reason = %why, "mail failed at its last attempt: to the dead-letter queue");
                    crate::meter::mail("dead");
                    p.dead += 1;
                } else {
                    tracing::info!(event = %event.id, kind = %event.kind, attempt = d.receives, retry_in_s = delay.as_secs_f64(), reason = %why, "mail failed; will retry");
                    crate::meter::mail("retried");
                    p.retried += 1;
                }
            }
        }
        Ok(())
    }

    /// Passes until `stop`, logging the counts of each pass that did something.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(queue = %self.queue.describe(), transport = %self.mailer.describe(), "notifier started");
        let mut passes: u64 = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            // Not cancelled by `stop`: a mail in flight is finished and
            // recorded (else it could be sent twice); see `pass_until`.
            let work = self.pass_until(&stop).await;
            passes += 1;
            let busy = match work {
                Ok(p) => {
                    if p.received > 0 {
                        let (waiting, dead) = self.queue.depth(&self.db).await.unwrap_or((-1, -1));
                        tracing::info!(
                            received = p.received,
                            sent = p.sent,
                            retried = p.retried,
                            dead = p.dead,
                            duplicates = p.duplicates,
                            skipped = p.skipped,
                            queue_waiting = waiting,
                            queue_dead = dead,
                            "notifier pass"
                        );
                    }
                    if passes % 3600 == 1 {
                        let _ = mail::purge(&self.db, Duration::from_secs(30 * 24 * 3600)).await;
                    }
                    p.received > 0
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "notifier pass failed; retrying");
                    false
                }
            };
            // SQS long-polls inside `receive`; the built-in queue is polled.
            let wait = match (busy, self.queue.waits()) {
                (true, _) => continue,
                (false, true) => Duration::from_millis(200),
                (false, false) => self.settings.interval,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        tracing::info!("notifier stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_up_to_the_ceiling() {
        let s =
            Settings { retry_base: Duration::from_secs(10), retry_max: Duration::from_secs(60), ..Default::default() };
        let delays: Vec<u64> = (1..=5).map(|n| s.backoff(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
    }
}
