//! The use cases: what the service does, whichever door a request came in
//! by. gRPC and REST both end here; this layer speaks in domain types and
//! [`AppError`], never in transport types.
//!
//! Rule: no database connection or transaction is held across a call to
//! Stripe. Each store function takes the pool and returns its connection.

pub mod answer;
pub mod apikeys;
pub mod customers;
pub mod disputes;
pub mod endpoints;
pub mod error;
pub mod health;
pub mod operations;
pub mod page;
pub mod payments;
pub mod products;
pub mod ratelimit;
pub mod refunds;
pub mod saved_cards;
pub mod settle;
pub mod sync;
pub mod webhooks;

pub use error::{AppError, Kind};

use crate::{secret::Secret, stripe};
use sqlx::PgPool;

/// How callers are authenticated.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// When false every call is served without a key (old clients); a warning
    /// is logged at every start.
    pub required: bool,
    /// The key of the keyed hash under which API keys are stored.
    pub pepper: Secret,
    /// Keys verified lately, trusted for a short while without reading
    /// their row again: a revocation takes effect within its TTL.
    pub cache: apikeys::KeyCache,
    /// Requests a second per key (`RATE_LIMIT`, a key's own override).
    pub limiter: ratelimit::Limiter,
}

impl AuthSettings {
    /// Keys checked against the database at most every `cache_ttl`; no
    /// rate limit until [`AuthSettings::with_rate_limit`].
    pub fn new(required: bool, pepper: Secret, cache_ttl: std::time::Duration) -> Self {
        Self { required, pepper, cache: apikeys::KeyCache::new(cache_ttl), limiter: ratelimit::Limiter::off() }
    }

    /// Requests a second for each key without its own limit; `None`: none.
    pub fn with_rate_limit(self, per_second: Option<u32>) -> Self {
        self.with_limiter(ratelimit::Limiter::new(per_second))
    }

    pub fn with_limiter(mut self, limiter: ratelimit::Limiter) -> Self {
        self.limiter = limiter;
        self
    }
}

/// Everything a use case needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    pub db: PgPool,
    /// The read replica, when `DATABASE_READ_URL` is set: gets and lists
    /// go there when it has replayed what they must see ([`App::read`]).
    pub reads: Option<crate::store::replica::Replica>,
    pub stripe: stripe::Client,
    pub auth: AuthSettings,
    /// How long a client's idempotency key is kept.
    pub idempotency_ttl: std::time::Duration,
    /// How long a request holds its key before a retry may take over (the
    /// instance running it is then presumed dead). Longer than any request.
    pub idempotency_lease: std::time::Duration,
    /// How Stripe's webhooks are checked.
    pub webhooks: WebhookSettings,
    /// Requests one instance serves at a time at most; one more is refused
    /// at once (503, `OVERLOADED`).
    pub max_in_flight: usize,
    /// The own time per request (without Stripe's) above which requests
    /// are taken to queue, and the bound shrinks; zero keeps it fixed.
    pub overload_target: std::time::Duration,
    /// How webhooks to callers are delivered (and which URLs they may go to).
    pub hooks: crate::hooks::Settings,
}

impl App {
    /// Runs a read (a get or a list, nothing that writes) on the replica
    /// when it can serve it without going back in time, else on the
    /// primary; a replica that fails it for want of a connection is left
    /// for the primary, which runs it again.
    pub(crate) async fn read<T, F, Fut>(&self, read: F) -> Result<T, sqlx::Error>
    where
        F: Fn(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        use crate::store::replica::Target;
        let Some(reads) = &self.reads else {
            return read(self.db.clone()).await;
        };
        if reads.target().await == Target::Replica {
            match tokio::time::timeout(REPLICA_READ_WITHIN, read(reads.replica_pool().clone())).await {
                Err(_) => {
                    tracing::warn!("read replica did not answer a read in time: read from the primary");
                    reads.lost();
                }
                // Its pool busy: the primary takes this one; nothing wrong.
                Ok(Err(sqlx::Error::PoolTimedOut)) => {}
                Ok(Err(e)) if crate::store::is_lost_connection(&e) => {
                    tracing::warn!(error = %e, "read replica failed a read: read from the primary");
                    reads.lost();
                }
                // A query the standby cancelled for a conflict with what it
                // replays: the primary has no such conflict.
                Ok(Err(sqlx::Error::Database(d))) if matches!(d.code().as_deref(), Some("40001" | "40P01")) => {
                    tracing::info!(error = %d, "read replica cancelled a read: read from the primary");
                }
                Ok(answer) => {
                    crate::meter::db_read("replica");
                    return answer;
                }
            }
        }
        crate::meter::db_read("primary");
        read(self.db.clone()).await
    }
}

/// How long a read may take on the replica before it is given to the
/// primary (and the replica taken to be down until its watchdog sees it
/// answer): a replica cut off by the network would otherwise hold the read
/// until TCP gives up.
const REPLICA_READ_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The secrets of the Stripe webhook endpoint (several while one is
/// rolled) and the timestamp tolerance.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub secrets: Vec<Secret>,
    pub tolerance: std::time::Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self { secrets: Vec::new(), tolerance: std::time::Duration::from_secs(300) }
    }
}

