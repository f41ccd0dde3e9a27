//! Configuration: the earlier service's environment variables and defaults,
//! and ours, each also a command-line flag. Values are taken as text and
//! checked here, so that a bad one stops the program with one line that names
//! the variable. Secrets are held as [`Secret`] and never printed.

use crate::{
    app::AuthSettings,
    secret::Secret,
    server::{ConnectionLimits, HEAD_CEILING},
    stripe,
};
use clap::Args;
use sqlx::postgres::PgConnectOptions;
use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

fn err(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable, message: message.into() }
}

fn number<T: FromStr>(variable: &'static str, raw: &str) -> Result<T, ConfigError> {
    raw.trim().parse().map_err(|_| err(variable, format!("{raw:?} is not a valid number")))
}

/// Seconds, such as `10` or `0.5`, from 0 to `max`.
fn seconds(variable: &'static str, raw: &str, max: f64) -> Result<Duration, ConfigError> {
    let v: f64 = number(variable, raw)?;
    if !(0.0..=max).contains(&v) {
        return Err(err(variable, format!("must be between 0 and {max} seconds")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Seconds, more than 0 and at most `max`.
fn positive_seconds(variable: &'static str, raw: &str, max: f64) -> Result<Duration, ConfigError> {
    let d = seconds(variable, raw, max)?;
    if d.is_zero() {
        return Err(err(variable, format!("must be more than 0 and at most {max} seconds")));
    }
    Ok(d)
}

fn flag(variable: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(err(variable, format!("{raw:?} is not true or false"))),
    }
}

/// `:8080`, `8080`, `127.0.0.1:8080` or `[::1]:8080`; `:port` listens on
/// every interface, as the earlier service did.
pub fn listen_addr(variable: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    let raw = raw.trim();
    let full = if let Some(port) = raw.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if raw.chars().all(|c| c.is_ascii_digit()) {
        format!("0.0.0.0:{raw}")
    } else {
        raw.to_string()
    };
    full.parse().map_err(|_| err(variable, format!("{raw:?} is not a listen address such as :8080 or 127.0.0.1:8080")))
}

/// Webhooks to callers' endpoints (`crate::hooks`).
#[derive(Args, Debug, Clone)]
pub struct HooksArgs {
    /// Let endpoints be on loopback and private addresses, and plain http:
    /// for development and tests only (server-side request forgery).
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", default_value = "false")]
    pub webhook_allow_private: String,
    /// The waits before each retry of a failed delivery (s, m, h, d); after
    /// the last, the delivery fails (and can be redelivered by hand).
    #[arg(long, env = "WEBHOOK_RETRY_SCHEDULE", default_value = crate::hooks::DEFAULT_SCHEDULE)]
    pub webhook_retry_schedule: String,
    /// Seconds an endpoint may fail every delivery before it is disabled (5 days).
    #[arg(long, env = "WEBHOOK_DISABLE_AFTER", default_value = "432000")]
    pub webhook_disable_after: String,
    /// Seconds one delivery attempt may take.
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value = "15")]
    pub webhook_timeout: String,
}

impl HooksArgs {
    pub fn settings(&self) -> Result<crate::hooks::Settings, ConfigError> {
        Ok(crate::hooks::Settings {
            allow_private: flag("WEBHOOK_ALLOW_PRIVATE", &self.webhook_allow_private)?,
            schedule: crate::hooks::parse_schedule(&self.webhook_retry_schedule)
                .map_err(|e| err("WEBHOOK_RETRY_SCHEDULE", e))?,
            disable_after: positive_seconds("WEBHOOK_DISABLE_AFTER", &self.webhook_disable_after, 365.0 * 86400.0)?,
            timeout: positive_seconds("WEBHOOK_TIMEOUT", &self.webhook_timeout, 300.0)?,
            ..crate::hooks::Settings::default()
        })
    }
}

/// Where Prometheus scrapes this process.
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// The metrics listener (`/metrics`, no API key: keep it on the private
    /// network); `off` for none.
    #[arg(long, env = "METRICS_PORT", default_value = ":9090")]
    pub metrics_port: String,
}

impl MetricsArgs {
    /// The address to listen on, or `None` when metrics are off.
    pub fn addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.metrics_port.trim() {
            "off" | "" => Ok(None),
            raw => listen_addr("METRICS_PORT", raw).map(Some),
        }
    }
}

/// Where the database is.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// Full PostgreSQL URL; overrides the DB_* variables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, env = "DB_HOST", default_value = "localhost")]
    pub db_host: String,
    #[arg(long, env = "DB_PORT", default_value = "5432")]
    pub db_port: String,
    #[arg(long, env = "DB_USER", default_value = "postgres")]
    pub db_user: String,
    #[arg(long, env = "DB_NAME", default_value = "amazing-payments")]
    pub db_name: String,
    #[arg(long, env = "DB_PASS", default_value = "postgres", hide_env_values = true, hide_default_value = true)]
    pub db_pass: String,
    /// Connections per instance.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value = "20")]
    pub db_max_connections: String,
    /// A streaming replica of the database, for gets and lists (URL as
    /// DATABASE_URL's); unset: everything is read from the primary.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,
    /// Seconds the replica may be behind the primary and still take reads.
    #[arg(long, env = "DATABASE_READ_MAX_LAG", default_value = "5")]
    pub database_read_max_lag: String,
}

/// The database settings, checked.
#[derive(Clone)]
pub struct DbConfig {
    pub options: PgConnectOptions,
    pub max_connections: u32,
    /// The read replica, if one is set.
    pub read: Option<ReadConfig>,
}

/// Where reads that may be served by a replica go, and how far behind it
/// may be.
#[derive(Clone)]
pub struct ReadConfig {
    pub options: PgConnectOptions,
    pub max_lag: Duration,
}

