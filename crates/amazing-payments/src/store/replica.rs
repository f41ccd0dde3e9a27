//! Reads from a streaming replica (`DATABASE_READ_URL`) that never go back
//! in time.
//!
//! Gets and lists may be answered by a replica, everything else by the
//! primary. A read goes to the replica only when the replica has replayed
//! every write the primary had committed when the read began, so nobody
//! reads a state older than one they were answered before: a payment just
//! made, captured or refunded is there, whichever instance made it. The
//! check costs two positions:
//!
//! - the primary's WAL position, read once for all the reads that began
//!   before the reading started ([`Sampler`]): under load one small query on
//!   the primary serves many reads;
//! - the replica's replay position, known from the last look (it only moves
//!   forward) or read again, shared the same way.
//!
//! When the replica is behind that position the read is answered by the
//! primary at once; it never waits for the replica. A watchdog looks at
//! the replica four times a second on a connection of its own: while it
//! cannot be reached, lags more than `DATABASE_READ_MAX_LAG`, or is no
//! longer in recovery (promoted, so it may have left the primary's
//! history), every read goes to the primary without asking, and health says
//! why. A read that the replica fails for want of a connection is run again
//! on the primary.

use sqlx::{PgPool, postgres::PgConnectOptions};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How long the positions a read needs are waited for before the read goes
/// to the primary.
const POSITION_WITHIN: Duration = Duration::from_secs(1);

/// How long a replica that failed a read is left out.
const HELD_DOWN: Duration = Duration::from_secs(5);

/// How often the watchdog looks.
const EVERY: Duration = Duration::from_millis(250);

/// What the watchdog last found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not looked at yet: reads go to the primary.
    Starting,
    /// Reachable, in recovery and within the lag allowed: it takes reads.
    Up,
    /// Further behind the primary than allowed.
    Lagging,
    /// Cannot be reached or does not answer.
    Down,
    /// Answers, but is not in recovery: promoted, or not a replica at all.
    NotAReplica,
    /// In recovery, but on another history than the primary's: a replica
    /// of another cluster, or on another timeline (one that still follows
    /// a primary that was failed over from, or has not yet taken the new
    /// primary's timeline at a restartpoint of its own).
    Detached,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Up => "up",
            State::Lagging => "lagging",
            State::Down => "down",
            State::NotAReplica => "not_a_replica",
            State::Detached => "detached",
        }
    }
}

/// The replica's state, and how far behind the primary it was when last
/// seen (`None` when that could not be told).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Status {
    pub state: State,
    pub lag: Option<Duration>,
}

/// A position read from PostgreSQL, shared by the reads that began before
/// the reading started. What it knows belongs to a generation, which
/// [`Sampler::forget`] ends: a reading begun before is then thrown away.
#[derive(Debug, Default)]
struct Sampler {
    /// When the last reading started, what it read, and its generation.
    last: tokio::sync::Mutex<Option<(Instant, u64, u64)>>,
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    generation: u64,
    /// The highest position read in this generation.
    highest: u64,
}

impl Sampler {
    /// A position read after `since`: the last one if its reading started
    /// after `since`, else a new one (one reading at a time; those waiting
    /// for it take the next one's). `None` if it was forgotten meanwhile.
    async fn after<F>(&self, since: Instant, read: F) -> Result<Option<u64>, sqlx::Error>
    where
        F: std::future::Future<Output = Result<u64, sqlx::Error>>,
    {
        let generation = self.known.lock().unwrap().generation;
        let mut last = self.last.lock().await;
        if let Some((at, position, g)) = *last
            && g == generation
            && at >= since
        {
            return Ok(Some(position));
        }
        let at = Instant::now();
        let position = read.await?;
        {
            let mut known = self.known.lock().unwrap();
            if known.generation != generation {
                return Ok(None);
            }
            known.highest = known.highest.max(position);
        }
        *last = Some((at, position, generation));
        Ok(Some(position))
    }

    fn highest(&self) -> u64 {
        self.known.lock().unwrap().highest
    }

    fn note(&self, position: u64) {
        let mut known = self.known.lock().unwrap();
        known.highest = known.highest.max(position);
    }

    /// Forgets what was read, and whatever a reading under way brings: the
    /// server behind the URL may have changed (rebuilt, restarted from an
    /// older backup), and replay positions only move forward on one server.
    fn forget(&self) {
        let mut known = self.known.lock().unwrap();
        known.generation += 1;
        known.highest = 0;
    }
}

