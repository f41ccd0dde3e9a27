//! Finding objects again: the search endpoints with Stripe's query
//! language and search result shape, the index's optional lag, and lists
//! a checker can walk to the end (`starting_after`, `limit` up to 100,
//! `customer`, `payment_intent` and `created` filters).

use crate::common::{Sim, ids};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;

fn encode(query: &str) -> String {
    form_urlencoded::byte_serialize(query.as_bytes()).collect()
}

async fn search(sim: &Sim, resource: &str, query: &str, extra: &str) -> (StatusCode, Value) {
    let a = sim.get(&format!("/v1/{resource}/search?query={}{extra}", encode(query))).await;
    (a.status, a.body)
}

#[tokio::test]
async fn search_finds_payment_intents_by_metadata() {
    let sim = Sim::start().await;
    let ada = sim.customer("ada@example.com").await;
    let bob = sim.customer("bob@example.com").await;
    let mut made = Vec::new();
    for (i, cus) in [&ada, &ada, &bob].iter().enumerate() {
        made.push(sim.paid_intent(cus, "1000", &format!("p-{i}")).await);
    }

    let (status, found) = search(&sim, "payment_intents", "metadata['paymentID']:'p-1'", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["object"], "search_result");
    assert_eq!(found["url"], "/v1/payment_intents/search");
    assert_eq!((found["has_more"].as_bool(), found["next_page"].is_null()), (Some(false), true));
    assert!(found.get("total_count").is_none(), "only when expanded");
    assert_eq!(ids(&found), [made[1]["id"].as_str().unwrap()]);

    let both = format!("metadata['paymentID']:'p-2' AND customer:'{bob}'");
    assert_eq!(ids(&search(&sim, "payment_intents", &both, "").await.1).len(), 1);
    let wrong = format!("metadata[\"paymentID\"]:\"p-2\" AND customer:\"{ada}\"");
    assert!(ids(&search(&sim, "payment_intents", &wrong, "").await.1).is_empty());
    let of_ada = search(&sim, "payment_intents", &format!("customer:'{ada}'"), "").await.1;
    assert_eq!(ids(&of_ada), [made[1]["id"].as_str().unwrap(), made[0]["id"].as_str().unwrap()], "newest first");
}

#[tokio::test]
async fn search_finds_customers_by_email_and_metadata_and_charges_by_metadata() {
    let sim = Sim::start().await;
    let tagged = sim.post("/v1/customers", &[("email", "ada@example.com"), ("metadata[customerID]", "7")], None).await;
    sim.customer("bob@example.com").await;
    let by_email = search(&sim, "customers", "email:'ada@example.com'", "").await.1;
    assert_eq!(ids(&by_email), [tagged.body["id"].as_str().unwrap()]);
    let by_metadata = search(&sim, "customers", "metadata['customerID']:'7'", "").await.1;
    assert_eq!(ids(&by_metadata), ids(&by_email));
    assert_eq!(by_metadata["url"], "/v1/customers/search");

    let pi = sim.paid_intent(tagged.body["id"].as_str().unwrap(), "1000", "p-9").await;
    let charges = search(&sim, "charges", "metadata['paymentID']:'p-9'", "").await.1;
    assert_eq!(ids(&charges), [pi["latest_charge"].as_str().unwrap()]);
}

#[tokio::test]
async fn search_pages_with_next_page_and_counts_when_asked() {
    let sim = Sim::start().await;
    let cus = sim.customer("ada@example.com").await;
    for i in 0..5 {
        sim.paid_intent(&cus, "1000", &format!("p-{i}")).await;
    }
    let query = format!("customer:'{cus}'");
    let (_, first) = search(&sim, "payment_intents", &query, "&limit=2&expand[]=total_count").await;
    assert_eq!((first["has_more"].as_bool(), first["total_count"].as_u64()), (Some(true), Some(5)));
    let mut seen: Vec<String> = ids(&first);
    let mut page = first["next_page"].as_str().unwrap().to_string();
    loop {
        let (status, next) = search(&sim, "payment_intents", &query, &format!("&limit=2&page={page}")).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(ids(&next));
        match next["next_page"].as_str() {
            Some(p) => page = p.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5, "no object twice");
}

#[tokio::test]
async fn a_malformed_or_unsupported_query_is_a_400_about_the_query() {
    let sim = Sim::start().await;
    for bad in ["colour:'red'", "status:succeeded", "status:'a' AND amount:1 OR amount:2"] {
        let (status, body) = search(&sim, "payment_intents", bad, "").await;
        assert_eq!((status, body["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("query")), "{bad}");
    }
    let missing = sim.get("/v1/customers/search").await;
    assert_eq!(missing.body["error"]["code"], "parameter_missing");
}

#[tokio::test]
async fn search_lags_behind_writes_when_asked_to_while_lists_do_not() {
    let sim = Sim::start().await;
    sim.admin("/_sim/search", json!({"lag_ms": 400})).await;
    let cus = sim.customer("ada@example.com").await;
    let pi = sim.paid_intent(&cus, "1000", "p-1").await;
    let query = "metadata['paymentID']:'p-1'";
    assert!(ids(&search(&sim, "payment_intents", query, "").await.1).is_empty(), "not indexed yet");
    assert_eq!(ids(&sim.get(&format!("/v1/payment_intents?customer={cus}")).await.body).len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(ids(&search(&sim, "payment_intents", query, "").await.1), [pi["id"].as_str().unwrap()]);
}

/// Every id of a list, page by page.
async fn walk(sim: &Sim, path: &str, limit: usize) -> Vec<String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let cursor = if after.is_empty() { String::new() } else { format!("&starting_after={after}") };
        let page = sim.get(&format!("{path}{sep}limit={limit}{cursor}")).await.body;
        let got = ids(&page);
        all.extend(got.iter().cloned());
        if page["has_more"] != true {
            return all;
        }
        after = got.last().unwrap().clone();
    }
}

#[tokio::test]
async fn a_checker_can_list_every_payment_intent_and_refund() {
    let sim = Sim::start().await;
    let ada = sim.customer("ada@example.com").await;
    let bob = sim.customer("bob@example.com").await;
    let mut intents = Vec::new();
    for i in 0..25 {
        let cus = if i % 5 == 0 { &bob } else { &ada };
        let pi = sim.paid_intent(cus, "1000", &format!("p-{i}")).await;
        let id = pi["id"].as_str().unwrap().to_string();
        sim.post("/v1/refunds", &[("payment_intent", &id), ("amount", "100")], None).await;
        intents.push(id);
    }
    intents.reverse();
    assert_eq!(walk(&sim, "/v1/payment_intents", 10).await, intents, "every intent once, newest first");
    assert_eq!(walk(&sim, "/v1/payment_intents", 100).await, intents);
    assert_eq!(walk(&sim, "/v1/refunds", 7).await.len(), 25);
    assert_eq!(walk(&sim, &format!("/v1/payment_intents?customer={bob}"), 2).await.len(), 5);
    let of_one = walk(&sim, &format!("/v1/refunds?payment_intent={}", intents[3]), 10).await;
    assert_eq!(of_one.len(), 1);

    let later = sim.get(&format!("/v1/payment_intents?created[gt]={}", i64::MAX / 2)).await;
    assert_eq!((later.status, ids(&later.body).len()), (StatusCode::OK, 0));
    let since_epoch = sim.get("/v1/payment_intents?limit=100&created[gte]=0").await;
    assert_eq!(ids(&since_epoch.body).len(), 25);
}
