//! Logs: JSON lines through `tracing`, one per event, with the fields of the
//! spans they happen in (so every line of a request carries its request id).
//! `RUST_LOG` chooses what is logged (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the JSON logger; safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .try_init();
}
