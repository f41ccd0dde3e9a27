//! Configuration: the earlier service's environment variables and defaults,
//! and ours, each also a command-line flag. Values are taken as text and
//! checked here, so that a bad one stops the program with one line that names
//! the variable. Secrets are held as [`Secret`] and never printed.

use crate::{app::AuthSettings, secret::Secret, stripe};
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
}

/// The database settings, checked.
#[derive(Clone)]
pub struct DbConfig {
    pub options: PgConnectOptions,
    pub max_connections: u32,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        write!(
            f,
            "postgres://{}:[redacted]@{}:{}/{} (max {} connections)",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or(""),
            self.max_connections
        )
    }
}

impl DbArgs {
    pub fn config(&self) -> Result<DbConfig, ConfigError> {
        let max_connections: u32 = number("DB_MAX_CONNECTIONS", &self.db_max_connections)?;
        if max_connections == 0 {
            return Err(err("DB_MAX_CONNECTIONS", "must be at least 1"));
        }
        let options = match &self.database_url {
            Some(url) if !url.trim().is_empty() => PgConnectOptions::from_str(url.trim()).map_err(|_| {
                err("DATABASE_URL", "is not a PostgreSQL URL such as postgres://user:pass@host:5432/db")
            })?,
            _ => {
                let port: u16 = number("DB_PORT", &self.db_port)?;
                if self.db_host.trim().is_empty() {
                    return Err(err("DB_HOST", "is empty"));
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
        Ok(DbConfig { options, max_connections })
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
        Ok(AuthSettings { required: !flag("AUTH_DISABLED", &self.auth_disabled)?, pepper: Secret::new(pepper) })
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
    #[arg(long, env = "IDEMPOTENCY_LEASE", default_value = "90")]
    pub idempotency_lease: String,
    /// The Stripe webhook endpoint's signing secret(s), `whsec_...`, comma
    /// separated (several while one is rolled).
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Seconds a webhook's timestamp may be from now.
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE", default_value = "300")]
    pub stripe_webhook_tolerance: String,
    /// Run the reconciler inside serve.
    #[arg(long, env = "RECONCILER", default_value = "true")]
    pub reconciler: String,
}

/// Everything `serve` needs, checked.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub rest: SocketAddr,
    pub grpc: SocketAddr,
    pub migrate: bool,
    pub idempotency_ttl: Duration,
    pub idempotency_lease: Duration,
    pub webhooks: crate::app::WebhookSettings,
    pub reconciler: bool,
    pub db: DbConfig,
    pub stripe: stripe::Settings,
    pub auth: AuthSettings,
}

impl ServeConfig {
    pub fn new(serve: &ServeArgs, db: &DbArgs, stripe: &StripeArgs, auth: &AuthArgs) -> Result<Self, ConfigError> {
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
                Duration::from_secs_f64(secs)
            },
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
            db: db.config()?,
            stripe: stripe.settings()?,
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
        }
    }

    #[test]
    fn a_missing_or_malformed_stripe_key_names_the_variable() {
        assert!(stripe_args(None).settings().unwrap_err().to_string().starts_with("STRIPE_KEY: is not set"));
        assert_eq!(stripe_args(Some("pk_test_123")).settings().unwrap_err().variable, "STRIPE_KEY");
        assert!(stripe_args(Some("sk_test_123")).settings().is_ok());
    }

    #[test]
    fn the_printed_configuration_shows_no_secret() {
        let db = DbArgs {
            database_url: Some("postgres://app:s3cret-pw@db.internal:5432/payments".into()),
            db_host: "localhost".into(),
            db_port: "5432".into(),
            db_user: "postgres".into(),
            db_name: "x".into(),
            db_pass: "postgres".into(),
            db_max_connections: "5".into(),
        };
        let auth = AuthArgs { api_key_pepper: Some("a-long-enough-pepper".into()), auth_disabled: "no".into() };
        let serve = ServeArgs {
            json_port: ":8080".into(),
            rpc_port: ":8081".into(),
            skip_migrations: "false".into(),
            idempotency_ttl: "24".into(),
            idempotency_lease: "90".into(),
            stripe_webhook_secret: Some("whsec_abc".into()),
            stripe_webhook_tolerance: "300".into(),
            reconciler: "true".into(),
        };
        let config = ServeConfig::new(&serve, &db, &stripe_args(Some("sk_test_abcdef123456")), &auth).unwrap();
        let printed = format!("{config:?}");
        for secret in ["s3cret-pw", "sk_test_abcdef123456", "a-long-enough-pepper"] {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
        assert!(printed.contains("db.internal"));
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
        };
        assert_eq!(db.config().unwrap_err().variable, "DB_PORT");
    }
}
