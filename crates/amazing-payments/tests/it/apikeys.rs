//! API keys for teams, over both transports: a key may only do what its
//! scopes allow (403 / PERMISSION_DENIED `INSUFFICIENT_SCOPE`, nothing
//! written), stops at its expiry (401 `API_KEY_EXPIRED`), can be rotated
//! (the new key works at once, the old one until its grace ends), notes
//! when it was last used; and every change of a payment, a refund or a
//! customer names the key that asked for it, in the payment's history and
//! in its events.

use crate::common::{
    TestApp,
    call::{BOTH, Via, int},
};
use amazing_payments::{
    app::apikeys,
    domain::scopes::Scope,
    workers::{
        reconciler::{self, Settings},
        webhooks,
    },
};
use chrono::{Duration as Span, Utc};
use serde_json::{Value, json};
use std::time::Duration;
use tonic::Code;

/// A key with `scopes` (and `expires_at`); the key and its id.
async fn key_with(app: &TestApp, scopes: &[Scope], expires_at: Option<chrono::DateTime<Utc>>) -> (String, i64) {
    let made = apikeys::create(&app.db, &app.app.auth, "team", scopes, expires_at).await.unwrap();
    (made.key.expose().to_string(), made.id)
}

fn payment(customer: &str, capture: &str) -> Value {
    json!({"customerID": customer, "amount": 2500, "currency": "eur", "payment_method": "pm_card_visa", "capture_method": capture})
}

#[tokio::test]
async fn a_key_without_the_scope_an_rpc_needs_is_refused_over_both_transports_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let paid = app.call(Via::Rest, "CreatePayment", payment(&customer, "automatic")).await.unwrap();
    let paid_id = paid["paymentID"].as_str().unwrap().to_string();
    let (reader, _) = key_with(&app, &[Scope::Read], None).await;
    let (writer, _) = key_with(&app, &[Scope::Write], None).await;
    let (refused_only, refused_id) = key_with(&app, &[Scope::Read], None).await;
    let (stripe_calls, payments, refunds) =
        (app.stripe_calls(), app.count("payment.payment").await, app.count("payment.refund").await);
    let customers = app.count("customer.customer").await;
    let mut journal = Vec::new();
    for table in ["payment.operation", "payment.history", "notify.outbox"] {
        journal.push((table, app.count(table).await));
    }
    for via in BOTH {
        let refusals = [
            (&reader, "CreateCustomer", json!({"name": "Grace", "email": "grace@example.com"}), "write"),
            (&reader, "CreatePayment", payment(&customer, "manual"), "write"),
            (&reader, "CapturePayment", json!({"paymentID": paid_id}), "write"),
            (&writer, "RefundPayment", json!({"paymentID": paid_id, "amount": 100}), "refund"),
            (&writer, "CreateProduct", json!({"name": "Tea", "unit_amount": 500, "currency": "eur"}), "admin"),
        ];
        for (key, rpc, input, needed) in refusals {
            let (answer, _) = app.call_as(key, via, rpc, input, Some(&format!("{rpc}-{via:?}"))).await;
            let refused = answer.expect_err(rpc);
            assert_eq!(
                (refused.code, refused.reason.as_str(), refused.details["required_scope"].as_str()),
                (Code::PermissionDenied, "INSUFFICIENT_SCOPE", Some(needed)),
                "{rpc} over {via:?}"
            );
            if via == Via::Rest {
                assert_eq!(refused.http, Some(403), "{rpc}");
            }
        }
        // Every scope reads.
        for key in [&reader, &writer] {
            let (read, _) = app.call_as(key, via, "GetPayment", json!({"paymentID": paid_id}), None).await;
            assert_eq!(read.unwrap()["status"], "succeeded");
        }
    }
    assert_eq!(app.stripe_calls(), stripe_calls, "a refused call reaches Stripe never");
    assert_eq!(app.count("payment.payment").await, payments);
    assert_eq!(app.count("payment.refund").await, refunds);
    assert_eq!(app.count("customer.customer").await, customers);
    for via in BOTH {
        let (answer, _) = app.call_as(&refused_only, via, "CancelPayment", json!({"paymentID": paid_id}), None).await;
        assert_eq!(answer.unwrap_err().reason, "INSUFFICIENT_SCOPE");
    }
    let used: Option<chrono::DateTime<Utc>> = sqlx::query_scalar("SELECT last_used_at FROM auth.api_key WHERE id = $1")
        .bind(refused_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(used, None, "a key only ever refused was never used");
    for (table, before) in journal {
        assert_eq!(app.count(table).await, before, "{table}: a refused call writes nothing");
    }
    assert_eq!(app.count("auth.idempotency_key").await, 0, "nor claims its idempotency key");
}

