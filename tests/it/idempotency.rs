//! Idempotency over HTTP: a command repeated with its `Idempotency-Key` (concurrently or later)
//! has one effect and gets the first answer back; a key reused for another request is refused;
//! keys belong to their subject; a deposit's `external_ref` deduplicates without any key.

use crate::support::{Answer, TestApp};
use axum::http::{Method, StatusCode};
use commands::Role;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use uuid::Uuid;

/// POST `body` to `path` with `key` as the Idempotency-Key.
async fn post_keyed(app: &TestApp, path: &str, token: &str, key: &str, body: &Value) -> Answer {
    app.send(
        Method::POST,
        path,
        Some(token),
        Some(body.clone()),
        &[("idempotency-key", key)],
    )
    .await
}

fn assert_problem(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status.as_u16(), status, "{:?}", a.body);
    let ct = a
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type {ct}"
    );
    assert_eq!(a.body["code"], code, "{:?}", a.body);
    assert_eq!(a.body["status"], status, "{:?}", a.body);
    for f in ["type", "title", "detail"] {
        assert!(a.body[f].is_string(), "no {f}: {:?}", a.body);
    }
}

fn balance(view: &Value) -> i64 {
    view["balance"].as_i64().expect("a balance")
}

const OWNERS: usize = 4;
const COMMANDS: usize = 500;
const FUNDED: i64 = 1_000_000;
const IN_FLIGHT: usize = 16;

fn amount_of(i: usize) -> i64 {
    (i % 7 + 1) as i64 * 100 + i as i64
}

/// The test: 500 transfers, each sent three times with its key (two at once, one
/// after), have exactly one effect each and three identical answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_commands_sent_three_times_take_effect_once() {
    let app = Arc::new(TestApp::new().await);
    // A few funded EUR wallets: transfers go round the ring 0 -> 1 -> 2 -> 3 -> 0, each issued by
    // the source wallet's owner.
    let mut owners = Vec::new();
    for i in 0..OWNERS {
        let (_, token) = app.customer(&format!("ring-{i}")).await;
        let wallet = app.wallet(&token, "EUR").await;
        assert_eq!(app.deposit(wallet, FUNDED).await.status, StatusCode::OK);
        owners.push((token, wallet));
    }
    let owners = Arc::new(owners);
    let before = app.event_count().await;
    let started = Instant::now();

    let mut answers: Vec<Option<[Answer; 3]>> = (0..COMMANDS).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut collect = |done: Result<(usize, [Answer; 3]), tokio::task::JoinError>| {
        let (i, a) = done.expect("a command task");
        answers[i] = Some(a);
    };
    for i in 0..COMMANDS {
        while set.len() >= IN_FLIGHT {
            if let Some(done) = set.join_next().await {
                collect(done);
            }
        }
        let app = app.clone();
        let owners = owners.clone();
        set.spawn(async move {
            let (from, to) = (i % OWNERS, (i + 1) % OWNERS);
            let token = &owners[from].0;
            let key = format!("transfer-{i}-{}", Uuid::now_v7());
            let body = json!({
                "from_wallet": owners[from].1,
                "to_wallet": owners[to].1,
                "amount": amount_of(i),
                "memo": format!("transfer {i}"),
            });
            let send = || post_keyed(&app, "/v1/transfers", token, &key, &body);
            let (a, b) = tokio::join!(send(), send());
            let c = send().await;
            (i, [a, b, c])
        });
    }
    while let Some(done) = set.join_next().await {
        collect(done);
    }
    let elapsed = started.elapsed();

    let mut ids = HashSet::new();
    for (i, a) in answers.iter().enumerate() {
        let [a, b, c] = a.as_ref().expect("every command answered");
        assert_eq!(a.status, StatusCode::CREATED, "command {i}: {:?}", a.body);
        for (n, other) in [(2, b), (3, c)] {
            assert_eq!(
                other.status, a.status,
                "command {i}, send {n}: {:?} vs {:?}",
                other.body, a.body
            );
            assert_eq!(
                other.body, a.body,
                "command {i}, send {n}: the answer differs from the first"
            );
        }
        assert!(
            a.body["version"].is_i64() && a.body["position"].is_i64(),
            "command {i}: {:?}",
            a.body
        );
        assert!(
            ids.insert(a.id()),
            "command {i}: transfer id {} seen twice",
            a.id()
        );
    }
    assert_eq!(ids.len(), COMMANDS);

    let after = app.event_count().await;
    assert_eq!(
        after - before,
        2 * COMMANDS as i64,
        "each transfer appends exactly TransferSent + TransferReceived"
    );

    let mut expected = [FUNDED; OWNERS];
    let mut moves = [0_i64; OWNERS];
    for i in 0..COMMANDS {
        let (from, to) = (i % OWNERS, (i + 1) % OWNERS);
        expected[from] -= amount_of(i);
        expected[to] += amount_of(i);
        moves[from] += 1;
        moves[to] += 1;
    }
    for (n, (_, wallet)) in owners.iter().enumerate() {
        let view = app.wallet_view(*wallet).await;
        assert_eq!(balance(&view), expected[n], "wallet {n}");
        // Opened, funded, then one event per transfer it took part in.
        assert_eq!(view["version"], 2 + moves[n], "wallet {n}");
    }
    let total: i64 = expected.iter().sum();
    assert_eq!(
        total,
        FUNDED * OWNERS as i64,
        "transfers create or destroy no money"
    );
    eprintln!("{COMMANDS} commands x 3 sends ({IN_FLIGHT} in flight): {elapsed:?}");
}

