//! Serving: the REST and gRPC listeners, both given by the caller (so tests
//! bind `127.0.0.1:0`), and graceful shutdown: when `shutdown` completes, both
//! stop accepting and finish the requests in flight.

use crate::{app::App, grpc, http};
use std::future::Future;
use tokio::{net::TcpListener, sync::watch};

/// Serves until `shutdown` completes and in-flight requests have drained.
pub async fn run(
    app: App,
    rest: TcpListener,
    grpc_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grpc_router = grpc::routes(&app)?
        .into_axum_router()
        .layer(axum::middleware::from_fn(http::middleware::observe_grpc));
    let rest_router = http::router(grpc::service::PaymentApi::new(app.clone()));

    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let rest_server = axum::serve(rest, rest_router).with_graceful_shutdown(stopped(rx.clone()));
    let grpc_server = axum::serve(grpc_listener, grpc_router).with_graceful_shutdown(stopped(rx));
    let (a, b) = tokio::join!(rest_server.into_future(), grpc_server.into_future());
    a?;
    b?;
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
