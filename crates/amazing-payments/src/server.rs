//! Serving: the REST and gRPC listeners, both given by the caller (so tests
//! bind `127.0.0.1:0`), each with its own accept loop on hyper (HTTP/1.1 and
//! HTTP/2 on both), the limits of [`ConnectionLimits`], and graceful
//! shutdown: when `shutdown` completes, both stop accepting and finish the
//! requests in flight, for at most [`DRAIN_TIMEOUT`]; connections still open
//! then are closed.
//!
//! Limits, so that clients which send slowly, or nothing, cannot hold the
//! process's file descriptors (README, "Connection limits"):
//!
//! - per connection, in time ([`connection`]): a request's head within the
//!   header timeout, an idle connection closed after the idle timeout;
//! - per request ([`crate::http::limits`]): the body within its timeout,
//!   the headers within `max_header_bytes`;
//! - per listener, in number: past `max_connections` a REST client is
//!   answered 503 `TOO_MANY_CONNECTIONS` and a gRPC connection is closed at
//!   once. The cap is per listener, so that a flood on one door does not shut
//!   the other; both together, with headroom, must fit the open-file limit,
//!   which is raised to that if it can be, else the caps are lowered to fit.
//!
//! An error from `accept` (EMFILE, ENFILE, ENOBUFS...) never ends a loop: it
//! is logged (once a second at most) and the loop backs off briefly.

mod connection;

use crate::{
    app::App,
    grpc,
    http::{self, error::code_name, limits::RequestLimits},
};
use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use std::{
    future::Future,
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
};

/// How long requests in flight may take to finish after shutdown begins
/// (below the 30 s a load balancer or Kubernetes usually grants after SIGTERM).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// The largest request head the transports read (HTTP/1.1: hyper's buffer;
/// HTTP/2: the header list size announced to clients). Above it hyper
/// answers a bare 431 and closes (HTTP/1.1), and h2 refuses the stream with
/// a bare 431 or, when the block spans CONTINUATION frames past it, ends the
/// connection (HTTP/2); `max_header_bytes`, below it, is checked by our middleware,
/// which answers in our error format and keeps the connection.
pub const HEAD_CEILING: usize = 256 * 1024;

/// Headers in one HTTP/1.1 request at most (hyper answers 431 above it).
const MAX_HEADERS: usize = 256;

/// File descriptors kept for everything but the listeners' connections: the
/// database pools, Stripe, SMTP, SQS, refusals being written, the binary's
/// own files.
const FD_HEADROOM: u64 = 512;

/// The cap is never lowered below this to fit a small open-file limit.
const MIN_CONNECTIONS: u64 = 64;

/// Refused REST connections answered at a time; past that they are closed
/// without an answer.
const REFUSALS_AT_ONCE: usize = 64;

/// How long a refused REST connection is kept to deliver its answer.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// The pause after an `accept` that failed for want of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits on the connections of both listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's head must be complete this long after the connection
    /// opens (its first request) or after the head's first byte (later ones).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and nothing moving (HTTP/2: no
    /// request) this long is closed.
    pub idle_timeout: Duration,
    /// A request's body must have arrived this long after its head.
    pub body_read_timeout: Duration,
    /// HTTP/2 keep-alive PINGs, this often; `None`: none.
    pub http2_keepalive_interval: Option<Duration>,
    /// A PING unanswered this long closes its connection.
    pub http2_keepalive_timeout: Duration,
    /// Requests one HTTP/2 connection carries at a time.
    pub http2_max_concurrent_streams: u32,
    /// Request headers, names and values summed, above this are refused;
    /// below [`HEAD_CEILING`].
    pub max_header_bytes: usize,
    /// Connections each listener holds at a time.
    pub max_connections: usize,
    /// The longest a request is waited for (`REQUEST_TIMEOUT`; a gRPC
    /// client's `grpc-timeout` if sooner); its work goes on past it.
    pub request_timeout: Duration,
    /// After SIGTERM, how long the instance serves on with failing health
    /// checks (`SHUTDOWN_DELAY`), so that a load balancer stops sending it
    /// requests before it stops accepting them.
    pub shutdown_delay: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(30),
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Duration::from_secs(10),
            http2_max_concurrent_streams: 200,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            request_timeout: Duration::from_secs(60),
            shutdown_delay: Duration::ZERO,
        }
    }
}

impl ConnectionLimits {
    /// The limits each request is held to.
    pub fn requests(&self) -> RequestLimits {
        RequestLimits { max_header_bytes: self.max_header_bytes, body_read_timeout: self.body_read_timeout }
    }
}