/// The primary's WAL position: every transaction committed before it was
/// read lies at or below it. A commit waits for its WAL to be flushed, so
/// the position written is enough, unless commits do not wait
/// (`synchronous_commit = off`, read in a session of the service's own role
/// and database): then the position inserted, which a replica reaches only
/// once it is flushed.
async fn primary_position(db: &PgPool) -> Result<u64, sqlx::Error> {
    let at: i64 = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(CASE WHEN current_setting('synchronous_commit') = 'off' \
         THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_lsn() END, '0/0')::bigint",
    )
    .fetch_one(db)
    .await?;
    Ok(at as u64)
}

/// The history a server's WAL belongs to: its cluster's system identifier
/// and its timeline. Positions compare only within one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lineage {
    system: i64,
    timeline: i64,
}

async fn primary_lineage(db: &PgPool) -> Result<Lineage, sqlx::Error> {
    let (system, timeline): (i64, String) = sqlx::query_as(
        "SELECT (SELECT system_identifier FROM pg_control_system())::bigint, \
         substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
    )
    .fetch_one(db)
    .await?;
    Ok(Lineage { system, timeline: i64::from_str_radix(&timeline, 16).unwrap_or(-1) })
}

/// How far the replica has replayed: what a query on it now sees.
async fn replayed_position<'c>(db: impl sqlx::PgExecutor<'c>) -> Result<u64, sqlx::Error> {
    let at: Option<i64> =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint").fetch_one(db).await?;
    Ok(at.unwrap_or(0) as u64)
}

/// Where a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Replica,
    Primary,
}

/// The read pools: the primary and its replica.
#[derive(Clone, Debug)]
pub struct Replica {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    primary: PgPool,
    replica: PgPool,
    max_lag: Duration,
    primary_at: Sampler,
    replayed: Sampler,
    status: Mutex<Status>,
    /// Until when a replica that failed a read stays down, whatever its
    /// watchdog sees: one that answers a ping but not reads must not flap.
    held_down_until: Mutex<Option<Instant>>,
}

