//! Queries of the money read models over HTTP: accounts, wallets, ledgers, transfers and the
//! platform totals; pagination, filters, ownership, bad parameters, read-your-writes, and
//! rebuilds that reproduce the live tables.

use crate::support::{Answer, TestApp};
use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use commands::Role;
use projections::{rebuild, Projector, Step, Worker, WorkerConfig};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

/// Two customers with a funded EUR wallet each, and the staff.
struct World {
    app: TestApp,
    alice: Uuid,
    alice_token: String,
    alice_wallet: Uuid,
    bob: Uuid,
    bob_token: String,
    bob_wallet: Uuid,
    admin: String,
    auditor: String,
}

async fn world() -> World {
    let app = TestApp::new().await;
    let (alice, alice_token) = app.customer("alice").await;
    let alice_wallet = app.wallet(&alice_token, "EUR").await;
    assert_eq!(
        app.deposit(alice_wallet, 10_000).await.status,
        StatusCode::OK
    );
    let (bob, bob_token) = app.customer("bob").await;
    let bob_wallet = app.wallet(&bob_token, "EUR").await;
    assert_eq!(app.deposit(bob_wallet, 5_000).await.status, StatusCode::OK);
    let admin = app.token("admin", &[Role::Admin]);
    let auditor = app.token("auditor", &[Role::Auditor]);
    World {
        app,
        alice,
        alice_token,
        alice_wallet,
        bob,
        bob_token,
        bob_wallet,
        admin,
        auditor,
    }
}

impl World {
    async fn transfer(&self, amount: i64, memo: Option<&str>) -> Answer {
        let mut body = json!({
            "from_wallet": self.alice_wallet,
            "to_wallet": self.bob_wallet,
            "amount": amount,
        });
        if let Some(m) = memo {
            body["memo"] = json!(m);
        }
        let a = self
            .app
            .post("/v1/transfers", &self.alice_token, body)
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "transfer: {:?}", a.body);
        a
    }

    async fn withdraw(&self, wallet: Uuid, token: &str, amount: i64) -> Answer {
        let a = self
            .app
            .post(
                &format!("/v1/wallets/{wallet}/withdrawals"),
                token,
                json!({"amount": amount, "external_ref": format!("wd-{}", Uuid::now_v7())}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "withdraw: {:?}", a.body);
        a
    }
}

fn x_position(a: &Answer) -> i64 {
    a.headers
        .get("x-position")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("an X-Position header: {:?}", a.headers))
}

fn items(a: &Answer) -> &Vec<Value> {
    a.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a list answer: {:?}", a.body))
}