/// A database's URL without its password.
fn redacted(o: &PgConnectOptions) -> String {
    format!(
        "postgres://{}:[redacted]@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("")
    )
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (max {} connections)", redacted(&self.options), self.max_connections)?;
        if let Some(r) = &self.read {
            write!(f, ", reads from {} (max lag {:?})", redacted(&r.options), r.max_lag)?;
        }
        Ok(())
    }
}

/// A PostgreSQL URL, checked. Several hosts (libpq's `h1,h2` with
/// `target_session_attrs`) are refused by name: the driver connects to one.
fn postgres_url(variable: &'static str, url: &str, host: &str) -> Result<PgConnectOptions, ConfigError> {
    let url = url.trim();
    let authority = url.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
    let query: Vec<(&str, &str)> = url
        .split_once('?')
        .map(|(_, q)| q.split('&').filter_map(|kv| kv.split_once('=')).collect())
        .unwrap_or_default();
    let hosts_in_query = query.iter().any(|(k, v)| *k == "host" && v.contains(','));
    if hosts_in_query || authority.rsplit('@').next().unwrap_or("").contains(',') {
        return Err(err(
            variable,
            "names several hosts, and the driver connects to one: point it at PgBouncer, or at a name your failover moves (README, \"Failover to a replica\")",
        ));
    }
    if let Some((_, attrs)) = query.iter().find(|(k, _)| *k == "target_session_attrs")
        && *attrs != "any"
    {
        return Err(err(
            variable,
            "sets target_session_attrs, which the driver does not honour: point it at the primary (PgBouncer, or a name your failover moves)",
        ));
    }
    PgConnectOptions::from_str(url)
        .map_err(|_| err(variable, format!("is not a PostgreSQL URL such as postgres://user:pass@{host}:5432/db")))
}

impl DbArgs {
    pub fn config(&self) -> Result<DbConfig, ConfigError> {
        let max_connections: u32 = number("DB_MAX_CONNECTIONS", &self.db_max_connections)?;
        if max_connections == 0 {
            return Err(err("DB_MAX_CONNECTIONS", "must be at least 1"));
        }
        let options = match &self.database_url {
            Some(url) if !url.trim().is_empty() => postgres_url("DATABASE_URL", url, "host")?,
            _ => {
                let port: u16 = number("DB_PORT", &self.db_port)?;
                if self.db_host.trim().is_empty() {
                    return Err(err("DB_HOST", "is empty"));
                }
                if self.db_host.contains(',') {
                    return Err(err(
                        "DB_HOST",
                        "names several hosts, and the driver connects to one: point it at PgBouncer, or at a name your failover moves",
                    ));
                }
                if self.db_name.trim().is_empty() {
                    return Err(err("DB_NAME", "is empty"));
                }
                PgConnectOptions::new()
                    .host(self.db_host.trim())
                    .port(port)
                    .username(&self.db_user)
                    .password(&self.db_pass)
                    .database(self.db_name.trim())
            }
        };
        let read = match self.database_read_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => {
                let options = postgres_url("DATABASE_READ_URL", url, "replica")?;
                let secs: f64 = number("DATABASE_READ_MAX_LAG", &self.database_read_max_lag)?;
                if !(0.1..=3600.0).contains(&secs) {
                    return Err(err("DATABASE_READ_MAX_LAG", "must be between 0.1 and 3600 seconds"));
                }
                Some(ReadConfig { options, max_lag: Duration::from_secs_f64(secs) })
            }
            _ => None,
        };
        Ok(DbConfig { options, max_connections, read })
    }
}

/// How to reach Stripe.
#[derive(Args, Debug, Clone)]
pub struct StripeArgs {
    /// Stripe secret key (sk_test_..., sk_live_... or a restricted rk_...).
    #[arg(long, env = "STRIPE_KEY", hide_env_values = true)]
    pub stripe_key: Option<String>,
    #[arg(long, env = "STRIPE_API_BASE", default_value = stripe::DEFAULT_API_BASE)]
    pub stripe_api_base: String,
    #[arg(long, env = "STRIPE_API_VERSION", default_value = stripe::DEFAULT_API_VERSION)]
    pub stripe_api_version: String,
    /// Seconds allowed for one Stripe request.
    #[arg(long, env = "STRIPE_TIMEOUT", default_value = "30")]
    pub stripe_timeout: String,
    /// Retries of a failed Stripe request (same idempotency key).
    #[arg(long, env = "STRIPE_MAX_RETRIES", default_value = "2")]
    pub stripe_max_retries: String,
    /// HTTP/2 towards Stripe: auto (where offered, by TLS negotiation),
    /// always (also on plain http, e.g. the simulator) or never.
    #[arg(long, env = "STRIPE_HTTP2", default_value = "auto")]
    pub stripe_http2: String,
    /// Connections (HTTP/2) or connection pools (HTTP/1.1) to Stripe.
    #[arg(long, env = "STRIPE_CONNECTIONS", default_value = "4")]
    pub stripe_connections: String,
    /// Calls a second this process sends Stripe at most (Stripe allows 100
    /// in live mode, 25 in test mode, per account); `off` for no pacing.
    #[arg(long, env = "STRIPE_MAX_RPS", default_value = "90")]
    pub stripe_max_rps: String,
}

