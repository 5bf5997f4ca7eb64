//! Erasure (GDPR) by crypto-shredding: personal fields are stored sealed under a key per
//! account, and ErasePersonalData deletes the key. Afterwards the personal data cannot be read
//! anywhere (API, audit, as-of, read models, rebuilt read models, any table), while balances,
//! replay and the hash chain are unchanged.

use crate::projectors::{assert_rebuilds_match, caught_up};
use crate::support::TestApp;
use axum::http::{Method, StatusCode};
use commands::{Role, ServiceConfig};
use projections::chain::{verify, ChainProjector};
use projections::Worker;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// The personal values of the test: none may be readable after the erasure.
const EMAIL: &str = "erin.secret@example.com";
const NAME: &str = "Erin Secretperson";
const NEW_NAME: &str = "Erin Renamedsecret";
const BIRTH: &str = "1991-07-13";
const DOCUMENT: &str = "passport-SECRET-4711";
const MESSAGE: &str = "Love, Erin (secret message)";
const SECRETS: &[&str] = &[
    EMAIL,
    NAME,
    NEW_NAME,
    BIRTH,
    DOCUMENT,
    MESSAGE,
    "Secretperson",
    "Renamedsecret",
    "SECRET-4711",
];

async fn seal_chain(pool: &PgPool) {
    let mut worker = Worker::live(
        pool.clone(),
        Arc::new(ChainProjector),
        crate::support::small_batches(50),
    );
    worker.load().await.expect("load");
    worker.catch_up(|_, _| {}).await.expect("seal");
}

/// Every row of every table of the database, as text, that contains one of `needles`.
async fn rows_containing(pool: &PgPool, needles: &[&str]) -> Vec<String> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema, table_name FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' \
           AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    assert!(tables.len() > 10, "the database has its tables: {tables:?}");
    let mut found = Vec::new();
    for (schema, table) in tables {
        let sql = format!(
            "SELECT t::text FROM \"{schema}\".\"{table}\" t \
             WHERE t::text ILIKE ANY($1)"
        );
        let patterns: Vec<String> = needles.iter().map(|n| format!("%{n}%")).collect();
        let rows: Vec<String> = sqlx::query_scalar(&sql)
            .bind(&patterns)
            .fetch_all(pool)
            .await
            .expect("scan a table");
        found.extend(rows.into_iter().map(|r| format!("{schema}.{table}: {r}")));
    }
    found
}

async fn erase(app: &TestApp, account: Uuid, admin: &str) -> crate::support::Answer {
    app.send(
        Method::DELETE,
        &format!("/v1/accounts/{account}/personal-data"),
        Some(admin),
        None,
        &[],
    )
    .await
}

