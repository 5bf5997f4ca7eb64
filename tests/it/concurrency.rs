//! Many concurrent money movements through the HTTP router: conservation, no negative
//! balances, every acknowledged transfer in the log, contiguous stream versions, no 5xx.

use crate::support::{TestApp, SECRET};
use api::{AppState, AuthConfig};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use commands::pg::PgEventStore;
use commands::{CommandService, Role, ServiceConfig, SystemClock};
use http_body_util::BodyExt;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;
use uuid::Uuid;

const TASKS: usize = 64;
const INITIAL: i64 = 100_000;

/// The size of one workload.
#[derive(Debug, Clone, Copy)]
struct Load {
    wallets: usize,
    transfers: usize,
    withdrawals: usize,
    deposits: usize,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Transfer { from: usize, to: usize, amount: i64 },
    Withdraw { w: usize, amount: i64 },
    Deposit { w: usize, amount: i64 },
}

#[derive(Debug)]
struct Outcome {
    op: Op,
    status: StatusCode,
    body: Value,
}

fn plan(load: Load) -> Vec<Op> {
    let n = load.wallets;
    let mut rng = rand::thread_rng();
    let mut ops = Vec::new();
    for _ in 0..load.transfers {
        let from = rng.gen_range(0..n);
        let to = (from + rng.gen_range(1..n)) % n;
        // Mostly small, sometimes more than any wallet is likely to hold.
        let amount = if rng.gen_bool(0.75) {
            rng.gen_range(1..=20_000)
        } else {
            rng.gen_range(20_001..=250_000)
        };
        ops.push(Op::Transfer { from, to, amount });
    }
    for _ in 0..load.withdrawals {
        // At most 1,000.00 EUR: no KYC needed.
        ops.push(Op::Withdraw {
            w: rng.gen_range(0..n),
            amount: rng.gen_range(1..=100_000),
        });
    }
    for _ in 0..load.deposits {
        ops.push(Op::Deposit {
            w: rng.gen_range(0..n),
            amount: rng.gen_range(1..=50_000),
        });
    }
    ops.shuffle(&mut rng);
    ops
}

