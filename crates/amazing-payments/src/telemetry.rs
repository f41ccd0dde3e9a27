//! Logs and traces.
//!
//! Logs: JSON lines through `tracing`, one per event, with the fields of the
//! spans they happen in (so every line of a request carries its request id
//! and its trace id). `RUST_LOG` chooses what is logged (default `info`).
//! Beside the log, each SQL statement's time is summed into its request for
//! `Server-Timing` ([`crate::timing`]), whatever `RUST_LOG` says.
//!
//! Traces: OpenTelemetry, always on in process, so that every request has a
//! trace id (a caller's W3C `traceparent` is continued, and each answer
//! returns its own, [`crate::http::middleware`]); exported over OTLP
//! (http/protobuf) only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. The other standard variables
//! apply: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `OTEL_TRACES_SAMPLER` (and
//! `_ARG`), `OTEL_BSP_*`, `OTEL_TRACES_EXPORTER=none` to export nothing,
//! and `OTEL_SDK_DISABLED=true` for no tracing at all (no trace ids). A request is one span (named after its rpc), with a
//! child span for each database transaction and each Stripe call attempt.

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use std::sync::OnceLock;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// The tracer provider, kept to flush its spans at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the JSON logger and the tracer; safe to call more than once
/// (later calls do nothing). A bad OTLP setting is logged, and nothing is
/// exported: tracing must never stop the service.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let log = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let timing = crate::timing::DbTimeLayer.with_filter(crate::timing::DbTimeLayer::filter());
    // OTEL_SDK_DISABLED=true: no tracing at all (no trace ids either).
    if disabled() {
        let _ = tracing_subscriber::registry().with(log).with(timing).try_init();
        return;
    }
    let (provider, problem) = provider();
    let tracer = provider.tracer("amazing-payments");
    let _ = PROVIDER.set(provider);
    // Our spans only (requests, transactions, Stripe calls); events, which
    // may carry raw paths and error texts, stay in the log.
    let spans = tracing_subscriber::filter::filter_fn(|m| {
        m.is_span() && m.target().starts_with("amazing_payments") && *m.level() <= tracing::Level::INFO
    });
    let traces =
        tracing_opentelemetry::layer().with_tracer(tracer).with_location(false).with_threads(false).with_filter(spans);
    let installed = tracing_subscriber::registry().with(log).with(timing).with(traces).try_init().is_ok();
    if installed {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        if let Some(problem) = problem {
            tracing::warn!(error = %problem, "traces are not exported");
        }
    }
}

/// Exports the spans still buffered; at exit.
pub fn flush() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// Whether spans are to be exported: an OTLP endpoint is set and nothing
/// turns the SDK or the trace exporter off.
fn exporting() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// `OTEL_SDK_DISABLED=true`: the standard switch for no tracing at all.
fn disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The tracer provider: exporting over OTLP when asked to, else keeping
/// trace ids for propagation and logs only; and what kept it from
/// exporting, if anything did.
fn provider() -> (SdkTracerProvider, Option<String>) {
    let mut resource = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    if !named {
        resource = resource.with_service_name("amazing-payments");
    }
    let resource = resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    if !exporting() {
        return (builder.build(), None);
    }
    match exporter() {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), None),
        Err(problem) => (builder.build(), Some(problem)),
    }
}

fn exporter() -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".into());
    if protocol.trim() != "http/protobuf" {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {protocol:?} is not supported: use http/protobuf (a collector's port 4318)"
        ));
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| format!("no runtime to export from: {e}"))?;
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(Exporting { client: export_client()?, runtime, warned: Default::default() })
        .build()
        .map_err(|e| e.to_string())
}

/// The exporter's client: each export bounded by the standard
/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT`
/// (milliseconds, default 10 s), so that a collector that never answers
/// cannot hold the exporting thread.
fn export_client() -> Result<reqwest::Client, String> {
    let timeout = ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .iter()
        .find_map(|name| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok()))
        .map_or(std::time::Duration::from_secs(10), std::time::Duration::from_millis);
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
        .build()
        .map_err(|e| e.to_string())
}

/// The OTLP exporter's HTTP client. The batch processor exports from a
/// thread of its own, outside the runtime: each export is sent by a task
/// of the runtime, which that thread waits for. A failed export is logged,
/// once a minute at most.
#[derive(Debug)]
struct Exporting {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    warned: parking_lot::Mutex<Option<std::time::Instant>>,
}

impl Exporting {
    fn failed(&self, problem: &str) {
        let mut warned = self.warned.lock();
        if warned.is_none_or(|at| at.elapsed() > std::time::Duration::from_secs(60)) {
            *warned = Some(std::time::Instant::now());
            tracing::warn!(error = problem, "traces could not be exported; spans are dropped meanwhile");
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Exporting {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request.map(reqwest::Body::from))?;
            let response = client.execute(request).await?;
            let mut answer = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                answer = answer.header(name, value);
            }
            let body = response.bytes().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(answer.body(body)?)
        });
        let answer = match sent.await {
            Ok(answer) => answer,
            Err(e) => Err(e.into()),
        };
        match &answer {
            Ok(a) if !a.status().is_success() => self.failed(&format!("the collector answered {}", a.status())),
            Err(e) => self.failed(&e.to_string()),
            Ok(_) => {}
        }
        answer
    }
}
