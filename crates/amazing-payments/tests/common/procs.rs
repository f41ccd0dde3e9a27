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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Proc { child, stderr }
}

pub async fn wait_until_up(url: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not come up");
}
