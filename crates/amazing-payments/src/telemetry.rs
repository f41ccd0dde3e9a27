//! Logs: JSON lines through `tracing`, one per event, with the fields of the
//! spans they happen in (so every line of a request carries its request id).
//! `RUST_LOG` chooses what is logged (default `info`). Beside the log, each
//! SQL statement's time is summed into its request for `Server-Timing`
//! ([`crate::timing`]), whatever `RUST_LOG` says.

use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Installs the JSON logger; safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let log = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let timing = crate::timing::DbTimeLayer.with_filter(crate::timing::DbTimeLayer::filter());
    let _ = tracing_subscriber::registry().with(log).with(timing).try_init();
}
