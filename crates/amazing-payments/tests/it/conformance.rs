//! Conformance: schemathesis (pinned in `scripts/pytools.txt`) reads the
//! OpenAPI document the running service serves and tries every operation
//! with all its checks (examples, boundary values, fuzzing, stateful runs
//! following the document's links): no 5xx, every answer as documented, and
//! no request the document allows refused nor one it forbids accepted. The
//! document and the service's checks come from the same rules in the proto
//! (`crate::contract`), so a finding here is a real drift or a real bug.
//!
//! `CONFORMANCE_SEED` and `CONFORMANCE_EXAMPLES` replay or widen a run.

use crate::common::{TestApp, outside::pytools};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_every_operation_as_its_openapi_document_says() {
    // Webhook endpoints may be on any address here: the document cannot
    // say which names resolve to private addresses, so a run refusing them
    // would find "a URL the document allows refused".
    let hooks = amazing_payments::hooks::Settings { allow_private: true, ..Default::default() };
    let app = TestApp::spawn_with(crate::common::Options { register_webhook: true, hooks, ..Default::default() }).await;
    let seed = std::env::var("CONFORMANCE_SEED").unwrap_or_else(|_| "20261130".into());
    let examples = std::env::var("CONFORMANCE_EXAMPLES").unwrap_or_else(|_| "30".into());
    // A folder of its own: no schemathesis.toml nor example database from
    // elsewhere changes the run, so a seed replays it.
    let dir = std::env::temp_dir().join(format!("conformance-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("schemathesis.toml"), "# the run's options are on its command line\n").unwrap();
    let output = tokio::process::Command::new(pytools().join("schemathesis"))
        .args(["run", &format!("{}/openapi.json", app.rest), "--url", &app.rest])
        .args(["-H", &format!("Authorization: Bearer {}", app.key)])
        .args(["--checks", "all", "--max-examples", &examples, "--seed", &seed, "--no-color"])
        .args(["--generation-database", "none"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(&dir)
        .output()
        .await
        .expect("schemathesis runs (scripts/test.sh installs it)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems (seed {seed}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A run that tested nothing would also succeed.
    let summary = report.lines().find(|l| l.contains("generated")).unwrap_or_default();
    assert!(report.contains("Tested: 35"), "every operation of the document is tried: {report}");
    assert!(summary.contains("passed"), "{summary}");
    // With a key that works, only the webhook route (its own credential, a
    // Stripe signature the tool cannot make) answers nothing but 401.
    assert!(
        !report.contains("Authentication failed: 2") && !report.contains("operations returned only 401"),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
