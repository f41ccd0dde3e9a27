//! The queue events travel through: the built-in PostgreSQL queue
//! (`notify.message`) or AWS SQS. Both give the relay `publish` and the
//! notifier `receive` / `done` / `retry_later` / `give_up`, and the operator
//! `dead_letters` / `redrive`.

use super::sqs::Sqs;
use crate::{
    domain::event::Event,
    store::{self, outbox::Unpublished},
};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Where events go.
#[derive(Debug, Clone)]
pub enum Target {
    /// `notify.message`, in the service's own database.
    Builtin,
    /// An SQS queue URL.
    Sqs(String),
}

impl Target {
    /// `QUEUE_URL`: unset or empty is the built-in queue; an http(s) URL is
    /// an SQS queue.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        match raw.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(Target::Builtin),
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(Target::Sqs(u.to_string())),
            Some(u) => Err(format!(
                "{u:?} is not an SQS queue URL such as https://sqs.us-east-1.amazonaws.com/123456789012/payments"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Queue {
    Builtin(PgPool),
    Sqs(Sqs),
}

/// A message as the notifier receives it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event, or why the body is not one.
    pub event: Result<Event, String>,
    /// Times received, this one included.
    pub receives: i32,
    handle: Handle,
}

#[derive(Debug, Clone)]
enum Handle {
    Builtin(Uuid),
    Sqs(String),
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub event_id: Option<Uuid>,
    pub kind: String,
    pub receives: i32,
    pub reason: String,
    pub dead_since: Option<DateTime<Utc>>,
}

impl Queue {
    pub async fn open(target: &Target, db: &PgPool) -> anyhow::Result<Self> {
        Ok(match target {
            Target::Builtin => Queue::Builtin(db.clone()),
            Target::Sqs(url) => Queue::Sqs(Sqs::connect(url).await?),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Queue::Builtin(_) => "the built-in queue (notify.message)".to_string(),
            Queue::Sqs(s) => format!("SQS {}", s.url),
        }
    }

    /// Publishes outbox rows in order and marks those published; how many.
    /// SQS may receive an event again if the process dies between sending
    /// and marking: delivery is at least once, and consumers deduplicate on
    /// the event id.
    pub async fn publish(&self, db: &PgPool, rows: &[Unpublished]) -> anyhow::Result<u64> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        match self {
            Queue::Builtin(_) => Ok(store::queue::publish_from_outbox(db, &seqs).await?),
            Queue::Sqs(sqs) => {
                let events: Vec<&Event> = rows.iter().map(|r| &r.body.0).collect();
                let sent = sqs.send_events(&events).await?;
                let mut conn = db.acquire().await?;
                let marked = store::outbox::mark_published(&mut conn, &seqs[..sent]).await?;
                if sent < rows.len() {
                    anyhow::bail!("SQS accepted {sent} of {} events; the rest are sent again next pass", rows.len());
                }
                Ok(marked)
            }
        }
    }

    pub async fn receive(&self, max: i64, wait: Duration, visibility: Duration) -> anyhow::Result<Vec<Delivery>> {
        match self {
            Queue::Builtin(db) => {
                let rows = store::queue::receive(db, max, visibility).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| Delivery {
                        event: serde_json::from_value(r.body.0).map_err(|e| format!("not an event: {e}")),
                        receives: r.receives,
                        handle: Handle::Builtin(r.event_id),
                    })
                    .collect())
            }
            Queue::Sqs(sqs) => {
                let msgs = sqs.receive(max.clamp(1, 10) as i32, wait, Some(visibility)).await?;
                Ok(msgs
                    .into_iter()
                    .map(|m| Delivery {
                        event: serde_json::from_str(&m.body).map_err(|e| format!("not an event: {e}")),
                        receives: m.receives,
                        handle: Handle::Sqs(m.receipt_handle),
                    })
                    .collect())
            }
        }
    }

    /// Whether an empty `receive` already waited (SQS long polling).
    pub fn waits(&self) -> bool {
        matches!(self, Queue::Sqs(_))
    }

    /// The message is handled: delete it.
    pub async fn done(&self, d: &Delivery) -> anyhow::Result<()> {
        match (self, &d.handle) {
            (Queue::Builtin(db), Handle::Builtin(id)) => Ok(store::queue::delete(db, *id).await?),
            (Queue::Sqs(sqs), Handle::Sqs(h)) => sqs.delete(h).await,
            _ => unreachable!("a delivery goes back to the queue it came from"),
        }
    }