impl StripeArgs {
    pub fn settings(&self) -> Result<stripe::Settings, ConfigError> {
        let key = self.stripe_key.as_deref().map(str::trim).unwrap_or("");
        if key.is_empty() {
            return Err(err("STRIPE_KEY", "is not set: give the Stripe secret key (flag --stripe-key)"));
        }
        if !["sk_test_", "sk_live_", "rk_test_", "rk_live_"].iter().any(|p| key.starts_with(p)) {
            return Err(err("STRIPE_KEY", "is not a Stripe secret key (expected sk_test_..., sk_live_... or rk_...)"));
        }
        let base = self.stripe_api_base.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(err("STRIPE_API_BASE", format!("{base:?} is not an http(s) URL")));
        }
        let timeout: f64 = number("STRIPE_TIMEOUT", &self.stripe_timeout)?;
        if !(timeout > 0.0 && timeout <= 600.0) {
            return Err(err("STRIPE_TIMEOUT", "must be between 0 and 600 seconds"));
        }
        let mut s = stripe::Settings::new(base, Secret::new(key));
        s.api_version = self.stripe_api_version.trim().to_string();
        s.timeout = Duration::from_secs_f64(timeout);
        s.max_retries = number("STRIPE_MAX_RETRIES", &self.stripe_max_retries)?;
        if s.max_retries > 10 {
            return Err(err("STRIPE_MAX_RETRIES", "must be at most 10"));
        }
        s.http2 = stripe::Http2::parse(&self.stripe_http2)
            .ok_or_else(|| err("STRIPE_HTTP2", "must be auto, always or never"))?;
        s.connections = number("STRIPE_CONNECTIONS", &self.stripe_connections)?;
        if !(1..=64).contains(&s.connections) {
            return Err(err("STRIPE_CONNECTIONS", "must be between 1 and 64"));
        }
        s.max_rps = match self.stripe_max_rps.trim() {
            "off" => None,
            raw => {
                let n: u32 = number("STRIPE_MAX_RPS", raw)?;
                if n == 0 {
                    return Err(err("STRIPE_MAX_RPS", "must be at least 1 call a second, or off"));
                }
                Some(n)
            }
        };
        Ok(s)
    }
}

/// How callers are checked.
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// Key of the keyed hash under which API keys are stored. Set it in
    /// production; keys made under one pepper do not work under another.
    #[arg(long, env = "API_KEY_PEPPER", hide_env_values = true)]
    pub api_key_pepper: Option<String>,
    /// Serve every call without an API key, for clients of the earlier
    /// service that send none. Logs a warning at every start.
    #[arg(long, env = "AUTH_DISABLED", default_value = "false")]
    pub auth_disabled: String,
    /// Seconds a verified API key is trusted without reading its row again:
    /// the longest a revocation takes to take effect. 0: every request.
    #[arg(long, env = "API_KEY_CACHE_TTL", default_value = "5")]
    pub api_key_cache_ttl: String,
    /// Requests a second each API key may make on this instance (a key's own
    /// limit, set with `apikey rate-limit`, wins); `off` for none.
    #[arg(long, env = "RATE_LIMIT", default_value = "100")]
    pub rate_limit: String,
}

/// The pepper used when API_KEY_PEPPER is not set: fine for development,
/// logged as a warning by `serve`.
pub const DEVELOPMENT_PEPPER: &str = "amazing-payments-development-pepper";

impl AuthArgs {
    pub fn settings(&self) -> Result<AuthSettings, ConfigError> {
        let pepper = match self.api_key_pepper.as_deref().map(str::trim) {
            None | Some("") => DEVELOPMENT_PEPPER.to_string(),
            Some(p) if p.len() < 16 => {
                return Err(err("API_KEY_PEPPER", "must be at least 16 characters"));
            }
            Some(p) => p.to_string(),
        };
        let ttl: f64 = number("API_KEY_CACHE_TTL", &self.api_key_cache_ttl)?;
        if !(0.0..=300.0).contains(&ttl) {
            return Err(err("API_KEY_CACHE_TTL", "must be between 0 and 300 seconds"));
        }
        let rate = match self.rate_limit.trim() {
            "off" => None,
            raw => {
                let n: u32 = number("RATE_LIMIT", raw)?;
                if !(1..=1_000_000).contains(&n) {
                    return Err(err("RATE_LIMIT", "must be between 1 and 1000000 requests a second, or off"));
                }
                Some(n)
            }
        };
        Ok(AuthSettings::new(
            !flag("AUTH_DISABLED", &self.auth_disabled)?,
            Secret::new(pepper),
            Duration::from_secs_f64(ttl),
        )
        .with_rate_limit(rate))
    }

    pub fn pepper_is_default(&self) -> bool {
        self.api_key_pepper.as_deref().is_none_or(|p| p.trim().is_empty())
    }
}

/// How the reconciler works.
#[derive(Args, Debug, Clone)]
pub struct ReconcileArgs {
    /// Seconds between passes when there is nothing to do.
    #[arg(long, env = "RECONCILE_INTERVAL", default_value = "10")]
    pub reconcile_interval: String,
    /// Seconds an operation is left to the request that started it.
    #[arg(long, env = "RECONCILE_MIN_AGE", default_value = "30")]
    pub reconcile_min_age: String,
    /// Operations and payments looked at per pass.
    #[arg(long, env = "RECONCILE_BATCH", default_value = "100")]
    pub reconcile_batch: String,
}

