//! Real stand-ins for outside services, started per test from the Python
//! tools `scripts/test.sh` installs (pinned, in `target/pytools`):
//! aiosmtpd as the SMTP server, writing a Maildir; moto's server as SQS.

use super::procs::{Proc, free_port, log_file};
use aws_sdk_sqs::{
    Client,
    config::{Credentials, Region},
    types::QueueAttributeName,
};
use serde_json::Value;
use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// `target/pytools/bin` (or `$PYTOOLS/bin`).
pub fn pytools() -> PathBuf {
    let root = std::env::var("PYTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pytools"));
    let bin = root.join("bin");
    assert!(
        bin.join("moto_server").exists(),
        "run scripts/test.sh, which installs the Python tools in {}",
        root.display()
    );
    bin
}

fn spawn_py(program: &str, args: &[&str]) -> Proc {
    let stderr = log_file(program);
    let child = Command::new(pytools().join(program))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Proc { child, stderr }
}

async fn wait_for_port(port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port} after 30 s");
}

/// A mail as it arrived in the Maildir.
#[derive(Debug, Clone)]
pub struct Received {
    pub to: String,
    pub from: String,
    pub subject: String,
    pub message_id: String,
    pub text: String,
    pub html: String,
}

/// aiosmtpd on a port of its own, delivering into a Maildir.
pub struct Smtp {
    pub port: u16,
    pub maildir: PathBuf,
    /// (user, password) the server demands, if any.
    pub login: Option<(String, String)>,
    proc: Option<Proc>,
}

