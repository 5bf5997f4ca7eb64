//! Audit and replay over HTTP: who may read, a stream's history with its metadata, the global
//! log in commit order (JSON pages and NDJSON), filters, and aggregates rebuilt as of a
//! version or a time reproducing the states GET answered along the way.

use crate::support::{Answer, TestApp};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::{DateTime, Duration, Utc};
use commands::audit::{self, LogFilter};
use commands::Role;
use futures::TryStreamExt;
use http_body_util::BodyExt;
use schemas::Cursor;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

/// Two customers with EUR wallets, money moved between them, and the staff's tokens.
struct World {
    app: TestApp,
    alice_token: String,
    alice_wallet: Uuid,
    bob_wallet: Uuid,
    auditor: String,
    admin: String,
}

async fn world() -> World {
    let app = TestApp::new().await;
    let (_, alice_token) = app.customer("alice").await;
    let alice_wallet = app.wallet(&alice_token, "EUR").await;
    let (_, bob_token) = app.customer("bob").await;
    let bob_wallet = app.wallet(&bob_token, "EUR").await;
    let auditor = app.token("auditor", &[Role::Auditor]);
    let admin = app.token("admin", &[Role::Admin]);
    World {
        app,
        alice_token,
        alice_wallet,
        bob_wallet,
        auditor,
        admin,
    }
}

impl World {
    async fn transfer(&self, amount: i64) -> Answer {
        let a = self
            .app
            .post(
                "/v1/transfers",
                &self.alice_token,
                json!({"from_wallet": self.alice_wallet, "to_wallet": self.bob_wallet, "amount": amount}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "transfer: {:?}", a.body);
        a
    }

    /// A few dozen events from concurrent commands, so that commit order matters.
    async fn workload(&self) {
        let deposits = (0..12).map(|i| {
            let wallet = if i % 2 == 0 {
                self.alice_wallet
            } else {
                self.bob_wallet
            };
            self.app.deposit(wallet, 100 + i)
        });
        for a in futures::future::join_all(deposits).await {
            assert_eq!(a.status, StatusCode::OK, "deposit: {:?}", a.body);
        }
        let transfers = (0..4).map(|i| self.transfer(10 + i));
        futures::future::join_all(transfers).await;
        self.settle().await;
    }

    /// Waits until every committed event is below the log's horizon (readable by tailers):
    /// the PostgreSQL cluster is shared, and another database's open transaction holds the
    /// horizon back for a while.
    async fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events \
                 WHERE tx >= pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            )
            .fetch_one(&self.app.db.pool)
            .await
            .expect("the horizon");
            if pending == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{pending} events stay above the horizon"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.app.get(path, &self.auditor).await
    }

    /// Every page of the global log from `query`, following `next` until a page is not full.
    async fn all_pages(&self, query: &str) -> Vec<Value> {
        let mut events = Vec::new();
        // A starting `after=` of the query is replaced by each page's `next`.
        let mut after: Option<String> = None;
        let rest: Vec<&str> = query
            .split('&')
            .filter(|p| match p.strip_prefix("after=") {
                Some(a) => {
                    after = Some(a.to_owned());
                    false
                }
                None => true,
            })
            .collect();
        let query = rest.join("&");
        loop {
            let sep = if query.is_empty() { "" } else { "&" };
            let path = match &after {
                Some(a) => format!("/v1/audit/events?{query}{sep}after={a}"),
                None => format!("/v1/audit/events?{query}"),
            };
            let a = self.get(&path).await;
            assert_eq!(a.status, StatusCode::OK, "{path}: {:?}", a.body);
            events.extend(a.body["events"].as_array().expect("events").clone());
            if !a.body["has_more"].as_bool().expect("has_more") {
                return events;
            }
            after = Some(a.body["next"].as_str().expect("next").to_owned());
        }
    }

    /// The NDJSON body of `path` as the auditor, one value per line.
    async fn ndjson(&self, path: &str) -> Vec<Value> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.auditor))
            .header("accept", "application/x-ndjson")
            .body(Body::empty())
            .expect("a request");
        let response = self.app.router.clone().oneshot(req).await.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "application/x-ndjson",
            "content type"
        );
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "lines end with \\n"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    /// Event ids of `WHERE <condition>` in commit order, straight from the table.
    async fn ids_where(&self, condition: &str) -> Vec<Uuid> {
        sqlx::query_scalar(&format!(
            "SELECT event_id FROM events WHERE {condition} ORDER BY tx, position"
        ))
        .fetch_all(&self.app.db.pool)
        .await
        .expect("read the log")
    }
}

