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
