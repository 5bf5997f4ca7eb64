//! Schema evolution against a real log: an event of an older schema version is upcast on
//! every read path; an unknown event type or a schema version newer than this build reads
//! stops replay loudly on both paths, the command side (the aggregate is not loaded, the
//! command fails, nothing is appended) and the read side (the event is parked with the later
//! events of its stream, shown in the status and /ready, and a rebuild parks it again and
//! says so).

use crate::support::{small_batches, TestApp, SECRET};
use api::{AppState, AuthConfig};
use axum::http::StatusCode;
use commands::pg::PgEventStore;
use commands::{CommandService, Role, ServiceConfig, SystemClock};
use projections::{Projector, Worker};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// Appends an event to a stream straight into the log, as another build (or a hand) would.
async fn append_raw(
    pool: &PgPool,
    stream_type: &str,
    stream_id: Uuid,
    version: i64,
    event_type: &str,
    schema_version: i32,
    payload: Value,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, \
           schema_version, payload, actor_sub, actor_role, command_id, correlation_id, \
           causation_id, occurred_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'elsewhere', 'admin', $8, $8, NULL, now()) \
         RETURNING position",
    )
    .bind(Uuid::now_v7())
    .bind(stream_type)
    .bind(stream_id)
    .bind(version)
    .bind(event_type)
    .bind(schema_version)
    .bind(payload)
    .bind(Uuid::now_v7())
    .fetch_one(pool)
    .await
    .expect("append an event straight into the log")
}

