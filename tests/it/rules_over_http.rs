//! The Account and Wallet rules of DOMAIN.md end to end over HTTP, with the exact statuses and
//! codes of API.md: opening, profiles, KYC, suspension, closing and erasure; wallets, deposits,
//! withdrawals, freezing, closing and transfers; ETag and If-Match; health and readiness.

use crate::support::{Answer, TestApp};
use axum::http::{Method, StatusCode};
use commands::Role;
use serde_json::{json, Value};
use uuid::Uuid;

fn assert_problem(a: &Answer, status: u16, code: &str) {
    assert_eq!(
        a.status.as_u16(),
        status,
        "expected {status} {code}: {:?}",
        a.body
    );
    let ct = a
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type {ct}: {:?}",
        a.body
    );
    assert_eq!(a.body["code"], code, "{:?}", a.body);
    assert_eq!(a.body["status"], status, "{:?}", a.body);
    for f in ["type", "title", "detail"] {
        assert!(a.body[f].is_string(), "no {f}: {:?}", a.body);
    }
}

/// A command answer: the status and `{id, version, position}` and nothing else.
fn assert_command(a: &Answer, status: StatusCode) -> (Uuid, i64, i64) {
    assert_eq!(a.status, status, "{:?}", a.body);
    let obj = a.body.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["id", "position", "version"], "{:?}", a.body);
    let version = a.body["version"].as_i64().expect("an integer version");
    let position = a.body["position"].as_i64().expect("an integer position");
    assert!(version >= 1 && position >= 1, "{:?}", a.body);
    (a.id(), version, position)
}

/// The position of the last event in the log.
async fn last_position(app: &TestApp) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .expect("max position")
        .unwrap_or(0)
}

fn etag(a: &Answer) -> String {
    a.headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("an ETag")
        .to_owned()
}

fn balance(view: &Value) -> i64 {
    view["balance"].as_i64().expect("a balance")
}

async fn account_view(app: &TestApp, id: Uuid) -> Value {
    let admin = app.token("admin", &[Role::Admin]);
    let a = app.get(&format!("/v1/accounts/{id}"), &admin).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    a.body
}

async fn withdraw(app: &TestApp, token: &str, wallet: Uuid, amount: i64) -> Answer {
    let r = format!("out-{}", Uuid::now_v7());
    app.post(
        &format!("/v1/wallets/{wallet}/withdrawals"),
        token,
        json!({"amount": amount, "external_ref": r}),
    )
    .await
}

async fn transfer(app: &TestApp, token: &str, from: Uuid, to: Uuid, amount: i64) -> Answer {
    app.post(
        "/v1/transfers",
        token,
        json!({"from_wallet": from, "to_wallet": to, "amount": amount}),
    )
    .await
}

