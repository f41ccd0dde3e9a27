//! Serving: the REST and gRPC listeners, both given by the caller (so tests
//! bind `127.0.0.1:0`), and graceful shutdown: when `shutdown` completes, both
//! stop accepting and finish the requests in flight, for at most
//! [`DRAIN_TIMEOUT`]; connections still open then are closed.

use crate::{app::App, grpc, http};
use std::{future::Future, time::Duration};
use tokio::{net::TcpListener, sync::watch};

/// How long requests in flight may take to finish after shutdown begins
/// (below the 30 s a load balancer or Kubernetes usually grants after SIGTERM).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// Serves until `shutdown` completes and in-flight requests have drained.
pub async fn run(
    app: App,
    rest: TcpListener,
    grpc_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admission = http::admission::Admission::new(app.max_in_flight, app.overload_target);
    let rest_router = http::router(grpc::service::PaymentApi::new(app.clone()), admission.clone());
    let grpc_router = grpc::routes(&app)?
        .into_axum_router()
        .layer(axum::middleware::from_fn(grpc::codec::too_large_is_exhausted))
        .layer(axum::middleware::from_fn(move |req, next| http::admission::admit_grpc(admission.clone(), req, next)))
        .layer(axum::middleware::from_fn(http::middleware::observe_grpc));

    let (tx, rx) = watch::channel(false);
    let mut draining = rx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let rest_server = axum::serve(rest, rest_router).with_graceful_shutdown(stopped(rx.clone()));
    let grpc_server = axum::serve(grpc_listener, grpc_router).with_graceful_shutdown(stopped(rx));
    let both = async {
        let (a, b) = tokio::join!(rest_server.into_future(), grpc_server.into_future());
        a.and(b)
    };
    let deadline = async {
        let _ = draining.wait_for(|stop| *stop).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = both => served?,
        _ = deadline => tracing::warn!("requests still in flight after the drain timeout: closing their connections"),
    }
    Ok(())
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