impl ReconcileArgs {
    pub fn settings(&self) -> Result<crate::workers::reconciler::Settings, ConfigError> {
        let secs = |var: &'static str, raw: &str| -> Result<Duration, ConfigError> {
            let v: f64 = number(var, raw)?;
            if !(0.0..=86_400.0).contains(&v) {
                return Err(err(var, "must be between 0 and 86400 seconds"));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let batch: i64 = number("RECONCILE_BATCH", &self.reconcile_batch)?;
        if !(1..=10_000).contains(&batch) {
            return Err(err("RECONCILE_BATCH", "must be between 1 and 10000"));
        }
        Ok(crate::workers::reconciler::Settings {
            interval: secs("RECONCILE_INTERVAL", &self.reconcile_interval)?,
            min_age: secs("RECONCILE_MIN_AGE", &self.reconcile_min_age)?,
            batch,
            ..Default::default()
        })
    }
}

/// Notifications: the queue, the mail and their pace.
#[derive(Args, Debug, Clone)]
pub struct NotifyArgs {
    /// Unset: the built-in PostgreSQL queue. An SQS queue URL: SQS (region
    /// and credentials from the AWS SDK's chain; AWS_ENDPOINT_URL for a local
    /// stand-in). A URL ending in .fifo is a FIFO queue.
    #[arg(long, env = "QUEUE_URL")]
    pub queue_url: Option<String>,
    /// smtp://user:pass@host:587?tls=starttls, smtps://..., smtp://host:2525
    /// for a plain local relay. Unset: the log transport (nothing is sent).
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The From of customers' mails.
    #[arg(long, env = "MAIL_FROM", default_value = "Payments <payments@localhost>")]
    pub mail_from: String,
    /// Event types mailed to the customer, comma separated.
    #[arg(long, env = "MAIL_EVENTS", default_value = DEFAULT_MAIL_EVENTS)]
    pub mail_events: String,
    /// A directory whose <type>.subject|txt|html files replace the built-in templates.
    #[arg(long, env = "MAIL_TEMPLATES")]
    pub mail_templates: Option<String>,
    /// The shop's page where a customer confirms a payment their bank wants
    /// them for (an off-session charge that failed AUTHENTICATION_REQUIRED),
    /// `{paymentID}` replaced by the payment's id: the link of that
    /// payment.failed mail.
    #[arg(long, env = "MAIL_ACTION_URL")]
    pub mail_action_url: Option<String>,
    /// Seconds allowed for one SMTP conversation.
    #[arg(long, env = "SMTP_TIMEOUT", default_value = "30")]
    pub smtp_timeout: String,
    /// Attempts at a mail before it goes to the dead-letter queue (built-in
    /// queue; SQS uses its redrive policy's maxReceiveCount).
    #[arg(long, env = "NOTIFY_MAX_ATTEMPTS", default_value = "5")]
    pub notify_max_attempts: String,
    /// Seconds before the first retry; doubled each time up to NOTIFY_RETRY_MAX.
    #[arg(long, env = "NOTIFY_RETRY_BASE", default_value = "10")]
    pub notify_retry_base: String,
    #[arg(long, env = "NOTIFY_RETRY_MAX", default_value = "600")]
    pub notify_retry_max: String,
    /// Seconds between polls of an empty queue (SQS: the long-poll wait).
    #[arg(long, env = "NOTIFY_INTERVAL", default_value = "1")]
    pub notify_interval: String,
    /// Mails sent at once by one notifier.
    #[arg(long, env = "NOTIFY_CONCURRENCY", default_value = "16")]
    pub notify_concurrency: String,
    /// Seconds between relay passes when the outbox is empty.
    #[arg(long, env = "RELAY_INTERVAL", default_value = "0.5")]
    pub relay_interval: String,
    /// Events published per relay pass.
    #[arg(long, env = "RELAY_BATCH", default_value = "100")]
    pub relay_batch: String,
    /// Seconds a relay's lease lasts without renewal: how long another
    /// relay waits to take over from one that died.
    #[arg(long, env = "RELAY_LEASE", default_value = "30")]
    pub relay_lease: String,
}

/// The event types mailed unless MAIL_EVENTS says otherwise.
pub const DEFAULT_MAIL_EVENTS: &str = "payment.authorized,payment.succeeded,payment.captured,payment.failed,payment.canceled,payment.refunded,refund.failed";

/// Notification settings, checked.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub target: crate::notify::queue::Target,
    pub smtp: Option<crate::notify::mailer::SmtpSettings>,
    pub mail_from: String,
    pub templates: Option<std::path::PathBuf>,
    pub action_url: Option<String>,
    pub smtp_timeout: Duration,
    pub notifier: crate::notify::notifier::Settings,
    pub relay: crate::notify::relay::Settings,
}