impl Replica {
    /// Reads through `replica` when it can serve them, else through
    /// `primary`; a replica further behind than `max_lag` serves none.
    pub fn new(primary: PgPool, replica: PgPool, max_lag: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                primary,
                replica,
                max_lag,
                primary_at: Sampler::default(),
                replayed: Sampler::default(),
                status: Mutex::new(Status { state: State::Starting, lag: None }),
                held_down_until: Mutex::new(None),
            }),
        }
    }

    pub fn status(&self) -> Status {
        *self.inner.status.lock().unwrap()
    }

    pub fn replica_pool(&self) -> &PgPool {
        &self.inner.replica
    }

    /// Where a read beginning now goes: the replica if it is up and has
    /// replayed what the primary had committed by now.
    pub async fn target(&self) -> Target {
        let i = &self.inner;
        if self.status().state != State::Up {
            return Target::Primary;
        }
        let began = Instant::now();
        let needed = match tokio::time::timeout(
            POSITION_WITHIN,
            i.primary_at.after(began, primary_position(&i.primary)),
        )
        .await
        {
            Ok(Ok(Some(at))) => at,
            // The primary's own trouble is the primary read's to report.
            _ => return Target::Primary,
        };
        if i.replayed.highest() >= needed {
            return Target::Replica;
        }
        let asked = Instant::now();
        match tokio::time::timeout(POSITION_WITHIN, i.replayed.after(asked, replayed_position(&i.replica))).await {
            Ok(Ok(Some(at))) if at >= needed => Target::Replica,
            _ => Target::Primary,
        }
    }

    /// A read on the replica failed for want of a connection: until the
    /// watchdog sees it answer again, reads go to the primary.
    pub fn lost(&self) {
        let mut status = self.inner.status.lock().unwrap();
        *self.inner.held_down_until.lock().unwrap() = Some(Instant::now() + HELD_DOWN);
        if status.state == State::Up {
            tracing::warn!("read replica: a read could not reach it; reads go to the primary");
            *status = Status { state: State::Down, lag: None };
            self.inner.replayed.forget();
            crate::meter::replica(false, None);
        }
    }

    fn set(&self, mut next: Status) {
        let held = self.inner.held_down_until.lock().unwrap().is_some_and(|until| Instant::now() < until);
        if next.state == State::Up && held {
            next.state = State::Down;
        }
        let mut status = self.inner.status.lock().unwrap();
        if next.state != State::Up {
            self.inner.replayed.forget();
        }
        if status.state != next.state {
            let lag = next.lag.map(|l| l.as_secs_f64());
            match next.state {
                State::Up => tracing::info!(lag_seconds = lag, "read replica: up, taking reads"),
                State::Starting => {}
                other => tracing::warn!(
                    state = other.as_str(),
                    lag_seconds = lag,
                    "read replica: not taking reads; they go to the primary"
                ),
            }
        }
        *status = next;
        crate::meter::replica(next.state == State::Up, next.lag);
    }

    /// The watchdog: looks at the replica four times a second until
    /// `stopped` turns true (or its sender is dropped).
    pub async fn watch(self, options: PgConnectOptions, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut conn: Option<sqlx::PgConnection> = None;
        let mut history = History::default();
        let mut primary: Option<Lineage> = None;
        while !*stopped.borrow() {
            let next = self.look(&mut conn, &options, &mut history, &mut primary).await;
            self.set(next);
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                changed = stopped.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One look: the primary's position, then the replica's.
    async fn look(
        &self,
        conn: &mut Option<sqlx::PgConnection>,
        options: &PgConnectOptions,
        history: &mut History,
        primary: &mut Option<Lineage>,
    ) -> Status {
        use sqlx::Connection;
        const WITHIN: Duration = Duration::from_secs(2);
        let p = &self.inner.primary;
        let seen = tokio::time::timeout(WITHIN, async {
            Ok::<_, sqlx::Error>((primary_lineage(p).await?, primary_position(p).await?))
        })
        .await;
        if let Ok(Ok((lineage, at))) = seen {
            if *primary != Some(lineage) {
                // Another primary (a failover): its positions are another
                // history's.
                *history = History::default();
                *primary = Some(lineage);
            }
            history.push(Instant::now(), at, self.inner.max_lag);
        }
        if conn.is_none() {
            match tokio::time::timeout(WITHIN, sqlx::PgConnection::connect_with(options)).await {
                Ok(Ok(c)) => *conn = Some(c),
                _ => return Status { state: State::Down, lag: None },
            }
        }
        let c = conn.as_mut().expect("connected above");
        let seen = tokio::time::timeout(WITHIN, async {
            let (recovering, system, timeline): (bool, i64, i64) = sqlx::query_as(
                "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())::bigint, \
                 COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), \
                          (SELECT timeline_id FROM pg_control_checkpoint()))::bigint",
            )
            .fetch_one(&mut *c)
            .await?;
            Ok::<_, sqlx::Error>((recovering, Lineage { system, timeline }, replayed_position(&mut *c).await?))
        })
        .await;
        let (recovering, lineage, replayed) = match seen {
            Ok(Ok(seen)) => seen,
            _ => {
                *conn = None;
                return Status { state: State::Down, lag: None };
            }
        };
        if !recovering {
            return Status { state: State::NotAReplica, lag: None };
        }
        match *primary {
            Some(p) if p == lineage => {}
            Some(_) => return Status { state: State::Detached, lag: None },
            // The primary has not been read yet: nothing to compare with.
            None => return Status { state: State::Starting, lag: None },
        }
        self.inner.replayed.note(replayed);
        let lag = history.lag(replayed, Instant::now());
        let state = match lag {
            Some(lag) if lag <= self.inner.max_lag => State::Up,
            Some(_) => State::Lagging,
            // The primary has not been read yet: nothing to compare with.
            None => State::Starting,
        };
        Status { state, lag }
    }
}

/// The primary's positions over the last while, to tell how long ago the
/// primary passed the point the replica has replayed to.
#[derive(Debug, Default)]
struct History {
    seen: VecDeque<(Instant, u64)>,
}

impl History {
    fn push(&mut self, at: Instant, position: u64, max_lag: Duration) {
        if self.seen.back().is_none_or(|&(_, last)| position > last) {
            self.seen.push_back((at, position));
        }
        // Only the first position past the replica's matters, and a lag
        // beyond twice the allowed one needs no precision.
        let keep = (max_lag * 2).max(Duration::from_secs(2));
        while self.seen.len() > 1 && self.seen.front().is_some_and(|&(t, _)| at.duration_since(t) > keep) {
            // The oldest is dropped only if the next also predates the window,
            // so that a lag past the window still reads as past it.
            if self.seen.get(1).is_some_and(|&(t, _)| at.duration_since(t) > keep) {
                self.seen.pop_front();
            } else {
                break;
            }
        }
    }

    /// How far behind a replica that has replayed to `replayed` is: zero if
    /// it has everything the primary had when last read, else the time
    /// since the primary first held something it lacks. `None` before the
    /// primary was read.
    fn lag(&self, replayed: u64, now: Instant) -> Option<Duration> {
        let &(_, latest) = self.seen.back()?;
        if replayed >= latest {
            return Some(Duration::ZERO);
        }
        let first_ahead = self.seen.iter().find(|&&(_, at)| at > replayed).map(|&(t, _)| t)?;
        Some(now.duration_since(first_ahead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn a_replica_that_has_replayed_what_the_primary_last_had_is_not_behind() {
        let t = Instant::now();
        let mut h = History::default();
        h.push(t, 100, Duration::from_secs(5));
        h.push(t + Duration::from_secs(1), 200, Duration::from_secs(5));
        assert_eq!(h.lag(200, t + Duration::from_secs(2)), Some(Duration::ZERO));
        assert_eq!(h.lag(300, t + Duration::from_secs(2)), Some(Duration::ZERO));
    }

    #[test]
    fn a_replica_is_behind_since_the_primary_first_held_what_it_lacks() {
        let t = Instant::now();
        let mut h = History::default();
        for (s, at) in [(0, 100), (1, 100), (2, 200), (3, 300)] {
            h.push(t + Duration::from_secs(s), at, Duration::from_secs(5));
        }
        assert_eq!(h.lag(100, t + Duration::from_secs(4)), Some(Duration::from_secs(2)));
        assert_eq!(h.lag(250, t + Duration::from_secs(4)), Some(Duration::from_secs(1)));
        assert_eq!(h.lag(50, t + Duration::from_secs(4)), Some(Duration::from_secs(4)));
    }

    #[test]
    fn a_lag_past_the_kept_window_still_reads_as_past_it() {
        let t = Instant::now();
        let mut h = History::default();
        let max_lag = Duration::from_secs(1);
        for s in 0..60 {
            h.push(t + Duration::from_secs(s), 100 + s, max_lag);
        }
        assert!(h.seen.len() < 10, "old positions are dropped: {}", h.seen.len());
        let lag = h.lag(100, t + Duration::from_secs(60)).unwrap();
        assert!(lag > max_lag * 2, "{lag:?}");
    }

    #[tokio::test]
    async fn reads_waiting_for_a_position_share_one_reading_that_began_after_they_did() {
        let sampler = Arc::new(Sampler::default());
        let readings = Arc::new(AtomicU64::new(0));
        let read = |readings: Arc<AtomicU64>| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(readings.fetch_add(1, Ordering::AcqRel) + 1)
        };
        let began = Instant::now();
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let (sampler, readings) = (sampler.clone(), readings.clone());
                tokio::spawn(async move { sampler.after(began, read(readings)).await.unwrap() })
            })
            .collect();
        for w in waiting {
            assert_eq!(w.await.unwrap(), Some(1), "all ten take the first reading");
        }
        assert_eq!(readings.load(Ordering::Acquire), 1);
        // A read that began after that reading started needs a new one.
        let later = Instant::now();
        assert_eq!(sampler.after(later, read(readings.clone())).await.unwrap(), Some(2));
        assert_eq!(sampler.highest(), 2);
        sampler.forget();
        assert_eq!(sampler.highest(), 0);
        // A reading under way when it is forgotten is thrown away, and the
        // last one is not used again.
        let reading = {
            let (sampler, readings) = (sampler.clone(), readings.clone());
            tokio::spawn(async move { sampler.after(Instant::now(), read(readings)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        sampler.forget();
        assert_eq!(reading.await.unwrap(), None);
        assert_eq!(sampler.highest(), 0);
        assert_eq!(sampler.after(later, read(readings.clone())).await.unwrap(), Some(4), "read again");
    }

    #[test]
    fn nothing_is_told_before_the_primary_was_read() {
        assert_eq!(History::default().lag(10, Instant::now()), None);
    }
}
