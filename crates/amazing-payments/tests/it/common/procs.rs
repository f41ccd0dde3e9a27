//! Running the built binaries (`amazing-payments`, `stripe-sim`) as child
//! processes, for end-to-end tests and the exactly-once proofs.

use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const STRIPE_KEY: &str = "sk_test_e2e_secret_key_value";
pub const PEPPER: &str = "an-e2e-pepper-of-some-length";

pub fn service_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_amazing-payments"))
}

/// `stripe-sim` is built beside the service (same target directory).
pub fn sim_bin() -> PathBuf {
    let p = service_bin().with_file_name("stripe-sim");
    assert!(p.exists(), "build the workspace first: {} is missing", p.display());
    p
}

/// GET `url` with a bearer key; the JSON answer.
pub async fn get_json(url: &str, key: &str) -> Value {
    reqwest::Client::new().get(url).bearer_auth(key).send().await.unwrap().json().await.unwrap()
}

/// The value of the series `series` (name and labels, as exposed) on the
/// metrics listener at `base`; 0 if absent.
pub async fn scraped(base: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A JSON POST with the API key; the answer's body.
pub async fn post_json(url: &str, key: &str, body: &Value) -> Value {
    reqwest::Client::new().post(url).bearer_auth(key).json(body).send().await.unwrap().json().await.unwrap()
}

/// A port nothing listens on now, never handed out before in this process:
/// the kernel may give the same free port to two calls in a row (seen: a
/// service given one port for both its listeners).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A child process, killed when dropped; its stderr goes to a file.
pub struct Proc {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
    }

    /// Waits for the process to exit; its success.
    pub async fn wait(&mut self, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("process still running after {within:?}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn log_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ap-e2e-{name}-{}.log", uuid::Uuid::new_v4().simple()))
}

pub fn spawn(bin: &Path, args: &[&str], env: &[(&str, String)]) -> Proc {
    let stderr = log_file(bin.file_name().unwrap().to_str().unwrap());
    let child = Command::new(bin)
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        // Many processes at once: each on a port of its own unless a test names one.
        .env("METRICS_PORT", "127.0.0.1:0")
        // The fault proofs drive one key hard; the limit has tests of its own.
        .env("RATE_LIMIT", "off")
        .env("STRIPE_MAX_RPS", "off")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Proc { child, stderr }
}

pub async fn wait_until_up(url: &str) {
    let start = Instant::now();
    // Generous: on two busy cores a fresh service migrates its database first.
    while start.elapsed() < Duration::from_secs(60) {
        if reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not come up");
}

/// The simulator binary and the service binary on a fresh database.
pub struct Stack {
    pub sim_url: String,
    pub rest: String,
    pub grpc: String,
    pub db_url: String,
    pub service: Proc,
    _sim: Proc,
}

impl Stack {
    pub async fn start(extra: &[(&str, String)]) -> Self {
        let (db_url, _) = super::fresh_database().await;
        Self::start_on(db_url, extra).await
    }

    pub async fn start_on(db_url: String, extra: &[(&str, String)]) -> Self {
        let sim_port = free_port();
        let sim = spawn(&sim_bin(), &["--port", &sim_port.to_string()], &[]);
        let sim_url = format!("http://127.0.0.1:{sim_port}");
        wait_until_up(&format!("{sim_url}/_sim/health")).await;
        let (json_port, rpc_port) = (free_port(), free_port());
        let mut env = vec![
            ("DATABASE_URL", db_url.clone()),
            ("STRIPE_KEY", STRIPE_KEY.to_string()),
            ("STRIPE_API_BASE", sim_url.clone()),
            ("JSON_PORT", format!("127.0.0.1:{json_port}")),
            ("RPC_PORT", format!("127.0.0.1:{rpc_port}")),
            ("API_KEY_PEPPER", PEPPER.to_string()),
        ];
        env.extend(extra.iter().cloned());
        let service = spawn(&service_bin(), &["serve"], &env);
        let rest = format!("http://127.0.0.1:{json_port}");
        wait_until_up(&format!("{rest}/v1/healthcheck")).await;
        Self { sim_url, rest, grpc: format!("http://127.0.0.1:{rpc_port}"), db_url, service, _sim: sim }
    }

    /// Runs the CLI against this stack's database; (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(service_bin())
            .args(args)
            .env("DATABASE_URL", &self.db_url)
            .env("API_KEY_PEPPER", PEPPER)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    }

    pub fn new_key(&self) -> String {
        let (ok, stdout, _) = self.cli(&["apikey", "create", "--name", "e2e"]);
        assert!(ok);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "the key alone on one line: {stdout}");
        lines[0].to_string()
    }
}
