//! Where a request's time goes: the service's own work, its database
//! statements and its Stripe calls, returned to the caller as a
//! `Server-Timing` header (`total`, `db`, `stripe`, in milliseconds), so a
//! caller can tell our overhead from Stripe's without asking us.
//!
//! The request middleware runs each request inside [`measure`]; the Stripe
//! client adds each call's time with [`add_stripe`]; database time comes
//! from sqlx's own per-statement events (target `sqlx::query`, which carry
//! each statement's execution time), summed by [`DbTimeLayer`]. Statements
//! run in the request's task, so they add to that request only. Waiting for
//! a pool connection is not database time: it shows as our own overhead.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{Layer, layer::Context};

tokio::task_local! {
    static SPENT: Arc<Spent>;
}

/// Time spent so far by one request, in microseconds.
#[derive(Debug, Default)]
pub struct Spent {
    db_us: AtomicU64,
    stripe_us: AtomicU64,
}

impl Spent {
    pub fn db(&self) -> Duration {
        Duration::from_micros(self.db_us.load(Ordering::Relaxed))
    }

    pub fn stripe(&self) -> Duration {
        Duration::from_micros(self.stripe_us.load(Ordering::Relaxed))
    }
}

fn add(d: Duration, field: fn(&Spent) -> &AtomicU64) {
    let _ = SPENT.try_with(|s| field(s).fetch_add(d.as_micros() as u64, Ordering::Relaxed));
}

/// Counts `d` as Stripe time of the request under way, if any.
pub fn add_stripe(d: Duration) {
    add(d, |s| &s.stripe_us);
}

/// Counts the time until it is dropped as Stripe time of the request under
/// way, however the call ends.
pub struct StripeCall(Instant);

impl StripeCall {
    pub fn start() -> Self {
        Self(Instant::now())
    }
}

impl Drop for StripeCall {
    fn drop(&mut self) {
        add_stripe(self.0.elapsed());
    }
}

/// Counts `d` as database time of the request under way, if any.
pub fn add_db(d: Duration) {
    add(d, |s| &s.db_us);
}

/// The Stripe time of the request under way so far.
pub fn stripe_so_far() -> Duration {
    SPENT.try_with(|s| s.stripe()).unwrap_or_default()
}

/// Runs `f` as one request; its output, and the `Server-Timing` value.
pub async fn measure<F: Future>(f: F) -> (F::Output, String) {
    let spent = Arc::new(Spent::default());
    let start = Instant::now();
    let out = SPENT.scope(spent.clone(), f).await;
    (out, header(start.elapsed(), &spent))
}

/// `f`, counting its time to the request under way (if any), wherever it
/// runs: for a request's work moved to a task of its own.
pub fn carry<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let spent = SPENT.try_with(Arc::clone).unwrap_or_default();
    SPENT.scope(spent, f)
}

/// The `Server-Timing` value: `total;dur=…, db;dur=…, stripe;dur=…`.
pub fn header(total: Duration, spent: &Spent) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("total;dur={:.1}, db;dur={:.1}, stripe;dur={:.1}", ms(total), ms(spent.db()), ms(spent.stripe()))
}

/// Sums the execution time of each SQL statement (sqlx's `sqlx::query`
/// events, field `elapsed_secs`) into the request that ran it.
pub struct DbTimeLayer;

impl DbTimeLayer {
    /// The events it needs: sqlx's statement events, at any level.
    pub fn filter() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new().with_target("sqlx::query", tracing::Level::TRACE)
    }
}

struct Elapsed(Option<f64>);

impl Visit for Elapsed {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber> Layer<S> for DbTimeLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if SPENT.try_with(|_| ()).is_err() {
            return;
        }
        let mut elapsed = Elapsed(None);
        event.record(&mut elapsed);
        if let Some(secs) = elapsed.0.filter(|s| s.is_finite() && *s >= 0.0) {
            add_db(Duration::from_secs_f64(secs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn time_is_counted_only_for_the_request_that_spent_it() {
        add_stripe(Duration::from_millis(5));
        let ((), header) = measure(async {
            add_stripe(Duration::from_millis(300));
            add_db(Duration::from_millis(2));
            add_db(Duration::from_micros(1500));
        })
        .await;
        assert!(header.ends_with("db;dur=3.5, stripe;dur=300.0"), "{header}");
        assert!(header.starts_with("total;dur="), "{header}");
    }
}