/// Two funded customers with EUR wallets: (alice token, alice wallet, bob token, bob wallet).
async fn two_customers(app: &TestApp, funds: i64) -> (String, Uuid, String, Uuid) {
    let (_, alice) = app.customer("alice").await;
    let wa = app.wallet(&alice, "EUR").await;
    let (_, bob) = app.customer("bob").await;
    let wb = app.wallet(&bob, "EUR").await;
    if funds > 0 {
        assert_eq!(app.deposit(wa, funds).await.status, StatusCode::OK);
        assert_eq!(app.deposit(wb, funds).await.status, StatusCode::OK);
    }
    (alice, wa, bob, wb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_key_with_another_request_is_422_and_appends_nothing() {
    let app = TestApp::new().await;
    let (alice, wa, _, wb) = two_customers(&app, 10_000).await;
    let body = json!({"from_wallet": wa, "to_wallet": wb, "amount": 100});
    let first = post_keyed(&app, "/v1/transfers", &alice, "key-1", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let count = app.event_count().await;

    // Another amount, another memo, another destination order: all other requests.
    for other in [
        json!({"from_wallet": wa, "to_wallet": wb, "amount": 200}),
        json!({"from_wallet": wa, "to_wallet": wb, "amount": 100, "memo": "now with a memo"}),
    ] {
        let a = post_keyed(&app, "/v1/transfers", &alice, "key-1", &other).await;
        assert_problem(&a, 422, "idempotency_key_reused");
    }
    // The same key on another route.
    let w = post_keyed(
        &app,
        &format!("/v1/wallets/{wa}/withdrawals"),
        &alice,
        "key-1",
        &json!({"amount": 100, "external_ref": "w-1"}),
    )
    .await;
    assert_problem(&w, 422, "idempotency_key_reused");
    assert_eq!(
        app.event_count().await,
        count,
        "a refused reuse appends nothing"
    );
    assert_eq!(balance(&app.wallet_view(wa).await), 9_900);
    assert_eq!(balance(&app.wallet_view(wb).await), 10_100);

    // The original request still replays its first answer.
    let again = post_keyed(&app, "/v1/transfers", &alice, "key-1", &body).await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(app.event_count().await, count);

    // Two different requests racing under one fresh key: exactly one takes effect.
    let b1 = json!({"from_wallet": wa, "to_wallet": wb, "amount": 1_000});
    let b2 = json!({"from_wallet": wa, "to_wallet": wb, "amount": 2_000});
    let (r1, r2) = tokio::join!(
        post_keyed(&app, "/v1/transfers", &alice, "key-2", &b1),
        post_keyed(&app, "/v1/transfers", &alice, "key-2", &b2)
    );
    let (won, lost, moved) = if r1.status == StatusCode::CREATED {
        (&r1, &r2, 1_000)
    } else {
        (&r2, &r1, 2_000)
    };
    assert_eq!(
        won.status,
        StatusCode::CREATED,
        "{:?} / {:?}",
        r1.body,
        r2.body
    );
    assert_problem(lost, 422, "idempotency_key_reused");
    assert_eq!(app.event_count().await, count + 2);
    assert_eq!(balance(&app.wallet_view(wa).await), 9_900 - moved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_command_replays_its_rejection_even_after_things_change() {
    let app = TestApp::new().await;
    let (alice, wa, _, wb) = two_customers(&app, 100).await;
    let withdraw = json!({"amount": 500, "external_ref": "out-1"});
    let path = format!("/v1/wallets/{wa}/withdrawals");
    let first = post_keyed(&app, &path, &alice, "withdraw-1", &withdraw).await;
    assert_problem(&first, 422, "insufficient_funds");
    let transfer = json!({"from_wallet": wa, "to_wallet": wb, "amount": 500});
    let first_t = post_keyed(&app, "/v1/transfers", &alice, "transfer-1", &transfer).await;
    assert_problem(&first_t, 422, "insufficient_funds");

    // Now the money is there.
    assert_eq!(app.deposit(wa, 10_000).await.status, StatusCode::OK);
    let count = app.event_count().await;

    let again = post_keyed(&app, &path, &alice, "withdraw-1", &withdraw).await;
    assert_eq!(again.status, first.status);
    assert_eq!(
        again.body, first.body,
        "the same rejection, not a new decision"
    );
    assert!(again
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json")));
    let again_t = post_keyed(&app, "/v1/transfers", &alice, "transfer-1", &transfer).await;
    assert_eq!(
        (again_t.status, &again_t.body),
        (first_t.status, &first_t.body)
    );
    assert_eq!(
        app.event_count().await,
        count,
        "a replayed rejection appends nothing"
    );
    assert_eq!(balance(&app.wallet_view(wa).await), 10_100);

    // Under a new key (or none) the same request is decided afresh and now succeeds.
    let fresh = post_keyed(&app, &path, &alice, "withdraw-2", &withdraw).await;
    assert_eq!(fresh.status, StatusCode::OK, "{:?}", fresh.body);
    let fresh_t = app.post("/v1/transfers", &alice, transfer.clone()).await;
    assert_eq!(fresh_t.status, StatusCode::CREATED, "{:?}", fresh_t.body);
    assert_eq!(balance(&app.wallet_view(wa).await), 9_100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_belong_to_their_subject() {
    let app = TestApp::new().await;
    let (alice, wa, bob, wb) = two_customers(&app, 10_000).await;
    let count = app.event_count().await;
    let key = "shared-key";
    let a1 = post_keyed(
        &app,
        "/v1/transfers",
        &alice,
        key,
        &json!({"from_wallet": wa, "to_wallet": wb, "amount": 100}),
    )
    .await;
    assert_eq!(a1.status, StatusCode::CREATED, "{:?}", a1.body);
    let b1 = post_keyed(
        &app,
        "/v1/transfers",
        &bob,
        key,
        &json!({"from_wallet": wb, "to_wallet": wa, "amount": 30}),
    )
    .await;
    assert_eq!(
        b1.status,
        StatusCode::CREATED,
        "bob's key is not alice's: {:?}",
        b1.body
    );
    assert_ne!(a1.id(), b1.id());
    assert_eq!(
        app.event_count().await,
        count + 4,
        "both transfers took effect"
    );
    assert_eq!(balance(&app.wallet_view(wa).await), 9_930);
    assert_eq!(balance(&app.wallet_view(wb).await), 10_070);

    // Each subject's repeat gets its own first answer.
    let a2 = post_keyed(
        &app,
        "/v1/transfers",
        &alice,
        key,
        &json!({"from_wallet": wa, "to_wallet": wb, "amount": 100}),
    )
    .await;
    let b2 = post_keyed(
        &app,
        "/v1/transfers",
        &bob,
        key,
        &json!({"from_wallet": wb, "to_wallet": wa, "amount": 30}),
    )
    .await;
    assert_eq!((a2.status, &a2.body), (a1.status, &a1.body));
    assert_eq!((b2.status, &b2.body), (b1.status, &b1.body));
    assert_eq!(app.event_count().await, count + 4);

    // The same key and the very same deposit from two payment integrations: two subjects.
    let psp1 = app.token("psp-one", &[Role::Payments]);
    let psp2 = app.token("psp-two", &[Role::Payments]);
    let d1 = post_keyed(
        &app,
        &format!("/v1/wallets/{wa}/deposits"),
        &psp1,
        key,
        &json!({"amount": 5, "external_ref": "p1"}),
    )
    .await;
    let d2 = post_keyed(
        &app,
        &format!("/v1/wallets/{wa}/deposits"),
        &psp2,
        key,
        &json!({"amount": 7, "external_ref": "p2"}),
    )
    .await;
    assert_eq!(d1.status, StatusCode::OK, "{:?}", d1.body);
    assert_eq!(d2.status, StatusCode::OK, "{:?}", d2.body);
    assert_eq!(balance(&app.wallet_view(wa).await), 9_942);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_external_ref_is_a_no_op_returning_the_first_result() {
    let app = TestApp::new().await;
    let (_, wa, _, wb) = two_customers(&app, 0).await;
    let psp = app.token("psp", &[Role::Payments]);
    let path = format!("/v1/wallets/{wa}/deposits");
    let first = app
        .post(
            &path,
            &psp,
            json!({"amount": 500, "external_ref": "psp-ref-1"}),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.id(), wa, "a deposit answers with the wallet");
    assert_eq!(first.body["version"], 2);
    let count = app.event_count().await;

    // The same request again, then the same reference with another amount, from another
    // payments subject, and from an admin: all the first deposit.
    let psp2 = app.token("psp-2", &[Role::Payments]);
    let admin = app.token("admin", &[Role::Admin]);
    for (who, token, amount) in [
        ("psp", &psp, 500),
        ("psp, another amount", &psp, 900),
        ("another psp", &psp2, 500),
        ("admin", &admin, 500),
    ] {
        let again = app
            .post(
                &path,
                token,
                json!({"amount": amount, "external_ref": "psp-ref-1"}),
            )
            .await;
        assert_eq!(again.status, first.status, "{who}: {:?}", again.body);
        assert_eq!(
            again.body, first.body,
            "{who}: the first result (same id, version, position)"
        );
    }
    assert_eq!(app.event_count().await, count, "repeats append nothing");
    let view = app.wallet_view(wa).await;
    assert_eq!(balance(&view), 500);
    assert_eq!(view["version"], 2);

    // Concurrent repeats of a new reference: one deposit, one answer.
    let sends = (0..8).map(|_| {
        app.post(
            &path,
            &psp,
            json!({"amount": 250, "external_ref": "psp-ref-2"}),
        )
    });
    let answers = futures::future::join_all(sends).await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.body, answers[0].body, "concurrent repeats answer alike");
    }
    assert_eq!(app.event_count().await, count + 1);
    assert_eq!(balance(&app.wallet_view(wa).await), 750);

    // References are per wallet: the same one on another wallet is another deposit.
    let other = app
        .post(
            &format!("/v1/wallets/{wb}/deposits"),
            &psp,
            json!({"amount": 500, "external_ref": "psp-ref-1"}),
        )
        .await;
    assert_eq!(other.status, StatusCode::OK, "{:?}", other.body);
    assert_eq!(other.id(), wb);
    assert_eq!(balance(&app.wallet_view(wb).await), 500);
    assert_eq!(app.event_count().await, count + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creating_commands_replay_201_with_the_same_id() {
    let app = TestApp::new().await;
    let carol = app.token("carol", &[Role::Customer]);
    let open = json!({"email": "carol@example.com", "display_name": "Carol"});
    let (a1, a2) = tokio::join!(
        post_keyed(&app, "/v1/accounts", &carol, "open-1", &open),
        post_keyed(&app, "/v1/accounts", &carol, "open-1", &open)
    );
    assert_eq!(a1.status, StatusCode::CREATED, "{:?}", a1.body);
    assert_eq!(
        (a2.status, &a2.body),
        (a1.status, &a1.body),
        "a replay, not 409 account_exists"
    );
    let a3 = post_keyed(&app, "/v1/accounts", &carol, "open-1", &open).await;
    assert_eq!((a3.status, &a3.body), (a1.status, &a1.body));
    // Without the key, the second open is a real second attempt.
    let a4 = app.post("/v1/accounts", &carol, open.clone()).await;
    assert_problem(&a4, 409, "account_exists");

    let count = app.event_count().await;
    let w1 = post_keyed(
        &app,
        "/v1/wallets",
        &carol,
        "wallet-1",
        &json!({"currency": "EUR"}),
    )
    .await;
    assert_eq!(w1.status, StatusCode::CREATED, "{:?}", w1.body);
    let w2 = post_keyed(
        &app,
        "/v1/wallets",
        &carol,
        "wallet-1",
        &json!({"currency": "EUR"}),
    )
    .await;
    assert_eq!((w2.status, &w2.body), (w1.status, &w1.body));
    assert_eq!(app.event_count().await, count + 1);
    // A rejection stored under a key replays too (409 here).
    let w3 = post_keyed(
        &app,
        "/v1/wallets",
        &carol,
        "wallet-2",
        &json!({"currency": "EUR"}),
    )
    .await;
    assert_problem(&w3, 409, "wallet_exists");
    let w4 = post_keyed(
        &app,
        "/v1/wallets",
        &carol,
        "wallet-2",
        &json!({"currency": "EUR"}),
    )
    .await;
    assert_eq!((w4.status, &w4.body), (w3.status, &w3.body));
    assert_eq!(app.event_count().await, count + 1);
}
