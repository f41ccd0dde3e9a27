//! Client idempotency keys (`idempotency-key` metadata; the REST gateway
//! forwards the `Idempotency-Key` header as that), for every mutating rpc.
//!
//! The key is scoped to the caller's API key. The first request to claim it
//! runs; its completed response, a success or a definitive refusal, is saved and
//! replayed for 24 hours (`IDEMPOTENCY_TTL`), marked `idempotent-replayed:
//! true`. The same key with another request is refused
//! (`IDEMPOTENCY_KEY_REUSED`); a duplicate arriving while the first runs gets
//! ABORTED (`IDEMPOTENCY_KEY_IN_USE`) and should retry. When the first
//! attempt's outcome is unknown (503), nothing is saved. The same request may
//! run again, and the use case resumes what the first attempt recorded,
//! using the same Stripe idempotency key.

use crate::{
    app::{
        App, AppError, Call, KEY_SEEN, Kind, Principal, RequestKey, answer::Answer, answer::Answered,
        error::ERROR_DOMAIN,
    },
    store::idempotency::{self, Claim, NewClaim},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::{collections::HashMap, future::Future};
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

/// The metadata of replayed answers.
pub const REPLAYED: &str = "idempotent-replayed";

/// Object keys sorted, so equal requests have equal text.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), canonical(&m[k]))).collect::<Map<_, _>>())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

fn fingerprint(rpc: &str, message: &impl Serialize) -> String {
    let text = canonical(&serde_json::to_value(message).unwrap_or(Value::Null)).to_string();
    hex::encode(Sha256::digest(format!("{rpc}\n{text}")))
}

fn key_of(metadata: &MetadataMap) -> Result<Option<String>, AppError> {
    let Some(raw) = metadata.get("idempotency-key") else { return Ok(None) };
    let key = raw.to_str().map(str::trim).unwrap_or("");
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AppError::invalid(
            "INVALID_IDEMPOTENCY_KEY",
            "an idempotency key has 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_string()))
}

/// Whether an error is a final answer to the request (saved and replayed),
/// rather than a failure to find out (not saved: the request may run again).
fn is_final(e: &AppError) -> bool {
    matches!(
        e.kind,
        Kind::InvalidArgument
            | Kind::NotFound
            | Kind::AlreadyExists
            | Kind::FailedPrecondition
            | Kind::Conflict
            | Kind::PermissionDenied
    )
}

fn replayed_metadata() -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert(REPLAYED, "true".parse().expect("a valid header value"));
    m
}

fn replay<Resp: DeserializeOwned>(saved: Value) -> Result<Response<Resp>, Status> {
    if let Some(error) = saved.get("error") {
        let details: HashMap<String, String> = serde_json::from_value(error["details"].clone()).unwrap_or_default();
        return Err(Status::with_error_details_and_metadata(
            Code::from(error["code"].as_i64().unwrap_or(2) as i32),
            error["message"].as_str().unwrap_or_default(),
            ErrorDetails::with_error_info(error["reason"].as_str().unwrap_or_default(), ERROR_DOMAIN, details),
            replayed_metadata(),
        ));
    }
    let message: Resp = serde_json::from_value(saved["ok"].clone())
        .map_err(|e| Status::from(AppError::internal(anyhow::anyhow!("unreadable saved response: {e}"))))?;
    let mut response = Response::new(message);
    *response.metadata_mut() = replayed_metadata();
    Ok(response)
}

/// Runs `run` once per idempotency key (or every time, without one). For
/// an rpc whose answer is `render` of the use case's result as it is, the
/// answer is saved with the outcome of the request's operation, in the same
/// transaction ([`crate::app::answer`]); else ([`after`]) once the use
/// case returns.
pub async fn once<Req, Resp, F, Fut>(
    app: &App,
    principal: &Principal,
    rpc: &'static str,
    request: Request<Req>,
    render: fn(&Answered) -> Option<Resp>,
    run: F,
) -> Result<Response<Resp>, Status>
where
    Req: Serialize + Clone,
    Resp: Serialize + DeserializeOwned + 'static,
    F: Fn(Req, Call) -> Fut,
    Fut: Future<Output = Result<Resp, AppError>>,
{
    keyed(app, principal, rpc, request, render, run, true).await
}

/// Runs `run` once per idempotency key for an rpc that records no
/// operation to claim its key with (saving a card): the key is claimed on
/// its own first.
pub async fn once_claimed<Req, Resp, F, Fut>(
    app: &App,
    principal: &Principal,
    rpc: &'static str,
    request: Request<Req>,
    run: F,
) -> Result<Response<Resp>, Status>
where
    Req: Serialize + Clone,
    Resp: Serialize + DeserializeOwned + 'static,
    F: Fn(Req, Call) -> Fut,
    Fut: Future<Output = Result<Resp, AppError>>,
{
    keyed(app, principal, rpc, request, after, run, false).await
}

/// [`once`]; with `with_operation`, the key of a request never seen is
/// claimed by the statement that records its operation.
async fn keyed<Req, Resp, F, Fut>(
    app: &App,
    principal: &Principal,
    rpc: &'static str,
    request: Request<Req>,
    render: fn(&Answered) -> Option<Resp>,
    run: F,
    with_operation: bool,
) -> Result<Response<Resp>, Status>
where
    Req: Serialize + Clone,
    Resp: Serialize + DeserializeOwned + 'static,
    F: Fn(Req, Call) -> Fut,
    Fut: Future<Output = Result<Resp, AppError>>,
{
    let key = key_of(request.metadata())?;
    let message = request.into_inner();
    let Some(key) = key else {
        let call = Call { by: principal.api_key_id, key: None };
        return run(message, call).await.map(Response::new).map_err(Status::from);
    };
    let scope = principal.lineage.unwrap_or(0);
    let claim = NewClaim {
        rpc,
        fingerprint: fingerprint(rpc, &message),
        lease: app.idempotency_lease,
        ttl: app.idempotency_ttl,
        holder: Uuid::new_v4(),
    };
    if with_operation {
        // The common case, a key never seen: claimed by the statement that
        // records the request's operation, so the claim costs no round trip.
        let first = RequestKey { scope, key: key.clone(), claim: Some(claim.clone()) };
        match run_keyed(
            app,
            first.clone(),
            &claim,
            render,
            run(message.clone(), Call { by: principal.api_key_id, key: Some(first) }),
        )
        .await
        {
            Err(e) if e.reason == KEY_SEEN => {}
            done => return done.map(Response::new).map_err(Status::from),
        }
    }
    claimed_first(app, principal, (key, scope, claim), message, render, run).await
}

/// The key claimed on its own, which decides between a replay, a refusal
/// and running the request holding it.
async fn claimed_first<Req, Resp, F, Fut>(
    app: &App,
    principal: &Principal,
    (key, scope, claim): (String, i64, NewClaim),
    message: Req,
    render: fn(&Answered) -> Option<Resp>,
    run: F,
) -> Result<Response<Resp>, Status>
where
    Resp: Serialize + DeserializeOwned + 'static,
    F: Fn(Req, Call) -> Fut,
    Fut: Future<Output = Result<Resp, AppError>>,
{
    let rpc = claim.rpc;
    let holder = match idempotency::claim(
        &app.db,
        scope,
        &key,
        rpc,
        &claim.fingerprint,
        app.idempotency_lease,
        app.idempotency_ttl,
    )
    .await
    .map_err(AppError::from)?
    {
        Claim::Run(holder) => holder,
        Claim::Replay(saved) => {
            crate::meter::replay(rpc);
            return replay(saved);
        }
        Claim::Mismatch => {
            return Err(AppError::invalid(
                "IDEMPOTENCY_KEY_REUSED",
                "this idempotency key was already used for a different request",
            )
            .into());
        }
        Claim::InUse => {
            return Err(AppError::new(
                Kind::Aborted,
                "IDEMPOTENCY_KEY_IN_USE",
                "a request with this idempotency key is still running; retry shortly",
            )
            .into());
        }
    };
    let claim = NewClaim { holder, ..claim };
    let held = RequestKey { scope, key: key.clone(), claim: None };
    run_keyed(app, held.clone(), &claim, render, run(message, Call { by: principal.api_key_id, key: Some(held) }))
        .await
        .map(Response::new)
        .map_err(Status::from)
}

/// The `render` of an rpc whose answer is saved after its use case returns.
pub fn after<Resp>(_: &Answered) -> Option<Resp> {
    None
}

/// The answer saved for a successful request.
fn saved_ok(resp: &impl Serialize) -> Value {
    json!({"ok": serde_json::to_value(resp).unwrap_or(Value::Null)})
}

/// Runs a keyed request's use case (`work`) and saves its answer, unless it
/// was saved with its operation's outcome; frees the key for a retry when
/// the outcome is unknown.
async fn run_keyed<Resp: Serialize + 'static>(
    app: &App,
    key: RequestKey,
    claim: &NewClaim,
    render: fn(&Answered) -> Option<Resp>,
    work: impl Future<Output = Result<Resp, AppError>>,
) -> Result<Resp, AppError> {
    let answer = Answer::new(
        key.scope,
        key.key.clone(),
        claim.holder,
        Box::new(move |d: &Answered| render(d).map(|r| saved_ok(&r))),
    );
    let mut guard =
        Unfinished { db: Some(app.db.clone()), scope: key.scope, key: key.key.clone(), holder: claim.holder };
    let result = match answer.clone().scope(work).await {
        // An operation is bound to the key, though the key had no row (a
        // binding older than the key table's rows): the key was seen.
        Err(e) if key.claim.is_some() && e.reason == "IDEMPOTENCY_KEY_IN_USE" => {
            Err(AppError::new(Kind::Aborted, KEY_SEEN, "an operation is bound to this idempotency key"))
        }
        other => other,
    };
    let stored = match &result {
        Ok(_) if answer.saved() => Ok(true),
        Ok(resp) => idempotency::complete(&app.db, key.scope, &key.key, claim, &saved_ok(resp)).await,
        // Nothing was written: the request runs again holding the key.
        Err(e) if e.reason == KEY_SEEN => Ok(true),
        Err(e) if is_final(e) => {
            let saved = json!({"error": {
                "code": e.kind.code() as i32, "reason": e.reason, "message": e.message, "details": e.details,
            }});
            idempotency::complete(&app.db, key.scope, &key.key, claim, &saved).await
        }
        Err(_) => idempotency::release(&app.db, key.scope, &key.key, claim.holder).await.map(|()| true),
    };
    // Disarmed only now, and only once the answer or release is written: a
    // request dropped meanwhile, or whose write failed (the database gone),
    // still frees its key later (a no-op once the answer is in).
    if stored.is_ok() {
        guard.db = None;
    }
    match stored {
        // A request whose claim was still to be made, refused before it
        // recorded anything, under a key another request holds or answered:
        // its refusal may come from that request's work (a retried capture
        // finding the payment captured). It is not the key's answer: the
        // request runs again holding the key, which finds that work.
        Ok(false) if key.claim.is_some() && result.is_err() => {
            return Err(AppError::new(Kind::Aborted, KEY_SEEN, "this idempotency key was used before"));
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "could not save the idempotent response"),
    }
    result
}

/// Frees a claimed key when its request is dropped unfinished (the client
/// went away and the server stopped the handler): the same request may run
/// again at once, and resumes whatever was recorded. A request dropped while
/// the statement that claims its key was in flight may see that claim
/// commit after the first release: the release is repeated a little later.
struct Unfinished {
    db: Option<sqlx::PgPool>,
    scope: i64,
    key: String,
    holder: uuid::Uuid,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            let (scope, key, holder) = (self.scope, std::mem::take(&mut self.key), self.holder);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    for wait in [0, 1, 5] {
                        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                        let _ = idempotency::release(&db, scope, &key, holder).await;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_requests_have_equal_fingerprints_whatever_the_order_of_their_maps() {
        let a = json!({"metadata": {"a": "1", "b": "2"}, "amount": "5"});
        let b = json!({"amount": "5", "metadata": {"b": "2", "a": "1"}});
        assert_eq!(fingerprint("CreatePayment", &a), fingerprint("CreatePayment", &b));
        assert_ne!(fingerprint("CreatePayment", &a), fingerprint("RefundPayment", &a));
    }
}