#[tokio::test]
async fn a_refund_key_refunds_and_an_admin_key_may_do_everything() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let (refunder, _) = key_with(&app, &[Scope::Refund], None).await;
    let (admin, _) = key_with(&app, &[Scope::Admin], None).await;
    for via in BOTH {
        let (paid, _) = app.call_as(&admin, via, "CreatePayment", payment(&customer, "automatic"), None).await;
        let paid = paid.expect("admin may take a payment");
        let refund = json!({"paymentID": paid["paymentID"], "amount": 400});
        let (refunded, _) = app.call_as(&refunder, via, "RefundPayment", refund, None).await;
        assert_eq!(int(&refunded.expect("a refund key refunds"), "amount"), 400);
        let product = json!({"name": "Tea", "unit_amount": 500, "currency": "eur"});
        let (made, _) = app.call_as(&admin, via, "CreateProduct", product, None).await;
        assert!(made.is_ok(), "admin changes the catalog: {made:?}");
    }
}

#[tokio::test]
async fn an_expired_key_is_refused_as_expired_over_both_transports() {
    let app = TestApp::spawn().await;
    let (key, id) = key_with(&app, &[Scope::Read], Some(Utc::now() + Span::hours(1))).await;
    for via in BOTH {
        let (answer, _) = app.call_as(&key, via, "ListCustomers", json!({}), None).await;
        assert!(answer.is_ok(), "before its expiry it works: {answer:?}");
    }
    sqlx::query("UPDATE auth.api_key SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    for via in BOTH {
        let (answer, _) = app.call_as(&key, via, "ListCustomers", json!({}), None).await;
        let refused = answer.unwrap_err();
        assert_eq!((refused.code, refused.reason.as_str()), (Code::Unauthenticated, "API_KEY_EXPIRED"), "{via:?}");
        if via == Via::Rest {
            assert_eq!(refused.http, Some(401));
        }
    }
}

#[tokio::test]
async fn a_key_made_to_expire_in_the_past_is_refused_at_once() {
    let app = TestApp::spawn().await;
    let made =
        apikeys::create(&app.db, &app.app.auth, "late", &[Scope::Read], Some(Utc::now() - Span::seconds(1))).await;
    assert_eq!(made.err().map(|e| e.reason), Some("INVALID_EXPIRY"));
}