/// aiosmtpd that refuses mail until the client logs in (AUTH PLAIN/LOGIN,
/// allowed without TLS here): argv port, Maildir, user, password.
const AUTH_SERVER: &str = r#"
import signal, sys
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword
port, maildir, user, password = sys.argv[1:5]
def check(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login.decode() == user and data.password.decode() == password
    return AuthResult(success=ok, handled=False)
c = Controller(Mailbox(maildir), hostname="127.0.0.1", port=int(port), authenticator=check,
               auth_required=True, auth_require_tls=False)
c.start()
signal.sigwait({signal.SIGTERM, signal.SIGINT})
c.stop()
"#;

impl Smtp {
    pub async fn start() -> Self {
        let maildir = std::env::temp_dir().join(format!("ap-maildir-{}", uuid::Uuid::new_v4().simple()));
        for d in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(d)).unwrap();
        }
        let mut s = Smtp { port: free_port(), maildir, login: None, proc: None };
        s.up().await;
        s
    }

    /// A server that demands `user` and `password`.
    pub async fn start_with_login(user: &str, password: &str) -> Self {
        let mut s = Self::start().await;
        s.down();
        s.login = Some((user.to_string(), password.to_string()));
        s.up().await;
        s
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and Maildir.
    pub async fn up(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let dir = self.maildir.to_str().unwrap().to_string();
        self.proc = Some(match &self.login {
            None => {
                spawn_py("python", &["-m", "aiosmtpd", "-n", "-l", &listen, "-c", "aiosmtpd.handlers.Mailbox", &dir])
            }
            Some((user, password)) => {
                spawn_py("python", &["-c", AUTH_SERVER, &self.port.to_string(), &dir, user, password])
            }
        });
        wait_for_port(self.port).await;
    }

    /// Stops the server: connections to its port are refused.
    pub fn down(&mut self) {
        self.proc = None;
    }

    /// The mails delivered so far, parsed by Python's `email` package.
    pub fn mails(&self) -> Vec<Received> {
        const PARSE: &str = r#"
import email, email.policy, json, mailbox, sys
out = []
for m in mailbox.Maildir(sys.argv[1], factory=None):
    msg = email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
    text = msg.get_body(('plain',))
    html = msg.get_body(('html',))
    out.append({"to": str(msg["To"]), "from": str(msg["From"]), "subject": str(msg["Subject"]),
                "message_id": str(msg["Message-ID"]),
                "text": text.get_content() if text else "", "html": html.get_content() if html else ""})
print(json.dumps(out))
"#;
        let out = Command::new(pytools().join("python"))
            .args(["-c", PARSE, self.maildir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        all.iter()
            .map(|m| Received {
                to: m["to"].as_str().unwrap().to_string(),
                from: m["from"].as_str().unwrap().to_string(),
                subject: m["subject"].as_str().unwrap().to_string(),
                message_id: m["message_id"].as_str().unwrap().to_string(),
                text: m["text"].as_str().unwrap().to_string(),
                html: m["html"].as_str().unwrap().to_string(),
            })
            .collect()
    }

    /// Waits until at least `n` mails arrived; all of them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(start.elapsed() < within, "{} of {n} mails after {within:?}", mails.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}

/// moto's server, as SQS.
pub struct Moto {
    pub endpoint: String,
    pub client: Client,
    _proc: Proc,
}

impl Moto {
    pub async fn start() -> Self {
        let port = free_port();
        let proc = spawn_py("moto_server", &["-H", "127.0.0.1", "-p", &port.to_string()]);
        wait_for_port(port).await;
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .http_client(http)
            .build();
        Moto { endpoint, client: Client::from_conf(config), _proc: proc }
    }

    /// The environment that points the service's AWS SDK here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ]
    }

    /// Creates a queue; its URL.
    pub async fn queue(&self, name: &str, attributes: &[(QueueAttributeName, String)]) -> String {
        let mut req = self.client.create_queue().queue_name(name);
        for (k, v) in attributes {
            req = req.attributes(k.clone(), v);
        }
        req.send().await.unwrap().queue_url().unwrap().to_string()
    }

    /// A queue with a dead-letter queue that takes a message after
    /// `max_receives`; (queue URL, dead-letter queue URL).
    pub async fn queue_with_dlq(&self, name: &str, max_receives: u32) -> (String, String) {
        let dlq = self.queue(&format!("{name}-dlq"), &[]).await;
        let arn = self
            .client
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives}).to_string();
        let url = self.queue(name, &[(QueueAttributeName::RedrivePolicy, policy)]).await;
        (url, dlq)
    }

    /// Messages in a queue, visible and in flight.
    pub async fn depth(&self, url: &str) -> i64 {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let a = out.attributes().unwrap();
        let n = |k: QueueAttributeName| a.get(&k).map(|v| v.parse::<i64>().unwrap()).unwrap_or(0);
        n(QueueAttributeName::ApproximateNumberOfMessages)
            + n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
    }

    /// Takes every message of a queue (deleting them); their bodies.
    pub async fn drain(&self, url: &str) -> Vec<Value> {
        let mut bodies = Vec::new();
        loop {
            let out = self.client.receive_message().queue_url(url).max_number_of_messages(10).send().await.unwrap();
            if out.messages().is_empty() {
                return bodies;
            }
            for m in out.messages() {
                bodies.push(serde_json::from_str(m.body().unwrap()).unwrap());
                self.client
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}

/// A receiver of the service's webhooks: Python's HTTP server checking
/// each delivery with the `standardwebhooks` package (the specification's
/// own library, not our code) against the secrets in `dir/secrets` (one a
/// line, read at each delivery), and writing a line of JSON per delivery
/// to `dir/received`. `dir/slow` (seconds) makes it answer that late;
/// `dir/status` makes it answer that status.
pub struct Receiver {
    pub port: u16,
    pub dir: PathBuf,
    proc: Option<Proc>,
}

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The `webhook-id` header.
    pub id: String,
    /// Whether `standardwebhooks` verified it against one of the secrets.
    pub verified: bool,
    pub error: String,
    /// The body, parsed.
    pub body: Value,
    /// How many `v1,` signatures it carried.
    pub signatures: usize,
}

const RECEIVER: &str = r#"
import json, os, sys, time, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from standardwebhooks.webhooks import Webhook
port, d = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()
def read(name):
    try:
        with open(os.path.join(d, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k: v for k, v in self.headers.items()}
        with lock, open(os.path.join(d, "started"), "a") as f:
            f.write(headers.get("webhook-id", "") + "\n")
        slow = read("slow")
        if slow:
            time.sleep(float(slow))
        verified, error = False, ""
        for secret in read("secrets").splitlines():
            try:
                Webhook(secret).verify(body, headers)
                verified = True
                break
            except Exception as e:
                error = repr(e)
        line = {"id": headers.get("webhook-id", ""), "verified": verified, "error": error,
                "body": json.loads(body or b"null"),
                "signatures": len(headers.get("webhook-signature", "").split())}
        with lock, open(os.path.join(d, "received"), "a") as f:
            f.write(json.dumps(line) + "\n")
        status = int(read("status") or "200")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

impl Receiver {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("ap-receiver-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Receiver { port: free_port(), dir, proc: None };
        r.up().await;
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    pub async fn up(&mut self) {
        let (port, dir) = (self.port.to_string(), self.dir.to_str().unwrap().to_string());
        self.proc = Some(spawn_py("python", &["-c", RECEIVER, &port, &dir]));
        wait_for_port(self.port).await;
    }

    /// Stops it: deliveries find nothing listening.
    pub fn down(&mut self) {
        self.proc = None;
    }

    /// The secrets deliveries are verified against.
    pub fn trust(&self, secrets: &[&str]) {
        std::fs::write(self.dir.join("secrets"), secrets.join("\n")).unwrap();
    }

    fn set(&self, name: &str, value: Option<&str>) {
        let path = self.dir.join(name);
        match value {
            Some(v) => std::fs::write(path, v).unwrap(),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Answer `status` (none: 200).
    pub fn answer(&self, status: Option<u16>) {
        self.set("status", status.map(|s| s.to_string()).as_deref());
    }

    /// Answer this many seconds late (none: at once).
    pub fn slow(&self, seconds: Option<f64>) {
        self.set("slow", seconds.map(|s| s.to_string()).as_deref());
    }

    /// The `webhook-id`s of the deliveries that began, answered or not.
    pub fn started(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("started")).unwrap_or_default().lines().map(String::from).collect()
    }

    pub fn received(&self) -> Vec<Delivered> {
        std::fs::read_to_string(self.dir.join("received"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                Delivered {
                    id: v["id"].as_str().unwrap().to_string(),
                    verified: v["verified"].as_bool().unwrap(),
                    error: v["error"].as_str().unwrap().to_string(),
                    signatures: v["signatures"].as_u64().unwrap() as usize,
                    body: v["body"].clone(),
                }
            })
            .collect()
    }

    /// Waits until deliveries of every one of `ids` arrived; all deliveries.
    pub async fn wait_for_ids(&self, ids: &[String], within: Duration) -> Vec<Delivered> {
        let start = Instant::now();
        loop {
            let got = self.received();
            let missing: Vec<&String> = ids.iter().filter(|id| !got.iter().any(|d| &d.id == *id)).collect();
            if missing.is_empty() {
                return got;
            }
            assert!(
                start.elapsed() < within,
                "{} of {} events not delivered after {within:?}: {missing:?}",
                missing.len(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