/// A POST through one router (one app instance).
async fn post_via(router: &Router, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("serialize")))
        .expect("a request");
    let response = router
        .clone()
        .oneshot(req)
        .await
        .expect("the router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A second app instance (its own command service, cache and locks) on the app's database,
/// as a second process behind a load balancer would be.
fn second_instance(app: &TestApp) -> Router {
    let store = PgEventStore::new(app.db.pool.clone(), 2);
    let service = CommandService::new(store, Arc::new(SystemClock), ServiceConfig::default());
    let state = AppState {
        service: Arc::new(service),
        auth: Arc::new(AuthConfig::hs256(SECRET, None, None)),
        pool: app.db.pool.clone(),
        telemetry: ingest::group::GroupWriter::new(app.db.pool.clone(), 2),
    };
    api::router(state)
}

/// Runs `load` with 64 client tasks spread over `routers`, then checks everything.
async fn run_and_check(app: Arc<TestApp>, routers: Vec<Router>, load: Load) {
    let mut tokens = Vec::new();
    let mut wallets = Vec::new();
    for i in 0..load.wallets {
        let (_, token) = app.customer(&format!("conc-{i}")).await;
        let w = app.wallet(&token, "EUR").await;
        let d = app.deposit(w, INITIAL).await;
        assert!(d.status.is_success(), "initial deposit: {:?}", d.body);
        tokens.push(token);
        wallets.push(w);
    }
    let psp = app.token("psp", &[Role::Payments]);
    let tokens = Arc::new(tokens);
    let wallets = Arc::new(wallets);
    let routers = Arc::new(routers);
    let ops = Arc::new(plan(load));
    let next = Arc::new(AtomicUsize::new(0));

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (tokens, wallets, ops, next, routers, psp) =
                (tokens.clone(), wallets.clone(), ops.clone(), next.clone(), routers.clone(), psp.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(op) = ops.get(i).copied() else { break };
                    let router = &routers[i % routers.len()];
                    let (status, body) = match op {
                        Op::Transfer { from, to, amount } => {
                            let body = json!({"from_wallet": wallets[from], "to_wallet": wallets[to], "amount": amount});
                            post_via(router, "/v1/transfers", &tokens[from], body).await
                        }
                        Op::Withdraw { w, amount } => {
                            let body = json!({"amount": amount, "external_ref": format!("wd-{}", Uuid::now_v7())});
                            post_via(router, &format!("/v1/wallets/{}/withdrawals", wallets[w]), &tokens[w], body)
                                .await
                        }
                        Op::Deposit { w, amount } => {
                            let body = json!({"amount": amount, "external_ref": format!("dep-{}", Uuid::now_v7())});
                            post_via(router, &format!("/v1/wallets/{}/deposits", wallets[w]), &psp, body).await
                        }
                    };
                    out.push(Outcome { op, status, body });
                }
                out
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    assert_eq!(
        outcomes.len(),
        load.transfers + load.withdrawals + load.deposits
    );

    // Answers: no 5xx ever; 409 only as concurrency_conflict; other refusals are the rules'.
    let server_errors: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status.is_server_error())
        .collect();
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:?}");
    let mut by_code: HashMap<(&'static str, u16, String), usize> = HashMap::new();
    for o in &outcomes {
        let kind = match o.op {
            Op::Transfer { .. } => "transfer",
            Op::Withdraw { .. } => "withdraw",
            Op::Deposit { .. } => "deposit",
        };
        let code = o.body["code"].as_str().unwrap_or("").to_owned();
        *by_code
            .entry((kind, o.status.as_u16(), code.clone()))
            .or_default() += 1;
        if o.status == StatusCode::CONFLICT {
            assert_eq!(
                code, "concurrency_conflict",
                "a 409 with another code: {o:?}"
            );
        } else if !o.status.is_success() {
            let allowed = matches!(o.op, Op::Transfer { .. } | Op::Withdraw { .. })
                && o.status == StatusCode::UNPROCESSABLE_ENTITY
                && code == "insufficient_funds";
            assert!(allowed, "an unexpected refusal: {o:?}");
        }
    }
    let conflicts = outcomes
        .iter()
        .filter(|o| o.status == StatusCode::CONFLICT)
        .count();
    let mut summary: Vec<_> = by_code.into_iter().collect();
    summary.sort();
    println!(
        "concurrency ({} instance(s), {} wallets): {} operations in {elapsed:?}; 409 concurrency_conflict: {conflicts}",
        routers.len(),
        load.wallets,
        outcomes.len()
    );
    for ((kind, status, code), n) in summary {
        println!("  {kind:9} {status} {code:22} {n}");
    }

    let ok = |o: &&Outcome| o.status.is_success();
    let deposited: i64 = INITIAL * load.wallets as i64
        + outcomes
            .iter()
            .filter(ok)
            .filter_map(|o| match o.op {
                Op::Deposit { amount, .. } => Some(amount),
                _ => None,
            })
            .sum::<i64>();
    let withdrawn: i64 = outcomes
        .iter()
        .filter(ok)
        .filter_map(|o| match o.op {
            Op::Withdraw { amount, .. } => Some(amount),
            _ => None,
        })
        .sum();

    // Balances as GET answers them.
    let mut balances = Vec::new();
    for w in wallets.iter() {
        let view = app.wallet_view(*w).await;
        let balance = view["balance"].as_i64().expect("balance");
        let available = view["available"].as_i64().expect("available");
        assert!(
            balance >= 0 && available >= 0,
            "negative money in {w}: {view}"
        );
        balances.push(balance);
    }
    let total: i64 = balances.iter().sum();
    assert_eq!(
        total,
        deposited - withdrawn,
        "conservation: balances == deposits - withdrawals"
    );

    // Every acknowledged transfer is in the log, both legs, where the answer says.
    let pool = &app.db.pool;
    let legs: Vec<(String, Uuid, i64, Value)> = sqlx::query_as(
        "SELECT event_type, stream_id, position, payload FROM events \
         WHERE event_type IN ('TransferSent', 'TransferReceived')",
    )
    .fetch_all(pool)
    .await
    .expect("transfer legs");
    let mut sent: HashMap<Uuid, (Uuid, i64, i64)> = HashMap::new();
    let mut received: HashMap<Uuid, (Uuid, i64, i64)> = HashMap::new();
    for (kind, stream, position, payload) in legs {
        let id: Uuid = payload["transfer_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("transfer_id");
        let amount = payload["amount"].as_i64().expect("amount");
        let map = if kind == "TransferSent" {
            &mut sent
        } else {
            &mut received
        };
        assert!(
            map.insert(id, (stream, amount, position)).is_none(),
            "two {kind} for transfer {id}"
        );
    }
    let mut acknowledged = 0;
    for o in outcomes.iter().filter(ok) {
        if let Op::Transfer { from, to, amount } = o.op {
            acknowledged += 1;
            let id: Uuid = o.body["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("an id in a 2xx");
            let s = sent
                .get(&id)
                .unwrap_or_else(|| panic!("no TransferSent for acknowledged {id}"));
            let r = received
                .get(&id)
                .unwrap_or_else(|| panic!("no TransferReceived for acknowledged {id}"));
            assert_eq!((s.0, s.1), (wallets[from], amount), "TransferSent of {id}");
            assert_eq!(
                (r.0, r.1),
                (wallets[to], amount),
                "TransferReceived of {id}"
            );
            assert_eq!(
                o.body["position"].as_i64(),
                Some(r.2),
                "the answer's position is its last event's"
            );
        }
    }
    assert_eq!(
        sent.len(),
        acknowledged,
        "no transfer in the log that was not acknowledged"
    );
    assert_eq!(received.len(), acknowledged);
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM events WHERE event_type IN ('FundsDeposited', 'FundsWithdrawn') \
         GROUP BY event_type",
    )
    .fetch_all(pool)
    .await
    .expect("counts");
    let counts: HashMap<String, i64> = counts.into_iter().collect();
    let ok_deposits = outcomes
        .iter()
        .filter(ok)
        .filter(|o| matches!(o.op, Op::Deposit { .. }))
        .count();
    let ok_withdrawals = outcomes
        .iter()
        .filter(ok)
        .filter(|o| matches!(o.op, Op::Withdraw { .. }))
        .count();
    assert_eq!(
        counts.get("FundsDeposited").copied().unwrap_or(0) as usize,
        load.wallets + ok_deposits
    );
    assert_eq!(
        counts.get("FundsWithdrawn").copied().unwrap_or(0) as usize,
        ok_withdrawals
    );

    // Every stream's versions run 1..n without a hole.
    let holes: Vec<(Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT stream_id, min(stream_version), max(stream_version), count(*) FROM events \
         GROUP BY stream_id HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)",
    )
    .fetch_all(pool)
    .await
    .expect("hole check");
    assert!(holes.is_empty(), "streams with holes: {holes:?}");

    // Balances computed from the log equal the GET balances.
    let from_log: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT stream_id, coalesce(sum(CASE \
            WHEN event_type IN ('FundsDeposited', 'TransferReceived') THEN (payload->>'amount')::bigint \
            WHEN event_type IN ('FundsWithdrawn', 'TransferSent') THEN -(payload->>'amount')::bigint \
            ELSE 0 END), 0)::bigint \
         FROM events WHERE stream_type = 'wallet' GROUP BY stream_id",
    )
    .fetch_all(pool)
    .await
    .expect("balances from the log");
    let from_log: HashMap<Uuid, i64> = from_log.into_iter().collect();
    assert_eq!(from_log.len(), load.wallets);
    for (w, b) in wallets.iter().zip(&balances) {
        assert_eq!(
            from_log.get(w),
            Some(b),
            "wallet {w}: log balance vs GET balance"
        );
    }
}

/// The scenario: 20 wallets, 64 clients, 2,000 transfers with withdrawals and deposits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_conserve_money_and_log_every_acknowledged_one() {
    let app = Arc::new(TestApp::new().await);
    let routers = vec![app.router.clone()];
    let load = Load {
        wallets: 20,
        transfers: 2_000,
        withdrawals: 150,
        deposits: 150,
    };
    run_and_check(app, routers, load).await;
}

/// The same over two app instances on one database (two processes: separate caches and
/// locks), so that stale caches meet real append conflicts and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_database_conserve_money_too() {
    let app = Arc::new(TestApp::new().await);
    let routers = vec![app.router.clone(), second_instance(&app)];
    let load = Load {
        wallets: 10,
        transfers: 1_500,
        withdrawals: 100,
        deposits: 100,
    };
    run_and_check(app, routers, load).await;
}