impl NotifyArgs {
    pub fn config(&self) -> Result<NotifyConfig, ConfigError> {
        use crate::{domain::event::EventType, notify::mailer::SmtpSettings};
        let secs = |var: &'static str, raw: &str, max: f64| -> Result<Duration, ConfigError> {
            let v: f64 = number(var, raw)?;
            if !(0.0..=max).contains(&v) {
                return Err(err(var, format!("must be between 0 and {max} seconds")));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let mut mailed = std::collections::HashSet::new();
        for name in self.mail_events.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let t = EventType::parse(name).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                err("MAIL_EVENTS", format!("{name:?} is not an event type ({})", known.join(", ")))
            })?;
            mailed.insert(t);
        }
        let max_attempts: i32 = number("NOTIFY_MAX_ATTEMPTS", &self.notify_max_attempts)?;
        if !(1..=100).contains(&max_attempts) {
            return Err(err("NOTIFY_MAX_ATTEMPTS", "must be between 1 and 100"));
        }
        let concurrency: usize = number("NOTIFY_CONCURRENCY", &self.notify_concurrency)?;
        if !(1..=100).contains(&concurrency) {
            return Err(err("NOTIFY_CONCURRENCY", "must be between 1 and 100"));
        }
        let batch: i64 = number("RELAY_BATCH", &self.relay_batch)?;
        if !(1..=1000).contains(&batch) {
            return Err(err("RELAY_BATCH", "must be between 1 and 1000"));
        }
        let smtp = match self.smtp_url.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(raw) => Some(SmtpSettings::parse(raw).map_err(|m| err("SMTP_URL", m))?),
            None => None,
        };
        let mail_from = self.mail_from.trim().to_string();
        mail_from.parse::<lettre::message::Mailbox>().map_err(|_| {
            err("MAIL_FROM", format!("{mail_from:?} is not an address such as Shop <payments@shop.example>"))
        })?;
        let templates: Option<std::path::PathBuf> =
            self.mail_templates.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(Into::into);
        if let Some(dir) = &templates
            && !dir.is_dir()
        {
            return Err(err("MAIL_TEMPLATES", format!("{} is not a directory", dir.display())));
        }
        let action_url = match self.mail_action_url.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(raw) => {
                let parsed = url::Url::parse(&raw.replace("{paymentID}", "1"));
                if !parsed.is_ok_and(|u| matches!(u.scheme(), "https" | "http")) {
                    return Err(err(
                        "MAIL_ACTION_URL",
                        format!("{raw:?} is not an http(s) URL such as https://shop.example/pay/{{paymentID}}"),
                    ));
                }
                Some(raw.to_string())
            }
            None => None,
        };
        let interval = secs("NOTIFY_INTERVAL", &self.notify_interval, 20.0)?;
        let smtp_timeout = secs("SMTP_TIMEOUT", &self.smtp_timeout, 600.0)?;
        Ok(NotifyConfig {
            target: crate::notify::queue::Target::parse(self.queue_url.as_deref()).map_err(|m| err("QUEUE_URL", m))?,
            smtp,
            mail_from,
            templates,
            action_url,
            smtp_timeout,
            notifier: crate::notify::notifier::Settings {
                mailed,
                max_attempts,
                retry_base: secs("NOTIFY_RETRY_BASE", &self.notify_retry_base, 86_400.0)?,
                retry_max: secs("NOTIFY_RETRY_MAX", &self.notify_retry_max, 43_200.0)?,
                interval,
                concurrency,
                // SQS gives at most 10 a receive; the built-in queue as many
                // as can be sent at once.
                batch: concurrency as i64,
                // A mail's claim outlives the SMTP conversation, waiting
                // for a pooled connection included.
                visibility: (smtp_timeout * 2 + Duration::from_secs(30)).max(Duration::from_secs(60)),
            },
            relay: crate::notify::relay::Settings {
                batch,
                interval: secs("RELAY_INTERVAL", &self.relay_interval, 60.0)?,
                lease: {
                    let lease = secs("RELAY_LEASE", &self.relay_lease, 3600.0)?;
                    if lease < Duration::from_secs(1) {
                        return Err(err("RELAY_LEASE", "must be at least 1 second"));
                    }
                    lease
                },
                ..Default::default()
            },
        })
    }
}

/// `serve`'s own settings.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// REST/JSON listen address.
    #[arg(long, env = "JSON_PORT", default_value = ":8080")]
    pub json_port: String,
    /// gRPC listen address.
    #[arg(long, env = "RPC_PORT", default_value = ":8081")]
    pub rpc_port: String,
    /// Do not apply migrations at start-up.
    #[arg(long, env = "SKIP_MIGRATIONS", default_value = "false")]
    pub skip_migrations: String,
    /// Hours a client's idempotency key and its saved response are kept.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "24")]
    pub idempotency_ttl: String,
    /// Seconds a running request holds its idempotency key before a retry
    /// may take over (its instance is then presumed dead).
    #[arg(long, env = "IDEMPOTENCY_LEASE", default_value = "300")]
    pub idempotency_lease: String,
    /// The Stripe webhook endpoint's signing secret(s), `whsec_...`, comma
    /// separated (several while one is rolled).
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Seconds a webhook's timestamp may be from now.
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE", default_value = "300")]
    pub stripe_webhook_tolerance: String,
    /// Requests one instance serves at a time; one more is refused at once
    /// with 503 and Retry-After.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value = "1024")]
    pub max_in_flight: String,
    /// Seconds of a request's own time (without Stripe's) above which
    /// requests are taken to queue and fewer are admitted; 0 keeps
    /// MAX_IN_FLIGHT fixed.
    #[arg(long, env = "OVERLOAD_TARGET", default_value = "0.15")]
    pub overload_target: String,
    /// Run the reconciler inside serve.
    #[arg(long, env = "RECONCILER", default_value = "true")]
    pub reconciler: String,
    /// Run the outbox relay inside serve.
    #[arg(long, env = "RELAY", default_value = "true")]
    pub relay: String,
    /// Run the e-mail notifier inside serve: true, false, or auto (when
    /// SMTP_URL is set).
    #[arg(long, env = "NOTIFIER", default_value = "auto")]
    pub notifier: String,
    /// Deliver webhooks to callers' endpoints in this process.
    #[arg(long, env = "DELIVERER", default_value = "true")]
    pub deliverer: String,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// Limits on the connections of both listeners (defaults:
/// [`ConnectionLimits::default`]).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection limits")]
pub struct ConnectionArgs {
    /// Seconds a client has to send a request's headers, from connecting
    /// (its first request) or from their first byte (later ones).
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10")]
    pub header_read_timeout: String,
    /// Seconds a connection with no request in flight is kept open.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "75")]
    pub idle_timeout: String,
    /// Seconds a request's body has to arrive, from its headers.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "30")]
    pub body_read_timeout: String,
    /// Seconds between HTTP/2 keep-alive PINGs; 0: none.
    #[arg(long, env = "HTTP2_KEEPALIVE_INTERVAL", default_value = "30")]
    pub http2_keepalive_interval: String,
    /// Seconds a PING may go unanswered before its connection is closed.
    #[arg(long, env = "HTTP2_KEEPALIVE_TIMEOUT", default_value = "10")]
    pub http2_keepalive_timeout: String,
    /// Requests one HTTP/2 connection carries at a time.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value = "200")]
    pub http2_max_concurrent_streams: String,
    /// Bytes of request headers (names and values) accepted.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value = "65536")]
    pub max_header_bytes: String,
    /// Connections each listener holds at a time.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "10000")]
    pub max_connections: String,
    /// Seconds a request is waited for at most (a gRPC client's deadline if
    /// sooner): then it is answered DEADLINE_EXCEEDED, and its work goes on
    /// and is recorded.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "60")]
    pub request_timeout: String,
    /// Seconds an instance serves on after SIGTERM with its health checks
    /// failing, before it stops accepting: behind a load balancer, more than
    /// the balancer's check interval times its fall count.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "0")]
    pub shutdown_delay: String,
}

