//! stripe-sim: an in-memory simulator of the Stripe API, faithful to Stripe's
//! documented behaviour, for amazing-payments' tests and local runs.
//!
//! It is judged against Stripe, not against any one client: objects are
//! copies of Stripe's own example objects (`fixtures/fixtures3.json`) with
//! their values replaced, errors have Stripe's shapes and status codes, and
//! `Idempotency-Key` follows Stripe's rules.
//!
//! # Layout
//! - [`server`]: the HTTP front: auth, request ids, fault rules, idempotency,
//!   routing; simulator-only endpoints under `/_sim/`.
//! - [`resources`]: one module per Stripe resource, and the route table.
//! - [`store`]: collections with Stripe's list paging.
//! - [`webhooks`]: webhook endpoints, Events, signed deliveries with retries.
//! - [`refund_settlement`]: refunds that stay `pending` and settle later.
//! - [`search`]: Stripe's search query language.
//! - [`idempotency`], [`faults`], [`should_retry`], [`form`], [`error`],
//!   [`fixtures`], [`ids`].
//!
//! # Use from tests
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let sim = stripe_sim::Simulator::start(stripe_sim::Config::default()).await?;
//! let base = sim.url(); // http://127.0.0.1:<port>
//! # Ok(()) }
//! ```

pub mod error;
pub mod faults;
pub mod fixtures;
pub mod form;
pub mod idempotency;
pub mod ids;
pub mod refund_settlement;
pub mod resources;
pub mod search;
pub mod server;
pub mod should_retry;
pub mod store;
pub mod webhooks;

use parking_lot::Mutex;
use std::{collections::HashSet, net::SocketAddr, sync::Arc};
use tokio::{net::TcpListener, task::JoinHandle};

/// The API version the simulator answers as, unless a request pins another.
pub const API_VERSION: &str = "2026-06-24.dahlia";

/// How a simulator is set up.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Only these keys are accepted; when `None`, any `sk_test_`/`rk_test_` key.
    pub api_keys: Option<Vec<String>>,
    /// Fault rules active from the start.
    pub faults: Vec<faults::Rule>,
    /// Webhook delivery options from the start (duplicates, delays).
    pub webhooks: webhooks::Options,
    /// How new refunds settle from the start (pending, then settled).
    pub refunds: refund_settlement::Options,
    /// Search index options from the start (lag).
    pub search: resources::search::Options,
}

/// All objects of the simulated account.
#[derive(Default)]
pub struct Data {
    seq: u64,
    pub customers: store::Collection,
    pub deleted_customers: HashSet<String>,
    pub payment_methods: store::Collection,
    /// What each PaymentMethod's card does when charged.
    pub card_behaviour: std::collections::HashMap<String, resources::cards::Behaviour>,
    pub payment_intents: store::Collection,
    pub setup_intents: store::Collection,
    pub disputes: store::Collection,
    /// PaymentMethods set up for off-session use by an authenticated
    /// SetupIntent (or payment with `setup_future_usage`).
    pub set_up_off_session: HashSet<String>,
    /// PaymentMethods detached from their customer: not usable again.
    pub detached: HashSet<String>,
    pub charges: store::Collection,
    pub refunds: store::Collection,
    pub products: store::Collection,
    pub prices: store::Collection,
    pub webhook_endpoints: store::Collection,
    pub events: store::Collection,
    /// Events recorded by the request being served, delivered when it ends.
    pub outbox: Vec<serde_json::Value>,
}

impl Data {
    /// A number that orders objects by creation.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// The simulator's state, shared by its request handlers.
pub struct Sim {
    pub config: Config,
    pub data: Mutex<Data>,
    pub keys: idempotency::Keys,
    pub faults: faults::Faults,
    pub webhooks: webhooks::Webhooks,
    pub refunds: refund_settlement::Settlement,
    pub search: Mutex<resources::search::Options>,
    journal: Mutex<std::collections::VecDeque<Received>>,
}

/// One request as the simulator received it, for tests that check what a
/// client sent.
#[derive(Clone, Debug)]
pub struct Received {
    /// `HTTP/1.1` or `HTTP/2.0`: Stripe offers HTTP/2, and so does the
    /// simulator (with prior knowledge on plain http).
    pub http_version: String,
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub stripe_version: Option<String>,
    pub body: String,
    pub status: u16,
}

/// How many received requests are kept.
const JOURNAL_SIZE: usize = 10_000;

impl Sim {
    pub fn new(config: Config) -> Self {
        let faults = faults::Faults::default();
        faults.set(config.faults.clone());
        let webhooks = webhooks::Webhooks::default();
        *webhooks.options.lock() = config.webhooks.clone();
        let refunds = refund_settlement::Settlement::default();
        *refunds.options.lock() = config.refunds.clone();
        Self {
            data: Mutex::default(),
            keys: idempotency::Keys::default(),
            faults,
            webhooks,
            refunds,
            search: Mutex::new(config.search.clone()),
            journal: Mutex::default(),
            config,
        }
    }

    pub(crate) fn record(&self, r: Received) {
        let mut j = self.journal.lock();
        if j.len() == JOURNAL_SIZE {
            j.pop_front();
        }
        j.push_back(r);
    }

    /// The API requests received so far (the last 10,000), oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.journal.lock().iter().cloned().collect()
    }
}

/// A running simulator; stops when dropped.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<Sim>,
    task: JoinHandle<()>,
    deliveries: JoinHandle<()>,
    settlements: JoinHandle<()>,
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1` at a free port.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, config)
    }

    /// Starts a simulator on a listener the caller bound.
    pub fn start_on(listener: TcpListener, config: Config) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Sim::new(config));
        let app = server::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "stripe-sim stopped");
            }
        });
        let deliveries = tokio::spawn(webhooks::deliver(state.clone()));
        let settlements = tokio::spawn(refund_settlement::run(state.clone()));
        Ok(Self { addr, state, task, deliveries, settlements })
    }

    /// `http://127.0.0.1:<port>`: the base URL to give a Stripe client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The simulator's state, for tests that look inside.
    pub fn state(&self) -> &Arc<Sim> {
        &self.state
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
        self.deliveries.abort();
        self.settlements.abort();
    }
}