/// Serves until `shutdown` completes and in-flight requests have drained.
pub async fn run(
    app: App,
    rest: TcpListener,
    grpc_listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admission = http::admission::Admission::new(app.max_in_flight, app.overload_target);
    let requests = limits.requests();
    let deadlines = http::deadline::Deadlines::new(limits.request_timeout);
    let breaker = http::breaker::Breaker::default();
    let (watch_stop, watch_stopped) = watch::channel(false);
    tokio::spawn(http::breaker::watch(breaker.clone(), (*app.db.connect_options()).clone(), watch_stopped));
    // Dropped when `run` ends, however it ends: the watchdog then stops.
    let _watchdog = watch_stop;
    // Set on SIGTERM: the health checks fail at once, so that load balancers
    // take this instance out, while it serves on for `shutdown_delay`.
    let leaving = Arc::new(AtomicBool::new(false));
    let rest_leaving = leaving.clone();
    let rest_router = http::router(
        grpc::service::PaymentApi::new(app.clone()),
        admission.clone(),
        requests,
        deadlines.clone(),
        breaker.clone(),
    )
    .layer(axum::middleware::from_fn(move |req, next| unhealthy_when_leaving(rest_leaving.clone(), req, next)));
    let grpc_leaving = leaving.clone();
    let grpc_deadlines = deadlines.clone();
    let grpc_router = grpc::routes(&app)?
        .into_axum_router()
        .layer(axum::middleware::from_fn(grpc::codec::too_large_is_exhausted))
        .layer(axum::middleware::from_fn(move |req, next| http::admission::admit_grpc(admission.clone(), req, next)))
        .layer(axum::middleware::from_fn(move |req, next| http::limits::limit_grpc(requests, req, next)))
        .layer(axum::middleware::from_fn(move |req, next| {
            http::deadline::deadline_grpc(grpc_deadlines.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(move |req, next| http::breaker::breaker_grpc(breaker.clone(), req, next)))
        .layer(axum::middleware::from_fn(http::middleware::observe_grpc))
        .layer(axum::middleware::from_fn(move |req, next| unhealthy_when_leaving(grpc_leaving.clone(), req, next)));

    let cap = connections_that_fit(limits.max_connections);
    let (tx, rx) = watch::channel(false);
    let mut draining = rx.clone();
    let delay = limits.shutdown_delay;
    tokio::spawn(async move {
        shutdown.await;
        leaving.store(true, Ordering::Release);
        if !delay.is_zero() {
            tracing::info!(seconds = delay.as_secs_f64(), "stopping: health checks fail, serving on meanwhile");
            tokio::time::sleep(delay).await;
        }
        let _ = tx.send(true);
    });
    let both = async {
        tokio::join!(
            listen(Door::Rest, rest, rest_router, limits, cap, rx.clone()),
            listen(Door::Grpc, grpc_listener, grpc_router, limits, cap, rx),
        );
        // Requests answered at their deadline, or whose client left, may
        // still be at work: they finish too.
        deadlines.finished().await;
    };
    let deadline = async {
        connection::stopped(&mut draining).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    // Past the deadline, dropping the listeners' loops aborts their
    // connections' tasks, which closes them.
    tokio::select! {
        _ = both => {}
        _ = deadline => tracing::warn!("requests still in flight after the drain timeout: closing their connections"),
    }
    Ok(())
}

/// Health checks (REST, ours over gRPC, and the standard gRPC health
/// service) answer UNAVAILABLE once the instance is leaving; everything
/// else is served as usual. `/readyz` is for load balancers: 200 unless
/// the instance is leaving, without touching the database, so that a
/// database outage (which every instance shares, and which requests answer
/// fast on their own) does not empty the balancer of instances.
async fn unhealthy_when_leaving(
    leaving: Arc<AtomicBool>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    let leaving = leaving.load(Ordering::Acquire);
    if path == "/readyz" {
        return if leaving {
            http::error::RestError::from(crate::app::AppError::unavailable(
                "SHUTTING_DOWN",
                "this instance is shutting down",
            ))
            .into_response()
        } else {
            axum::Json(serde_json::json!({"ready": true})).into_response()
        };
    }
    if !leaving {
        return next.run(req).await;
    }
    let leaving =
        || crate::app::AppError::unavailable("SHUTTING_DOWN", "this instance is shutting down; retry on another");
    match path {
        "/v1/healthcheck" => http::error::RestError::from(leaving()).into_response(),
        "/payment.PaymentService/HealthCheck" | "/grpc.health.v1.Health/Check" | "/grpc.health.v1.Health/Watch" => {
            tonic::Status::from(leaving()).into_http()
        }
        _ => next.run(req).await,
    }
}

/// Which listener: they differ in how a connection over the cap is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    Rest,
    Grpc,
}

impl Door {
    fn name(self) -> &'static str {
        match self {
            Door::Rest => "rest",
            Door::Grpc => "grpc",
        }
    }
}

/// HTTP/1.1 and HTTP/2 (with or without prior knowledge), as configured.
fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The watchdog times request heads; hyper's timer would also close
        // keep-alive connections between requests (see `connection`).
        .header_read_timeout(None)
        .max_buf_size(HEAD_CEILING)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        // A header block over this is refused by h2 (its stream, or the whole
        // connection when it spans CONTINUATION frames): kept well above
        // `max_header_bytes`, so that one call with large headers fails alone.
        .max_header_list_size(HEAD_CEILING as u32);
    builder
}

/// Accepts connections on `listener` until `stop` turns true, then waits for
/// the connections to finish.
async fn listen(
    door: Door,
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    cap: usize,
    stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&limits));
    let timeouts = connection::Timeouts { header: limits.header_read_timeout, idle: limits.idle_timeout };
    let slots = Arc::new(Semaphore::new(cap));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let answer: Arc<[u8]> = too_many_connections().into();
    let (mut accept_failed, mut over_cap) = (Throttle::default(), Throttle::default());
    let mut refused: u64 = 0;
    let mut tasks = JoinSet::new();
    let mut stopping = stop.clone();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = connection::stopped(&mut stopping) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // The client gave up before we took its connection.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    if let Some(skipped) = accept_failed.ready() {
                        tracing::warn!(listener = door.name(), error = %e, skipped, "accepting a connection failed: backing off");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let (builder, router, stop) = (builder.clone(), router.clone(), stop.clone());
                tasks.spawn(async move {
                    connection::serve(&builder, stream, peer, router, timeouts, stop).await;
                    drop(slot);
                });
            }
            Err(_) => {
                refused += 1;
                if let Some(skipped) = over_cap.ready() {
                    tracing::warn!(
                        listener = door.name(),
                        max_connections = cap,
                        refused_total = refused,
                        skipped,
                        "connection refused: the listener holds MAX_CONNECTIONS"
                    );
                }
                // A gRPC client takes a closed connection as UNAVAILABLE
                // and retries, elsewhere if it can.
                if door == Door::Rest
                    && let Ok(permit) = refusals.clone().try_acquire_owned()
                {
                    let answer = answer.clone();
                    tasks.spawn(async move {
                        refuse(stream, &answer).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Errors of one connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// The whole answer to a REST connection over the cap.
fn too_many_connections() -> Vec<u8> {
    let code = tonic::Code::Unavailable;
    let body = serde_json::json!({
        "code": code as i32,
        "status": code_name(code),
        "message": "the service holds too many connections; retry shortly",
        "reason": "TOO_MANY_CONNECTIONS",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers `answer` and closes, without reading the request.
async fn refuse(mut stream: TcpStream, answer: &[u8]) {
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        // Read until the client closes: closing with its request unread
        // would reset the connection, and the answer could be lost.
        let mut sink = [0u8; 2048];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// One log line a second at most for an event that may repeat thousands of
/// times a second; the next line counts those left out.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    /// `Some(lines left out since the last)` when one may be written now.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < Duration::from_secs(1)) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Connections each listener may hold: `wanted`, if twice it (two
/// listeners) plus [`FD_HEADROOM`] fits the open-file limit, which is raised
/// towards its hard limit if needed; else as many as fit, with a warning, so
/// that the cap (and its 503) comes before `accept` fails with EMFILE.
fn connections_that_fit(wanted: usize) -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let needed = (wanted as u64).saturating_mul(2).saturating_add(FD_HEADROOM);
        let limit = getrlimit(Resource::Nofile);
        let Some(mut soft) = limit.current else { return wanted };
        if soft >= needed {
            return wanted;
        }
        let raised = needed.min(limit.maximum.unwrap_or(u64::MAX));
        if raised > soft {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(raised), maximum: limit.maximum }) {
                Ok(()) => {
                    tracing::info!(from = soft, to = raised, "open-file limit raised for MAX_CONNECTIONS");
                    soft = raised;
                }
                Err(e) => {
                    tracing::warn!(from = soft, to = raised, error = %e, "the open-file limit could not be raised")
                }
            }
        }
        if soft >= needed {
            return wanted;
        }
        // Never fewer than a useful few: past the file limit `accept` fails
        // and is retried (see `listen`), which is slower but not fatal.
        let fits = (soft.saturating_sub(FD_HEADROOM) / 2).max(MIN_CONNECTIONS.min(wanted as u64)) as usize;
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = soft,
            headroom = FD_HEADROOM,
            connections_per_listener = fits,
            "MAX_CONNECTIONS x 2 listeners + headroom exceeds the open-file limit (ulimit -n): each listener holds fewer connections"
        );
        fits
    }
    #[cfg(not(unix))]
    wanted
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: draining requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_over_the_cap_is_complete_http_with_our_json_error() {
        let answer = String::from_utf8(too_many_connections()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("retry-after: 1") && head.contains("connection: close"));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!((json["code"].as_i64(), json["reason"].as_str()), (Some(14), Some("TOO_MANY_CONNECTIONS")));
        assert_eq!(json["status"], "UNAVAILABLE");
    }

    #[test]
    fn a_repeated_warning_is_written_once_a_second_and_counts_the_rest() {
        let mut t = Throttle::default();
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        t.last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(t.ready(), Some(2));
    }
}