fn contains_any(v: &Value, needles: &[&str]) -> Option<String> {
    let text = v.to_string();
    needles
        .iter()
        .find(|n| text.contains(*n))
        .map(|n| n.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_personal_data_cannot_be_read_anywhere_and_money_replay_and_chain_are_unchanged() {
    // Snapshots every 2 events, so account and pot snapshots exist and are sealed too.
    let app = TestApp::with_config(ServiceConfig {
        snapshot_every: 2,
        ..Default::default()
    })
    .await;
    let pool = app.db.pool.clone();
    let admin = app.token("gdpr-admin", &[Role::Admin]);
    let auditor = app.token("gdpr-auditor", &[Role::Auditor]);
    let (_owner, owner_token) = app.customer("gdpr-pot-owner").await;
    let (beneficiary, _) = app.customer("gdpr-beneficiary").await;
    let (dave, dave_token) = app.customer("gdpr-dave").await;

    // Erin: every personal field, a contribution with a message, and money moved.
    let erin_token = app.token("gdpr-erin", &[Role::Customer]);
    let opened = app
        .post(
            "/v1/accounts",
            &erin_token,
            json!({"email": EMAIL, "display_name": NAME, "birth_date": BIRTH, "country": "DE"}),
        )
        .await;
    assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
    let erin = opened.id();
    let renamed = app
        .send(
            Method::PATCH,
            &format!("/v1/accounts/{erin}/profile"),
            Some(&erin_token),
            Some(json!({"display_name": NEW_NAME})),
            &[],
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    let kyc = app
        .post(
            &format!("/v1/accounts/{erin}/kyc"),
            &erin_token,
            json!({"document_ref": DOCUMENT}),
        )
        .await;
    assert_eq!(kyc.status, StatusCode::OK, "{:?}", kyc.body);
    let approved = app
        .post(
            &format!("/v1/accounts/{erin}/kyc/approve"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{:?}", approved.body);
    let erin_wallet = app.wallet(&erin_token, "EUR").await;
    assert_eq!(app.deposit(erin_wallet, 3_000).await.status, StatusCode::OK);
    let dave_wallet = app.wallet(&dave_token, "EUR").await;
    assert_eq!(app.deposit(dave_wallet, 5_000).await.status, StatusCode::OK);
    let pot = app
        .post(
            "/v1/pots",
            &owner_token,
            json!({"beneficiary": beneficiary, "title": "Farewell", "currency": "EUR",
                   "visibility": "public",
                   "closes_at": (chrono::Utc::now() + chrono::Duration::days(7)).to_rfc3339()}),
        )
        .await;
    assert_eq!(pot.status, StatusCode::CREATED, "{:?}", pot.body);
    let pot = pot.id();
    for (token, wallet, amount, message) in [
        (&erin_token, erin_wallet, 1_000, Some(MESSAGE)),
        (&dave_token, dave_wallet, 700, Some("from Dave")),
        (&erin_token, erin_wallet, 2_000, None),
    ] {
        let mut body = json!({"wallet": wallet, "amount": amount});
        if let Some(m) = message {
            body["message"] = json!(m);
        }
        let a = app
            .post(&format!("/v1/pots/{pot}/contributions"), token, body)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    }

    // Stored sealed: no personal value is in the clear in any table, but everyone entitled
    // reads them.
    let leaks = rows_containing(&pool, &[EMAIL, NAME, NEW_NAME, DOCUMENT, MESSAGE]).await;
    let leaks: Vec<&String> = leaks
        .iter()
        .filter(|r| {
            !r.starts_with("public.accounts:") && !r.starts_with("public.pot_contributions:")
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "personal data in the clear outside the read models: {leaks:?}"
    );
    let (versions,): (Vec<i32>,) = sqlx::query_as(
        "SELECT array_agg(schema_version ORDER BY position) FROM events \
         WHERE event_type IN ('AccountOpened', 'ProfileUpdated', 'KycSubmitted', \
                              'ContributionReceived')",
    )
    .fetch_one(&pool)
    .await
    .expect("versions");
    assert!(
        versions.iter().all(|v| *v == 2),
        "sealed events are version 2: {versions:?}"
    );
    let snapshots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM snapshots WHERE stream_id = ANY($1)")
            .bind([erin, pot])
            .fetch_one(&pool)
            .await
            .expect("snapshots");
    assert_eq!(snapshots, 2, "the account and the pot have snapshots");
    let view = app.get(&format!("/v1/accounts/{erin}"), &admin).await;
    assert_eq!(view.body["email"], EMAIL, "{:?}", view.body);
    assert_eq!(view.body["display_name"], NEW_NAME);
    assert_eq!(view.body["birth_date"], BIRTH);
    let history = app
        .get(&format!("/v1/audit/streams/account/{erin}"), &auditor)
        .await;
    assert_eq!(history.status, StatusCode::OK);
    assert!(
        history.body.to_string().contains(EMAIL) && history.body.to_string().contains(DOCUMENT),
        "an auditor reads the history in the clear before erasure: {}",
        history.body
    );
    let pot_view = app.get(&format!("/v1/pots/{pot}"), &owner_token).await;
    assert!(
        pot_view.body.to_string().contains(MESSAGE),
        "{}",
        pot_view.body
    );

    // Erin's wallet is empty after her contributions: she closes, and an admin erases her
    // personal data.
    assert_eq!(app.wallet_view(erin_wallet).await["balance"], 0);
    let closed = app
        .post(
            &format!("/v1/accounts/{erin}/close"),
            &erin_token,
            json!({"reason": "leaving"}),
        )
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
    seal_chain(&pool).await;
    let stored_before: Vec<(i64, String)> =
        sqlx::query_as("SELECT position, payload::text FROM events ORDER BY position")
            .fetch_all(&pool)
            .await
            .expect("events");
    let balances_before: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, balance FROM wallets ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("balances");
    let stats_before = app.get("/v1/stats", &admin).await.body;

    let erased = erase(&app, erin, &admin).await;
    assert_eq!(erased.status, StatusCode::OK, "{:?}", erased.body);
    let (key, erased_at): (Option<Vec<u8>>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT key, erased_at FROM personal_data_keys WHERE account_id = $1")
            .bind(erin)
            .fetch_one(&pool)
            .await
            .expect("the key row");
    assert!(key.is_none() && erased_at.is_some(), "the key is deleted");
    let dave_key: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT key FROM personal_data_keys WHERE account_id = $1")
            .bind(dave)
            .fetch_one(&pool)
            .await
            .expect("dave's key");
    assert!(dave_key.is_some(), "other accounts keep their keys");

    // The stored events are exactly as they were: only the key is gone.
    let stored_after: Vec<(i64, String)> = sqlx::query_as(
        "SELECT position, payload::text FROM events WHERE position <= $1 ORDER BY position",
    )
    .bind(stored_before.last().map(|e| e.0).unwrap_or(0))
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(stored_after, stored_before);

    // Read models show the data as erased.
    let view = app.get(&format!("/v1/accounts/{erin}"), &admin).await;
    assert_eq!(view.body["personal_data_erased"], true, "{:?}", view.body);
    for f in ["email", "display_name", "birth_date"] {
        assert_eq!(view.body[f], Value::Null, "{f}: {:?}", view.body);
    }
    let pot_view = app.get(&format!("/v1/pots/{pot}"), &owner_token).await;
    let messages: Vec<&Value> = pot_view.body["contributions"]
        .as_array()
        .expect("contributions")
        .iter()
        .map(|c| &c["message"])
        .collect();
    assert!(messages.contains(&&json!("[erased]")), "{messages:?}");
    assert!(
        messages.contains(&&json!("from Dave")),
        "others' messages stay: {messages:?}"
    );

    // Audit answers show it as erased: a stream's history, the global log, as-of.
    let history = app
        .get(&format!("/v1/audit/streams/account/{erin}"), &auditor)
        .await;
    assert_eq!(history.status, StatusCode::OK);
    assert_eq!(
        contains_any(&history.body, SECRETS),
        None,
        "{}",
        history.body
    );
    assert!(
        history.body.to_string().contains("[erased]"),
        "{}",
        history.body
    );
    let log = app.get("/v1/audit/events?limit=500", &auditor).await;
    assert_eq!(log.status, StatusCode::OK);
    assert_eq!(contains_any(&log.body, SECRETS), None);
    assert!(
        log.body.to_string().contains("from Dave"),
        "others stay readable"
    );
    let as_of = app
        .get(&format!("/v1/accounts/{erin}/as-of?version=3"), &auditor)
        .await;
    assert_eq!(as_of.status, StatusCode::OK, "{:?}", as_of.body);
    assert_eq!(contains_any(&as_of.body, SECRETS), None, "{}", as_of.body);
    let pot_as_of = app
        .get(&format!("/v1/pots/{pot}/as-of?version=3"), &auditor)
        .await;
    assert_eq!(pot_as_of.status, StatusCode::OK, "{:?}", pot_as_of.body);
    assert_eq!(contains_any(&pot_as_of.body, SECRETS), None);

    // Nothing anywhere in the database holds it, rebuilt read models included.
    caught_up(&pool).await;
    assert_rebuilds_match(&pool).await;
    let leaks = rows_containing(&pool, SECRETS).await;
    assert!(leaks.is_empty(), "personal data still readable: {leaks:?}");

    // Balances, totals, replay and the chain are unchanged.
    let balances_after: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, balance FROM wallets ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("balances");
    assert_eq!(balances_after, balances_before);
    let stats_after = app.get("/v1/stats", &admin).await.body;
    assert_eq!(stats_after, stats_before);
    seal_chain(&pool).await;
    let mut conn = pool.acquire().await.expect("conn");
    let report = verify(&mut conn, |_| {}).await.expect("verify");
    assert!(report.ok, "the chain verifies after erasure: {report:?}");
    // Replay of the erased account (a command loads it): a clear refusal, not a failure.
    let again = erase(&app, erin, &admin).await;
    assert_eq!(
        again.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        again.body
    );
    // The pot (whose snapshot holds Erin's sealed message) still takes commands.
    let closed_pot = app
        .post(&format!("/v1/pots/{pot}/close"), &owner_token, json!({}))
        .await;
    assert_eq!(closed_pot.status, StatusCode::OK, "{:?}", closed_pot.body);

    // The e-mail address is free again, and a new account gets a key of its own.
    let again_token = app.token("gdpr-erin-2", &[Role::Customer]);
    let reopened = app
        .post(
            "/v1/accounts",
            &again_token,
            json!({"email": EMAIL, "display_name": "Erin again"}),
        )
        .await;
    assert_eq!(reopened.status, StatusCode::CREATED, "{:?}", reopened.body);
}