impl ConnectionArgs {
    pub fn limits(&self) -> Result<ConnectionLimits, ConfigError> {
        let streams: u32 = number("HTTP2_MAX_CONCURRENT_STREAMS", &self.http2_max_concurrent_streams)?;
        if !(1..=10_000).contains(&streams) {
            return Err(err("HTTP2_MAX_CONCURRENT_STREAMS", "must be between 1 and 10000"));
        }
        // Below what the transports read at most, so that our answer, not
        // theirs, refuses large headers.
        let ceiling = HEAD_CEILING * 3 / 4;
        let header_bytes: usize = number("MAX_HEADER_BYTES", &self.max_header_bytes)?;
        if !(1024..=ceiling).contains(&header_bytes) {
            return Err(err("MAX_HEADER_BYTES", format!("must be between 1024 and {ceiling}")));
        }
        let connections: usize = number("MAX_CONNECTIONS", &self.max_connections)?;
        if !(1..=1_000_000).contains(&connections) {
            return Err(err("MAX_CONNECTIONS", "must be between 1 and 1000000"));
        }
        let interval = seconds("HTTP2_KEEPALIVE_INTERVAL", &self.http2_keepalive_interval, 3600.0)?;
        Ok(ConnectionLimits {
            header_read_timeout: positive_seconds("HEADER_READ_TIMEOUT", &self.header_read_timeout, 3600.0)?,
            idle_timeout: positive_seconds("IDLE_TIMEOUT", &self.idle_timeout, 86_400.0)?,
            body_read_timeout: positive_seconds("BODY_READ_TIMEOUT", &self.body_read_timeout, 3600.0)?,
            http2_keepalive_interval: (!interval.is_zero()).then_some(interval),
            http2_keepalive_timeout: positive_seconds("HTTP2_KEEPALIVE_TIMEOUT", &self.http2_keepalive_timeout, 600.0)?,
            http2_max_concurrent_streams: streams,
            max_header_bytes: header_bytes,
            max_connections: connections,
            request_timeout: {
                let request = positive_seconds("REQUEST_TIMEOUT", &self.request_timeout, 3600.0)?;
                let body = positive_seconds("BODY_READ_TIMEOUT", &self.body_read_timeout, 3600.0)?;
                // A body still coming is refused as such (408), never
                // answered as work that goes on.
                if request < body {
                    return Err(err("REQUEST_TIMEOUT", "must be at least BODY_READ_TIMEOUT"));
                }
                request
            },
            shutdown_delay: seconds("SHUTDOWN_DELAY", &self.shutdown_delay, 600.0)?,
        })
    }
}

/// Everything `serve` needs, checked.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub rest: SocketAddr,
    pub grpc: SocketAddr,
    pub migrate: bool,
    pub idempotency_ttl: Duration,
    pub idempotency_lease: Duration,
    pub max_in_flight: usize,
    pub overload_target: Duration,
    pub connections: ConnectionLimits,
    pub webhooks: crate::app::WebhookSettings,
    pub reconciler: bool,
    pub relay: bool,
    pub notifier: bool,
    pub deliverer: bool,
    pub hooks: crate::hooks::Settings,
    pub notify: NotifyConfig,
    pub db: DbConfig,
    pub stripe: stripe::Settings,
    pub auth: AuthSettings,
}

