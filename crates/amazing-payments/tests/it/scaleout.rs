//! Scale-out with the parts operators run: the service through PgBouncer
//! (Debian's 1.18, session pooling, with `ops/pgbouncer/pgbouncer.ini`), and
//! three instances behind HAProxy (`ops/haproxy/haproxy.cfg`). What callers
//! saw is asserted, and our records are compared with the simulator's.

use crate::common::procs::{Proc, Stack, free_port, log_file, post_json};
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A directory the unprivileged user PgBouncer runs as may use.
fn shared_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = Command::new("chmod").arg("777").arg(&dir).status();
    dir
}

fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin"]) {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: scripts/test.sh installs Debian's {name}");
}

/// PgBouncer with the repository's configuration, in front of the tests'
/// PostgreSQL; its port.
fn pgbouncer() -> (Proc, u16) {
    let admin = reqwest::Url::parse(&crate::common::admin_url()).unwrap();
    let (host, pg_port) = (admin.host_str().unwrap().to_string(), admin.port().unwrap_or(5432));
    let user = admin.username().to_string();
    let dir = shared_dir("pgbouncer");
    let port = free_port();
    std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n")).unwrap();
    // The repository's file, with what differs here put in its place.
    let ours = std::fs::read_to_string(repo().join("ops/pgbouncer/pgbouncer.ini")).unwrap();
    let dir_s = dir.display().to_string();
    let here = [
        ("listen_addr", "127.0.0.1".to_string()),
        ("listen_port", port.to_string()),
        ("unix_socket_dir", String::new()),
        ("auth_type", "trust".into()),
        ("auth_file", format!("{dir_s}/userlist.txt")),
        ("logfile", format!("{dir_s}/pgbouncer.log")),
        ("pidfile", format!("{dir_s}/pgbouncer.pid")),
    ];
    let mut config = String::new();
    let mut section = String::new();
    for line in ours.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        if line.starts_with('[') {
            section = line.trim().to_string();
            config.push_str(line);
            config.push('\n');
            match section.as_str() {
                "[databases]" => config.push_str(&format!("* = host={host} port={pg_port}\n")),
                "[pgbouncer]" => {
                    for (k, v) in &here {
                        config.push_str(&format!("{k} = {v}\n"));
                    }
                }
                _ => {}
            }
        } else if line.starts_with(';') || key.is_empty() {
            config.push_str(line);
            config.push('\n');
        } else if section == "[databases]" || here.iter().any(|(k, _)| *k == key) {
            // replaced above
        } else {
            config.push_str(line);
            config.push('\n');
        }
    }
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(&ini, config).unwrap();
    let stderr = log_file("pgbouncer");
    let mut cmd = Command::new(tool("pgbouncer"));
    // PgBouncer refuses to run as root: it drops to the PostgreSQL user.
    if nix_is_root() {
        cmd.args(["-u", "postgres"]);
    }
    let child = cmd.arg(&ini).stdout(Stdio::null()).stderr(std::fs::File::create(&stderr).unwrap()).spawn().unwrap();
    (Proc { child, stderr }, port)
}

fn nix_is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port}");
}

#[tokio::test]
async fn the_service_migrates_and_takes_payments_through_pgbouncer_in_session_pooling() {
    let (bouncer, port) = pgbouncer();
    wait_for_port(port).await;
    let (direct, options) = crate::common::fresh_database().await;
    let db = options.get_database().unwrap().to_string();
    let admin = reqwest::Url::parse(&crate::common::admin_url()).unwrap();
    let through = format!("postgres://{}@127.0.0.1:{port}/{db}", admin.username());
    let stack = Stack::start_on(through, &[]).await;
    let key = stack.new_key();

    let customer =
        post_json(&format!("{}/v1/customer", stack.rest), &key, &json!({"name": "Ada", "email": "ada@example.com"}))
            .await;
    let customer = customer["customerID"].as_str().expect("a customer through PgBouncer").to_string();
    // Many requests at once: more than one pooled connection at work, some
    // with the same idempotency key.
    let http = reqwest::Client::new();
    let mut calls = Vec::new();
    for i in 0..40 {
        let http = http.clone();
        let (url, key, customer) = (format!("{}/v1/payment", stack.rest), key.clone(), customer.clone());
        calls.push(tokio::spawn(async move {
            // Its twin with the same key may be running: told so (409
            // IDEMPOTENCY_KEY_IN_USE), it retries shortly, as a client does.
            loop {
                let status = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("Idempotency-Key", format!("order-{}", i % 20))
                    .json(&json!({"customerID": customer, "amount": 1500, "currency": "usd", "payment_method": "pm_card_visa", "capture_method": "manual"}))
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status != 409 {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let payments: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/v1/payment?page_size=100", stack.rest))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["payments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(payments.len(), 20, "one payment per idempotency key");
    let intents: Value = http
        .get(format!("{}/v1/payment_intents?limit=100", stack.sim_url))
        .bearer_auth(crate::common::procs::STRIPE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(intents["data"].as_array().unwrap().len(), 20, "and one PaymentIntent each at Stripe");

    // What the service wrote is in PostgreSQL, seen directly.
    let direct = sqlx::PgPool::connect(&direct).await.unwrap();
    let (rows, authorized): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'authorized') FROM payment.payment")
            .fetch_one(&direct)
            .await
            .unwrap();
    assert_eq!((rows, authorized), (20, 20));
    drop(bouncer);
}