/// Runs `f` and checks it appended nothing.
macro_rules! appends_nothing {
    ($app:expr, $e:expr) => {{
        let before = $app.event_count().await;
        let out = $e;
        assert_eq!(
            $app.event_count().await,
            before,
            "appended events: {}",
            stringify!($e)
        );
        out
    }};
}

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opening_an_account_answers_201_and_uniqueness_is_enforced() {
    let app = TestApp::new().await;
    let ann = app.token("ann", &[Role::Customer]);
    let a = app
        .post(
            "/v1/accounts",
            &ann,
            json!({"email": "Ann@Example.com", "display_name": "Ann", "birth_date": "1990-05-01", "country": "DE"}),
        )
        .await;
    let (id, version, position) = assert_command(&a, StatusCode::CREATED);
    assert_eq!(version, 1);
    assert_eq!(
        position,
        last_position(&app).await,
        "position is the log position of the event written"
    );
    assert_eq!(id.get_version_num(), 7, "ids are UUIDv7");

    let got = app.get(&format!("/v1/accounts/{id}"), &ann).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.body["id"], json!(id));
    assert_eq!(got.body["email"], "Ann@Example.com");
    assert_eq!(got.body["display_name"], "Ann");
    assert_eq!(got.body["birth_date"], "1990-05-01");
    assert_eq!(got.body["country"], "DE");
    assert_eq!(got.body["status"], "active");
    assert_eq!(got.body["kyc_status"], "none");
    assert_eq!(got.body["version"], 1);
    assert_eq!(etag(&got), "\"1\"");

    // One account per subject.
    let again = appends_nothing!(
        app,
        app.post(
            "/v1/accounts",
            &ann,
            json!({"email": "ann2@example.com", "display_name": "Ann 2"})
        )
        .await
    );
    assert_problem(&again, 409, "account_exists");
    // E-mail addresses are unique case-insensitively.
    let other = app.token("ann-clone", &[Role::Customer]);
    let clash = appends_nothing!(
        app,
        app.post(
            "/v1/accounts",
            &other,
            json!({"email": "aNN@example.COM", "display_name": "Clone"})
        )
        .await
    );
    assert_problem(&clash, 409, "email_taken");
    // The refused attempts claimed nothing: the same subject opens with a free address.
    let ok = app
        .post(
            "/v1/accounts",
            &other,
            json!({"email": "clone@example.com", "display_name": "Clone"}),
        )
        .await;
    assert_command(&ok, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_opens_an_account_for_another_subject() {
    let app = TestApp::new().await;
    let admin = app.token("admin", &[Role::Admin]);
    let a = app
        .post(
            "/v1/accounts",
            &admin,
            json!({"email": "dora@example.com", "display_name": "Dora", "subject": "dora"}),
        )
        .await;
    let (id, version, _) = assert_command(&a, StatusCode::CREATED);
    assert_eq!(version, 1);

    // The account is bound to dora, who can now use it.
    let dora = app.token("dora", &[Role::Customer]);
    let got = app.get(&format!("/v1/accounts/{id}"), &dora).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.body["subject"], "dora");
    let wallet = app.wallet(&dora, "EUR").await;
    assert_eq!(app.wallet_view(wallet).await["owner"], json!(id));
    let again = app
        .post(
            "/v1/accounts",
            &dora,
            json!({"email": "dora2@example.com", "display_name": "Dora"}),
        )
        .await;
    assert_problem(&again, 409, "account_exists");
    let again = app
        .post(
            "/v1/accounts",
            &admin,
            json!({"email": "dora3@example.com", "display_name": "Dora", "subject": "dora"}),
        )
        .await;
    assert_problem(&again, 409, "account_exists");

    // An admin may open a wallet for another account too.
    let w = app
        .post(
            "/v1/wallets",
            &admin,
            json!({"currency": "USD", "owner": id}),
        )
        .await;
    let (usd, _, _) = assert_command(&w, StatusCode::CREATED);
    let view = app.wallet_view(usd).await;
    assert_eq!(view["owner"], json!(id));
    assert_eq!(view["currency"], "USD");

    // A customer cannot bind another subject.
    let eve = app.token("eve", &[Role::Customer]);
    let no = appends_nothing!(
        app,
        app.post(
            "/v1/accounts",
            &eve,
            json!({"email": "frank@example.com", "display_name": "F", "subject": "frank"})
        )
        .await
    );
    assert_problem(&no, 403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owner_updates_the_profile() {
    let app = TestApp::new().await;
    let (id, token) = app.customer("paula").await;
    let a = app
        .send(
            Method::PATCH,
            &format!("/v1/accounts/{id}/profile"),
            Some(&token),
            Some(json!({"display_name": "Paula P."})),
            &[],
        )
        .await;
    let (rid, version, position) = assert_command(&a, StatusCode::OK);
    assert_eq!((rid, version), (id, 2));
    assert_eq!(position, last_position(&app).await);
    let a = app
        .send(
            Method::PATCH,
            &format!("/v1/accounts/{id}/profile"),
            Some(&token),
            Some(json!({"preferences": {"birthday_pot": true}})),
            &[],
        )
        .await;
    assert_eq!(assert_command(&a, StatusCode::OK).1, 3);
    let view = account_view(&app, id).await;
    assert_eq!(
        view["display_name"], "Paula P.",
        "an absent field is left as it was"
    );
    assert_eq!(view["preferences"]["birthday_pot"], true);
    assert_eq!(view["version"], 3);

    let (_, other) = app.customer("quentin").await;
    let no = appends_nothing!(
        app,
        app.send(
            Method::PATCH,
            &format!("/v1/accounts/{id}/profile"),
            Some(&other),
            Some(json!({"display_name": "Q"})),
            &[]
        )
        .await
    );
    assert_problem(&no, 403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kyc_is_submitted_by_the_owner_and_decided_by_an_admin() {
    let app = TestApp::new().await;
    let admin = app.token("admin", &[Role::Admin]);
    let (id, token) = app.customer("kim").await;
    let kyc = |id: Uuid| format!("/v1/accounts/{id}/kyc");

    // Nothing to decide yet.
    let early = appends_nothing!(
        app,
        app.post(&format!("{}/approve", kyc(id)), &admin, json!({}))
            .await
    );
    assert_problem(&early, 422, "invalid_state");

    let s = app
        .post(&kyc(id), &token, json!({"document_ref": "passport-123"}))
        .await;
    assert_eq!(assert_command(&s, StatusCode::OK).1, 2);
    assert_eq!(account_view(&app, id).await["kyc_status"], "pending");
    // The owner cannot approve their own.
    let own = appends_nothing!(
        app,
        app.post(&format!("{}/approve", kyc(id)), &token, json!({}))
            .await
    );
    assert_problem(&own, 403, "forbidden");
    let ok = app
        .send(
            Method::POST,
            &format!("{}/approve", kyc(id)),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(assert_command(&ok, StatusCode::OK).1, 3);
    assert_eq!(account_view(&app, id).await["kyc_status"], "approved");
    // Not again: approved is final for submissions and decisions.
    let resubmit = appends_nothing!(
        app,
        app.post(&kyc(id), &token, json!({"document_ref": "passport-456"}))
            .await
    );
    assert_problem(&resubmit, 422, "invalid_state");
    let reapprove = appends_nothing!(
        app,
        app.post(&format!("{}/approve", kyc(id)), &admin, json!({}))
            .await
    );
    assert_problem(&reapprove, 422, "invalid_state");

    // Rejection, then a new submission is allowed.
    let (id2, token2) = app.customer("lee").await;
    assert_command(
        &app.post(&kyc(id2), &token2, json!({"document_ref": "blurry-photo"}))
            .await,
        StatusCode::OK,
    );
    let rej = app
        .post(
            &format!("{}/reject", kyc(id2)),
            &admin,
            json!({"reason": "unreadable"}),
        )
        .await;
    assert_command(&rej, StatusCode::OK);
    assert_eq!(account_view(&app, id2).await["kyc_status"], "rejected");
    let rej2 = appends_nothing!(
        app,
        app.post(
            &format!("{}/reject", kyc(id2)),
            &admin,
            json!({"reason": "again"})
        )
        .await
    );
    assert_problem(&rej2, 422, "invalid_state");
    assert_command(
        &app.post(&kyc(id2), &token2, json!({"document_ref": "sharp-photo"}))
            .await,
        StatusCode::OK,
    );
    assert_eq!(account_view(&app, id2).await["kyc_status"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn withdrawals_over_1000_need_approved_kyc() {
    let app = TestApp::new().await;
    let admin = app.token("admin", &[Role::Admin]);
    let (id, token) = app.customer("wanda").await;
    let wallet = app.wallet(&token, "EUR").await;
    assert_eq!(app.deposit(wallet, 500_000).await.status, StatusCode::OK);

    let big = appends_nothing!(app, withdraw(&app, &token, wallet, 100_001).await);
    assert_problem(&big, 422, "kyc_required");
    // 1,000.00 itself is not over the limit.
    assert_command(
        &withdraw(&app, &token, wallet, 100_000).await,
        StatusCode::OK,
    );
    // A pending submission is not an approval.
    assert_command(
        &app.post(
            &format!("/v1/accounts/{id}/kyc"),
            &token,
            json!({"document_ref": "id-card"}),
        )
        .await,
        StatusCode::OK,
    );
    let pending = appends_nothing!(app, withdraw(&app, &token, wallet, 100_001).await);
    assert_problem(&pending, 422, "kyc_required");
    assert_command(
        &app.post(&format!("/v1/accounts/{id}/kyc/approve"), &admin, json!({}))
            .await,
        StatusCode::OK,
    );
    assert_command(
        &withdraw(&app, &token, wallet, 100_001).await,
        StatusCode::OK,
    );
    assert_eq!(
        balance(&app.wallet_view(wallet).await),
        500_000 - 100_000 - 100_001
    );

    // The limit is 1,000 in the wallet's currency: 1,000 minor units of JPY.
    let (_, yuki) = app.customer("yuki").await;
    let yen = app.wallet(&yuki, "JPY").await;
    assert_eq!(app.deposit(yen, 5_000).await.status, StatusCode::OK);
    let over = appends_nothing!(app, withdraw(&app, &yuki, yen, 1_001).await);
    assert_problem(&over, 422, "kyc_required");
    assert_command(&withdraw(&app, &yuki, yen, 1_000).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suspended_account_issues_no_command_and_receives_no_transfer() {
    let app = TestApp::new().await;
    let admin = app.token("admin", &[Role::Admin]);
    let (_, alice) = app.customer("alice").await;
    let wa = app.wallet(&alice, "EUR").await;
    let (bob_id, bob) = app.customer("bob").await;
    let wb = app.wallet(&bob, "EUR").await;
    assert_eq!(app.deposit(wa, 10_000).await.status, StatusCode::OK);
    assert_eq!(app.deposit(wb, 10_000).await.status, StatusCode::OK);

    let s = app
        .post(
            &format!("/v1/accounts/{bob_id}/suspend"),
            &admin,
            json!({"reason": "fraud check"}),
        )
        .await;
    assert_eq!(assert_command(&s, StatusCode::OK).0, bob_id);
    assert_eq!(account_view(&app, bob_id).await["status"], "suspended");

    // Bob's commands are refused as not allowed for this subject.
    let before = app.event_count().await;
    for (what, a) in [
        ("withdraw", withdraw(&app, &bob, wb, 100).await),
        ("transfer out", transfer(&app, &bob, wb, wa, 100).await),
        (
            "open a wallet",
            app.post("/v1/wallets", &bob, json!({"currency": "USD"}))
                .await,
        ),
        (
            "profile",
            app.send(
                Method::PATCH,
                &format!("/v1/accounts/{bob_id}/profile"),
                Some(&bob),
                Some(json!({"display_name": "B"})),
                &[],
            )
            .await,
        ),
        (
            "submit KYC",
            app.post(
                &format!("/v1/accounts/{bob_id}/kyc"),
                &bob,
                json!({"document_ref": "d"}),
            )
            .await,
        ),
        (
            "close the wallet",
            app.post(&format!("/v1/wallets/{wb}/close"), &bob, json!({}))
                .await,
        ),
    ] {
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{what}: {:?}", a.body);
        // 403 as API.md says; the code is the product's name for the reason.
        assert_problem(&a, 403, "account_not_active");
    }
    // Nobody can pay him.
    let to_bob = transfer(&app, &alice, wa, wb, 100).await;
    assert_problem(&to_bob, 422, "invalid_state");
    assert_eq!(
        app.event_count().await,
        before,
        "nothing appended while suspended"
    );
    assert_eq!(balance(&app.wallet_view(wa).await), 10_000);
    assert_eq!(balance(&app.wallet_view(wb).await), 10_000);
    let twice = appends_nothing!(
        app,
        app.post(
            &format!("/v1/accounts/{bob_id}/suspend"),
            &admin,
            json!({"reason": "again"})
        )
        .await
    );
    assert_problem(&twice, 422, "invalid_state");

    // Reinstated, everything works again.
    assert_command(
        &app.post(
            &format!("/v1/accounts/{bob_id}/reinstate"),
            &admin,
            json!({}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(account_view(&app, bob_id).await["status"], "active");
    assert_command(&withdraw(&app, &bob, wb, 100).await, StatusCode::OK);
    assert_command(
        &transfer(&app, &alice, wa, wb, 100).await,
        StatusCode::CREATED,
    );
    assert_eq!(balance(&app.wallet_view(wb).await), 10_000);
    let again = appends_nothing!(
        app,
        app.post(
            &format!("/v1/accounts/{bob_id}/reinstate"),
            &admin,
            json!({})
        )
        .await
    );
    assert_problem(&again, 422, "invalid_state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_needs_empty_wallets_and_erasure_needs_a_closed_account() {
    let app = TestApp::new().await;
    let admin = app.token("admin", &[Role::Admin]);
    let (id, carol) = app.customer("carol").await;
    let wallet = app.wallet(&carol, "EUR").await;
    assert_eq!(app.deposit(wallet, 2_500).await.status, StatusCode::OK);
    let erase = format!("/v1/accounts/{id}/personal-data");

    let early = appends_nothing!(
        app,
        app.send(Method::DELETE, &erase, Some(&admin), None, &[])
            .await
    );
    assert_problem(&early, 422, "invalid_state");
    let close = format!("/v1/accounts/{id}/close");
    let owed = appends_nothing!(
        app,
        app.post(&close, &carol, json!({"reason": "moving away"}))
            .await
    );
    assert_problem(&owed, 422, "account_has_obligations");
    let owed = appends_nothing!(
        app,
        app.post(&close, &admin, json!({"reason": "moving away"}))
            .await
    );
    assert_problem(&owed, 422, "account_has_obligations");

    assert_command(&withdraw(&app, &carol, wallet, 2_500).await, StatusCode::OK);
    let closed = app
        .post(&close, &carol, json!({"reason": "moving away"}))
        .await;
    assert_eq!(assert_command(&closed, StatusCode::OK).0, id);
    let view = account_view(&app, id).await;
    assert_eq!(view["status"], "closed");
    assert_eq!(
        view["email"], "carol@example.com",
        "closing alone erases nothing"
    );

    // Only an admin erases.
    let own = appends_nothing!(
        app,
        app.send(Method::DELETE, &erase, Some(&carol), None, &[])
            .await
    );
    assert_problem(&own, 403, "forbidden");
    let erased = app
        .send(Method::DELETE, &erase, Some(&admin), None, &[])
        .await;
    assert_command(&erased, StatusCode::OK);
    let view = account_view(&app, id).await;
    assert_eq!(view["email"], Value::Null);
    assert_eq!(view["display_name"], Value::Null);
    assert_eq!(view["birth_date"], Value::Null);
    assert_eq!(view["personal_data_erased"], true);
    assert_eq!(view["status"], "closed");
    let twice = appends_nothing!(
        app,
        app.send(Method::DELETE, &erase, Some(&admin), None, &[])
            .await
    );
    assert_problem(&twice, 422, "invalid_state");

    // An admin may close an account too (empty wallet, no obligations).
    let (id2, dan) = app.customer("dan").await;
    app.wallet(&dan, "EUR").await;
    assert_command(
        &app.post(
            &format!("/v1/accounts/{id2}/close"),
            &admin,
            json!({"reason": "requested by phone"}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(account_view(&app, id2).await["status"], "closed");
}

// ---------------------------------------------------------------------------------------------
// Wallets
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_wallet_per_owner_and_currency() {
    let app = TestApp::new().await;
    let (id, token) = app.customer("olga").await;
    let a = app
        .post("/v1/wallets", &token, json!({"currency": "EUR"}))
        .await;
    let (wallet, version, position) = assert_command(&a, StatusCode::CREATED);
    assert_eq!(version, 1);
    assert_eq!(position, last_position(&app).await);
    let view = app.wallet_view(wallet).await;
    let mut keys: Vec<&str> = view
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "available",
            "balance",
            "currency",
            "held",
            "id",
            "owner",
            "status",
            "version"
        ]
    );
    assert_eq!(view["id"], json!(wallet));
    assert_eq!(view["owner"], json!(id));
    assert_eq!(view["currency"], "EUR");
    assert_eq!(
        (
            view["balance"].as_i64(),
            view["held"].as_i64(),
            view["available"].as_i64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(view["status"], "active");
    assert_eq!(view["version"], 1);

    let twice = appends_nothing!(
        app,
        app.post("/v1/wallets", &token, json!({"currency": "EUR"}))
            .await
    );
    assert_problem(&twice, 409, "wallet_exists");
    let admin = app.token("admin", &[Role::Admin]);
    let by_admin = appends_nothing!(
        app,
        app.post(
            "/v1/wallets",
            &admin,
            json!({"currency": "EUR", "owner": id})
        )
        .await
    );
    assert_problem(&by_admin, 409, "wallet_exists");
    let usd = app
        .post("/v1/wallets", &token, json!({"currency": "USD"}))
        .await;
    assert_ne!(assert_command(&usd, StatusCode::CREATED).0, wallet);

    // Deposits: 200 with the wallet's new version; the payments role or an admin.
    let d = app.deposit(wallet, 1_234).await;
    let (did, dv, dp) = assert_command(&d, StatusCode::OK);
    assert_eq!((did, dv, dp), (wallet, 2, last_position(&app).await));
    let d = app
        .post(
            &format!("/v1/wallets/{wallet}/deposits"),
            &admin,
            json!({"amount": 66, "external_ref": "manual-1"}),
        )
        .await;
    assert_eq!(assert_command(&d, StatusCode::OK).1, 3);
    let view = app.wallet_view(wallet).await;
    assert_eq!(
        (balance(&view), view["available"].as_i64()),
        (1_300, Some(1_300))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_wallet_takes_credits_and_refuses_debits() {
    let app = TestApp::new().await;
    let admin = app.token("admin", &[Role::Admin]);
    let (_, fred) = app.customer("fred").await;
    let wf = app.wallet(&fred, "EUR").await;
    let (_, gina) = app.customer("gina").await;
    let wg = app.wallet(&gina, "EUR").await;
    assert_eq!(app.deposit(wf, 10_000).await.status, StatusCode::OK);
    assert_eq!(app.deposit(wg, 10_000).await.status, StatusCode::OK);

    let f = app
        .post(
            &format!("/v1/wallets/{wf}/freeze"),
            &admin,
            json!({"reason": "chargeback review"}),
        )
        .await;
    assert_eq!(
        assert_command(&f, StatusCode::OK),
        (wf, 3, last_position(&app).await)
    );
    assert_eq!(app.wallet_view(wf).await["status"], "frozen");

    let w = appends_nothing!(app, withdraw(&app, &fred, wf, 100).await);
    assert_problem(&w, 422, "invalid_state");
    let out = appends_nothing!(app, transfer(&app, &fred, wf, wg, 100).await);
    assert_problem(&out, 422, "invalid_state");
    // Transfers need both wallets active.
    let into = appends_nothing!(app, transfer(&app, &gina, wg, wf, 100).await);
    assert_problem(&into, 422, "invalid_state");
    // Credits from the payment provider still land.
    assert_command(&app.deposit(wf, 500).await, StatusCode::OK);
    let twice = appends_nothing!(
        app,
        app.post(
            &format!("/v1/wallets/{wf}/freeze"),
            &admin,
            json!({"reason": "again"})
        )
        .await
    );
    assert_problem(&twice, 422, "invalid_state");

    assert_command(
        &app.post(
            &format!("/v1/wallets/{wf}/unfreeze"),
            &admin,
            json!({"reason": "cleared"}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(app.wallet_view(wf).await["status"], "active");
    assert_command(&withdraw(&app, &fred, wf, 100).await, StatusCode::OK);
    assert_eq!(balance(&app.wallet_view(wf).await), 10_400);
    let again = appends_nothing!(
        app,
        app.post(
            &format!("/v1/wallets/{wf}/unfreeze"),
            &admin,
            json!({"reason": "again"})
        )
        .await
    );
    assert_problem(&again, 422, "invalid_state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wallet_closes_only_when_empty_and_then_takes_nothing() {
    let app = TestApp::new().await;
    let (_, hugo) = app.customer("hugo").await;
    let wallet = app.wallet(&hugo, "EUR").await;
    let (_, iris) = app.customer("iris").await;
    let wi = app.wallet(&iris, "EUR").await;
    assert_eq!(app.deposit(wallet, 1_000).await.status, StatusCode::OK);
    assert_eq!(app.deposit(wi, 1_000).await.status, StatusCode::OK);
    let close = format!("/v1/wallets/{wallet}/close");

    let full = appends_nothing!(app, app.post(&close, &hugo, json!({})).await);
    assert_problem(&full, 422, "wallet_not_empty");
    assert_command(&withdraw(&app, &hugo, wallet, 1_000).await, StatusCode::OK);
    let closed = app.send(Method::POST, &close, Some(&hugo), None, &[]).await;
    assert_eq!(
        assert_command(&closed, StatusCode::OK),
        (wallet, 4, last_position(&app).await)
    );
    assert_eq!(app.wallet_view(wallet).await["status"], "closed");

    // Closed is terminal.
    let dep = appends_nothing!(app, app.deposit(wallet, 100).await);
    assert_problem(&dep, 422, "invalid_state");
    let wd = appends_nothing!(app, withdraw(&app, &hugo, wallet, 1).await);
    assert_problem(&wd, 422, "invalid_state");
    let into = appends_nothing!(app, transfer(&app, &iris, wi, wallet, 100).await);
    assert_problem(&into, 422, "invalid_state");
    let again = appends_nothing!(app, app.post(&close, &hugo, json!({})).await);
    assert_problem(&again, 422, "invalid_state");
    let admin = app.token("admin", &[Role::Admin]);
    let frz = appends_nothing!(
        app,
        app.post(
            &format!("/v1/wallets/{wallet}/freeze"),
            &admin,
            json!({"reason": "x"})
        )
        .await
    );
    assert_problem(&frz, 422, "invalid_state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_move_money_atomically_between_same_currency_wallets() {
    let app = TestApp::new().await;
    let (_, alice) = app.customer("alice").await;
    let wa = app.wallet(&alice, "EUR").await;
    let (_, bob) = app.customer("bob").await;
    let wb = app.wallet(&bob, "EUR").await;
    let wb_usd = app.wallet(&bob, "USD").await;
    assert_eq!(app.deposit(wa, 10_000).await.status, StatusCode::OK);
    assert_eq!(app.deposit(wb, 1_000).await.status, StatusCode::OK);

    let before = app.event_count().await;
    let t = app
        .post(
            "/v1/transfers",
            &alice,
            json!({"from_wallet": wa, "to_wallet": wb, "amount": 2_500, "memo": "rent"}),
        )
        .await;
    let (tid, version, position) = assert_command(&t, StatusCode::CREATED);
    assert!(tid != wa && tid != wb, "the answer's id is the transfer's");
    assert_eq!(
        app.event_count().await,
        before + 2,
        "TransferSent + TransferReceived"
    );
    assert_eq!(position, last_position(&app).await);
    let va = app.wallet_view(wa).await;
    assert_eq!(
        version,
        va["version"].as_i64().expect("a version"),
        "version is the source wallet's new version"
    );
    assert_eq!(version, 3);
    assert_eq!(balance(&va), 7_500);
    assert_eq!(balance(&app.wallet_view(wb).await), 3_500);
    // Both legs carry the transfer id, in one transaction.
    let legs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, tx FROM events WHERE payload->>'transfer_id' = $1 ORDER BY position",
    )
    .bind(tid.to_string())
    .fetch_all(&app.db.pool)
    .await
    .expect("the legs");
    assert_eq!(legs.len(), 2, "{legs:?}");
    assert_eq!(legs[0].1, legs[1].1, "one commit");

    let t2 = transfer(&app, &alice, wa, wb, 500).await;
    let (tid2, v2, _) = assert_command(&t2, StatusCode::CREATED);
    assert_ne!(tid2, tid);
    assert_eq!(v2, 4);

    let mismatch = appends_nothing!(app, transfer(&app, &alice, wa, wb_usd, 100).await);
    assert_problem(&mismatch, 422, "currency_mismatch");
    let itself = appends_nothing!(app, transfer(&app, &alice, wa, wa, 100).await);
    assert_problem(&itself, 422, "same_wallet");
    let too_much = appends_nothing!(app, transfer(&app, &alice, wa, wb, 7_001).await);
    assert_problem(&too_much, 422, "insufficient_funds");
    let w = appends_nothing!(app, withdraw(&app, &alice, wa, 7_001).await);
    assert_problem(&w, 422, "insufficient_funds");
    // Exactly the available balance is fine.
    assert_command(
        &transfer(&app, &alice, wa, wb, 7_000).await,
        StatusCode::CREATED,
    );
    assert_eq!(balance(&app.wallet_view(wa).await), 0);
    assert_eq!(balance(&app.wallet_view(wb).await), 11_000);
    let empty = appends_nothing!(app, transfer(&app, &alice, wa, wb, 1).await);
    assert_problem(&empty, 422, "insufficient_funds");

    // The other way round (the source now has the larger id): still the source's version.
    let back = transfer(&app, &bob, wb, wa, 1_000).await;
    let (_, bv, _) = assert_command(&back, StatusCode::CREATED);
    let vb = app.wallet_view(wb).await;
    assert_eq!(bv, vb["version"].as_i64().expect("a version"));
    assert_eq!(bv, 6, "opened, funded, three credits, one debit");
    assert_eq!(app.wallet_view(wa).await["version"], 6);
    assert_eq!(balance(&vb), 10_000);
}

// ---------------------------------------------------------------------------------------------
// ETag / If-Match, probes, who may read
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etags_carry_the_version_and_if_match_guards_commands() {
    let app = TestApp::new().await;
    let (id, token) = app.customer("ella").await;
    let wallet = app.wallet(&token, "EUR").await;
    assert_eq!(app.deposit(wallet, 10_000).await.status, StatusCode::OK);

    let got = app.get(&format!("/v1/wallets/{wallet}"), &token).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["version"], 2);
    assert_eq!(etag(&got), "\"2\"");

    let path = format!("/v1/wallets/{wallet}/withdrawals");
    let body = || json!({"amount": 100, "external_ref": format!("im-{}", Uuid::now_v7())});
    let ok = app
        .send(
            Method::POST,
            &path,
            Some(&token),
            Some(body()),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(assert_command(&ok, StatusCode::OK).1, 3);
    assert_eq!(
        etag(&app.get(&format!("/v1/wallets/{wallet}"), &token).await),
        "\"3\""
    );

    for stale in ["\"2\"", "\"1\"", "\"0\"", "\"99\""] {
        let a = appends_nothing!(
            app,
            app.send(
                Method::POST,
                &path,
                Some(&token),
                Some(body()),
                &[("if-match", stale)]
            )
            .await
        );
        assert_problem(&a, 412, "precondition_failed");
    }
    assert_eq!(balance(&app.wallet_view(wallet).await), 9_900);
    // If-Match on a transfer guards its source wallet.
    let (_, other) = app.customer("finn").await;
    let wo = app.wallet(&other, "EUR").await;
    let t = appends_nothing!(
        app,
        app.send(
            Method::POST,
            "/v1/transfers",
            Some(&token),
            Some(json!({"from_wallet": wallet, "to_wallet": wo, "amount": 1})),
            &[("if-match", "\"2\"")]
        )
        .await
    );
    assert_problem(&t, 412, "precondition_failed");
    let t = app
        .send(
            Method::POST,
            "/v1/transfers",
            Some(&token),
            Some(json!({"from_wallet": wallet, "to_wallet": wo, "amount": 1})),
            &[("if-match", "\"3\"")],
        )
        .await;
    assert_eq!(assert_command(&t, StatusCode::CREATED).1, 4);

    // Accounts too.
    let acc = app.get(&format!("/v1/accounts/{id}"), &token).await;
    assert_eq!(etag(&acc), format!("\"{}\"", acc.body["version"]));
    assert_eq!(etag(&acc), "\"1\"");
    let profile = format!("/v1/accounts/{id}/profile");
    let p = app
        .send(
            Method::PATCH,
            &profile,
            Some(&token),
            Some(json!({"display_name": "Ella E."})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(assert_command(&p, StatusCode::OK).1, 2);
    let p = appends_nothing!(
        app,
        app.send(
            Method::PATCH,
            &profile,
            Some(&token),
            Some(json!({"display_name": "Ella F."})),
            &[("if-match", "\"1\"")]
        )
        .await
    );
    assert_problem(&p, 412, "precondition_failed");
    assert_eq!(account_view(&app, id).await["display_name"], "Ella E.");
    assert_eq!(
        etag(&app.get(&format!("/v1/accounts/{id}"), &token).await),
        "\"2\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_readiness_answer_200() {
    let app = TestApp::new().await;
    let h = app.send(Method::GET, "/health", None, None, &[]).await;
    assert_eq!(h.status, StatusCode::OK, "{:?}", h.body);
    let r = app.send(Method::GET, "/ready", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auditors_and_admins_read_everything_other_customers_nothing() {
    let app = TestApp::new().await;
    let (id, alice) = app.customer("alice").await;
    let wallet = app.wallet(&alice, "EUR").await;
    let (_, bob) = app.customer("bob").await;
    let auditor = app.token("auditor", &[Role::Auditor]);
    let admin = app.token("admin", &[Role::Admin]);
    let paths = [
        format!("/v1/wallets/{wallet}"),
        format!("/v1/accounts/{id}"),
    ];
    for path in &paths {
        for (who, token) in [("alice", &alice), ("auditor", &auditor), ("admin", &admin)] {
            let a = app.get(path, token).await;
            assert_eq!(a.status, StatusCode::OK, "{who} GET {path}: {:?}", a.body);
            assert_eq!(
                a.body["id"],
                json!(if path.contains("wallets") { wallet } else { id })
            );
        }
        let a = app.get(path, &bob).await;
        assert_problem(&a, 403, "forbidden");
        assert!(
            a.body.get("balance").is_none() && a.body.get("email").is_none(),
            "nothing leaks: {:?}",
            a.body
        );
    }
}
