//! Notifications end to end, with real parts: the outbox written with each
//! state change, the relay (to the built-in queue, and to SQS served by
//! moto), the notifier mailing through aiosmtpd into a Maildir, the
//! dead-letter queue and its redrive, and the relay killed mid-batch.

use crate::common::{
    TestApp,
    call::int,
    outside::{Moto, Smtp, pytools},
    procs::{Proc, Stack, service_bin, spawn},
    wait_until,
};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};
use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::{Duration, Instant},
};
use uuid::Uuid;

/// Runs the CLI on `db_url` with `env`; (success, stdout, stderr).
fn cli(db_url: &str, args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let out = Command::new(service_bin())
        .args(args)
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL", db_url)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// The outbox, in order: (event id, type, payment id, body).
async fn outbox(app: &TestApp) -> Vec<(Uuid, String, Option<i64>, Value)> {
    sqlx::query_as("SELECT id, type, payment_id, body FROM notify.outbox ORDER BY seq")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

async fn customer(app: &TestApp, name: &str, email: &str) -> String {
    let (status, body) = app.post("/v1/customer", json!({"name": name, "email": email})).await;
    assert_eq!(status, 200, "{body}");
    body["customerID"].as_str().unwrap().to_string()
}

async fn pay(app: &TestApp, customer: &str, amount: i64, currency: &str, extra: Value) -> Value {
    let mut body =
        json!({"customerID": customer, "amount": amount, "currency": currency, "payment_method": "pm_card_visa"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, p) = app.post("/v1/payment", body).await;
    assert_eq!(status, 200, "{p}");
    p
}

#[tokio::test]
async fn serve_mails_the_customer_a_captured_payment_with_the_amount_in_the_currencys_own_decimals() {
    let smtp = Smtp::start().await;
    let stack = Stack::start(&[
        ("SMTP_URL", smtp.url()),
        ("MAIL_FROM", "Shop <payments@shop.example>".into()),
        ("NOTIFY_INTERVAL", "0.2".into()),
        ("RELAY_INTERVAL", "0.1".into()),
    ])
    .await;
    let key = stack.new_key();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = http.post(format!("{}{path}", stack.rest)).bearer_auth(&key).json(&body);
        let path = path.to_string();
        async move {
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let c = post("/v1/customer", json!({"name": "Ada Lovelace", "email": "ada@example.com"})).await;
    let customer = c["customerID"].as_str().unwrap();
    let yen = post(
        "/v1/payment",
        json!({"customerID": customer, "amount": 150000, "currency": "jpy", "payment_method": "pm_card_visa",
               "capture_method": "manual", "description": "Tea set"}),
    )
    .await;
    let yen_id = int(&yen, "paymentID");
    post(&format!("/v1/payment/{yen_id}/capture"), json!({})).await;
    post(
        "/v1/payment",
        json!({"customerID": customer, "amount": 123456, "currency": "usd", "payment_method": "pm_card_visa",
               "receipt_email": "billing@example.com"}),
    )
    .await;

    // authorized + captured (yen), succeeded (dollars); customer.created and
    // payment.created are not mailed by default.
    let mails = smtp.wait_for(3, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mails = if smtp.mails().len() > mails.len() { smtp.mails() } else { mails };
    assert_eq!(mails.len(), 3, "{mails:#?}");
    let by_subject =
        |s: &str| mails.iter().find(|m| m.subject.contains(s)).unwrap_or_else(|| panic!("no mail {s:?}: {mails:#?}"));
    let captured = by_subject("charged");
    assert_eq!(captured.to, "ada@example.com");
    assert_eq!(captured.from, "Shop <payments@shop.example>");
    assert_eq!(captured.subject, "Receipt: 150,000 JPY charged");
    assert!(captured.text.contains("Hello Ada Lovelace") && captured.text.contains("Tea set"), "{}", captured.text);
    assert!(captured.html.contains("150,000 JPY"), "{}", captured.html);
    let authorized = by_subject("is authorized");
    assert_eq!(authorized.subject, "Your payment of 150,000 JPY is authorized");
    let receipt = by_subject("1,234.56 USD");
    assert_eq!(receipt.to, "billing@example.com", "a payment's receipt_email gets its mails");
    assert_eq!(receipt.subject, "Receipt: 1,234.56 USD paid");

    let ids: HashSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "one Message-ID per event");
    let logs = stack.service.logs();
    assert!(!logs.contains("ada@example.com") && !logs.contains("billing@example.com"), "no address in the logs");
    let pass = logs.lines().find(|l| l.contains("\"notifier pass\"")).expect("counts are logged per pass");
    for count in ["received", "sent", "retried", "dead", "queue_waiting", "queue_dead"] {
        assert!(pass.contains(&format!("\"{count}\":")), "{count} in {pass}");
    }
    let relay = logs.lines().find(|l| l.contains("\"relay pass\"")).expect("the relay logs its passes");
    assert!(relay.contains("\"outbox_lag\":") && relay.contains("\"published\":"), "{relay}");
}

#[tokio::test]
async fn every_payment_and_refund_change_writes_its_event_in_order_and_each_matches_the_published_schema() {
    let app = TestApp::spawn().await;
    let c = customer(&app, "Ada", "ada@example.com").await;
    let p = pay(&app, &c, 5000, "usd", json!({"capture_method": "manual"})).await;
    let id = int(&p, "paymentID");
    app.post(&format!("/v1/payment/{id}/capture"), json!({"amount": 3000})).await;
    for amount in [1000, 500] {
        let (status, body) = app.post(&format!("/v1/payment/{id}/refund"), json!({"amount": amount})).await;
        assert_eq!(status, 200, "{body}");
    }
    let other = pay(&app, &c, 700, "eur", json!({"capture_method": "manual"})).await;
    let other_id = int(&other, "paymentID");
    app.post(&format!("/v1/payment/{other_id}/cancel"), json!({})).await;
    let (status, _) = app
        .post(
            "/v1/payment",
            json!({"customerID": c, "amount": 900, "currency": "usd", "payment_method": "pm_card_chargeDeclined"}),
        )
        .await;
    assert_eq!(status, 402);

    let events = outbox(&app).await;
    let of = |pid: Option<i64>| -> Vec<&str> { events.iter().filter(|e| e.2 == pid).map(|e| e.1.as_str()).collect() };
    assert_eq!(of(None), ["customer.created"]);
    assert_eq!(
        of(Some(id)),
        [
            "payment.created",
            "payment.authorized",
            "payment.captured",
            "refund.created",
            "payment.refunded",
            "refund.created",
            "payment.refunded"
        ]
    );
    assert_eq!(of(Some(other_id)), ["payment.created", "payment.authorized", "payment.canceled"]);
    let declined = events.iter().filter_map(|e| e.2).max().unwrap();
    assert_eq!(of(Some(declined)), ["payment.created", "payment.failed"]);

    let last_refund = events.iter().rev().find(|e| e.1 == "payment.refunded").unwrap();
    let body = &last_refund.3;
    assert_eq!(body["id"], last_refund.0.to_string());
    assert_eq!(body["schema_version"], 1);
    assert_eq!(body["data"]["payment"]["amount_refunded"], 1500);
    assert_eq!(body["data"]["refund"]["amount"], 500);
    assert_eq!(body["data"]["refund"]["status"], "succeeded");
    assert_eq!(body["data"]["customer"]["email"], "ada@example.com");
    let failed = events.iter().find(|e| e.1 == "payment.failed").unwrap();
    assert_eq!(failed.3["data"]["payment"]["failure_code"], "card_declined");

    // Every event validates against docs/events.schema.json.
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/events.schema.json");
    let bodies: Vec<&Value> = events.iter().map(|e| &e.3).collect();
    let check = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
bad = [f"{e['type']}: {err.message} at {list(err.absolute_path)}" for e in json.loads(sys.stdin.read()) for err in v.iter_errors(e)]
print("\n".join(bad)); sys.exit(1 if bad else 0)
"#;
    let mut child = Command::new(pytools().join("python"))
        .args(["-c", check, schema.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(&bodies).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "events that break the schema:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn a_state_change_whose_transaction_rolls_back_leaves_no_event() {
    let app = TestApp::spawn().await;
    let c = customer(&app, "Ada", "ada@example.com").await;
    let p = pay(&app, &c, 5000, "usd", json!({"capture_method": "manual"})).await;
    let id = int(&p, "paymentID");
    // Fails the commit of any transaction that wrote a payment.captured
    // event: the event is written, then the whole transaction rolls back.
    sqlx::raw_sql(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE CONSTRAINT TRIGGER refuse_capture AFTER INSERT ON notify.outbox
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
             WHEN (NEW.type = 'payment.captured') EXECUTE FUNCTION public.refuse();",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let before = outbox(&app).await.len();

    let (status, _) = app.post(&format!("/v1/payment/{id}/capture"), json!({})).await;
    assert!(status.is_server_error(), "the capture could not be recorded: {status}");
    let events = outbox(&app).await;
    assert_eq!(events.len(), before, "no event of the rolled-back change");
    assert!(events.iter().all(|e| e.1 != "payment.captured"));
    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM payment.payment WHERE id = $1").bind(id).fetch_one(&app.db).await.unwrap();
    assert_eq!(status, "authorized", "the change itself rolled back with its event");
    let history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment.history WHERE payment_id = $1 AND to_status = 'succeeded'")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(history, 0);

    // Once the change can commit, it does so with its event.
    sqlx::raw_sql("DROP TRIGGER refuse_capture ON notify.outbox").execute(&app.db).await.unwrap();
    let (status, body) = app.post(&format!("/v1/payment/{id}/capture"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(outbox(&app).await.iter().filter(|e| e.1 == "payment.captured").count(), 1);
}

/// The environment of a relay or notifier on SQS at `queue`.
fn sqs_env(moto: &Moto, queue: &str, smtp: &Smtp) -> Vec<(&'static str, String)> {
    let mut env = moto.env();
    env.extend([
        ("QUEUE_URL", queue.to_string()),
        ("SMTP_URL", smtp.url()),
        ("NOTIFY_RETRY_BASE", "0".into()),
        ("NOTIFY_INTERVAL", "1".into()),
        ("RELAY_INTERVAL", "0.1".into()),
    ]);
    env
}

/// Stops a notifier with SIGTERM, then waits out its last long poll: SQS
/// (and moto) finish a receive whose client is gone, and would hide a
/// message sent meanwhile for its visibility timeout.
async fn stop(mut n: Proc) {
    n.signal("-TERM");
    assert!(n.wait(Duration::from_secs(10)).await, "the notifier stops cleanly on SIGTERM");
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

fn notifier(db_url: &str, env: &[(&'static str, String)]) -> Proc {
    let mut env = env.to_vec();
    env.push(("DATABASE_URL", db_url.to_string()));
    spawn(&service_bin(), &["notifier"], &env)
}

#[tokio::test]
async fn with_smtp_down_sqs_moves_mails_to_the_dead_letter_queue_and_a_redrive_delivers_each_once() {
    let (moto, mut smtp, app) = (Moto::start().await, Smtp::start().await, TestApp::spawn().await);
    let (queue, dlq) = moto.queue_with_dlq("payments", 3).await;
    let env = sqs_env(&moto, &queue, &smtp);
    let c = customer(&app, "Ada", "ada@example.com").await;
    let p = pay(&app, &c, 150000, "jpy", json!({"capture_method": "manual"})).await;
    app.post(&format!("/v1/payment/{}/capture", int(&p, "paymentID")), json!({})).await;
    pay(&app, &c, 2500, "usd", json!({})).await;
    let (ok, out, err) = cli(&app.db_url(), &["relay", "--once"], &env);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "6 event(s) published",
        "customer.created, 2 payment.created, authorized, captured, succeeded"
    );

    smtp.down();
    let n = notifier(&app.db_url(), &env);
    wait_until("the three mails in the dead-letter queue", Duration::from_secs(60), async || {
        moto.depth(&dlq).await == 3 && moto.depth(&queue).await == 0
    })
    .await;
    stop(n).await;
    assert!(smtp.mails().is_empty());
    let mailed: Vec<(Uuid, String)> = outbox(&app)
        .await
        .into_iter()
        .filter(|e| ["payment.authorized", "payment.captured", "payment.succeeded"].contains(&e.1.as_str()))
        .map(|e| (e.0, e.1))
        .collect();

    let (ok, listed, err) = cli(&app.db_url(), &["dlq", "list"], &env);
    assert!(ok, "{err}");
    for (id, kind) in &mailed {
        let line = listed
            .lines()
            .find(|l| l.starts_with(&id.to_string()))
            .unwrap_or_else(|| panic!("{id} not listed:\n{listed}"));
        assert!(line.contains(kind.as_str()) && line.contains("SMTP"), "the reason is told: {line}");
        assert_eq!(line.split_whitespace().nth(2), Some("3"), "three attempts: {line}");
    }
    assert_eq!(moto.depth(&dlq).await, 3, "listing takes nothing away");

    smtp.up().await;
    let first = mailed[0].0.to_string();
    let (ok, out, err) = cli(&app.db_url(), &["dlq", "redrive", "--id", &first], &env);
    assert!(ok, "{err}");
    assert!(out.starts_with("1 message(s) moved back"), "{out}");
    assert_eq!((moto.depth(&queue).await, moto.depth(&dlq).await), (1, 2), "only that one moved");
    let (ok, out, err) = cli(&app.db_url(), &["dlq", "redrive", "--all"], &env);
    assert!(ok, "{err}");
    assert!(out.starts_with("2 message(s) moved back"), "{out}");
    assert_eq!(moto.depth(&dlq).await, 0);
    let n = notifier(&app.db_url(), &env);
    let mails = smtp.wait_for(3, Duration::from_secs(30)).await;
    // A copy of an event already mailed arrives again: it is dropped.
    let copy =
        serde_json::to_string(&outbox(&app).await.into_iter().find(|e| e.1 == "payment.captured").unwrap().3).unwrap();
    moto.client.send_message().queue_url(&queue).message_body(copy).send().await.unwrap();
    wait_until("the copy taken", Duration::from_secs(20), async || moto.depth(&queue).await == 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(n);
    let mails = if smtp.mails().len() > mails.len() { smtp.mails() } else { mails };
    assert_eq!(mails.len(), 3, "each event mailed exactly once: {mails:#?}");
    let ids: HashSet<String> = mails.iter().map(|m| m.message_id.clone()).collect();
    let expected: HashSet<String> = mailed.iter().map(|(id, _)| format!("<{id}@amazing-payments>")).collect();
    assert_eq!(ids, expected);
    let (_, out, _) = cli(&app.db_url(), &["dlq", "redrive", "--all"], &env);
    assert!(out.starts_with("0 message(s)"), "{out}");
}

#[tokio::test]
async fn the_built_in_queue_retries_then_keeps_a_dead_letter_with_its_reason_until_redriven() {
    let (mut smtp, app) = (Smtp::start().await, TestApp::spawn().await);
    let c = customer(&app, "Ada", "ada@example.com").await;
    pay(&app, &c, 4200, "eur", json!({})).await;
    let env = vec![
        ("SMTP_URL", smtp.url()),
        ("NOTIFY_RETRY_BASE", "0.1".into()),
        ("NOTIFY_MAX_ATTEMPTS", "3".into()),
        ("NOTIFY_INTERVAL", "0.1".into()),
    ];
    let (ok, out, err) = cli(&app.db_url(), &["relay", "--once"], &env);
    assert!(ok && out.starts_with("3 event(s)"), "{out}{err}");
    smtp.down();
    let n = notifier(&app.db_url(), &env);
    let dead = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM notify.message WHERE state = 'dead'").fetch_one(&app.db).await.unwrap()
    };
    wait_until("the mail dead", Duration::from_secs(30), async || dead().await == 1).await;
    drop(n);
    let (receives, error): (i32, String) =
        sqlx::query_as("SELECT receives, last_error FROM notify.message WHERE state = 'dead'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(receives, 3, "three attempts, as configured");
    let (_, listed, _) = cli(&app.db_url(), &["dlq", "list"], &env);
    assert!(listed.contains("payment.succeeded") && listed.contains(&error) && error.contains("SMTP"), "{listed}");

    let id = listed.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let (ok, _, err) = cli(&app.db_url(), &["dlq", "redrive", "--id", &Uuid::new_v4().to_string()], &env);
    assert!(!ok && err.contains("no dead letter"), "{err}");
    let (ok, _, err) = cli(&app.db_url(), &["dlq", "redrive"], &env);
    assert!(!ok && err.contains("--all"), "{err}");
    smtp.up().await;
    let (ok, out, _) = cli(&app.db_url(), &["dlq", "redrive", "--id", &id], &env);
    assert!(ok && out.starts_with("1 message(s) moved back"), "{out}");
    let _n = notifier(&app.db_url(), &env);
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails[0].subject, "Receipt: 42.00 EUR paid");
    wait_until("the queue empty", Duration::from_secs(10), async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notify.message").fetch_one(&app.db).await.unwrap() == 0
    })
    .await;
}

#[tokio::test]
async fn a_relay_killed_mid_batch_loses_no_event_and_the_notifier_mails_none_twice() {
    let (moto, smtp, app) = (Moto::start().await, Smtp::start().await, TestApp::spawn().await);
    let queue = moto.queue("payments", &[]).await;
    let mut env = sqs_env(&moto, &queue, &smtp);
    let c = customer(&app, "Ada", "ada@example.com").await;
    for i in 0..25 {
        pay(&app, &c, 1000 + i, "usd", json!({})).await;
    }
    let events = outbox(&app).await;
    assert_eq!(events.len(), 51);
    env.push(("DATABASE_URL", app.db_url()));
    env.push(("RELAY_BATCH", "60".into()));
    env.push(("RELAY_LEASE", "1".into()));
    env.push(("RUST_LOG", "info,amazing_payments::notify=debug".into()));

    // Killed (SIGKILL) as soon as it has sent part of its batch to SQS, and
    // before it could mark the batch published: three times.
    for _ in 0..3 {
        let relay = spawn(&service_bin(), &["relay"], &env);
        let start = Instant::now();
        while !relay.logs().contains("published part of a batch") {
            assert!(start.elapsed() < Duration::from_secs(30), "the relay published nothing: {}", relay.logs());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        relay.signal("-KILL");
        drop(relay);
    }
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM notify.outbox WHERE published_at IS NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(unpublished > 0, "the kills came before the batch was marked");
    let (ok, out, err) = cli(&app.db_url(), &["relay", "--once"], &env);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("{unpublished} event(s)")), "{out}");
    let in_queue = moto.depth(&queue).await;
    assert!(in_queue > 51, "events sent before each kill are in SQS twice or more ({in_queue})");

    let n = notifier(&app.db_url(), &env);
    // A copy whose handling failed for a moment (a slow database or moto on
    // a loaded machine) comes back after its visibility timeout (60 s): the
    // bound leaves room for one such round.
    let start = Instant::now();
    while moto.depth(&queue).await != 0 {
        let logs = n.logs();
        let tail = &logs[logs.len().saturating_sub(4000)..];
        assert!(start.elapsed() < Duration::from_secs(150), "copies left after 150 s; the notifier said: {tail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mails = smtp.mails();
    let succeeded: HashSet<String> =
        events.iter().filter(|e| e.1 == "payment.succeeded").map(|e| format!("<{}@amazing-payments>", e.0)).collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &mails {
        *seen.entry(m.message_id.clone()).or_default() += 1;
    }
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), succeeded, "every payment mailed, nothing else");
    assert!(seen.values().all(|n| *n == 1), "none mailed twice: {seen:?}");
    assert_eq!(mails.len(), 25);
}

#[tokio::test]
async fn three_relays_at_once_publish_each_event_once_in_order_to_a_fifo_queue() {
    let (moto, smtp, app) = (Moto::start().await, Smtp::start().await, TestApp::spawn().await);
    let queue = moto.queue("payments.fifo", &[(QueueAttributeName::FifoQueue, "true".into())]).await;
    let mut env = sqs_env(&moto, &queue, &smtp);
    env.push(("DATABASE_URL", app.db_url()));
    env.push(("RELAY_BATCH", "7".into()));
    let relays: Vec<Proc> = (0..3).map(|_| spawn(&service_bin(), &["relay"], &env)).collect();
    let c = customer(&app, "Ada", "ada@example.com").await;
    for i in 0..8 {
        let p = pay(&app, &c, 1000 + i, "usd", json!({"capture_method": "manual"})).await;
        let id = int(&p, "paymentID");
        app.post(&format!("/v1/payment/{id}/capture"), json!({"amount": 500})).await;
        app.post(&format!("/v1/payment/{id}/refund"), json!({"amount": 100})).await;
    }
    let events = outbox(&app).await;
    wait_until("every event published", Duration::from_secs(30), async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notify.outbox WHERE published_at IS NULL")
            .fetch_one(&app.db)
            .await
            .unwrap()
            == 0
    })
    .await;
    drop(relays);

    let mut got: Vec<(String, Value)> = Vec::new();
    loop {
        let out = moto
            .client
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .unwrap();
        if out.messages().is_empty() {
            break;
        }
        for m in out.messages() {
            let group = m.attributes().unwrap()[&MessageSystemAttributeName::MessageGroupId].clone();
            got.push((group, serde_json::from_str(m.body().unwrap()).unwrap()));
            moto.client
                .delete_message()
                .queue_url(&queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(got.len(), events.len(), "each event once, none twice");
    let ids: HashSet<String> = got.iter().map(|(_, b)| b["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, events.iter().map(|e| e.0.to_string()).collect::<HashSet<_>>());
    for (pid, _) in events.iter().filter_map(|e| e.2.map(|p| (p, ()))).collect::<HashMap<_, _>>() {
        let group = format!("payment-{pid}");
        let kinds: Vec<&str> =
            got.iter().filter(|(g, _)| *g == group).map(|(_, b)| b["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["payment.created", "payment.authorized", "payment.captured", "refund.created", "payment.refunded"],
            "{group} in order"
        );
    }
}

#[tokio::test]
async fn without_smtp_the_log_transport_records_each_mail_with_no_personal_data_in_the_log() {
    let app = TestApp::spawn().await;
    let c = customer(&app, "Zelda Quux", "zelda.quux@example.com").await;
    pay(&app, &c, 990, "gbp", json!({"description": "Lute strings"})).await;
    let env = vec![("NOTIFY_INTERVAL", "0.1".into()), ("MAIL_EVENTS", "customer.created,payment.succeeded".into())];
    let (ok, _, err) = cli(&app.db_url(), &["relay", "--once"], &env);
    assert!(ok, "{err}");
    let n = notifier(&app.db_url(), &env);
    let sent = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM notify.mail WHERE state = 'sent'").fetch_one(&app.db).await.unwrap()
    };
    wait_until("both mails recorded", Duration::from_secs(20), async || sent().await == 2).await;
    let logs = n.logs();
    assert_eq!(logs.matches("mail (log transport: not sent)").count(), 2, "{logs}");
    for private in ["Zelda", "Quux", "zelda", "Lute"] {
        assert!(!logs.contains(private), "{private} reached the log:\n{logs}");
    }
}

#[tokio::test]
async fn smtp_credentials_from_the_url_log_in_and_a_refused_login_is_a_dead_letter_that_names_the_cause() {
    let (smtp, app) = (Smtp::start_with_login("shop@example.com", "p:ss w0rd").await, TestApp::spawn().await);
    let c = customer(&app, "Ada", "ada@example.com").await;
    pay(&app, &c, 1999, "usd", json!({})).await;
    let (ok, _, err) = cli(&app.db_url(), &["relay", "--once"], &[]);
    assert!(ok, "{err}");
    let port = smtp.port;
    let wrong = vec![
        ("SMTP_URL", format!("smtp://shop%40example.com:not-it@127.0.0.1:{port}?tls=none")),
        ("NOTIFY_INTERVAL", "0.1".into()),
    ];
    let n = notifier(&app.db_url(), &wrong);
    let dead = async || -> Option<String> {
        sqlx::query_scalar("SELECT last_error FROM notify.message WHERE state = 'dead'")
            .fetch_optional(&app.db)
            .await
            .unwrap()
    };
    wait_until("the refused mail dead", Duration::from_secs(20), async || dead().await.is_some()).await;
    let logs = n.logs();
    drop(n);
    let reason = dead().await.unwrap();
    assert!(reason.contains("535") || reason.to_lowercase().contains("auth"), "{reason}");
    assert!(!reason.contains("not-it") && !logs.contains("not-it"), "no password in the reason or the log");
    assert!(smtp.mails().is_empty());

    let right = vec![
        ("SMTP_URL", format!("smtp://shop%40example.com:p%3Ass%20w0rd@127.0.0.1:{port}?tls=none")),
        ("NOTIFY_INTERVAL", "0.1".into()),
    ];
    let (ok, _, err) = cli(&app.db_url(), &["dlq", "redrive", "--all"], &right);
    assert!(ok, "{err}");
    let _n = notifier(&app.db_url(), &right);
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails[0].subject, "Receipt: 19.99 USD paid");
}
