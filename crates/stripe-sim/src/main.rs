//! `stripe-sim --port 12111`: the Stripe simulator as a process.

use clap::Parser;
use std::net::{IpAddr, SocketAddr};

/// An in-memory simulator of the Stripe API for tests and local runs.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Port to listen on.
    #[arg(long, env = "STRIPE_SIM_PORT", default_value_t = 12111)]
    port: u16,
    /// Address to listen on: loopback unless you mean otherwise.
    #[arg(long, env = "STRIPE_SIM_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Accept only this API key (repeatable); by default any sk_test_ key.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Fault rules to start with, as a JSON list (see `POST /_sim/faults`).
    #[arg(long, env = "STRIPE_SIM_FAULTS")]
    faults: Option<String>,
    /// Webhook delivery options, as JSON: `{"duplicate_rate": 0.2, "max_delay_ms": 300}`.
    #[arg(long, env = "STRIPE_SIM_WEBHOOKS")]
    webhooks: Option<String>,
    /// How refunds settle, as JSON: `{"pending_rate": 0.5, "settle_after_ms": 300, "fail_rate": 0.2}`.
    #[arg(long, env = "STRIPE_SIM_REFUNDS")]
    refunds: Option<String>,
    /// Search index options, as JSON: `{"lag_ms": 2000}`.
    #[arg(long, env = "STRIPE_SIM_SEARCH")]
    search: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let config = stripe_sim::Config {
        api_keys: (!args.api_keys.is_empty()).then_some(args.api_keys),
        faults: json_option(args.faults, "STRIPE_SIM_FAULTS")?,
        webhooks: json_option(args.webhooks, "STRIPE_SIM_WEBHOOKS")?,
        refunds: json_option(args.refunds, "STRIPE_SIM_REFUNDS")?,
        search: json_option(args.search, "STRIPE_SIM_SEARCH")?,
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port)).await?;
    let sim = stripe_sim::Simulator::start_on(listener, config)?;
    println!("stripe-sim listening on {}", sim.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// An option given as JSON, or its default when absent.
fn json_option<T: serde::de::DeserializeOwned + Default>(json: Option<String>, name: &str) -> anyhow::Result<T> {
    match json {
        Some(json) => serde_json::from_str(&json).map_err(|e| anyhow::anyhow!("{name}: {e}")),
        None => Ok(T::default()),
    }
}