/// The events of a stream: (version, event type).
async fn stream(pool: &PgPool, id: Uuid) -> Vec<(i64, String)> {
    sqlx::query_as(
        "SELECT stream_version, event_type FROM events WHERE stream_id = $1 \
         ORDER BY stream_version",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("stream")
}

/// The router of a freshly started process on the same database: nothing cached.
fn restarted(app: &TestApp) -> axum::Router {
    let store = PgEventStore::new(app.db.pool.clone(), 2);
    let service = CommandService::new(store, Arc::new(SystemClock), ServiceConfig::default());
    api::router(AppState {
        service: Arc::new(service),
        auth: Arc::new(AuthConfig::hs256(SECRET, None, None)),
        pool: app.db.pool.clone(),
        telemetry: ingest::group::GroupWriter::new(app.db.pool.clone(), 2),
    })
}

async fn deposit_via(router: &axum::Router, app: &TestApp, wallet: Uuid) -> (StatusCode, Value) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let psp = app.token("psp", &[Role::Payments]);
    let request = axum::http::Request::builder()
        .method("POST")
        .uri(format!("/v1/wallets/{wallet}/deposits"))
        .header("authorization", format!("Bearer {psp}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"amount": 1, "external_ref": format!("r-{}", Uuid::now_v7())}).to_string(),
        ))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("answer");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn parked(pool: &PgPool, projector: &str) -> Vec<(Uuid, i64, String, String)> {
    sqlx::query_as(
        "SELECT p.stream_id, e.stream_version, p.event_type, p.error \
         FROM projection_parked p JOIN events e ON e.position = p.position \
         WHERE p.projector = $1 ORDER BY p.tx, p.position",
    )
    .bind(projector)
    .fetch_all(pool)
    .await
    .expect("parked events")
}

/// Three funded wallets; wallet A gets an event of a type no build knows (and a valid one
/// after it), wallet B's first deposit is turned into a schema version from the future.
struct Log {
    a: Uuid,
    b: Uuid,
    c: Uuid,
    unknown_at: i64,
    too_new_at: i64,
}

async fn corrupted_log(app: &TestApp) -> Log {
    let pool = &app.db.pool;
    let mut wallets = Vec::new();
    for name in ["ann", "ben", "cid"] {
        let (_, token) = app.customer(&format!("{name}-{}", Uuid::now_v7())).await;
        let wallet = app.wallet(&token, "EUR").await;
        for amount in [100, 5] {
            assert_eq!(app.deposit(wallet, amount).await.status, StatusCode::OK);
        }
        wallets.push(wallet);
    }
    let (a, b, c) = (wallets[0], wallets[1], wallets[2]);
    let unknown_at = append_raw(
        pool,
        "wallet",
        a,
        4,
        "WalletRenamed",
        1,
        json!({"name": "holiday money"}),
    )
    .await;
    append_raw(
        pool,
        "wallet",
        a,
        5,
        "FundsDeposited",
        1,
        json!({"amount": 7, "external_ref": "after-the-unknown-one"}),
    )
    .await;
    // Past the append-only triggers, as a newer build's event or a tamperer would leave it.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("no triggers");
    let too_new_at: i64 = sqlx::query_scalar(
        "UPDATE events SET schema_version = 99 WHERE stream_id = $1 AND stream_version = 2 \
         RETURNING position",
    )
    .bind(b)
    .fetch_one(&mut *tx)
    .await
    .expect("a version from the future");
    tx.commit().await.expect("commit");
    Log {
        a,
        b,
        c,
        unknown_at,
        too_new_at,
    }
}

#[tokio::test]
async fn commands_on_a_stream_with_an_unknown_or_too_new_event_fail_and_append_nothing() {
    let app = TestApp::without_projectors().await;
    let pool = app.db.pool.clone();
    let log = corrupted_log(&app).await;
    let before_a = stream(&pool, log.a).await;
    let before_b = stream(&pool, log.b).await;

    // This process has wallet A cached at version 3: its append clashes with version 4, the
    // reload reaches the unknown event and stops there.
    for _ in 0..2 {
        let answer = app.deposit(log.a, 1).await;
        assert_eq!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{:?}",
            answer.body
        );
        assert_eq!(answer.body["code"], "internal", "{:?}", answer.body);
        // The problem tells the client nothing internal; the reason is logged.
        assert!(!answer.body.to_string().contains("WalletRenamed"));
    }
    assert_eq!(
        stream(&pool, log.a).await,
        before_a,
        "nothing appended to A"
    );

    // A restarted process loads both streams from the log: both fail, every time (a failed
    // load leaves no partial state behind to decide on).
    let router = restarted(&app);
    for wallet in [log.a, log.b] {
        for _ in 0..2 {
            let (status, body) = deposit_via(&router, &app, wallet).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body:?}");
        }
    }
    assert_eq!(stream(&pool, log.a).await, before_a);
    assert_eq!(
        stream(&pool, log.b).await,
        before_b,
        "nothing appended to B"
    );
    // The untouched wallet works in the restarted process.
    let (status, body) = deposit_via(&router, &app, log.c).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");

    // The load error names the event: type, version and position.
    let store = PgEventStore::new(pool.clone(), 1);
    let error = commands::repo::replay::<domain::wallet::Wallet>(store.as_ref(), log.a, 5)
        .await
        .expect_err("replay stops");
    let text = error.to_string();
    for part in [
        "WalletRenamed".to_owned(),
        "unknown event type".to_owned(),
        format!("position {}", log.unknown_at),
    ] {
        assert!(text.contains(&part), "{text:?} names {part}");
    }
    let error = commands::repo::replay::<domain::wallet::Wallet>(store.as_ref(), log.b, 3)
        .await
        .expect_err("replay stops");
    let text = error.to_string();
    for part in [
        "FundsDeposited".to_owned(),
        "schema version 99".to_owned(),
        "newer".to_owned(),
        format!("position {}", log.too_new_at),
    ] {
        assert!(text.contains(&part), "{text:?} names {part}");
    }
}