#[tokio::test]
async fn a_rotated_key_works_at_once_and_the_old_one_until_its_grace_ends() {
    let app = TestApp::spawn().await;
    let (old, old_id) = key_with(&app, &[Scope::Read, Scope::Refund], None).await;
    let (_, new) =
        apikeys::rotate(&app.db, &app.app.auth, &old_id.to_string(), Utc::now() + Span::hours(24), None).await.unwrap();
    let new_key = new.key.expose().to_string();
    let (scopes, rotated_from): (Vec<String>, Option<i64>) =
        sqlx::query_as("SELECT scopes, rotated_from FROM auth.api_key WHERE id = $1")
            .bind(new.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((scopes, rotated_from), (vec!["read".to_string(), "refund".to_string()], Some(old_id)));
    for via in BOTH {
        for key in [&old, &new_key] {
            let (answer, _) = app.call_as(key, via, "ListCustomers", json!({}), None).await;
            assert!(answer.is_ok(), "during the grace both work: {answer:?}");
        }
    }
    // The grace ends.
    sqlx::query("UPDATE auth.api_key SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(old_id)
        .execute(&app.db)
        .await
        .unwrap();
    for via in BOTH {
        let (answer, _) = app.call_as(&old, via, "ListCustomers", json!({}), None).await;
        assert_eq!(answer.unwrap_err().reason, "API_KEY_EXPIRED");
        let (answer, _) = app.call_as(&new_key, via, "ListCustomers", json!({}), None).await;
        assert!(answer.is_ok());
    }
    let again = apikeys::rotate(&app.db, &app.app.auth, &old_id.to_string(), Utc::now() + Span::hours(1), None).await;
    let past = apikeys::rotate(&app.db, &app.app.auth, &new.id.to_string(), Utc::now() - Span::seconds(1), None).await;
    assert_eq!(past.err().map(|e| e.reason), Some("INVALID_GRACE"), "a grace that already ended is refused");
    assert_eq!(again.err().map(|e| e.reason), Some("API_KEY_NOT_FOUND"), "an expired key is not rotated again");
}

#[tokio::test]
async fn a_key_notes_when_it_was_last_used() {
    let app = TestApp::spawn().await;
    let (key, id) = key_with(&app, &[Scope::Read], None).await;
    let last_used = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<Utc>>>("SELECT last_used_at FROM auth.api_key WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    assert_eq!(last_used().await, None, "never used");
    let before = Utc::now() - Span::seconds(5);
    let (answer, _) = app.call_as(&key, Via::Grpc, "ListCustomers", json!({}), None).await;
    answer.unwrap();
    let used = last_used().await.expect("noted on use");
    assert!(used >= before, "{used} after {before}");
}

/// The API key ids of a payment's history lines, with their status and source.
fn trail(payment: &Value) -> Vec<(String, String, i64)> {
    payment["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["to_status"].as_str().unwrap().to_string(),
                h["source"].as_str().unwrap().to_string(),
                h.get("apiKeyID").map_or(0, |_| int(h, "apiKeyID")),
            )
        })
        .collect()
}

/// The events of a payment in the outbox: (type, source, api_key_id).
async fn events(app: &TestApp, payment_id: &str) -> Vec<(String, String, Option<i64>)> {
    sqlx::query_as(
        "SELECT type, body->>'source', (body->>'api_key_id')::bigint FROM notify.outbox
         WHERE payment_id = $1 ORDER BY occurred_at, type",
    )
    .bind(payment_id.parse::<i64>().unwrap())
    .fetch_all(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_change_names_the_key_that_asked_for_it_in_the_history_and_the_events_over_both_transports() {
    let app = TestApp::spawn().await;
    let (taker, taker_id) = key_with(&app, &[Scope::Write], None).await;
    let (capturer, capturer_id) = key_with(&app, &[Scope::Write], None).await;
    let (refunder, refunder_id) = key_with(&app, &[Scope::Refund], None).await;
    for via in BOTH {
        let (customer, _) =
            app.call_as(&taker, via, "CreateCustomer", json!({"name": "Ada", "email": "ada@example.com"}), None).await;
        let customer = customer.unwrap()["customerID"].as_str().unwrap().to_string();
        let made: Option<i64> = sqlx::query_scalar(
            "SELECT (body->>'api_key_id')::bigint FROM notify.outbox WHERE type = 'customer.created' AND customer_id = $1",
        )
        .bind(customer.parse::<i64>().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(made, Some(taker_id), "customer.created names its key");
        let (changed, _) = app
            .call_as(&capturer, via, "UpdateCustomer", json!({"customerID": customer, "name": "Ada L."}), None)
            .await;
        changed.unwrap();
        let updated: Option<i64> = sqlx::query_scalar(
            "SELECT (body->>'api_key_id')::bigint FROM notify.outbox WHERE type = 'customer.updated' AND customer_id = $1",
        )
        .bind(customer.parse::<i64>().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(updated, Some(capturer_id), "customer.updated names the key that changed it");
        let (same, _) = app
            .call_as(&capturer, via, "UpdateCustomer", json!({"customerID": customer, "name": "Ada L."}), None)
            .await;
        same.unwrap();
        let updates: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notify.outbox WHERE type = 'customer.updated' AND customer_id = $1",
        )
        .bind(customer.parse::<i64>().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(updates, 1, "an update to the values it has is no change, and no event");

        let (p, _) = app.call_as(&taker, via, "CreatePayment", payment(&customer, "manual"), None).await;
        let id = p.unwrap()["paymentID"].as_str().unwrap().to_string();
        let (captured, _) = app.call_as(&capturer, via, "CapturePayment", json!({"paymentID": id}), None).await;
        captured.unwrap();
        let refund = json!({"paymentID": id, "amount": 1000});
        let (refunded, _) = app.call_as(&refunder, via, "RefundPayment", refund, None).await;
        refunded.unwrap();

        let (read, _) =
            app.call_as(&taker, via, "GetPayment", json!({"paymentID": id, "include_history": true}), None).await;
        let s = |x: &str| x.to_string();
        assert_eq!(
            trail(&read.unwrap()),
            vec![
                (s("pending"), s("api"), taker_id),
                (s("authorized"), s("api"), taker_id),
                (s("succeeded"), s("api"), capturer_id),
                (s("partially_refunded"), s("api"), refunder_id),
            ],
            "over {via:?}"
        );
        let events = events(&app, &id).await;
        let by_type = |t: &str| events.iter().find(|e| e.0 == t).map(|e| (e.1.clone(), e.2));
        assert_eq!(by_type("payment.created"), Some((s("api"), Some(taker_id))), "{events:?}");
        assert_eq!(by_type("payment.captured"), Some((s("api"), Some(capturer_id))), "{events:?}");
        assert_eq!(by_type("refund.created"), Some((s("api"), Some(refunder_id))), "{events:?}");
        assert_eq!(by_type("payment.refunded"), Some((s("api"), Some(refunder_id))), "{events:?}");
    }
}

/// A manual payment of `customer` whose capture, asked by a key of its own,
/// is done at Stripe while its answer (and every retry's) is lost; the
/// payment's id and the key's.
async fn capture_answer_lost(app: &TestApp, customer: &str) -> (String, i64) {
    let (capturer, capturer_id) = key_with(app, &[Scope::Write], None).await;
    let p = app.call(Via::Grpc, "CreatePayment", payment(customer, "manual")).await.unwrap();
    let id = p["paymentID"].as_str().unwrap().to_string();
    app.sim.state().faults.add(
        serde_json::from_value(json!({"method": "POST", "path": "/v1/payment_intents/", "drop": "after", "times": 3}))
            .unwrap(),
    );
    let (answer, _) = app.call_as(&capturer, Via::Rest, "CapturePayment", json!({"paymentID": id}), None).await;
    assert_eq!(answer.unwrap_err().code, Code::Unavailable);
    (id, capturer_id)
}

#[tokio::test]
async fn a_change_the_reconciler_finishes_names_the_key_that_asked_for_it() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let (id, capturer_id) = capture_answer_lost(&app, &customer).await;
    let now =
        Settings { interval: Duration::from_millis(10), batch: 100, min_age: Duration::ZERO, ..Default::default() };
    reconciler::until_idle(&app.app, &now).await.unwrap();
    let read = app.call(Via::Rest, "GetPayment", json!({"paymentID": id, "include_history": true})).await.unwrap();
    let last = trail(&read).pop().unwrap();
    assert_eq!(last, ("succeeded".to_string(), "reconciler".to_string(), capturer_id));
}

#[tokio::test]
async fn a_change_told_by_a_stripe_webhook_names_no_key() {
    let app = TestApp::spawn_with(crate::common::Options { register_webhook: true, ..Default::default() }).await;
    let customer = app.new_customer().await;
    let p = app.call(Via::Rest, "CreatePayment", payment(&customer, "manual")).await.unwrap();
    let id = p["paymentID"].as_str().unwrap().to_string();
    let pi = p["stripe_payment_intent_id"].as_str().unwrap().to_string();
    // The authorization lapses at Stripe, which tells us by its webhook.
    let resp = app.http.post(format!("{}/_sim/payment_intents/{pi}/expire", app.sim.url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = Vec::new();
    for _ in 0..50 {
        while webhooks::pass(&app.app, 100).await.unwrap() > 0 {}
        let read = app.call(Via::Rest, "GetPayment", json!({"paymentID": id, "include_history": true})).await.unwrap();
        seen = trail(&read);
        if seen.iter().any(|(_, source, _)| source == "webhook") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = key_id_of(&app).await;
    let last = seen.last().cloned().unwrap();
    assert_eq!(last, ("canceled".to_string(), "webhook".to_string(), 0), "{seen:?}");
    assert_eq!(seen[0].2, first, "while the payment's creation names the key that made it");
    let canceled: Vec<(String, String, Option<i64>)> = events(&app, &id).await;
    let canceled = canceled.iter().find(|e| e.0 == "payment.canceled").cloned();
    assert_eq!(canceled, Some(("payment.canceled".to_string(), "webhook".to_string(), None)));
}

/// The id of the test app's own key.
async fn key_id_of(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT id FROM auth.api_key ORDER BY id LIMIT 1").fetch_one(&app.db).await.unwrap()
}

#[tokio::test]
async fn a_rotated_key_keeps_the_old_ones_expiry_and_a_grace_never_lengthens_its_life() {
    let app = TestApp::spawn().await;
    let ends = Utc::now() + Span::hours(2);
    let (_, old_id) = key_with(&app, &[Scope::Read], Some(ends)).await;
    let (old, new) =
        apikeys::rotate(&app.db, &app.app.auth, &old_id.to_string(), Utc::now() + Span::hours(24), None).await.unwrap();
    let close = |a: Option<chrono::DateTime<Utc>>| a.is_some_and(|a| (a - ends).num_milliseconds().abs() < 1000);
    assert!(close(old.expires_at), "a grace past its own expiry does not lengthen it: {:?}", old.expires_at);
    let new_expiry: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT expires_at FROM auth.api_key WHERE id = $1")
            .bind(new.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(close(new_expiry), "the new key expires when the old one would have: {new_expiry:?}");
}

#[tokio::test]
async fn a_retry_with_the_rotated_key_finds_what_the_old_key_did_under_its_idempotency_key() {
    let app = TestApp::spawn().await;
    let customer = app.new_customer().await;
    let (old, old_id) = key_with(&app, &[Scope::Write], None).await;
    for via in BOTH {
        let idem = format!("rotated-{via:?}");
        let (first, _) = app.call_as(&old, via, "CreatePayment", payment(&customer, "manual"), Some(&idem)).await;
        let first = first.unwrap();
        let intents = app.stripe_calls();
        let (_, new) = apikeys::rotate(&app.db, &app.app.auth, &old_id.to_string(), Utc::now() + Span::hours(1), None)
            .await
            .unwrap();
        let (again, replayed) =
            app.call_as(new.key.expose(), via, "CreatePayment", payment(&customer, "manual"), Some(&idem)).await;
        assert!(replayed, "the new key's retry is the old key's request, over {via:?}");
        assert_eq!(again.unwrap()["paymentID"], first["paymentID"]);
        assert_eq!(app.stripe_calls(), intents, "and charges nothing again");
    }
}

#[tokio::test]
async fn a_cached_key_is_still_refused_the_moment_it_expires() {
    let app =
        TestApp::spawn_with(crate::common::Options { key_cache_ttl: Duration::from_secs(60), ..Default::default() })
            .await;
    let (key, _) = key_with(&app, &[Scope::Read], Some(Utc::now() + Span::milliseconds(1500))).await;
    let (answer, _) = app.call_as(&key, Via::Rest, "ListCustomers", json!({}), None).await;
    assert!(answer.is_ok(), "verified, and now cached for a minute: {answer:?}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for via in BOTH {
        let (answer, _) = app.call_as(&key, via, "ListCustomers", json!({}), None).await;
        assert_eq!(answer.unwrap_err().reason, "API_KEY_EXPIRED", "{via:?}");
    }
}

#[tokio::test]
async fn a_capture_whose_news_comes_first_by_webhook_still_names_the_key_that_asked_for_it() {
    let app = TestApp::spawn_with(crate::common::Options { register_webhook: true, ..Default::default() }).await;
    let customer = app.new_customer().await;
    let (id, capturer_id) = capture_answer_lost(&app, &customer).await;
    let mut seen = Vec::new();
    for _ in 0..50 {
        while webhooks::pass(&app.app, 100).await.unwrap() > 0 {}
        let read = app.call(Via::Rest, "GetPayment", json!({"paymentID": id, "include_history": true})).await.unwrap();
        seen = trail(&read);
        if seen.iter().any(|(status, _, _)| status == "succeeded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let captured = seen.iter().find(|(status, _, _)| status == "succeeded").cloned();
    assert_eq!(captured, Some(("succeeded".to_string(), "webhook".to_string(), capturer_id)), "{seen:?}");
}

#[tokio::test]
async fn each_rpc_needs_the_scope_the_readme_gives_it() {
    use amazing_payments::domain::scopes::needed;
    let expected = [
        (
            "read",
            &[
                "GetCustomer",
                "ListCustomers",
                "GetProduct",
                "ListProducts",
                "GetPayment",
                "ListPayments",
                "GetRefund",
                "ListRefunds",
                "ListPaymentMethods",
                "ListWebhookEndpoints",
                "GetWebhookEndpoint",
                "ListWebhookDeliveries",
                "ListDisputes",
                "GetDispute",
            ][..],
        ),
        (
            "write",
            &[
                "CreateCustomer",
                "UpdateCustomer",
                "CreatePayment",
                "CapturePayment",
                "CancelPayment",
                "SetupPaymentMethod",
                "DetachPaymentMethod",
                "SubmitDisputeEvidence",
            ][..],
        ),
        ("refund", &["RefundPayment", "AcceptDispute"][..]),
        (
            "admin",
            &[
                "CreateProduct",
                "AddPrice",
                "DeactivateProduct",
                "DeactivatePrice",
                "CreateWebhookEndpoint",
                "UpdateWebhookEndpoint",
                "DeleteWebhookEndpoint",
                "RollWebhookEndpointSecret",
                "RedeliverWebhook",
            ][..],
        ),
    ];
    let mut listed = 0;
    for (scope, rpcs) in expected {
        for rpc in rpcs {
            assert_eq!(needed(rpc).as_str(), scope, "{rpc}");
            listed += 1;
        }
    }
    let keyed = amazing_payments::http::gateway::ROUTES.iter().filter(|r| !r.public).count();
    assert_eq!(listed, keyed, "every keyed rpc is pinned here");
}