/// A client's idempotency key, with its scope (the API key's id, or 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub scope: i64,
    pub key: String,
    /// The claim of the key, still to be made with the request's operation;
    /// `None` once the key is held. Such a key was never seen (else the
    /// claim fails the recording, [`KEY_SEEN`], and the request runs again
    /// holding it), so no operation is bound to it yet.
    pub claim: Option<crate::store::idempotency::NewClaim>,
}

impl RequestKey {
    /// The key as an operation records it, and its claim if still to make.
    pub(crate) fn binding(&self) -> (Option<(i64, &str)>, Option<&crate::store::idempotency::NewClaim>) {
        (Some((self.scope, self.key.as_str())), self.claim.as_ref())
    }
}

/// A request as the use cases see it: the API key that made it (kept with
/// every change it makes, the audit trail; `None` when keys are not
/// required) and the client's idempotency key, if it sent one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    pub by: Option<i64>,
    pub key: Option<RequestKey>,
}

impl Call {
    pub fn key(&self) -> Option<&RequestKey> {
        self.key.as_ref()
    }
}

/// A failure Stripe saved under the request's key and replays to every
/// retry: final (a retry with the same key can never succeed); a new key
/// is a new request.
pub(crate) fn replayed_failure() -> AppError {
    AppError::new(
        Kind::FailedPrecondition,
        "STRIPE_FAILED",
        "the payment provider failed this request and replays that failure to every retry; send it again with a new idempotency key",
    )
}

/// The Stripe idempotency key of a call that records no operation (saved
/// cards, disputes): from the client's key (so that its retry is the same
/// request to Stripe), else a new one.
pub(crate) fn stripe_key(what: &str, call: &Call) -> String {
    match call.key() {
        Some(k) => {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("{}\n{}", k.scope, k.key));
            format!("{what}-{}", hex::encode(&digest[..16]))
        }
        None => format!("{what}-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// The reason of the error that ends a request whose key turned out to be
/// known when its claim was made with its operation: nothing was written,
/// and the door claims the key the long way and runs the request again.
/// Never shown to a caller.
pub const KEY_SEEN: &str = "IDEMPOTENCY_KEY_SEEN";

/// Who is calling: the API key, or nobody when checks are off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub api_key_id: Option<i64>,
    /// The first key of the key's rotation's line: the scope of its
    /// idempotency keys and its rate limit, shared by the keys of the line.
    pub lineage: Option<i64>,
    /// What its rate limit leaves it (`None`: no limit), for the headers.
    pub quota: Option<ratelimit::Quota>,
}

/// Maps a failed Stripe call to what our client is told.
pub fn stripe_failure(e: stripe::StripeError) -> AppError {
    use stripe::StripeError::*;
    match e {
        Network { message, .. } => {
            tracing::warn!(error = %message, "stripe unreachable");
            AppError::unavailable("STRIPE_UNAVAILABLE", "the payment provider could not be reached; try again later")
        }
        Api(a) if a.status == 409 || a.status == 429 || a.status >= 500 => {
            tracing::warn!(status = a.status, error = %a, "stripe failed");
            AppError::unavailable("STRIPE_UNAVAILABLE", "the payment provider is unavailable; try again later")
                .detail("stripe_request_id", a.request_id.unwrap_or_default())
        }
        Api(a) if a.status == 401 || a.status == 403 => {
            let mut err = AppError::new(
                Kind::Internal,
                "STRIPE_AUTHENTICATION_FAILED",
                "the payment provider rejected this service's credentials",
            );
            err.source = Some(anyhow::anyhow!("stripe refused the key: {a}"));
            err
        }
        // A PaymentMethod id of the right form that Stripe does not know: the
        // caller named something that does not exist.
        Api(a) if is_unknown_payment_method(&a) => unknown_payment_method(a.request_id),
        Api(a) if a.code.as_deref() == Some("charge_disputed") => disputes::charge_disputed(),
        Api(a) => {
            let mut err = AppError::new(
                Kind::FailedPrecondition,
                "STRIPE_REFUSED",
                format!("the payment provider refused the request: {}", a.message.clone().unwrap_or_default()),
            );
            for (k, v) in [("stripe_code", &a.code), ("stripe_param", &a.param), ("stripe_request_id", &a.request_id)] {
                if let Some(v) = v {
                    err = err.detail(k, v.clone());
                }
            }
            err
        }
        Decode { message, request_id } => {
            AppError::internal(anyhow::anyhow!("unreadable stripe answer (request {request_id:?}): {message}"))
        }
    }
}

/// Stripe's answer to a `pm_...` it does not know.
pub(crate) fn is_unknown_payment_method(a: &crate::stripe::ApiError) -> bool {
    a.code.as_deref() == Some("resource_missing") && a.param.as_deref() == Some("payment_method")
}

/// The answer to a payment whose PaymentMethod Stripe does not know: the
/// caller named something that does not exist.
pub(crate) fn unknown_payment_method(stripe_request_id: Option<String>) -> AppError {
    let e = AppError::not_found("PAYMENT_METHOD_NOT_FOUND", "Stripe has no such PaymentMethod")
        .detail("field", "payment_method");
    match stripe_request_id {
        Some(id) => e.detail("stripe_request_id", id),
        None => e,
    }
}