/// The columns of `events` other than the stream's, as a tuple.
type StoredRow = (
    i64,
    i64,
    Uuid,
    String,
    i32,
    Value,
    String,
    String,
    Uuid,
    Uuid,
    Option<Uuid>,
    DateTime<Utc>,
);

fn ids(events: &[Value]) -> Vec<Uuid> {
    events
        .iter()
        .map(|e| {
            e["event_id"]
                .as_str()
                .expect("event_id")
                .parse()
                .expect("uuid")
        })
        .collect()
}

fn assert_problem(a: &Answer, status: StatusCode, field: Option<&str>) {
    assert_eq!(a.status, status, "{:?}", a.body);
    assert_eq!(
        a.headers["content-type"], "application/problem+json",
        "{:?}",
        a.body
    );
    assert_eq!(a.body["status"], status.as_u16());
    if let Some(f) = field {
        assert_eq!(a.body["field"], f, "{:?}", a.body);
    }
}

#[tokio::test]
async fn only_auditors_and_admins_read_the_audit_routes() {
    let w = world().await;
    assert_eq!(
        w.app.deposit(w.alice_wallet, 500).await.status,
        StatusCode::OK
    );
    let paths = [
        format!("/v1/audit/streams/wallet/{}", w.alice_wallet),
        "/v1/audit/events".to_owned(),
        format!("/v1/wallets/{}/as-of?version=1", w.alice_wallet),
    ];
    for path in &paths {
        let none = w.app.send(Method::GET, path, None, None, &[]).await;
        assert_problem(&none, StatusCode::UNAUTHORIZED, None);
        let customer = w.app.get(path, &w.alice_token).await;
        assert_problem(&customer, StatusCode::FORBIDDEN, None);
        // A customer learns nothing from the parameters either.
        let sep = if path.contains('?') { '&' } else { '?' };
        let bad = w
            .app
            .get(&format!("{path}{sep}limit=0"), &w.alice_token)
            .await;
        assert_problem(&bad, StatusCode::FORBIDDEN, None);
        for token in [&w.auditor, &w.admin] {
            let a = w.app.get(path, token).await;
            assert_eq!(a.status, StatusCode::OK, "{path}: {:?}", a.body);
        }
        let payments = w.app.token("psp", &[Role::Payments]);
        assert_problem(
            &w.app.get(path, &payments).await,
            StatusCode::FORBIDDEN,
            None,
        );
    }
}