fn assert_problem(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{:?}", a.body);
    assert_eq!(a.body["code"], code, "{:?}", a.body);
    assert_eq!(
        a.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
}

/// Reads every page of `path` (which has no query string of its own, or ends with `&`-able
/// parameters) with `limit`, returning the items in order and the number of pages.
async fn all_pages(app: &TestApp, path: &str, token: &str, limit: usize) -> (Vec<Value>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let a = app.get(&url, token).await;
        assert_eq!(a.status, StatusCode::OK, "{url}: {:?}", a.body);
        x_position(&a);
        pages += 1;
        let page = items(&a);
        assert!(page.len() <= limit, "a page holds at most limit items");
        out.extend(page.iter().cloned());
        match a.body["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(page.len(), limit, "only the last page is short");
                cursor = Some(c.to_owned());
            }
            None => {
                assert!(a.body["next_cursor"].is_null(), "{:?}", a.body);
                return (out, pages);
            }
        }
        assert!(pages < 1000, "pagination ends");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wallet_and_an_account_answer_with_every_field_their_etag_and_x_position() {
    let w = world().await;
    let a = w
        .app
        .get(&format!("/v1/wallets/{}", w.alice_wallet), &w.alice_token)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let v = &a.body;
    let mut keys: Vec<&str> = v
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
        ],
        "exactly the fields of API.md"
    );
    assert_eq!(v["id"], json!(w.alice_wallet));
    assert_eq!(v["owner"], json!(w.alice));
    assert_eq!(v["currency"], "EUR");
    assert_eq!(v["balance"], 10_000);
    assert_eq!(v["held"], 0);
    assert_eq!(v["available"], 10_000);
    assert_eq!(v["status"], "active");
    assert_eq!(v["version"], 2);
    assert_eq!(
        a.headers.get("etag").and_then(|v| v.to_str().ok()),
        Some("\"2\"")
    );
    assert!(x_position(&a) > 0);

    let a = w
        .app
        .get(&format!("/v1/accounts/{}", w.alice), &w.alice_token)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let v = &a.body;
    assert_eq!(v["id"], json!(w.alice));
    assert_eq!(v["subject"], "alice");
    assert_eq!(v["email"], "alice@example.com");
    assert_eq!(v["display_name"], "alice");
    assert!(v["birth_date"].is_null());
    assert!(v["country"].is_null());
    assert_eq!(v["preferences"], json!({}));
    assert_eq!(v["kyc_status"], "none");
    assert_eq!(v["status"], "active");
    assert_eq!(v["personal_data_erased"], false);
    assert_eq!(v["version"], 1);
    assert_eq!(
        a.headers.get("etag").and_then(|v| v.to_str().ok()),
        Some("\"1\"")
    );
    x_position(&a);

    // Profile, KYC and lifecycle changes show.
    let p = w
        .app
        .send(
            Method::PATCH,
            &format!("/v1/accounts/{}/profile", w.alice),
            Some(&w.alice_token),
            Some(json!({"display_name": "Alice A.", "preferences": {"birthday_pot": true}})),
            &[],
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{:?}", p.body);
    let k = w
        .app
        .post(
            &format!("/v1/accounts/{}/kyc", w.alice),
            &w.alice_token,
            json!({"document_ref": "passport-1"}),
        )
        .await;
    assert_eq!(k.status, StatusCode::OK, "{:?}", k.body);
    let v = w
        .app
        .get(&format!("/v1/accounts/{}", w.alice), &w.admin)
        .await
        .body;
    assert_eq!(v["display_name"], "Alice A.");
    assert_eq!(v["preferences"], json!({"birthday_pot": true}));
    assert_eq!(v["kyc_status"], "pending");
    assert_eq!(v["version"], 3);
    let f = w
        .app
        .post(
            &format!("/v1/wallets/{}/freeze", w.bob_wallet),
            &w.admin,
            json!({"reason": "checks"}),
        )
        .await;
    assert_eq!(f.status, StatusCode::OK, "{:?}", f.body);
    assert_eq!(w.app.wallet_view(w.bob_wallet).await["status"], "frozen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owners_admins_and_auditors_read_and_other_customers_get_403() {
    let w = world().await;
    let t = w.transfer(1_000, None).await;
    let transfer = t.id();
    let (_, carol_token) = w.app.customer("carol").await;
    let newcomer = w.app.token("newcomer", &[Role::Customer]);
    let paths = [
        format!("/v1/accounts/{}", w.alice),
        format!("/v1/wallets/{}", w.alice_wallet),
        format!("/v1/wallets/{}/ledger", w.alice_wallet),
        format!("/v1/wallets?owner={}", w.alice),
        format!("/v1/transfers/{transfer}"),
    ];
    for path in &paths {
        for (who, token) in [
            ("owner", &w.alice_token),
            ("admin", &w.admin),
            ("auditor", &w.auditor),
        ] {
            let a = w.app.get(path, token).await;
            assert_eq!(a.status, StatusCode::OK, "{who} reads {path}: {:?}", a.body);
            x_position(&a);
        }
        for (who, token) in [("carol", &carol_token), ("newcomer", &newcomer)] {
            let a = w.app.get(path, token).await;
            assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
            let _ = who;
        }
        let anonymous = w.app.send(Method::GET, path, None, None, &[]).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // The transfer's receiver reads it too; bob cannot read alice's wallet or account.
    let a = w
        .app
        .get(&format!("/v1/transfers/{transfer}"), &w.bob_token)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    for path in &paths[..4] {
        let a = w.app.get(path, &w.bob_token).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
    }
    // The platform totals are for staff only.
    for token in [&w.alice_token, &w.bob_token, &newcomer] {
        assert_problem(
            &w.app.get("/v1/stats", token).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    for token in [&w.admin, &w.auditor] {
        let a = w.app.get("/v1/stats", token).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_ids_are_404_and_every_query_is_documented() {
    let w = world().await;
    // The routes are described in /openapi.json.
    let doc = w
        .app
        .send(Method::GET, "/openapi.json", None, None, &[])
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    for path in [
        "/v1/accounts/{id}",
        "/v1/wallets",
        "/v1/wallets/{id}",
        "/v1/wallets/{id}/ledger",
        "/v1/transfers/{id}",
        "/v1/stats",
    ] {
        assert!(
            doc.body["paths"][path]["get"].is_object(),
            "{path} is documented"
        );
    }
    let nobody = Uuid::now_v7();
    for path in [
        format!("/v1/accounts/{nobody}"),
        format!("/v1/wallets/{nobody}"),
        format!("/v1/wallets/{nobody}/ledger"),
        format!("/v1/transfers/{nobody}"),
        // A wallet id is no transfer id.
        format!("/v1/transfers/{}", w.alice_wallet),
    ] {
        assert_problem(
            &w.app.get(&path, &w.admin).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_query_parameters_are_400_naming_the_field() {
    let w = world().await;
    let wallet = w.alice_wallet;
    // A real cursor of the wallet list, refused by the ledger (and the other way round).
    for i in 0..3 {
        assert_eq!(w.app.deposit(wallet, 100 + i).await.status, StatusCode::OK);
    }
    let ledger_cursor = w
        .app
        .get(&format!("/v1/wallets/{wallet}/ledger?limit=1"), &w.admin)
        .await
        .body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let _usd = w.app.wallet(&w.alice_token, "USD").await;
    let list_cursor = w
        .app
        .get(&format!("/v1/wallets?owner={}&limit=1", w.alice), &w.admin)
        .await
        .body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let ledger = format!("/v1/wallets/{wallet}/ledger");
    let list = format!("/v1/wallets?owner={}", w.alice);
    let cases: Vec<(String, &str)> = vec![
        (format!("{ledger}?limit=0"), "limit"),
        (format!("{ledger}?limit=501"), "limit"),
        (format!("{ledger}?limit=-1"), "limit"),
        (format!("{ledger}?limit=ten"), "limit"),
        (format!("{ledger}?limit=1&limit=2"), "limit"),
        (format!("{ledger}?cursor=zzz"), "cursor"),
        (format!("{ledger}?cursor="), "cursor"),
        (format!("{ledger}?cursor={list_cursor}"), "cursor"),
        (format!("{ledger}?colour=red"), "colour"),
        (format!("{list}&limit=0"), "limit"),
        (format!("{list}&limit=501"), "limit"),
        (format!("{list}&cursor={ledger_cursor}"), "cursor"),
        (format!("{list}&cursor=6e6f7065"), "cursor"),
        (format!("{list}&currency=eur"), "currency"),
        (format!("{list}&currency=EURO"), "currency"),
        (format!("{list}&status=sleeping"), "status"),
        (format!("{list}&sort=balance"), "sort"),
        ("/v1/wallets?owner=not-a-uuid".to_owned(), "owner"),
        ("/v1/wallets?owner=".to_owned(), "owner"),
        ("/v1/wallets/not-a-uuid".to_owned(), "id"),
        ("/v1/wallets/not-a-uuid/ledger".to_owned(), "id"),
        ("/v1/accounts/42".to_owned(), "id"),
        ("/v1/transfers/xyz".to_owned(), "id"),
    ];
    for (path, field) in cases {
        let a = w.app.get(&path, &w.admin).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {:?}", a.body);
        assert_eq!(a.body["code"], "invalid_input", "{path}: {:?}", a.body);
        assert_eq!(a.body["field"], field, "{path}: {:?}", a.body);
    }
    for bad in ["-1", "soon", "99999999999999999999"] {
        let a = w
            .app
            .send(
                Method::GET,
                &format!("/v1/wallets/{wallet}"),
                Some(&w.admin),
                None,
                &[("x-min-position", bad)],
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {:?}", a.body);
        assert_eq!(a.body["field"], "X-Min-Position");
    }
    // The good cursors still work where they belong.
    let a = w
        .app
        .get(&format!("{ledger}?cursor={ledger_cursor}"), &w.admin)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let a = w
        .app
        .get(&format!("{list}&cursor={list_cursor}"), &w.admin)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_pages_newest_first_without_gaps_and_its_running_balance_is_the_balance() {
    let w = world().await;
    for i in 1..=11 {
        assert_eq!(
            w.app.deposit(w.alice_wallet, 100 * i).await.status,
            StatusCode::OK
        );
    }
    w.withdraw(w.alice_wallet, &w.alice_token, 250).await;
    let t = w.transfer(700, Some("rent")).await;
    let back = w
        .app
        .post(
            "/v1/transfers",
            &w.bob_token,
            json!({"from_wallet": w.bob_wallet, "to_wallet": w.alice_wallet, "amount": 30}),
        )
        .await;
    assert_eq!(back.status, StatusCode::CREATED, "{:?}", back.body);
    let balance = w.app.wallet_view(w.alice_wallet).await["balance"]
        .as_i64()
        .expect("a balance");
    assert_eq!(balance, 10_000 + 6_600 - 250 - 700 + 30);

    let path = format!("/v1/wallets/{}/ledger", w.alice_wallet);
    let (entries, pages) = all_pages(&w.app, &path, &w.alice_token, 4).await;
    // 1 + 11 deposits, 1 withdrawal, 2 transfers.
    assert_eq!(entries.len(), 15);
    assert_eq!(pages, 4);
    let positions: Vec<i64> = entries
        .iter()
        .map(|e| e["position"].as_i64().expect("a position"))
        .collect();
    assert!(
        positions.windows(2).all(|p| p[0] > p[1]),
        "newest first, no duplicates: {positions:?}"
    );
    assert_eq!(
        positions.iter().collect::<HashSet<_>>().len(),
        positions.len()
    );
    // One page of everything is the same list.
    let (one, one_pages) = all_pages(&w.app, &path, &w.alice_token, 500).await;
    assert_eq!(one, entries);
    assert_eq!(one_pages, 1);

    // Running balances: the newest is the balance, each is the previous plus its amount.
    assert_eq!(entries[0]["balance_after"], balance);
    for pair in entries.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        assert_eq!(
            newer["balance_after"].as_i64().expect("balance_after"),
            older["balance_after"].as_i64().expect("balance_after")
                + newer["amount"].as_i64().expect("amount"),
            "{newer:?} after {older:?}"
        );
    }
    let oldest = entries.last().expect("entries");
    assert_eq!(oldest["kind"], "deposit");
    assert_eq!(oldest["amount"], 10_000);
    assert_eq!(oldest["balance_after"], 10_000);
    assert!(oldest["ref"]
        .as_str()
        .is_some_and(|r| r.starts_with("dep-")));
    assert!(oldest.get("counterparty").is_none());
    let sum: i64 = entries
        .iter()
        .map(|e| e["amount"].as_i64().expect("amount"))
        .sum();
    assert_eq!(sum, balance);

    let kinds: Vec<&str> = entries
        .iter()
        .take(3)
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["transfer_in", "transfer_out", "withdrawal"]);
    assert_eq!(entries[0]["amount"], 30);
    assert_eq!(entries[0]["counterparty"], json!(w.bob_wallet));
    assert_eq!(entries[0]["ref"], json!(back.id().to_string()));
    assert_eq!(entries[1]["amount"], -700);
    assert_eq!(entries[1]["counterparty"], json!(w.bob_wallet));
    assert_eq!(entries[1]["ref"], json!(t.id().to_string()));
    assert_eq!(entries[2]["amount"], -250);
    assert!(entries[0]["at"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owners_wallets_are_listed_filtered_and_paged() {
    let w = world().await;
    let mut alice_wallets = vec![w.alice_wallet];
    for currency in ["USD", "GBP", "CHF", "JPY"] {
        alice_wallets.push(w.app.wallet(&w.alice_token, currency).await);
    }
    let f = w
        .app
        .post(
            &format!("/v1/wallets/{}/freeze", alice_wallets[2]),
            &w.admin,
            json!({"reason": "checks"}),
        )
        .await;
    assert_eq!(f.status, StatusCode::OK, "{:?}", f.body);

    // Every page, in the order opened.
    let (listed, pages) = all_pages(
        &w.app,
        &format!("/v1/wallets?owner={}", w.alice),
        &w.alice_token,
        2,
    )
    .await;
    assert_eq!(pages, 3);
    let ids: Vec<Value> = listed.iter().map(|v| v["id"].clone()).collect();
    let expected: Vec<Value> = alice_wallets.iter().map(|id| json!(id)).collect();
    assert_eq!(ids, expected);
    assert_eq!(listed[0]["balance"], 10_000);
    assert_eq!(listed[0]["owner"], json!(w.alice));

    // Without owner: the caller's own.
    let own = w.app.get("/v1/wallets", &w.alice_token).await;
    assert_eq!(own.status, StatusCode::OK, "{:?}", own.body);
    assert_eq!(items(&own).len(), 5);
    assert!(own.body["next_cursor"].is_null());
    let bobs = w.app.get("/v1/wallets", &w.bob_token).await;
    assert_eq!(items(&bobs).len(), 1);
    assert_eq!(items(&bobs)[0]["id"], json!(w.bob_wallet));
    let newcomer = w.app.token("newcomer", &[Role::Customer]);
    let none = w.app.get("/v1/wallets", &newcomer).await;
    assert_eq!(none.status, StatusCode::OK, "{:?}", none.body);
    assert!(items(&none).is_empty());

    // Filters.
    let usd = w
        .app
        .get(
            &format!("/v1/wallets?owner={}&currency=USD", w.alice),
            &w.admin,
        )
        .await;
    assert_eq!(items(&usd).len(), 1);
    assert_eq!(items(&usd)[0]["id"], json!(alice_wallets[1]));
    assert_eq!(items(&usd)[0]["currency"], "USD");
    let frozen = w
        .app
        .get(
            &format!("/v1/wallets?owner={}&status=frozen", w.alice),
            &w.auditor,
        )
        .await;
    assert_eq!(items(&frozen).len(), 1);
    assert_eq!(items(&frozen)[0]["id"], json!(alice_wallets[2]));
    let active = w
        .app
        .get(
            &format!("/v1/wallets?status=active&currency=GBP&owner={}", w.alice),
            &w.alice_token,
        )
        .await;
    assert!(items(&active).is_empty(), "{:?}", active.body);
    let closed = w
        .app
        .get(
            &format!("/v1/wallets?owner={}&status=closed", w.alice),
            &w.alice_token,
        )
        .await;
    assert!(items(&closed).is_empty());

    // Staff name any owner; a customer only themselves.
    let a = w
        .app
        .get(&format!("/v1/wallets?owner={}", w.bob), &w.admin)
        .await;
    assert_eq!(items(&a).len(), 1);
    assert_problem(
        &w.app
            .get(&format!("/v1/wallets?owner={}", w.bob), &w.alice_token)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let stranger = Uuid::now_v7();
    let a = w
        .app
        .get(&format!("/v1/wallets?owner={stranger}"), &w.admin)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(items(&a).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_shows_both_legs_with_the_balances_they_left() {
    let w = world().await;
    let t = w.transfer(1_234, Some("dinner")).await;
    let id = t.id();
    let a = w
        .app
        .get(&format!("/v1/transfers/{id}"), &w.alice_token)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    x_position(&a);
    let v = &a.body;
    assert_eq!(v["id"], json!(id));
    assert_eq!(v["from_wallet"], json!(w.alice_wallet));
    assert_eq!(v["to_wallet"], json!(w.bob_wallet));
    assert_eq!(v["from_owner"], json!(w.alice));
    assert_eq!(v["to_owner"], json!(w.bob));
    assert_eq!(v["currency"], "EUR");
    assert_eq!(v["amount"], 1_234);
    assert_eq!(v["memo"], "dinner");
    assert_eq!(v["status"], "completed");
    let legs = v["legs"].as_array().expect("legs");
    assert_eq!(legs.len(), 2);
    assert_eq!(legs[0]["kind"], "transfer_out");
    assert_eq!(legs[0]["wallet"], json!(w.alice_wallet));
    assert_eq!(legs[0]["owner"], json!(w.alice));
    assert_eq!(legs[0]["amount"], -1_234);
    assert_eq!(legs[0]["balance_after"], 10_000 - 1_234);
    assert_eq!(legs[1]["kind"], "transfer_in");
    assert_eq!(legs[1]["wallet"], json!(w.bob_wallet));
    assert_eq!(legs[1]["owner"], json!(w.bob));
    assert_eq!(legs[1]["amount"], 1_234);
    assert_eq!(legs[1]["balance_after"], 5_000 + 1_234);
    // Both legs are one commit, the last of which is the command's position.
    assert_eq!(
        legs[1]["position"]
            .as_i64()
            .max(legs[0]["position"].as_i64()),
        t.body["position"].as_i64()
    );
    assert_eq!(legs[0]["at"], v["at"]);
    assert_eq!(w.app.wallet_view(w.alice_wallet).await["balance"], 8_766);
    assert_eq!(w.app.wallet_view(w.bob_wallet).await["balance"], 6_234);
    let bob = w
        .app
        .get(&format!("/v1/transfers/{id}"), &w.bob_token)
        .await;
    assert_eq!(bob.body, a.body);
}

/// Opens an escrow-paid order from alice to bob and a pot for bob funded by alice; returns
/// the money now in the escrow and in the pot.
async fn escrow_and_pot(w: &World) -> (i64, i64) {
    let order = w
        .app
        .post(
            "/v1/orders",
            &w.alice_token,
            json!({
                "seller": w.bob,
                "currency": "EUR",
                "lines": [{"sku": "mug", "description": "A mug", "quantity": 2, "unit_price": 600}],
                "use_escrow": true
            }),
        )
        .await;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    let paid = w
        .app
        .post(
            &format!("/v1/orders/{}/pay", order.id()),
            &w.alice_token,
            json!({"wallet": w.alice_wallet}),
        )
        .await;
    assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    let pot = w
        .app
        .post(
            "/v1/pots",
            &w.alice_token,
            json!({
                "beneficiary": w.bob,
                "title": "Bob's party",
                "currency": "EUR",
                "closes_at": (Utc::now() + Duration::days(7)).to_rfc3339(),
                "visibility": "public",
            }),
        )
        .await;
    assert_eq!(pot.status, StatusCode::CREATED, "{:?}", pot.body);
    let c = w
        .app
        .post(
            &format!("/v1/pots/{}/contributions", pot.id()),
            &w.alice_token,
            json!({"wallet": w.alice_wallet, "amount": 800}),
        )
        .await;
    assert_eq!(c.status, StatusCode::OK, "{:?}", c.body);
    (1_200, 800)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_platform_totals_conserve_money_across_every_kind_of_move() {
    let w = world().await;
    w.withdraw(w.bob_wallet, &w.bob_token, 400).await;
    w.transfer(2_000, None).await;
    let (escrowed, in_pots) = escrow_and_pot(&w).await;
    let usd = w.app.wallet(&w.bob_token, "USD").await;
    assert_eq!(w.app.deposit(usd, 99).await.status, StatusCode::OK);

    let a = w.app.get("/v1/stats", &w.auditor).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    x_position(&a);
    let eur = &a.body["currencies"]["EUR"];
    assert_eq!(eur["deposits"], 15_000);
    assert_eq!(eur["withdrawals"], 400);
    assert_eq!(eur["escrowed"], escrowed);
    assert_eq!(eur["in_pots"], in_pots);
    assert_eq!(eur["balances"], 15_000 - 400 - escrowed - in_pots);
    assert_eq!(eur["net_deposits"], 14_600);
    assert_eq!(eur["conserved"], true);
    let alice = w.app.wallet_view(w.alice_wallet).await["balance"]
        .as_i64()
        .expect("a balance");
    let bob = w.app.wallet_view(w.bob_wallet).await["balance"]
        .as_i64()
        .expect("a balance");
    assert_eq!(eur["balances"], alice + bob);
    let usd_totals = &a.body["currencies"]["USD"];
    assert_eq!(usd_totals["deposits"], 99);
    assert_eq!(usd_totals["balances"], 99);
    assert_eq!(usd_totals["conserved"], true);
    assert_eq!(a.body["conserved"], true);

    // A new currency shows as soon as a wallet opens in it, with zero totals.
    let _gbp = w.app.wallet(&w.alice_token, "GBP").await;
    let a = w.app.get("/v1/stats", &w.admin).await;
    assert_eq!(a.body["currencies"]["GBP"]["deposits"], 0);
    assert_eq!(a.body["currencies"]["GBP"]["conserved"], true);
    assert_eq!(a.body["conserved"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erased_account_keeps_no_personal_data_in_its_read_model() {
    let app = TestApp::new().await;
    let token = app.token("erin", &[Role::Customer]);
    let opened = app
        .post(
            "/v1/accounts",
            &token,
            json!({"email": "erin@example.com", "display_name": "Erin", "birth_date": "1990-04-01", "country": "FR"}),
        )
        .await;
    assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
    let id = opened.id();
    let admin = app.token("admin", &[Role::Admin]);
    let v = app.get(&format!("/v1/accounts/{id}"), &token).await.body;
    assert_eq!(v["birth_date"], "1990-04-01");
    assert_eq!(v["country"], "FR");
    let closed = app
        .post(
            &format!("/v1/accounts/{id}/close"),
            &token,
            json!({"reason": "leaving"}),
        )
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
    let v = app.get(&format!("/v1/accounts/{id}"), &admin).await.body;
    assert_eq!(v["status"], "closed");
    assert!(v["closed_at"].is_string());
    assert_eq!(v["email"], "erin@example.com");
    let erased = app
        .send(
            Method::DELETE,
            &format!("/v1/accounts/{id}/personal-data"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{:?}", erased.body);
    let a = app.get(&format!("/v1/accounts/{id}"), &admin).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let v = &a.body;
    assert_eq!(v["personal_data_erased"], true);
    assert!(v["email"].is_null(), "{v:?}");
    assert!(v["display_name"].is_null(), "{v:?}");
    assert!(v["birth_date"].is_null(), "{v:?}");
    assert_eq!(v["status"], "closed");
    assert_eq!(v["version"], 3);
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT concat_ws(',', email, display_name, birth_date::text) FROM accounts WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db.pool)
    .await
    .expect("the row");
    assert_eq!(stored.as_deref(), Some(""), "nothing personal is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_with_the_commands_position_sees_the_command() {
    let w = world().await;
    for round in 1..=5 {
        let d = w.app.deposit(w.alice_wallet, 10).await;
        assert_eq!(d.status, StatusCode::OK, "{:?}", d.body);
        let position = d.body["position"].as_i64().expect("a position");
        let p = position.to_string();
        let a = w
            .app
            .send(
                Method::GET,
                &format!("/v1/wallets/{}", w.alice_wallet),
                Some(&w.alice_token),
                None,
                &[("X-Min-Position", &p)],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.body["balance"], 10_000 + 10 * round);
        assert!(x_position(&a) >= position);
        let l = w
            .app
            .send(
                Method::GET,
                &format!("/v1/wallets/{}/ledger?limit=1", w.alice_wallet),
                Some(&w.alice_token),
                None,
                &[("X-Min-Position", &p)],
            )
            .await;
        assert_eq!(l.status, StatusCode::OK, "{:?}", l.body);
        assert_eq!(items(&l)[0]["position"], position);
        assert!(x_position(&l) >= position);
        let s = w
            .app
            .send(
                Method::GET,
                "/v1/stats",
                Some(&w.admin),
                None,
                &[("X-Min-Position", &p)],
            )
            .await;
        assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
        assert_eq!(s.body["currencies"]["EUR"]["deposits"], 15_000 + 10 * round);
        assert!(x_position(&s) >= position);
    }
    let t = w.transfer(5, None).await;
    let p = t.body["position"].as_i64().expect("a position").to_string();
    let a = w
        .app
        .send(
            Method::GET,
            &format!("/v1/transfers/{}", t.id()),
            Some(&w.bob_token),
            None,
            &[("X-Min-Position", &p)],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["status"], "completed");
    x_position(&a);
    let u = w
        .app
        .send(
            Method::PATCH,
            &format!("/v1/accounts/{}/profile", w.bob),
            Some(&w.bob_token),
            Some(json!({"display_name": "Robert"})),
            &[],
        )
        .await;
    assert_eq!(u.status, StatusCode::OK, "{:?}", u.body);
    let p = u.body["position"].as_i64().expect("a position").to_string();
    let a = w
        .app
        .send(
            Method::GET,
            &format!("/v1/accounts/{}", w.bob),
            Some(&w.bob_token),
            None,
            &[("X-Min-Position", &p)],
        )
        .await;
    assert_eq!(a.body["display_name"], "Robert");
    x_position(&a);
    // Without X-Min-Position an answer may be stale, but an id a command just answered is
    // never reported unknown: a miss waits for the read model to reach the log's head.
    for currency in ["USD", "GBP", "CHF"] {
        let opened = w
            .app
            .post("/v1/wallets", &w.alice_token, json!({"currency": currency}))
            .await;
        assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
        let req = axum::http::Request::builder()
            .method(Method::GET)
            .uri(format!("/v1/wallets/{}", opened.id()))
            .header("authorization", format!("Bearer {}", w.bob_token))
            .body(axum::body::Body::empty())
            .expect("a request");
        let a = w.app.raw(req).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
        let req = axum::http::Request::builder()
            .method(Method::GET)
            .uri(format!("/v1/wallets/{}", opened.id()))
            .header("authorization", format!("Bearer {}", w.alice_token))
            .body(axum::body::Body::empty())
            .expect("a request");
        let a = w.app.raw(req).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.body["currency"], currency);
        x_position(&a);
    }
    // A position the log does not hold is a bad request, not a wait.
    let a = w
        .app
        .send(
            Method::GET,
            &format!("/v1/wallets/{}", w.alice_wallet),
            Some(&w.alice_token),
            None,
            &[("X-Min-Position", "999999999")],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
}

/// Steps `worker` until it has taken in the log's last event (an idle step only means that a
/// transaction somewhere in the cluster is still open).
async fn to_the_head(app: &TestApp, worker: &mut Worker) {
    worker.load().await.expect("checkpoint");
    let head: (i64, i64) =
        sqlx::query_as("SELECT tx, position FROM events ORDER BY tx DESC, position DESC LIMIT 1")
            .fetch_one(&app.db.pool)
            .await
            .expect("the log head");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while (worker.cursor().tx, worker.cursor().position) < head {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker reaches the head"
        );
        if worker.step().await.expect("a step") == Step::Idle {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

fn money_projector(name: &str) -> Arc<dyn Projector> {
    projections::by_name(name).unwrap_or_else(|| panic!("a projector {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_of_the_money_read_models_yields_the_live_rows() {
    let w = world().await;
    w.transfer(300, Some("x")).await;
    w.withdraw(w.alice_wallet, &w.alice_token, 100).await;
    escrow_and_pot(&w).await;
    let k = w
        .app
        .post(
            &format!("/v1/accounts/{}/kyc", w.bob),
            &w.bob_token,
            json!({"document_ref": "id-card"}),
        )
        .await;
    assert_eq!(k.status, StatusCode::OK, "{:?}", k.body);
    // The live read models have applied everything.
    for path in [
        format!("/v1/accounts/{}", w.bob),
        format!("/v1/wallets/{}", w.bob_wallet),
        "/v1/stats".to_owned(),
    ] {
        assert_eq!(w.app.get(&path, &w.admin).await.status, StatusCode::OK);
    }
    let pool = &w.app.db.pool;
    for name in ["accounts", "wallets", "stats"] {
        let p = money_projector(name);
        rebuild::prepare(pool, p.as_ref())
            .await
            .expect("shadow tables");
        let mut worker = rebuild::shadow_worker(pool, p.clone());
        to_the_head(&w.app, &mut worker).await;
        let diff = rebuild::differences(pool, p.as_ref())
            .await
            .expect("compare");
        assert!(diff.is_empty(), "{name}: {diff:?}");
        let live: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM public.{}", p.tables()[0]))
                .fetch_one(pool)
                .await
                .expect("count");
        assert!(live > 0, "{name} has rows");
        rebuild::discard(pool, p.as_ref()).await.expect("discard");
    }
}

/// Batches cut transactions (a transfer's two legs, a payment's debit and escrow funding):
/// replayed one event per batch, the totals still balance at every checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_totals_balance_at_every_checkpoint_even_when_a_batch_cuts_a_transaction() {
    let w = world().await;
    w.transfer(300, None).await;
    escrow_and_pot(&w).await;
    w.transfer(50, None).await;
    let pool = &w.app.db.pool;
    let stats = money_projector("stats");
    rebuild::prepare(pool, stats.as_ref())
        .await
        .expect("shadow tables");
    let schema = rebuild::shadow_schema("stats");
    let mut worker = Worker::new(
        pool.clone(),
        stats.clone(),
        "one-by-one:stats".to_owned(),
        schema.clone(),
        WorkerConfig {
            batch: 1,
            ..WorkerConfig::default()
        },
    );
    worker.load().await.expect("checkpoint");
    let head: (i64, i64) =
        sqlx::query_as("SELECT tx, position FROM events ORDER BY tx DESC, position DESC LIMIT 1")
            .fetch_one(pool)
            .await
            .expect("the log head");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut steps = 0;
    let mut pending_seen = false;
    while (worker.cursor().tx, worker.cursor().position) < head {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker reaches the head"
        );
        if worker.step().await.expect("a step") == Step::Idle {
            // A transaction elsewhere in the cluster is still open: the log waits for it.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        }
        steps += 1;
        let unbalanced: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT currency, (deposits - withdrawals - balances - escrowed - in_pots)::text \
             FROM {schema}.platform_totals \
             WHERE balances + escrowed + in_pots <> deposits - withdrawals"
        ))
        .fetch_all(pool)
        .await
        .expect("totals");
        assert!(unbalanced.is_empty(), "after step {steps}: {unbalanced:?}");
        let pending: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {schema}.platform_totals_pending"
        ))
        .fetch_one(pool)
        .await
        .expect("pending");
        pending_seen |= pending > 0;
    }
    assert!(steps > 10);
    assert!(pending_seen, "some batch cut a transaction");
    let pending: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.platform_totals_pending"
    ))
    .fetch_one(pool)
    .await
    .expect("pending");
    assert_eq!(pending, 0, "nothing pending at the end of the log");
    // And the result is the live one.
    let _ = w.app.get("/v1/stats", &w.admin).await;
    let diff = rebuild::differences(pool, stats.as_ref())
        .await
        .expect("compare");
    assert!(diff.is_empty(), "{diff:?}");
    rebuild::discard(pool, stats.as_ref())
        .await
        .expect("discard");
}