#[tokio::test]
async fn projectors_park_unknown_and_too_new_events_with_their_streams_and_a_rebuild_says_so() {
    let app = TestApp::without_projectors().await;
    let pool = app.db.pool.clone();
    let log = corrupted_log(&app).await;
    let wallets: Arc<dyn Projector> = projections::by_name("wallets").expect("wallets");

    // Live catch-up: the two bad events are parked, each with the later events of its
    // stream; the other wallet is current.
    let mut worker = Worker::live(pool.clone(), wallets.clone(), small_batches(1000));
    worker.load().await.expect("load");
    worker.catch_up(|_, _| {}).await.expect("catch up");
    let live = parked(&pool, "wallets").await;
    let summary: std::collections::BTreeSet<(Uuid, i64, &str)> = live
        .iter()
        .map(|(s, v, t, _)| (*s, *v, t.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (log.a, 4, "WalletRenamed"),
            (log.a, 5, "FundsDeposited"),
            (log.b, 2, "FundsDeposited"),
            (log.b, 3, "FundsDeposited"),
        ]
        .into_iter()
        .collect()
    );
    let reason = |stream: Uuid| {
        live.iter()
            .find(|p| p.0 == stream)
            .map(|p| p.3.clone())
            .unwrap_or_default()
    };
    let (ra, rb) = (reason(log.a), reason(log.b));
    assert!(
        ra.contains("unknown event type") && ra.contains(&format!("position {}", log.unknown_at)),
        "{ra}"
    );
    assert!(
        rb.contains("schema version 99") && rb.contains(&format!("position {}", log.too_new_at)),
        "{rb}"
    );
    let admin = app.token("admin", &[Role::Admin]);
    let balance = |v: Value| v["balance"].as_i64();
    assert_eq!(balance(app.wallet_view(log.a).await), Some(105));
    assert_eq!(
        balance(app.wallet_view(log.b).await),
        Some(0),
        "stops before v2"
    );
    assert_eq!(balance(app.wallet_view(log.c).await), Some(105));
    let ready = app.get("/ready", &admin).await;
    assert_eq!(
        ready.body["projections"]["wallets"]["parked"], 4,
        "{:?}",
        ready.body
    );
    let status = projections::status::status(&pool).await.expect("status");
    let standing = status
        .iter()
        .find(|s| s.name == "wallets")
        .expect("wallets");
    assert_eq!((standing.parked, standing.lag_events), (4, 0));

    // A rebuild does not skip them either: the shadow parks the same events, and the swap
    // brings them along to the live read model.
    projections::rebuild::build_all(&pool, vec![wallets.clone()], |_, _, _| {})
        .await
        .expect("rebuild");
    let shadow = parked(&pool, "rebuild:wallets").await;
    assert_eq!(
        shadow.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        live.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>()
    );
    projections::rebuild::swap(&pool, wallets.clone())
        .await
        .expect("swap");
    assert_eq!(parked(&pool, "wallets").await.len(), 4);
    assert_eq!(balance(app.wallet_view(log.a).await), Some(105));
    assert_eq!(balance(app.wallet_view(log.b).await), Some(0));

    // `chronicle projections rebuild` reports them and exits with an error.
    let url = app.db.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .args(["--database-url", &url, "projections", "rebuild", "wallets"])
            .output()
    })
    .await
    .expect("join")
    .expect("run chronicle");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("wallets: 4 events are parked"),
        "the rebuild names its parked events: {stderr}"
    );
}

#[tokio::test]
async fn an_older_schema_version_in_the_log_is_upcast_on_every_read_path() {
    let app = TestApp::without_projectors().await;
    let pool = app.db.pool.clone();
    let (buyer, _) = app.customer(&format!("buyer-{}", Uuid::now_v7())).await;
    let (seller, _) = app.customer(&format!("seller-{}", Uuid::now_v7())).await;
    // OrderPlaced version 0 (no total), as the legacy form the upcaster reads.
    let order = Uuid::now_v7();
    append_raw(
        &pool,
        "order",
        order,
        1,
        "OrderPlaced",
        0,
        json!({"order_id": order, "buyer": buyer, "seller": seller, "currency": "EUR",
               "use_escrow": false,
               "lines": [{"sku": "A", "description": "a", "quantity": 3, "unit_price": 250},
                         {"sku": "B", "description": "b", "quantity": 1, "unit_price": 99}]}),
    )
    .await;

    // The write side: the aggregate loads with the computed total.
    let store = PgEventStore::new(pool.clone(), 1);
    let loaded = commands::repo::replay::<domain::order::Order>(store.as_ref(), order, 1)
        .await
        .expect("the legacy event is upcast");
    assert_eq!(loaded.state.total, 849);

    // The read side: the orders read model shows it too.
    let orders = projections::by_name("orders").expect("orders");
    let mut worker = Worker::live(pool.clone(), orders, small_batches(100));
    worker.load().await.expect("load");
    worker.catch_up(|_, _| {}).await.expect("catch up");
    let admin = app.token("admin", &[Role::Admin]);
    let view = app.get(&format!("/v1/orders/{order}"), &admin).await;
    assert_eq!(view.status, StatusCode::OK, "{:?}", view.body);
    assert_eq!(view.body["total"], 849, "{:?}", view.body);
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_parked")
        .fetch_one(&pool)
        .await
        .expect("parked");
    assert_eq!(none, 0);
}