#[tokio::test]
async fn a_stream_history_carries_every_event_with_its_metadata_in_version_order() {
    let w = world().await;
    for amount in [100, 200, 300] {
        assert_eq!(
            w.app.deposit(w.alice_wallet, amount).await.status,
            StatusCode::OK
        );
    }
    w.transfer(50).await;
    w.settle().await;
    let path = format!("/v1/audit/streams/wallet/{}", w.alice_wallet);
    let a = w.get(&path).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["stream_type"], "wallet");
    assert_eq!(a.body["stream_id"], w.alice_wallet.to_string());
    assert_eq!(a.body["next_from_version"], Value::Null);
    let events = a.body["events"].as_array().expect("events").clone();
    let versions: Vec<i64> = events
        .iter()
        .map(|e| e["stream_version"].as_i64().expect("version"))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        vec![
            "WalletOpened",
            "FundsDeposited",
            "FundsDeposited",
            "FundsDeposited",
            "TransferSent"
        ]
    );
    // Every column as stored.
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT position, tx, event_id, event_type, schema_version, payload, actor_sub, \
             actor_role, command_id, correlation_id, causation_id, occurred_at \
             FROM events WHERE stream_id = $1 ORDER BY stream_version",
    )
    .bind(w.alice_wallet)
    .fetch_all(&w.app.db.pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), events.len());
    for (e, r) in events.iter().zip(&rows) {
        assert_eq!(e["position"], r.0);
        assert_eq!(e["tx"], r.1);
        assert_eq!(e["event_id"], r.2.to_string());
        assert_eq!(e["stream_type"], "wallet");
        assert_eq!(e["stream_id"], w.alice_wallet.to_string());
        assert_eq!(e["event_type"], r.3.as_str());
        assert_eq!(e["schema_version"], r.4);
        assert_eq!(e["payload"], r.5);
        assert_eq!(e["actor_sub"], r.6.as_str());
        assert_eq!(e["actor_role"], r.7.as_str());
        assert_eq!(e["command_id"], r.8.to_string());
        assert_eq!(e["correlation_id"], r.9.to_string());
        assert_eq!(e["causation_id"], json!(r.10));
        let at: DateTime<Utc> = e["occurred_at"]
            .as_str()
            .expect("time")
            .parse()
            .expect("rfc3339");
        assert_eq!(at, r.11);
    }
    assert_eq!(events[1]["actor_sub"], "psp");
    assert_eq!(events[1]["actor_role"], "payments");
    assert_eq!(events[4]["actor_sub"], "alice");

    // from_version and pages.
    let a = w.get(&format!("{path}?from_version=4")).await;
    let tail: Vec<i64> = a.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["stream_version"].as_i64().expect("v"))
        .collect();
    assert_eq!(tail, vec![4, 5]);
    let mut paged = Vec::new();
    let mut from = 1;
    loop {
        let a = w.get(&format!("{path}?from_version={from}&limit=2")).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        paged.extend(a.body["events"].as_array().expect("events").clone());
        match a.body["next_from_version"].as_i64() {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(paged, events);
    // Past the end of an existing stream: an empty page, not a 404.
    let a = w.get(&format!("{path}?from_version=99")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["events"], json!([]));
    // The plural works as the type too.
    let a = w
        .get(&format!("/v1/audit/streams/wallets/{}", w.alice_wallet))
        .await;
    assert_eq!(a.body["events"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn stream_history_refuses_bad_input_and_unknown_streams() {
    let w = world().await;
    let wallet = w.alice_wallet;
    assert_problem(
        &w.get(&format!("/v1/audit/streams/bogus/{wallet}")).await,
        StatusCode::BAD_REQUEST,
        Some("type"),
    );
    assert_problem(
        &w.get("/v1/audit/streams/wallet/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        Some("id"),
    );
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("from_version=0", "from_version"),
        ("from_version=-3", "from_version"),
        ("colour=blue", "colour"),
    ] {
        assert_problem(
            &w.get(&format!("/v1/audit/streams/wallet/{wallet}?{q}"))
                .await,
            StatusCode::BAD_REQUEST,
            Some(field),
        );
    }
    let a = w
        .get(&format!("/v1/audit/streams/wallet/{}", Uuid::now_v7()))
        .await;
    assert_problem(&a, StatusCode::NOT_FOUND, None);
    // An existing id under another type is no such stream.
    let a = w.get(&format!("/v1/audit/streams/account/{wallet}")).await;
    assert_problem(&a, StatusCode::NOT_FOUND, None);
    let a = w
        .get(&format!("/v1/audit/streams/wallet/{wallet}?limit=1000"))
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn pages_of_the_global_log_cover_every_event_once_in_commit_order() {
    let w = world().await;
    w.workload().await;
    let all = w.ids_where("true").await;
    assert!(all.len() > 20, "a workload of {} events", all.len());
    for limit in [1, 7, 1000] {
        let paged = ids(&w.all_pages(&format!("limit={limit}")).await);
        assert_eq!(paged, all, "pages of {limit}");
    }
    // The default page is 100: everything here, and nothing more to come.
    let a = w.get("/v1/audit/events").await;
    assert_eq!(a.body["has_more"], false);
    assert_eq!(ids(a.body["events"].as_array().expect("events")), all);
    // `next` of the last page is where a tailer resumes: nothing yet, then the new events.
    let next = a.body["next"].as_str().expect("next").to_owned();
    let a = w.get(&format!("/v1/audit/events?after={next}")).await;
    assert_eq!(a.body["events"], json!([]));
    assert_eq!(a.body["next"], next);
    assert_eq!(w.app.deposit(w.bob_wallet, 1).await.status, StatusCode::OK);
    w.settle().await;
    let a = w.get(&format!("/v1/audit/events?after={next}")).await;
    assert_eq!(a.body["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(a.body["events"][0]["event_type"], "FundsDeposited");

    // A bare position P: the events after the one at P, in commit order.
    let all = w.ids_where("true").await;
    let (p,): (i64,) = sqlx::query_as("SELECT position FROM events WHERE event_id = $1")
        .bind(all[9])
        .fetch_one(&w.app.db.pool)
        .await
        .expect("position");
    let rest = ids(&w.all_pages(&format!("after={p}&limit=5")).await);
    assert_eq!(rest, all[10..].to_vec());
    let rest = ids(&w.all_pages("after=0&limit=5").await);
    assert_eq!(rest, all);
}

#[tokio::test]
async fn filters_of_the_global_log_select_what_they_say() {
    let w = world().await;
    w.workload().await;
    let pool = &w.app.db.pool;
    let check = |query: &'static str, condition: &'static str| {
        let w = &w;
        async move {
            let expected = w.ids_where(condition).await;
            assert!(!expected.is_empty(), "{query} selects something");
            let got = ids(&w.all_pages(&format!("{query}&limit=3")).await);
            assert_eq!(got, expected, "{query}");
        }
    };
    check("types=FundsDeposited", "event_type = 'FundsDeposited'").await;
    check(
        "types=TransferSent,%20TransferReceived",
        "event_type IN ('TransferSent', 'TransferReceived')",
    )
    .await;
    check("stream_type=account", "stream_type = 'account'").await;
    check("actor=psp", "actor_sub = 'psp'").await;
    check(
        "stream_type=wallet&actor=alice&types=TransferSent",
        "stream_type = 'wallet' AND actor_sub = 'alice' AND event_type = 'TransferSent'",
    )
    .await;
    // A time range: from the 5th event's time (inclusive) to the 20th's (exclusive).
    let times: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT occurred_at FROM events ORDER BY tx, position")
            .fetch_all(pool)
            .await
            .expect("times");
    let (from, to) = (times[4], times[19]);
    let expected: Vec<Uuid> = sqlx::query_scalar(
        "SELECT event_id FROM events WHERE occurred_at >= $1 AND occurred_at < $2 \
         ORDER BY tx, position",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .expect("range");
    let q = format!(
        "from={}&to={}&limit=4",
        from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    assert!(!expected.is_empty());
    assert_eq!(ids(&w.all_pages(&q).await), expected);
    // An offset with `+` arrives as a space unless encoded; both work.
    let plus = format!(
        "from={}&limit=1000",
        from.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
            .replace('+', "%2B")
    );
    let space = plus.replace("%2B", "+");
    assert_eq!(w.all_pages(&plus).await, w.all_pages(&space).await);
    // Nothing matches: an empty page.
    let a = w.get("/v1/audit/events?actor=nobody").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["events"], json!([]));
    assert_eq!(a.body["next"], "0-0");
}

#[tokio::test]
async fn the_global_log_refuses_bad_parameters() {
    let w = world().await;
    let long = "x".repeat(201);
    let many = vec!["A"; 51].join(",");
    let cases: Vec<(String, &str)> = vec![
        ("limit=0".into(), "limit"),
        ("limit=1001".into(), "limit"),
        ("limit=-1".into(), "limit"),
        ("after=abc".into(), "after"),
        ("after=-1".into(), "after"),
        ("after=1-x".into(), "after"),
        ("after=99999999".into(), "after"),
        (format!("after={}", "9".repeat(70)), "after"),
        ("types=Funds%3BDeposited".into(), "types"),
        (format!("types={many}"), "types"),
        ("stream_type=planet".into(), "stream_type"),
        (format!("actor={long}"), "actor"),
        ("actor=".into(), "actor"),
        ("actor=al%00ice".into(), "actor"),
        ("from=yesterday".into(), "from"),
        ("to=2026-13-01T00:00:00Z".into(), "to"),
        ("sort=desc".into(), "sort"),
    ];
    for (q, field) in cases {
        assert_problem(
            &w.get(&format!("/v1/audit/events?{q}")).await,
            StatusCode::BAD_REQUEST,
            Some(field),
        );
    }
    // NDJSON checks its parameters before it starts streaming.
    let req = Request::builder()
        .uri("/v1/audit/events?limit=0")
        .header("authorization", format!("Bearer {}", w.auditor))
        .header("accept", "application/x-ndjson")
        .body(Body::empty())
        .expect("a request");
    let a = w.app.raw(req).await;
    assert_problem(&a, StatusCode::BAD_REQUEST, Some("limit"));
}

#[tokio::test]
async fn ndjson_streams_every_matching_event_as_the_pages_show_it() {
    let w = world().await;
    w.workload().await;
    let pages = w.all_pages("limit=6").await;
    let lines = w.ndjson("/v1/audit/events").await;
    assert_eq!(lines, pages);
    assert_eq!(ids(&lines), w.ids_where("true").await);
    // Filters, a start and a limit apply as they do to pages.
    let pages = w.all_pages("types=FundsDeposited&limit=2").await;
    let lines = w.ndjson("/v1/audit/events?types=FundsDeposited").await;
    assert_eq!(lines, pages);
    let next = format!("{}-{}", lines[2]["tx"], lines[2]["position"]);
    let rest = w
        .ndjson(&format!(
            "/v1/audit/events?types=FundsDeposited&after={next}&limit=4"
        ))
        .await;
    assert_eq!(rest, pages[3..7].to_vec());
    // `application/x-ndjson` among other types still selects it.
    let req = Request::builder()
        .uri("/v1/audit/events?actor=nobody")
        .header("authorization", format!("Bearer {}", w.auditor))
        .header("accept", "text/plain;q=0.5, application/x-ndjson")
        .body(Body::empty())
        .expect("a request");
    let response = w.app.router.clone().oneshot(req).await.expect("answer");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(body.is_empty());
}

#[tokio::test]
async fn the_export_reads_the_log_in_batches_without_skipping_or_repeating() {
    let w = world().await;
    w.workload().await;
    let pool = w.app.db.pool.clone();
    let all = w.ids_where("true").await;
    for batch in [1, 3, 1000] {
        let batches: Vec<Vec<schemas::RecordedEvent>> = audit::export(
            pool.clone(),
            Cursor::START,
            LogFilter::default(),
            None,
            batch,
        )
        .try_collect()
        .await
        .expect("export");
        assert!(batches.iter().all(|b| b.len() as i64 <= batch));
        let got: Vec<Uuid> = batches.iter().flatten().map(|e| e.event_id).collect();
        assert_eq!(got, all, "batches of {batch}");
    }
    let limited: Vec<Vec<schemas::RecordedEvent>> = audit::export(
        pool.clone(),
        Cursor::START,
        LogFilter::default(),
        Some(5),
        2,
    )
    .try_collect()
    .await
    .expect("export");
    let got: Vec<Uuid> = limited.iter().flatten().map(|e| e.event_id).collect();
    assert_eq!(got, all[..5].to_vec());
}

#[tokio::test]
async fn as_of_rebuilds_each_state_that_get_answered_by_version_and_by_time() {
    let w = world().await;
    let wallet = w.alice_wallet;
    // (version, balance) as GET answered after each command.
    let mut seen: Vec<(i64, i64)> = Vec::new();
    let record = |view: Value| {
        (
            view["version"].as_i64().expect("version"),
            view["balance"].as_i64().expect("balance"),
        )
    };
    seen.push(record(w.app.wallet_view(wallet).await));
    for amount in [1_000, 250, 4_000] {
        assert_eq!(w.app.deposit(wallet, amount).await.status, StatusCode::OK);
        seen.push(record(w.app.wallet_view(wallet).await));
    }
    w.transfer(700).await;
    seen.push(record(w.app.wallet_view(wallet).await));
    let a = w
        .app
        .post(
            &format!("/v1/wallets/{wallet}/withdrawals"),
            &w.alice_token,
            json!({"amount": 300, "external_ref": "wd-1"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "withdraw: {:?}", a.body);
    seen.push(record(w.app.wallet_view(wallet).await));
    assert_eq!(
        seen,
        vec![
            (1, 0),
            (2, 1_000),
            (3, 1_250),
            (4, 5_250),
            (5, 4_550),
            (6, 4_250)
        ]
    );
    let history = w.get(&format!("/v1/audit/streams/wallet/{wallet}")).await;
    let events = history.body["events"].as_array().expect("events").clone();
    for (version, balance) in &seen {
        let a = w
            .get(&format!("/v1/wallets/{wallet}/as-of?version={version}"))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.body["version"], *version);
        assert_eq!(a.body["stream_type"], "wallet");
        assert_eq!(a.body["id"], wallet.to_string());
        assert_eq!(a.body["state"]["balance"], *balance, "version {version}");
        assert_eq!(a.body["state"]["currency"], "EUR");
        let event = &events[(*version - 1) as usize];
        assert_eq!(a.body["as_of"], event["occurred_at"]);
        assert_eq!(a.body["position"], event["position"]);
        // By time: at the moment of that event, and just before the next one.
        let at: DateTime<Utc> = event["occurred_at"]
            .as_str()
            .expect("time")
            .parse()
            .expect("rfc3339");
        let micros = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let a = w
            .get(&format!("/v1/wallets/{wallet}/as-of?at={}", micros(at)))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.body["version"], *version, "at {at}");
        assert_eq!(a.body["state"]["balance"], *balance);
        if let Some(next) = events.get(*version as usize) {
            let next: DateTime<Utc> = next["occurred_at"]
                .as_str()
                .expect("time")
                .parse()
                .expect("rfc3339");
            let just_before = next - Duration::microseconds(1);
            let a = w
                .get(&format!(
                    "/v1/wallets/{wallet}/as-of?at={}",
                    micros(just_before)
                ))
                .await;
            assert_eq!(a.body["state"]["balance"], *balance, "just before {next}");
        }
    }
    // The counterparty's wallet and the owner's account replay too.
    let a = w
        .get(&format!(
            "/v1/wallets/{}/as-of?at={}",
            w.bob_wallet, "2999-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(a.body["state"]["balance"], 700);
    // Before the first event, or a version never reached: 404.
    let first: DateTime<Utc> = events[0]["occurred_at"]
        .as_str()
        .expect("time")
        .parse()
        .expect("rfc3339");
    let before =
        (first - Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert_problem(
        &w.get(&format!("/v1/wallets/{wallet}/as-of?at={before}"))
            .await,
        StatusCode::NOT_FOUND,
        None,
    );
    assert_problem(
        &w.get(&format!("/v1/wallets/{wallet}/as-of?version=7"))
            .await,
        StatusCode::NOT_FOUND,
        None,
    );
    assert_problem(
        &w.get(&format!("/v1/wallets/{}/as-of?version=1", Uuid::now_v7()))
            .await,
        StatusCode::NOT_FOUND,
        None,
    );
    // A wallet is no account.
    assert_problem(
        &w.get(&format!("/v1/accounts/{wallet}/as-of?version=1"))
            .await,
        StatusCode::NOT_FOUND,
        None,
    );
}

#[tokio::test]
async fn as_of_serves_every_aggregate_type_and_refuses_bad_parameters() {
    let w = world().await;
    let (account,): (Uuid,) =
        sqlx::query_as("SELECT stream_id FROM events WHERE stream_type = 'account' LIMIT 1")
            .fetch_one(&w.app.db.pool)
            .await
            .expect("an account");
    let a = w
        .get(&format!("/v1/accounts/{account}/as-of?version=1"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["stream_type"], "account");
    // Unknown ids of every type are 404s, not failures.
    for t in [
        "accounts", "wallets", "orders", "escrows", "pots", "devices",
    ] {
        let a = w
            .get(&format!("/v1/{t}/{}/as-of?version=1", Uuid::now_v7()))
            .await;
        assert_problem(&a, StatusCode::NOT_FOUND, None);
    }
    let wallet = w.alice_wallet;
    for (q, field) in [
        ("", "at"),
        ("at=2026-01-01T00:00:00Z&version=1", "at"),
        ("version=0", "version"),
        ("version=-1", "version"),
        ("version=x", "version"),
        ("at=tomorrow", "at"),
        ("at=", "at"),
        ("when=now", "when"),
    ] {
        assert_problem(
            &w.get(&format!("/v1/wallets/{wallet}/as-of?{q}")).await,
            StatusCode::BAD_REQUEST,
            Some(field),
        );
    }
    assert_problem(
        &w.get("/v1/wallets/nope/as-of?version=1").await,
        StatusCode::BAD_REQUEST,
        Some("id"),
    );
}

#[tokio::test]
async fn the_audit_routes_are_described_in_openapi() {
    let app = TestApp::new().await;
    let doc = app
        .send(Method::GET, "/openapi.json", None, None, &[])
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths = &doc.body["paths"];
    for path in [
        "/v1/audit/streams/{type}/{id}",
        "/v1/audit/events",
        "/v1/accounts/{id}/as-of",
        "/v1/wallets/{id}/as-of",
        "/v1/orders/{id}/as-of",
        "/v1/escrows/{id}/as-of",
        "/v1/pots/{id}/as-of",
        "/v1/devices/{id}/as-of",
    ] {
        assert!(paths[path]["get"].is_object(), "{path} is described");
    }
    let events = &paths["/v1/audit/events"]["get"]["responses"]["200"]["content"];
    assert!(events["application/x-ndjson"].is_object(), "{events}");
    assert!(doc.body["components"]["schemas"]["AuditEvent"].is_object());
}

/// Inserts `n` synthetic events of one new `pot` stream in one transaction (only for apps
/// without projectors: nothing must try to apply them).
async fn synthetic_events(pool: &sqlx::PgPool, n: i64) -> Uuid {
    let stream = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, \
         schema_version, payload, actor_sub, actor_role, command_id, correlation_id, occurred_at) \
         SELECT gen_random_uuid(), 'pot', $1, v, 'Synthetic', 1, jsonb_build_object('n', v), \
                'loader', 'admin', gen_random_uuid(), gen_random_uuid(), now() \
         FROM generate_series(1, $2) AS v",
    )
    .bind(stream)
    .bind(n)
    .execute(pool)
    .await
    .expect("insert synthetic events");
    stream
}

#[tokio::test]
async fn an_event_that_commits_late_is_neither_skipped_nor_shown_early() {
    let app = TestApp::without_projectors().await;
    let auditor = app.token("auditor", &[Role::Auditor]);
    let (_, alice) = app.customer("alice").await;
    let wallet = app.wallet(&alice, "EUR").await;
    let w = World {
        app,
        alice_token: alice,
        alice_wallet: wallet,
        bob_wallet: wallet,
        auditor: auditor.clone(),
        admin: auditor,
    };
    w.settle().await;
    let head = w.get("/v1/audit/events?limit=1000").await;
    let cursor = head.body["next"].as_str().expect("next").to_owned();
    // A transaction writes an event and stays open; a deposit commits after it.
    let mut late = w.app.db.pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, \
         schema_version, payload, actor_sub, actor_role, command_id, correlation_id, occurred_at) \
         VALUES (gen_random_uuid(), 'pot', gen_random_uuid(), 1, 'Synthetic', 1, '{}', \
                 'loader', 'admin', gen_random_uuid(), gen_random_uuid(), now())",
    )
    .execute(&mut *late)
    .await
    .expect("insert the late event");
    assert_eq!(w.app.deposit(wallet, 100).await.status, StatusCode::OK);
    // The deposit is committed, but an older transaction is still open: nothing is final.
    for _ in 0..3 {
        let a = w.get(&format!("/v1/audit/events?after={cursor}")).await;
        assert_eq!(a.body["events"], json!([]), "nothing shown early");
        assert_eq!(a.body["next"], cursor.as_str());
        let lines = w.ndjson(&format!("/v1/audit/events?after={cursor}")).await;
        assert!(lines.is_empty());
    }
    late.commit().await.expect("commit the late event");
    w.settle().await;
    let a = w.get(&format!("/v1/audit/events?after={cursor}")).await;
    let types: Vec<&str> = a.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    // The late event sorts first: its transaction is the older one.
    assert_eq!(types, vec!["Synthetic", "FundsDeposited"]);
    assert_eq!(
        ids(a.body["events"].as_array().expect("events")),
        w.ids_where("true").await[head.body["events"].as_array().expect("e").len()..].to_vec()
    );
}

#[tokio::test]
async fn ndjson_crosses_batch_boundaries_and_matches_the_table() {
    let app = TestApp::without_projectors().await;
    let auditor = app.token("auditor", &[Role::Auditor]);
    let w = World {
        app,
        alice_token: String::new(),
        alice_wallet: Uuid::nil(),
        bob_wallet: Uuid::nil(),
        auditor: auditor.clone(),
        admin: auditor,
    };
    synthetic_events(&w.app.db.pool, 1_500).await;
    synthetic_events(&w.app.db.pool, 1_200).await;
    w.settle().await;
    let all = w.ids_where("true").await;
    assert_eq!(all.len(), 2_700);
    let lines = w.ndjson("/v1/audit/events").await;
    assert_eq!(ids(&lines), all);
    let positions: Vec<i64> = lines
        .iter()
        .map(|l| l["position"].as_i64().expect("position"))
        .collect();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY tx, position")
        .fetch_all(&w.app.db.pool)
        .await
        .expect("positions");
    assert_eq!(positions, stored);
    // A limit over a batch boundary, and the pages agree.
    let some = w.ndjson("/v1/audit/events?limit=1234").await;
    assert_eq!(ids(&some), all[..1234].to_vec());
    assert_eq!(w.all_pages("limit=1000").await, lines);
}

/// (version, status, display name) of an account as GET answers it to an admin.
async fn account(w: &World, id: Uuid) -> (i64, String, Value) {
    let a = w.app.get(&format!("/v1/accounts/{id}"), &w.admin).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    (
        a.body["version"].as_i64().expect("version"),
        a.body["status"].as_str().expect("status").to_owned(),
        a.body["display_name"].clone(),
    )
}

#[tokio::test]
async fn as_of_rebuilds_an_account_through_its_lifecycle() {
    let w = world().await;
    let (bob, bob_token) = w.app.customer("bobby").await;
    let mut seen = vec![account(&w, bob).await];
    let a = w
        .app
        .send(
            Method::PATCH,
            &format!("/v1/accounts/{bob}/profile"),
            Some(&bob_token),
            Some(json!({"display_name": "Robert"})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    seen.push(account(&w, bob).await);
    let a = w
        .app
        .post(
            &format!("/v1/accounts/{bob}/suspend"),
            &w.admin,
            json!({"reason": "fraud check"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    seen.push(account(&w, bob).await);
    let a = w
        .app
        .post(
            &format!("/v1/accounts/{bob}/reinstate"),
            &w.admin,
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    seen.push(account(&w, bob).await);
    let statuses: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(statuses, vec!["active", "active", "suspended", "active"]);
    for (version, status, display_name) in &seen {
        let a = w
            .get(&format!("/v1/accounts/{bob}/as-of?version={version}"))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.body["version"], *version);
        assert_eq!(a.body["state"]["status"], status.as_str(), "v{version}");
        assert_eq!(a.body["state"]["display_name"], *display_name, "v{version}");
        assert_eq!(a.body["state"]["subject"], "bobby");
    }
}

#[tokio::test]
async fn a_reader_paging_during_concurrent_writes_sees_every_event_once_in_commit_order() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let w = world().await;
    let done = AtomicBool::new(false);
    let writes = async {
        for _ in 0..3 {
            w.workload().await;
        }
        done.store(true, Ordering::SeqCst);
    };
    let reads = async {
        let mut seen: Vec<Value> = Vec::new();
        let mut after = "0".to_owned();
        loop {
            let finished = done.load(Ordering::SeqCst);
            if finished {
                w.settle().await;
            }
            let a = w
                .get(&format!("/v1/audit/events?after={after}&limit=3"))
                .await;
            assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
            seen.extend(a.body["events"].as_array().expect("events").clone());
            after = a.body["next"].as_str().expect("next").to_owned();
            if finished && a.body["has_more"] == false {
                return seen;
            }
            if a.body["has_more"] == false {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    };
    let ((), seen) = tokio::join!(writes, reads);
    assert_eq!(ids(&seen), w.ids_where("true").await);
}

#[tokio::test]
async fn extreme_values_are_answered_without_a_server_error() {
    let w = world().await;
    let wallet = w.alice_wallet;
    let max = i64::MAX;
    for path in [
        format!("/v1/audit/streams/wallet/{wallet}?from_version={max}&limit=1000"),
        format!("/v1/audit/streams/wallet/{wallet}?from_version=99999999999999999999"),
        format!("/v1/audit/events?after={max}-{max}"),
        format!("/v1/audit/events?after={max}"),
        "/v1/audit/events?after=0-0&limit=99999999999999999999".to_owned(),
        "/v1/audit/events?from=0000-01-01T00:00:00Z&to=9999-12-31T23:59:59.999999Z".to_owned(),
        "/v1/audit/events?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z".to_owned(),
        format!("/v1/audit/events?types={}", ",".repeat(500)),
        format!("/v1/audit/events?actor=%00{}", "%C3%A9".repeat(50)),
        format!("/v1/audit/events?x={}", "y".repeat(5000)),
        format!("/v1/wallets/{wallet}/as-of?version={max}"),
        format!("/v1/wallets/{wallet}/as-of?at=0000-01-01T00:00:00Z"),
        format!("/v1/wallets/{wallet}/as-of?at=9999-12-31T23:59:59Z"),
        format!("/v1/wallets/{wallet}/as-of?at=2026-01-01T00:00:00%2B14:00"),
        format!("/v1/audit/streams/wallet/{wallet}%00"),
        "/v1/audit/streams/%FF/x".to_owned(),
    ] {
        let a = w.get(&path).await;
        assert!(
            a.status.is_success() || a.status.is_client_error(),
            "{path}: {} {:?}",
            a.status,
            a.body
        );
        if !a.status.is_success() {
            assert_problem(&a, a.status, None);
        }
    }
}