    /// The attempt failed: show the message again after `delay`, unless
    /// this was the last attempt. The built-in queue then sets it dead (and
    /// says so: `true`); SQS moves it to its dead-letter queue by its
    /// redrive policy, later, on its own.
    pub async fn retry_later(
        &self,
        d: &Delivery,
        delay: Duration,
        max_receives: i32,
        error: &str,
    ) -> anyhow::Result<bool> {
        match (self, &d.handle) {
            (Queue::Builtin(db), Handle::Builtin(id)) if d.receives >= max_receives => {
                store::queue::set_dead(db, *id, error).await?;
                Ok(true)
            }
            (Queue::Builtin(db), Handle::Builtin(id)) => {
                store::queue::retry_later(db, *id, delay, error).await?;
                Ok(false)
            }
            (Queue::Sqs(sqs), Handle::Sqs(h)) => sqs.retry_later(h, delay).await.map(|()| false),
            _ => unreachable!("a delivery goes back to the queue it came from"),
        }
    }

    /// No attempt can succeed (not an event, an address refused for good):
    /// dead at once in the built-in queue; in SQS, shown again at once so
    /// that the redrive policy moves it after its last receive.
    pub async fn give_up(&self, d: &Delivery, error: &str) -> anyhow::Result<()> {
        match (self, &d.handle) {
            (Queue::Builtin(db), Handle::Builtin(id)) => Ok(store::queue::set_dead(db, *id, error).await?),
            (Queue::Sqs(sqs), Handle::Sqs(h)) => sqs.retry_later(h, Duration::ZERO).await,
            _ => unreachable!("a delivery goes back to the queue it came from"),
        }
    }

    /// The dead letters, with the reason they died: the built-in queue keeps
    /// it on the message; for SQS it is the notifier's last error for the
    /// event (`notify.mail`).
    pub async fn dead_letters(&self, db: &PgPool, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        match self {
            Queue::Builtin(_) => Ok(store::queue::dead(db, limit as i64)
                .await?
                .into_iter()
                .map(|r| DeadLetter {
                    event_id: Some(r.event_id),
                    kind: r.r#type,
                    receives: r.receives,
                    reason: r.last_error.unwrap_or_default(),
                    dead_since: r.dead_at,
                })
                .collect()),
            Queue::Sqs(sqs) => {
                let dlq = sqs.dead_letter_queue().await?;
                let msgs = dlq.peek_all(limit).await?;
                let events: Vec<Option<Event>> = msgs.iter().map(|m| serde_json::from_str(&m.body).ok()).collect();
                let ids: Vec<Uuid> = events.iter().flatten().map(|e| e.id).collect();
                let mails = store::mail::of(db, &ids).await?;
                Ok(events
                    .into_iter()
                    .zip(&msgs)
                    .map(|(e, m)| {
                        // The DLQ's own receive count grows with every look
                        // at it; the notifier's attempts are the ones that
                        // matter.
                        let mail = e.as_ref().and_then(|e| mails.get(&e.id));
                        let reason = match (&e, mail) {
                            (None, _) => "not an event".to_string(),
                            (Some(_), m) => m
                                .and_then(|r| r.last_error.clone())
                                .unwrap_or_else(|| "no attempt recorded".to_string()),
                        };
                        DeadLetter {
                            event_id: e.as_ref().map(|e| e.id),
                            receives: mail.map(|r| r.attempts).unwrap_or(m.receives),
                            kind: e.map(|e| e.kind).unwrap_or_default(),
                            reason,
                            dead_since: None,
                        }
                    })
                    .collect())
            }
        }
    }

    /// Moves dead letters (one by event id, or all) back to the queue; how many.
    pub async fn redrive(&self, db: &PgPool, only: Option<Uuid>) -> anyhow::Result<u64> {
        match self {
            Queue::Builtin(_) => Ok(store::queue::redrive(db, only).await?),
            Queue::Sqs(sqs) => sqs.dead_letter_queue().await?.move_to(sqs, only).await,
        }
    }

    /// Messages waiting and dead (approximate for SQS: waiting counts those
    /// in flight too).
    pub async fn depth(&self, db: &PgPool) -> anyhow::Result<(i64, i64)> {
        match self {
            Queue::Builtin(_) => Ok(store::queue::depth(db).await?),
            Queue::Sqs(sqs) => {
                let (visible, in_flight) = sqs.depth().await?;
                let (dead, dead_in_flight) = match sqs.dead_letter_queue().await {
                    Ok(dlq) => dlq.depth().await?,
                    Err(_) => (0, 0),
                };
                Ok((visible + in_flight, dead + dead_in_flight))
            }
        }
    }
}