impl ServeConfig {
    pub fn new(
        serve: &ServeArgs,
        db: &DbArgs,
        stripe: &StripeArgs,
        auth: &AuthArgs,
        notify: &NotifyArgs,
        hooks: &HooksArgs,
    ) -> Result<Self, ConfigError> {
        let notify = notify.config()?;
        let stripe_settings = stripe.settings()?;
        let notifier = match serve.notifier.trim().to_ascii_lowercase().as_str() {
            "auto" => notify.smtp.is_some(),
            other => flag("NOTIFIER", other)?,
        };
        Ok(Self {
            rest: listen_addr("JSON_PORT", &serve.json_port)?,
            grpc: listen_addr("RPC_PORT", &serve.rpc_port)?,
            migrate: !flag("SKIP_MIGRATIONS", &serve.skip_migrations)?,
            idempotency_ttl: {
                let hours: f64 = number("IDEMPOTENCY_TTL", &serve.idempotency_ttl)?;
                if !(hours > 0.0 && hours <= 24.0 * 30.0) {
                    return Err(err("IDEMPOTENCY_TTL", "must be between 0 and 720 hours"));
                }
                Duration::from_secs_f64(hours * 3600.0)
            },
            idempotency_lease: {
                let secs: f64 = number("IDEMPOTENCY_LEASE", &serve.idempotency_lease)?;
                if !(1.0..=3600.0).contains(&secs) {
                    return Err(err("IDEMPOTENCY_LEASE", "must be between 1 and 3600 seconds"));
                }
                let lease = Duration::from_secs_f64(secs);
                // A request makes at most two Stripe calls in a row (a
                // product and its price). A lease shorter than both lets a
                // retry take over a request that is still running: safe (the
                // key is fenced, the Stripe key and the operation's state
                // make the second driver harmless) but the retry then only
                // learns that the first is still at work.
                let needed = stripe_settings.worst_case() * 2;
                if lease < needed {
                    tracing::warn!(
                        lease_s = secs,
                        longest_stripe_calls_s = needed.as_secs(),
                        "IDEMPOTENCY_LEASE is shorter than two of the longest Stripe calls: a retry may take over a request still running"
                    );
                }
                lease
            },
            max_in_flight: {
                let n: usize = number("MAX_IN_FLIGHT", &serve.max_in_flight)?;
                if !(1..=100_000).contains(&n) {
                    return Err(err("MAX_IN_FLIGHT", "must be between 1 and 100000"));
                }
                n
            },
            overload_target: {
                let secs: f64 = number("OVERLOAD_TARGET", &serve.overload_target)?;
                if !(0.0..=60.0).contains(&secs) {
                    return Err(err("OVERLOAD_TARGET", "must be between 0 and 60 seconds"));
                }
                Duration::from_secs_f64(secs)
            },
            connections: serve.connections.limits()?,
            webhooks: {
                let secrets: Vec<Secret> = serve
                    .stripe_webhook_secret
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Secret::new)
                    .collect();
                if secrets.iter().any(|s| !s.expose().starts_with("whsec_")) {
                    return Err(err("STRIPE_WEBHOOK_SECRET", "each secret starts with whsec_"));
                }
                let tolerance: u64 = number("STRIPE_WEBHOOK_TOLERANCE", &serve.stripe_webhook_tolerance)?;
                crate::app::WebhookSettings { secrets, tolerance: Duration::from_secs(tolerance) }
            },
            reconciler: flag("RECONCILER", &serve.reconciler)?,
            relay: flag("RELAY", &serve.relay)?,
            notifier,
            deliverer: flag("DELIVERER", &serve.deliverer)?,
            hooks: hooks.settings()?,
            notify,
            db: db.config()?,
            stripe: stripe_settings,
            auth: auth.settings()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_the_old_colon_port_form() {
        assert_eq!(listen_addr("JSON_PORT", ":8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(listen_addr("JSON_PORT", "127.0.0.1:9").unwrap().to_string(), "127.0.0.1:9");
        let e = listen_addr("JSON_PORT", "eighty").unwrap_err();
        assert!(e.to_string().starts_with("JSON_PORT: "), "{e}");
    }

    fn stripe_args(key: Option<&str>) -> StripeArgs {
        StripeArgs {
            stripe_key: key.map(String::from),
            stripe_api_base: stripe::DEFAULT_API_BASE.into(),
            stripe_api_version: stripe::DEFAULT_API_VERSION.into(),
            stripe_timeout: "30".into(),
            stripe_max_retries: "2".into(),
            stripe_http2: "auto".into(),
            stripe_connections: "4".into(),
            stripe_max_rps: "90".into(),
        }
    }

    #[test]
    fn a_missing_or_malformed_stripe_key_names_the_variable() {
        assert!(stripe_args(None).settings().unwrap_err().to_string().starts_with("STRIPE_KEY: is not set"));
        assert_eq!(stripe_args(Some("pk_test_123")).settings().unwrap_err().variable, "STRIPE_KEY");
        assert!(stripe_args(Some("sk_test_123")).settings().is_ok());
    }

    #[test]
    fn a_database_url_with_several_hosts_is_refused_with_what_to_do_instead() {
        let e = postgres_url(
            "DATABASE_URL",
            "postgres://app:pw@db1:5432,db2:5432/payments?target_session_attrs=read-write",
            "host",
        )
        .unwrap_err();
        assert_eq!(e.variable, "DATABASE_URL");
        assert!(e.to_string().contains("several hosts") && e.to_string().contains("PgBouncer"), "{e}");
        let e = postgres_url("DATABASE_URL", "postgres://app@/payments?host=db1,db2", "host").unwrap_err();
        assert!(e.to_string().contains("several hosts"), "{e}");
        let e = postgres_url("DATABASE_URL", "postgres://app@db1/payments?target_session_attrs=read-write", "host")
            .unwrap_err();
        assert!(e.to_string().contains("target_session_attrs"), "{e}");
        // A comma in a password is not a host list.
        assert!(postgres_url("DATABASE_URL", "postgres://app:p,w@db1:5432/payments", "host").is_ok());
        let e = postgres_url("DATABASE_READ_URL", "postgres://db:port/x", "replica").unwrap_err();
        assert!(e.to_string().contains("postgres://user:pass@replica:5432/db"), "{e}");
    }

    #[test]
    fn the_printed_configuration_shows_no_secret() {
        let db = DbArgs {
            database_url: Some("postgres://app:s3cret-pw@db.internal:5432/payments".into()),
            database_read_url: Some("postgres://ro:replica-pw@replica.internal:5432/payments".into()),
            database_read_max_lag: "5".into(),
            db_host: "localhost".into(),
            db_port: "5432".into(),
            db_user: "postgres".into(),
            db_name: "x".into(),
            db_pass: "postgres".into(),
            db_max_connections: "5".into(),
        };
        let auth = AuthArgs {
            api_key_pepper: Some("a-long-enough-pepper".into()),
            auth_disabled: "no".into(),
            api_key_cache_ttl: "5".into(),
            rate_limit: "100".into(),
        };
        let serve = ServeArgs {
            json_port: ":8080".into(),
            rpc_port: ":8081".into(),
            skip_migrations: "false".into(),
            idempotency_ttl: "24".into(),
            idempotency_lease: "300".into(),
            max_in_flight: "1024".into(),
            overload_target: "0.15".into(),
            stripe_webhook_secret: Some("whsec_abc".into()),
            stripe_webhook_tolerance: "300".into(),
            reconciler: "true".into(),
            relay: "true".into(),
            notifier: "auto".into(),
            deliverer: "true".into(),
            connections: connection_args(),
        };
        let hooks = HooksArgs {
            webhook_allow_private: "false".into(),
            webhook_retry_schedule: crate::hooks::DEFAULT_SCHEDULE.into(),
            webhook_disable_after: "432000".into(),
            webhook_timeout: "15".into(),
        };
        let config =
            ServeConfig::new(&serve, &db, &stripe_args(Some("sk_test_abcdef123456")), &auth, &notify_args(), &hooks)
                .unwrap();
        let printed = format!("{config:?}");
        assert!(config.notifier, "SMTP_URL is set, so the notifier runs");
        for secret in ["s3cret-pw", "replica-pw", "sk_test_abcdef123456", "a-long-enough-pepper", "mail-pw-123"] {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
        assert!(printed.contains("db.internal") && printed.contains("replica.internal"), "{printed}");
    }

    #[test]
    fn a_request_timeout_shorter_than_the_body_read_timeout_is_refused() {
        let args = ConnectionArgs { request_timeout: "10".into(), ..connection_args() };
        let e = args.limits().unwrap_err();
        assert!(e.to_string().contains("REQUEST_TIMEOUT"), "{e}");
    }

    fn connection_args() -> ConnectionArgs {
        ConnectionArgs {
            header_read_timeout: "10".into(),
            idle_timeout: "75".into(),
            body_read_timeout: "30".into(),
            http2_keepalive_interval: "30".into(),
            http2_keepalive_timeout: "10".into(),
            http2_max_concurrent_streams: "200".into(),
            max_header_bytes: "65536".into(),
            max_connections: "10000".into(),
            request_timeout: "60".into(),
            shutdown_delay: "0".into(),
        }
    }

    #[test]
    fn the_connection_limits_default_to_the_documented_values_and_bad_ones_name_their_variable() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            connections: ConnectionArgs,
        }
        let parsed = <Flags as clap::Parser>::try_parse_from(["serve"]).unwrap();
        assert_eq!(parsed.connections.limits().unwrap(), ConnectionLimits::default());
        assert_eq!(connection_args().limits().unwrap(), ConnectionLimits::default());
        let bad = |f: fn(&mut ConnectionArgs)| {
            let mut a = connection_args();
            f(&mut a);
            a.limits().unwrap_err().variable
        };
        assert_eq!(bad(|a| a.header_read_timeout = "0".into()), "HEADER_READ_TIMEOUT");
        assert_eq!(bad(|a| a.idle_timeout = "soon".into()), "IDLE_TIMEOUT");
        assert_eq!(bad(|a| a.body_read_timeout = "-1".into()), "BODY_READ_TIMEOUT");
        assert_eq!(bad(|a| a.max_header_bytes = "1000000".into()), "MAX_HEADER_BYTES");
        assert_eq!(bad(|a| a.max_connections = "0".into()), "MAX_CONNECTIONS");
        assert_eq!(bad(|a| a.http2_max_concurrent_streams = "0".into()), "HTTP2_MAX_CONCURRENT_STREAMS");
        let mut no_pings = connection_args();
        no_pings.http2_keepalive_interval = "0".into();
        assert_eq!(no_pings.limits().unwrap().http2_keepalive_interval, None);
    }

    fn notify_args() -> NotifyArgs {
        NotifyArgs {
            queue_url: None,
            smtp_url: Some("smtp://shop:mail-pw-123@mail.example.com:587".into()),
            mail_from: "Shop <payments@shop.example>".into(),
            mail_events: DEFAULT_MAIL_EVENTS.into(),
            mail_templates: None,
            mail_action_url: None,
            smtp_timeout: "30".into(),
            notify_max_attempts: "5".into(),
            notify_retry_base: "10".into(),
            notify_retry_max: "600".into(),
            notify_interval: "1".into(),
            relay_interval: "0.5".into(),
            relay_batch: "100".into(),
            relay_lease: "30".into(),
            notify_concurrency: "16".into(),
        }
    }

    #[test]
    fn bad_notification_settings_name_their_variable() {
        let bad = |f: fn(&mut NotifyArgs)| {
            let mut a = notify_args();
            f(&mut a);
            a.config().unwrap_err().variable
        };
        assert_eq!(bad(|a| a.mail_events = "payment.captured,payment.exploded".into()), "MAIL_EVENTS");
        assert_eq!(bad(|a| a.queue_url = Some("sqs://payments".into())), "QUEUE_URL");
        assert_eq!(bad(|a| a.smtp_url = Some("smtp://host?tls=maybe".into())), "SMTP_URL");
        assert_eq!(bad(|a| a.mail_from = "not an address".into()), "MAIL_FROM");
        assert_eq!(bad(|a| a.notify_max_attempts = "0".into()), "NOTIFY_MAX_ATTEMPTS");
        let ok = notify_args().config().unwrap();
        assert!(matches!(ok.target, crate::notify::queue::Target::Builtin));
        assert_eq!(ok.notifier.mailed.len(), 7);
    }

    #[test]
    fn a_mail_claim_outlives_the_smtp_conversations_it_guards() {
        let mut a = notify_args();
        a.smtp_timeout = "120".into();
        let visibility = a.config().unwrap().notifier.visibility;
        assert!(visibility >= Duration::from_secs(240), "{visibility:?}");
        assert!(notify_args().config().unwrap().notifier.visibility >= Duration::from_secs(60));
    }

    #[test]
    fn the_longest_stripe_call_counts_every_attempt_its_pacing_and_backoff() {
        let s = stripe_args(Some("sk_test_123")).settings().unwrap();
        // 3 attempts of 30 s, each after at most 1 s waiting for its turn
        // under STRIPE_MAX_RPS, and 2 backoffs of at most 8 s.
        assert_eq!(s.worst_case(), Duration::from_secs(109));
    }

    #[test]
    fn a_bad_port_names_its_variable() {
        let db = DbArgs {
            database_url: None,
            db_host: "localhost".into(),
            db_port: "54x".into(),
            db_user: "postgres".into(),
            db_name: "x".into(),
            db_pass: "p".into(),
            db_max_connections: "5".into(),
            database_read_url: None,
            database_read_max_lag: "5".into(),
        };
        assert_eq!(db.config().unwrap_err().variable, "DB_PORT");
    }
}
