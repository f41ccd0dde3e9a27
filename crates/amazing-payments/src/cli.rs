//! The command line: `serve`, `migrate`, `reconcile`, `webhooks`, `relay`, `deliver`,
//! `notifier`, `dlq` and `apikey`. Flags mirror the environment variables
//! (see `--help` of each command).

use crate::{
    app::{App, apikeys},
    config::{
        AuthArgs, ConfigError, DbArgs, DbConfig, HooksArgs, MetricsArgs, NotifyArgs, NotifyConfig, ReconcileArgs,
        ServeArgs, ServeConfig, StripeArgs,
    },
    hooks::deliverer::Deliverer,
    notify::{mailer::Mailer, notifier::Notifier, queue::Queue, relay::Relay, templates::Templates},
    server, store, stripe, telemetry,
    workers::reconciler,
};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

/// amazing-payments: payments in front of Stripe, over gRPC and REST/JSON.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the API (REST on JSON_PORT, gRPC on RPC_PORT); applies migrations first.
    Serve {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        reconcile: ReconcileArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        stripe: StripeArgs,
        #[command(flatten)]
        auth: AuthArgs,
        #[command(flatten)]
        notify: NotifyArgs,
        #[command(flatten)]
        hooks: HooksArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Deliver webhooks to callers' endpoints (the deliverer serve runs).
    Deliver {
        #[command(flatten)]
        hooks: HooksArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Finish operations left in flight and bring waiting payments up to date
    /// from Stripe (the same reconciler serve runs).
    Reconcile {
        /// One round: stop when nothing more can be done now.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        reconcile: ReconcileArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        stripe: StripeArgs,
    },
    /// Stripe webhook events: list them, or put parked ones back to work.
    Webhooks {
        #[command(subcommand)]
        action: WebhookAction,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Publish the outbox's events to the queue (the relay serve runs).
    Relay {
        /// Publish what is there now, then stop.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        notify: NotifyArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Mail customers the events from the queue (serve runs it when SMTP_URL is set).
    Notifier {
        #[command(flatten)]
        notify: NotifyArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// The dead-letter queue of notifications: list, or move back to the queue.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[command(flatten)]
        notify: NotifyArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Create the database if it is missing and apply the migrations.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Manage the API keys of the service's clients.
    Apikey {
        #[command(subcommand)]
        action: ApiKeyAction,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        auth: AuthArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum WebhookAction {
    /// Events, newest first: id, type, state, attempts, last error.
    List {
        /// Only parked events (those that kept failing).
        #[arg(long)]
        parked: bool,
    },
    /// Put a parked event (or all with --all) back to work.
    Replay {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqAction {
    /// Dead letters, oldest first: event id, type, receives, reason.
    List,
    /// Move dead letters back to the queue: one (--id) or all (--all).
    Redrive {
        #[arg(long, conflicts_with = "all")]
        id: Option<uuid::Uuid>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ApiKeyAction {
    /// Make a key; it is printed once, on a line of its own, and never again.
    Create {
        #[arg(long)]
        name: String,
        /// What it may do: read, write, refund, admin (comma-separated), or
        /// all. Every scope includes read.
        #[arg(long, default_value = "all")]
        scope: String,
        /// When it stops working: a time (RFC 3339), a span from now (90d,
        /// 12h, 30m), or never.
        #[arg(long, default_value = "never")]
        expires: String,
    },
    /// Replace a key (prefix or id) with a new one of the same name, scopes
    /// and rate limit; the old key keeps working for --grace. The new key
    /// is printed once.
    Rotate {
        key: String,
        /// How long the old key keeps working: a span (24h, 7d) or a time.
        #[arg(long, default_value = "24h")]
        grace: String,
        /// When the new key stops working (as for create); by default when
        /// the old key would have.
        #[arg(long, default_value = "keep")]
        expires: String,
    },
    /// List the keys: id, prefix, status, scopes, created, expires, last
    /// used, name.
    List,
    /// Revoke a key, by its prefix (ap_xxxxxxxx) or id.
    Revoke { key: String },
    /// Set a key's own rate limit (requests a second on each instance), by
    /// its id; `default` goes back to RATE_LIMIT.
    RateLimit { id: i64, per_second: String },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { serve, reconcile, db, stripe, auth, notify, hooks, metrics } => {
            let config = ServeConfig::new(&serve, &db, &stripe, &auth, &notify, &hooks)?;
            metrics.addr()?;
            let reconciler = config.reconciler.then(|| reconcile.settings()).transpose()?;
            if auth.pepper_is_default() {
                tracing::warn!(
                    "API_KEY_PEPPER is not set: API keys are hashed under the built-in development pepper; set it in production"
                );
            }
            serve_until_signal(config, reconciler, metrics).await
        }
        Command::Reconcile { once, reconcile, db, stripe } => {
            let settings = reconcile.settings()?;
            let app = App {
                db: store::pool(&db.config()?),
                reads: None,
                stripe: stripe::Client::new(stripe.settings()?)?,
                auth: crate::app::AuthSettings::new(true, crate::secret::Secret::new(""), Default::default()),
                idempotency_ttl: std::time::Duration::from_secs(24 * 3600),
                idempotency_lease: std::time::Duration::from_secs(90),
                webhooks: Default::default(),
                max_in_flight: 1,
                overload_target: Default::default(),
                hooks: Default::default(),
            };
            if once {
                let p = reconciler::until_idle(&app, &settings).await?;
                println!(
                    "operations {} (finished {}), payments read back {} (corrected {}), keys purged {}",
                    p.operations, p.finished, p.payments, p.corrected, p.purged
                );
            } else {
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    server::shutdown_signal().await;
                    let _ = tx.send(true);
                });
                reconciler::run(app, settings, rx).await;
            }
            Ok(())
        }
        Command::Webhooks { action, db } => {
            let pool = store::pool(&db.config()?);
            match action {
                WebhookAction::List { parked } => {
                    println!("{:<32} {:<34} {:<10} {:<8} last error", "id", "type", "state", "attempts");
                    for e in store::webhooks::list(&pool, parked.then_some("parked"), 500).await? {
                        println!(
                            "{:<32} {:<34} {:<10} {:<8} {}",
                            e.id,
                            e.kind,
                            e.state,
                            e.attempts,
                            e.last_error.unwrap_or_default()
                        );
                    }
                }
                WebhookAction::Replay { id, all } => {
                    if id.is_none() && !all {
                        anyhow::bail!("name an event id, or --all");
                    }
                    let n = store::webhooks::replay(&pool, id.as_deref()).await?;
                    println!("{n} event(s) put back to work");
                }
            }
            Ok(())
        }
        Command::Relay { once, notify, db, metrics } => {
            let config = notify.config()?;
            let pool = store::pool(&db.config()?);
            let relay = Relay::new(pool.clone(), Queue::open(&config.target, &pool).await?, config.relay);
            if once {
                println!("{} event(s) published", relay.drain().await?);
            } else {
                let stop = stop_on_signal();
                let exposed = expose_metrics(&metrics, &pool, stop.clone()).await?;
                relay.run(stop).await;
                finish(exposed).await;
            }
            Ok(())
        }
        Command::Deliver { hooks, db, metrics } => {
            let settings = hooks.settings()?;
            let pool = store::pool(&db.config()?);
            let stop = stop_on_signal();
            let exposed = expose_metrics(&metrics, &pool, stop.clone()).await?;
            Deliverer::new(pool, settings)?.run(stop).await;
            finish(exposed).await;
            Ok(())
        }
        Command::Notifier { notify, db, metrics } => {
            let config = notify.config()?;
            let pool = store::pool(&db.config()?);
            let stop = stop_on_signal();
            let exposed = expose_metrics(&metrics, &pool, stop.clone()).await?;
            notifier(&config, &pool).await?.run(stop).await;
            finish(exposed).await;
            Ok(())
        }
        Command::Dlq { action, notify, db } => {
            let config = notify.config()?;
            let pool = store::pool(&db.config()?);
            let queue = Queue::open(&config.target, &pool).await?;
            match action {
                DlqAction::List => {
                    println!("{:<36} {:<20} {:<8} reason", "event", "type", "receives");
                    for d in queue.dead_letters(&pool, 1000).await? {
                        let id = d.event_id.map(|i| i.to_string()).unwrap_or_else(|| "(not an event)".into());
                        println!("{id:<36} {:<20} {:<8} {}", d.kind, d.receives, d.reason);
                    }
                }
                DlqAction::Redrive { id, all } => {
                    if id.is_none() && !all {
                        anyhow::bail!("name a dead letter with --id EVENT_ID, or move them all with --all");
                    }
                    let n = queue.redrive(&pool, id).await?;
                    if id.is_some() && n == 0 {
                        anyhow::bail!("no dead letter with event id {}", id.unwrap_or_default());
                    }
                    println!("{n} message(s) moved back to {}", queue.describe());
                }
            }
            Ok(())
        }
        Command::Migrate { db } => {
            let db = db.config()?;
            store::create_database_if_missing(&db).await?;
            store::migrate(&store::pool(&db)).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Apikey { action, db, auth } => {
            let pool = store::pool(&db.config()?);
            let auth = auth.settings()?;
            match action {
                ApiKeyAction::Create { name, scope, expires } => {
                    let scopes = apikeys::parse_scopes(&scope)?;
                    let key = apikeys::create(&pool, &auth, &name, &scopes, moment(&expires)?).await?;
                    eprintln!("API key {} ({}) named {name:?}: shown this once, keep it safe", key.id, key.prefix);
                    println!("{}", key.key.expose());
                }
                ApiKeyAction::Rotate { key, grace, expires } => {
                    let until = moment(&grace)?.ok_or_else(|| anyhow::anyhow!("--grace needs a span or a time"))?;
                    let expires = if expires.trim() == "keep" { None } else { moment(&expires)? };
                    let (old, new) = apikeys::rotate(&pool, &auth, &key, until, expires).await?;
                    eprintln!(
                        "API key {} ({}) replaces {} ({}), which works until {} (within API_KEY_CACHE_TTL): shown this once, keep it safe",
                        new.id,
                        new.prefix,
                        old.id,
                        old.prefix,
                        old.expires_at.map_or_else(|| until.to_rfc3339(), |at| at.to_rfc3339())
                    );
                    println!("{}", new.key.expose());
                }
                ApiKeyAction::RateLimit { id, per_second } => {
                    let rate =
                        match per_second.trim() {
                            "default" => None,
                            raw => Some(raw.parse::<i32>().ok().filter(|n| (1..=1_000_000).contains(n)).ok_or_else(
                                || anyhow::anyhow!("the rate limit is 1 to 1000000 requests a second, or default"),
                            )?),
                        };
                    if !store::apikeys::set_rate_limit(&pool, id, rate).await? {
                        anyhow::bail!("no API key has id {id}");
                    }
                    match rate {
                        Some(n) => {
                            println!("key {id}: {n} requests a second on each instance (within API_KEY_CACHE_TTL)")
                        }
                        None => println!("key {id}: the service's RATE_LIMIT (within API_KEY_CACHE_TTL)"),
                    }
                }
                ApiKeyAction::List => {
                    println!(
                        "{:<6} {:<12} {:<8} {:<24} {:<20} {:<20} {:<20} name",
                        "id", "prefix", "status", "scopes", "created", "expires", "last used"
                    );
                    let now = chrono::Utc::now();
                    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                        t.map_or_else(|| "-".to_string(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    };
                    for k in store::apikeys::list(&pool).await? {
                        let status = match (k.revoked_at, k.expires_at) {
                            (Some(_), _) => "revoked",
                            (None, Some(at)) if at <= now => "expired",
                            _ => "active",
                        };
                        println!(
                            "{:<6} {:<12} {:<8} {:<24} {:<20} {:<20} {:<20} {}",
                            k.id,
                            k.prefix,
                            status,
                            k.scopes.join(","),
                            time(Some(k.created_at)),
                            time(k.expires_at),
                            time(k.last_used_at),
                            k.name
                        );
                    }
                }
                ApiKeyAction::Revoke { key } => {
                    if store::apikeys::revoke(&pool, key.trim()).await? {
                        println!("revoked {key}");
                    } else {
                        anyhow::bail!("no active API key {key}");
                    }
                }
            }
            Ok(())
        }
    }
}

/// A moment given on the command line: `never` (`None`), a time (RFC
/// 3339), or a span from now (`30s`, `90m`, `12h`, `7d`).
fn moment(text: &str) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let text = text.trim();
    if text == "never" {
        return Ok(None);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(at.with_timezone(&chrono::Utc)));
    }
    let unit = text.chars().last().unwrap_or(' ');
    let seconds: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => 0,
    };
    let count: Option<i64> = text[..text.len() - unit.len_utf8().min(text.len())].parse().ok();
    match count.filter(|n| (1..=3650 * 86_400).contains(n)).and_then(|n| n.checked_mul(seconds)).filter(|s| *s > 0) {
        Some(s) => Ok(Some(chrono::Utc::now() + chrono::Duration::seconds(s))),
        None => anyhow::bail!(
            "{text:?} is no time: give never, a time such as 2027-01-31T00:00:00Z, or a span such as 90d, 12h or 30m"
        ),
    }
}

/// A watch that turns true on SIGTERM or SIGINT.
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        server::shutdown_signal().await;
        let _ = tx.send(true);
    });
    rx
}

/// The notifier of `config`, its templates checked.
async fn notifier(config: &NotifyConfig, pool: &sqlx::PgPool) -> anyhow::Result<Notifier> {
    let templates = Templates::new(config.templates.as_deref()).with_action_url(config.action_url.clone());
    let mut mailed: Vec<_> = config.notifier.mailed.iter().copied().collect();
    mailed.sort_by_key(|t| t.as_str());
    templates.check(&mailed).map_err(|m| ConfigError { variable: "MAIL_TEMPLATES", message: m })?;
    let connections = config.notifier.concurrency as u32;
    let mailer = Mailer::new(config.smtp.as_ref(), &config.mail_from, config.smtp_timeout, connections)
        .map_err(|m| ConfigError { variable: "SMTP_URL", message: m })?;
    let queue = Queue::open(&config.target, pool).await?;
    Ok(Notifier::new(pool.clone(), queue, mailer, templates, config.notifier.clone()))
}

/// Checks the database and Stripe, then serves (and reconciles) until
/// SIGTERM or SIGINT.
/// Starts the metrics listener (`METRICS_PORT`) until `stop`; prints where.
async fn expose_metrics(
    metrics: &MetricsArgs,
    pool: &sqlx::PgPool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = metrics.addr()? else { return Ok(None) };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("METRICS_PORT: cannot listen on {addr} (METRICS_PORT=off serves no metrics)"))?;
    println!("Metrics:  http://{}/metrics", listener.local_addr()?);
    Ok(Some(tokio::spawn(crate::meter::serve(listener, pool.clone(), stop))))
}

async fn finish(task: Option<tokio::task::JoinHandle<()>>) {
    if let Some(t) = task {
        let _ = t.await;
    }
}

async fn serve_until_signal(
    config: ServeConfig,
    reconcile: Option<reconciler::Settings>,
    metrics: MetricsArgs,
) -> anyhow::Result<()> {
    tracing::info!(config = ?config, "starting");
    if !config.auth.required {
        tracing::warn!("AUTH_DISABLED is set: every call is served without an API key");
    }
    let pool = store::pool(&config.db);
    if config.migrate {
        store::create_database_if_missing(&config.db).await?;
        store::migrate(&pool).await?;
    }
    let stripe = stripe::Client::new(config.stripe.clone())?;
    check_stripe_key(&stripe).await?;
    let rest =
        TcpListener::bind(config.rest).await.with_context(|| format!("JSON_PORT: cannot listen on {}", config.rest))?;
    let grpc =
        TcpListener::bind(config.grpc).await.with_context(|| format!("RPC_PORT: cannot listen on {}", config.grpc))?;
    let (rest_addr, grpc_addr) = (rest.local_addr()?, grpc.local_addr()?);
    // The replica's pool, and its watchdog, stopped with the rest.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let reads = config.db.read.as_ref().map(|r| {
        let replica = store::pool_waiting(
            &DbConfig { options: r.options.clone(), read: None, ..config.db.clone() },
            std::time::Duration::from_secs(1),
        );
        let reads = store::replica::Replica::new(pool.clone(), replica, r.max_lag);
        tokio::spawn(reads.clone().watch(r.options.clone(), stopped.clone()));
        reads
    });
    let app = App {
        db: pool,
        reads,
        stripe,
        auth: config.auth,
        idempotency_ttl: config.idempotency_ttl,
        idempotency_lease: config.idempotency_lease,
        webhooks: config.webhooks,
        max_in_flight: config.max_in_flight,
        overload_target: config.overload_target,
        hooks: config.hooks.clone(),
    };
    println!("REST:     http://{rest_addr}/v1/...");
    println!("gRPC:     {grpc_addr} (reflection on)");
    println!("API docs: http://{rest_addr}/docs (OpenAPI at /openapi.json)");
    if let Some(r) = &config.db.read {
        let o = &r.options;
        println!("Reads:    gets and lists from the replica at {}:{} when caught up", o.get_host(), o.get_port());
    }
    tracing::info!(rest = %rest_addr, grpc = %grpc_addr, "serving");
    let exposed = expose_metrics(&metrics, &app.db, stopped.clone()).await?;
    if app.webhooks.secrets.is_empty() {
        tracing::warn!("STRIPE_WEBHOOK_SECRET is not set: Stripe's webhooks will be refused");
    }
    let events = tokio::spawn(crate::workers::webhooks::run(
        app.clone(),
        std::time::Duration::from_millis(500),
        stopped.clone(),
    ));
    let mut background = Vec::new();
    let mut notices = Vec::new();
    // The relay, the deliverer and the notifier have connections of their
    // own, so that a burst of requests cannot starve them (nor they the
    // requests). The relay and the deliverer share two: each holds one for
    // a statement or a short transaction at a time (the deliverer records
    // an outcome in one), never while it sends; attempts finishing at once
    // wait their turn for it (PostgreSQL's connections are the scarcer).
    let background_db = store::pool(&DbConfig { max_connections: 2, ..config.db.clone() });
    if config.relay {
        let db = background_db.clone();
        let queue = Queue::open(&config.notify.target, &db).await?;
        notices.push(format!("events relayed to {}", queue.describe()));
        let relay = Relay::new(db, queue, config.notify.relay.clone());
        background.push(tokio::spawn(relay.run(stopped.clone())));
    }
    if config.notifier {
        // Each mail holds a connection only for its short queries, not
        // while the SMTP server answers: a few serve many mails in flight.
        let db = store::pool(&DbConfig { max_connections: 4, ..config.db.clone() });
        let n = notifier(&config.notify, &db).await?;
        notices.push(format!("mailed through {}", n.transport()));
        background.push(tokio::spawn(n.run(stopped.clone())));
    } else {
        notices.push("notifier off (set SMTP_URL, or NOTIFIER=true for the log transport)".into());
    }
    if config.deliverer {
        let deliverer = Deliverer::new(background_db, config.hooks.clone())?;
        background.push(tokio::spawn(deliverer.run(stopped.clone())));
        notices.push("webhooks delivered to callers' endpoints".into());
    }
    println!("Notify:   {}", notices.join("; "));
    let worker = reconcile.map(|s| tokio::spawn(reconciler::run(app.clone(), s, stopped)));
    server::run(app, rest, grpc, config.connections, async move {
        server::shutdown_signal().await;
        let _ = stop.send(true);
    })
    .await?;
    if let Some(w) = worker {
        let _ = w.await;
    }
    let _ = events.await;
    finish(exposed).await;
    for b in background {
        let _ = b.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Retrieves the balance, as the earlier service did, to check `STRIPE_KEY`.
async fn check_stripe_key(stripe: &stripe::Client) -> anyhow::Result<()> {
    match stripe.retrieve_balance().await {
        Ok(_) => Ok(()),
        Err(stripe::StripeError::Api(e)) if e.status == 401 || e.status == 403 => Err(ConfigError {
            variable: "STRIPE_KEY",
            message: format!(
                "was rejected by Stripe ({} {}, request {})",
                e.status,
                e.kind,
                e.request_id.unwrap_or_default()
            ),
        }
        .into()),
        // Stripe unreachable or failing for now: no reason to stay down (a
        // restart during a Stripe incident would take every instance with
        // it). Calls to Stripe answer 503 until it is back; the key is
        // checked by the first of them.
        Err(e) => {
            tracing::warn!(api_base = %stripe.settings().api_base, error = %e, "STRIPE_KEY could not be checked now: serving anyway");
            Ok(())
        }
    }
}

/// Installs logging and runs; the exit code of the process.
pub async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let result = run(cli).await;
    // The last spans are exported before the process ends (the exporter's
    // own deadline bounds the wait).
    let _ = tokio::task::spawn_blocking(telemetry::flush).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::moment;

    #[test]
    fn a_moment_is_never_a_time_or_a_span_from_now() {
        assert_eq!(moment("never").unwrap(), None);
        let at = moment("2027-01-31T00:00:00Z").unwrap().unwrap();
        assert_eq!(at.to_rfc3339(), "2027-01-31T00:00:00+00:00");
        let in_a_day = moment("1d").unwrap().unwrap() - chrono::Utc::now();
        assert!((86_390..=86_400).contains(&in_a_day.num_seconds()), "{in_a_day}");
        for bad in ["soon", "0d", "-1h", "12", "d", "", "5w"] {
            assert!(moment(bad).is_err(), "{bad:?}");
        }
    }
}
