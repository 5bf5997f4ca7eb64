//! The projector runtime against a real PostgreSQL: exactly-once effect across crashes, the
//! lease, poison events parked and retried, rebuilds equal to the live read models, and
//! resumed rebuilds.

use crate::support::{small_batches, TestApp};
use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use commands::Role;
use projections::rebuild;
use projections::{ApplyError, Projector, Step, Worker, WorkerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use schemas::RecordedEvent;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A test projector counting each stream's events. It refuses an event that is not the
/// stream's next version, so applying one twice (or skipping one) cannot go unnoticed; while
/// `broken` is set it fails on deposits of exactly 13.
struct Tally {
    broken: Arc<AtomicBool>,
}

#[async_trait]
impl Projector for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tally"]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &["wallet"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        for e in events {
            if self.broken.load(Ordering::SeqCst)
                && e.event_type == "FundsDeposited"
                && e.payload["amount"] == 13
            {
                return Err(ApplyError::Poison(
                    "deposits of 13 are not supported".into(),
                ));
            }
            let done = sqlx::query(
                "INSERT INTO tally (stream_id, events, last_version) VALUES ($1, 1, $2) \
                 ON CONFLICT (stream_id) DO UPDATE SET events = tally.events + 1, \
                   last_version = EXCLUDED.last_version \
                 WHERE tally.last_version = EXCLUDED.last_version - 1",
            )
            .bind(e.stream_id)
            .bind(e.stream_version)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() != 1 && e.stream_version != 1 {
                return Err(ApplyError::Poison(format!(
                    "event {} of {} out of order or applied twice",
                    e.stream_version, e.stream_id
                )));
            }
            if done.rows_affected() != 1 {
                return Err(ApplyError::Poison(
                    "the stream's first event came twice".into(),
                ));
            }
        }
        Ok(())
    }
}

async fn tally_table(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE tally (stream_id uuid PRIMARY KEY, events bigint NOT NULL, \
         last_version bigint NOT NULL)",
    )
    .execute(pool)
    .await
    .expect("create the tally table");
}

/// Events per wallet stream in the log.
async fn wallet_versions(pool: &PgPool) -> Vec<(Uuid, i64)> {
    sqlx::query_as(
        "SELECT stream_id, max(stream_version) FROM events WHERE stream_type = 'wallet' \
         GROUP BY stream_id ORDER BY stream_id",
    )
    .fetch_all(pool)
    .await
    .expect("versions")
}

async fn tallies(pool: &PgPool) -> Vec<(Uuid, i64)> {
    sqlx::query_as("SELECT stream_id, events FROM tally ORDER BY stream_id")
        .fetch_all(pool)
        .await
        .expect("tallies")
}

async fn checkpoint(pool: &PgPool, name: &str) -> (i64, i64) {
    sqlx::query_as("SELECT position, applied FROM projection_checkpoints WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("checkpoint")
}

/// Events of the stream types `projector` reads.
async fn relevant(pool: &PgPool, projector: &dyn Projector) -> i64 {
    let types: Vec<String> = projector
        .stream_types()
        .iter()
        .map(|t| t.to_string())
        .collect();
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_type = ANY($1)")
        .bind(&types)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Customers with funded EUR wallets.
async fn funded_customers(app: &TestApp, n: usize) -> Vec<(Uuid, String, Uuid)> {
    let mut out = Vec::new();
    for i in 0..n {
        let (id, token) = app
            .customer(&format!("c{i}-{}", Uuid::now_v7().simple()))
            .await;
        let wallet = app.wallet(&token, "EUR").await;
        let d = app.deposit(wallet, 1_000_000).await;
        assert_eq!(d.status, StatusCode::OK, "{:?}", d.body);
        out.push((id, token, wallet));
    }
    out
}

fn in_days(d: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(d)).to_rfc3339()
}

/// A randomized workload over all six aggregates, from `tasks` concurrent clients. Answers
/// are not checked (races make some commands fail by the rules); the log is what counts.
async fn workload(app: &Arc<TestApp>, tasks: usize, steps: usize, seed: u64) {
    let people = Arc::new(funded_customers(app, 6).await);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let app = app.clone();
        let people = people.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed + t as u64);
            let admin = app.token("admin", &[Role::Admin]);
            let arbiter = app.token("arbiter", &[Role::Arbiter]);
            let psp = app.token("psp", &[Role::Payments]);
            for _ in 0..steps {
                let a = rng.gen_range(0..people.len());
                let mut b = rng.gen_range(0..people.len());
                if b == a {
                    b = (a + 1) % people.len();
                }
                let (a_id, a_tok, a_wal) = &people[a];
                let (b_id, b_tok, b_wal) = &people[b];
                let amount = rng.gen_range(1..5_000);
                match rng.gen_range(0..9) {
                    0 => {
                        let r = format!("dep-{}", Uuid::now_v7());
                        app.post(&format!("/v1/wallets/{a_wal}/deposits"), &psp, json!({"amount": amount, "external_ref": r})).await;
                    }
                    1 => {
                        let r = format!("wd-{}", Uuid::now_v7());
                        app.post(&format!("/v1/wallets/{a_wal}/withdrawals"), a_tok, json!({"amount": amount, "external_ref": r})).await;
                    }
                    2 | 3 => {
                        app.post("/v1/transfers", a_tok, json!({"from_wallet": a_wal, "to_wallet": b_wal, "amount": amount, "memo": "w"})).await;
                    }
                    4 => {
                        let escrow = rng.gen_bool(0.5);
                        let o = app.post("/v1/orders", a_tok, json!({
                            "seller": b_id, "currency": "EUR", "use_escrow": escrow,
                            "lines": [{"sku": "x", "description": "thing", "quantity": rng.gen_range(1..4), "unit_price": amount}]
                        })).await;
                        if o.status != StatusCode::CREATED { continue; }
                        let id = o.id();
                        app.post(&format!("/v1/orders/{id}/pay"), a_tok, json!({"wallet": a_wal})).await;
                        match rng.gen_range(0..4) {
                            0 => { app.post(&format!("/v1/orders/{id}/cancel"), a_tok, json!({"reason": "changed mind"})).await; }
                            1 => { app.post(&format!("/v1/orders/{id}/refunds"), b_tok, json!({"amount": 1, "reason": "scratch"})).await; }
                            _ => {
                                app.post(&format!("/v1/orders/{id}/ship"), b_tok, json!({"carrier": "DHL", "tracking": "1"})).await;
                                app.post(&format!("/v1/orders/{id}/confirm-delivery"), a_tok, json!({})).await;
                            }
                        }
                    }
                    5 => {
                        let e = app.post("/v1/escrows", a_tok, json!({
                            "buyer_wallet": a_wal, "seller": b_id, "amount": amount,
                            "terms": "as seen", "expires_at": in_days(7)
                        })).await;
                        if e.status != StatusCode::CREATED { continue; }
                        let id = e.id();
                        app.post(&format!("/v1/escrows/{id}/fund"), a_tok, json!({})).await;
                        match rng.gen_range(0..3) {
                            0 => { app.post(&format!("/v1/escrows/{id}/release"), a_tok, json!({})).await; }
                            1 => { app.post(&format!("/v1/escrows/{id}/refund"), b_tok, json!({})).await; }
                            _ => {
                                app.post(&format!("/v1/escrows/{id}/disputes"), b_tok, json!({"reason": "late"})).await;
                                let half = amount / 2;
                                app.post(&format!("/v1/escrows/{id}/disputes/resolve"), &arbiter, json!({"to_seller": half, "to_buyer": amount - half})).await;
                            }
                        }
                    }
                    6 => {
                        let visibility = if rng.gen_bool(0.5) { "public" } else { "private" };
                        let p = app.post("/v1/pots", a_tok, json!({
                            "beneficiary": b_id, "title": "gift", "currency": "EUR",
                            "closes_at": in_days(rng.gen_range(2..300)), "visibility": visibility
                        })).await;
                        if p.status != StatusCode::CREATED { continue; }
                        let id = p.id();
                        app.post(&format!("/v1/pots/{id}/invitations"), a_tok, json!({"account": b_id})).await;
                        app.post(&format!("/v1/pots/{id}/contributions"), a_tok, json!({"wallet": a_wal, "amount": amount, "anonymous": rng.gen_bool(0.5), "message": "hi"})).await;
                        app.post(&format!("/v1/pots/{id}/contributions"), b_tok, json!({"wallet": b_wal, "amount": amount, "anonymous": false})).await;
                        if rng.gen_bool(0.5) {
                            app.post(&format!("/v1/pots/{id}/close"), a_tok, json!({})).await;
                            app.post(&format!("/v1/pots/{id}/payout"), a_tok, json!({})).await;
                        } else {
                            app.post(&format!("/v1/pots/{id}/cancel"), a_tok, json!({"reason": "off"})).await;
                        }
                    }
                    7 => {
                        let serial = format!("SN-{}", Uuid::now_v7().simple());
                        let d = app.post("/v1/devices", a_tok, json!({"serial": serial, "model": "Thermo 3", "firmware_version": "1.0.0"})).await;
                        if d.status != StatusCode::CREATED { continue; }
                        let id = d.id();
                        app.post(&format!("/v1/devices/{id}/activate"), a_tok, json!({})).await;
                        app.post(&format!("/v1/devices/{id}/firmware"), a_tok, json!({"target_version": "1.1.0", "artifact_url": "https://example.com/fw.bin", "sha256": "a".repeat(64)})).await;
                        if rng.gen_bool(0.3) {
                            app.post(&format!("/v1/devices/{id}/decommission"), &admin, json!({"reason": "old"})).await;
                        }
                    }
                    _ => {
                        app.send(Method::PATCH, &format!("/v1/accounts/{a_id}/profile"), Some(a_tok), Some(json!({"display_name": format!("name {amount}")})), &[]).await;
                        app.post(&format!("/v1/accounts/{a_id}/kyc"), a_tok, json!({"document_ref": "passport"})).await;
                        app.post(&format!("/v1/accounts/{a_id}/kyc/approve"), &admin, json!({})).await;
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("a workload task");
    }
}

/// Waits until every live projector has taken in the whole log.
pub(crate) async fn caught_up(pool: &PgPool) {
    let names: Vec<&str> = projections::all().iter().map(|p| p.name()).collect();
    let mut rows = Vec::new();
    for _ in 0..2000 {
        rows = projections::status::status(pool).await.expect("status");
        let live: Vec<_> = rows
            .iter()
            .filter(|r| names.contains(&r.name.as_str()))
            .collect();
        if live.len() >= names.len() && live.iter().all(|r| r.lag_events == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the projectors did not catch up: {rows:?}");
}

/// Rebuilds every projector into its shadow tables (`rebuild all`: one shared read of the
/// log, every projector applying at once) and checks each equals its live tables.
pub(crate) async fn assert_rebuilds_match(pool: &PgPool) {
    rebuild::build_all(pool, projections::all(), |_, _, _| {})
        .await
        .expect("build the shadows");
    for projector in projections::all() {
        let diff = rebuild::differences(pool, projector.as_ref())
            .await
            .expect("compare");
        assert!(
            diff.is_empty(),
            "{}: rebuilt tables differ from the live ones: {diff:?}",
            projector.name()
        );
    }
}

/// [`assert_rebuilds_match`], and every projector's tables hold rows.
async fn assert_rebuilds_equal_live(pool: &PgPool) {
    assert_rebuilds_match(pool).await;
    for projector in projections::all() {
        let rows: i64 = {
            let mut n = 0;
            for t in projector.tables() {
                let c: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
                    .fetch_one(pool)
                    .await
                    .expect("count rows");
                n += c;
            }
            n
        };
        assert!(
            rows > 0,
            "{}: the workload left its tables empty",
            projector.name()
        );
    }
}

/// An index: table, name, definition without the schema, constraint name and kind.
type IndexRow = (String, String, String, Option<String>, Option<i8>);

/// The indexes of a projector's tables in `schema`, sorted.
async fn indexes_of(
    pool: &PgPool,
    schema: &str,
    projector: &dyn projections::Projector,
) -> Vec<IndexRow> {
    let tables: Vec<String> = projector.tables().iter().map(|t| t.to_string()).collect();
    let rows: Vec<IndexRow> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text, pg_get_indexdef(x.indexrelid), \
                c.conname::text, c.contype \
         FROM pg_index x \
         JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         JOIN pg_class i ON i.oid = x.indexrelid \
         LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid \
         WHERE n.nspname = $1 AND t.relname = ANY($2) ORDER BY 1, 2",
    )
    .bind(schema)
    .bind(&tables)
    .fetch_all(pool)
    .await
    .expect("list indexes");
    rows.into_iter()
        .map(|(t, i, def, c, k)| (t, i, def.replace(&format!(" ON {schema}."), " ON "), c, k))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilt_read_models_equal_the_live_ones_after_a_concurrent_workload() {
    let app = Arc::new(TestApp::new().await);
    workload(&app, 6, 25, 7).await;
    let pool = app.db.pool.clone();
    caught_up(&pool).await;
    // The indexes as the migrations made them; those a rebuild builds last exist among them.
    let mut migrated = Vec::new();
    for projector in projections::all() {
        let live = indexes_of(&pool, "public", projector.as_ref()).await;
        for name in projector.indexes_built_last() {
            assert!(
                live.iter().any(|(_, index, ..)| index == name),
                "{}: no index {name} on its tables: {live:?}",
                projector.name()
            );
        }
        migrated.push(live);
    }
    assert_rebuilds_equal_live(&pool).await;
    // The filled shadows have every index, with its constraint, under the live names.
    for (projector, live) in projections::all().iter().zip(&migrated) {
        let schema = rebuild::shadow_schema(projector.name());
        assert_eq!(
            &indexes_of(&pool, &schema, projector.as_ref()).await,
            live,
            "{}: the shadow's indexes",
            projector.name()
        );
    }
    // Swapping the rebuilt tables in keeps the read models serving and current.
    for projector in projections::all() {
        rebuild::swap(&pool, projector.clone()).await.expect("swap");
    }
    for (projector, live) in projections::all().iter().zip(&migrated) {
        assert_eq!(
            &indexes_of(&pool, "public", projector.as_ref()).await,
            live,
            "{}: the indexes after the swap are those of the migrations",
            projector.name()
        );
    }
    let (_, token, wallet) = funded_customers(&app, 1).await.remove(0);
    let got = app.get(&format!("/v1/wallets/{wallet}"), &token).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.body["balance"], 1_000_000);
    caught_up(&pool).await;
    for projector in projections::all() {
        let (_, applied) = checkpoint(&pool, projector.name()).await;
        assert_eq!(
            applied,
            relevant(&pool, projector.as_ref()).await,
            "{} took in every event of its streams once",
            projector.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projectors_killed_at_random_points_apply_every_event_exactly_once() {
    let app = Arc::new(TestApp::without_projectors().await);
    workload(&app, 4, 20, 99).await;
    let pool = app.db.pool.clone();
    tally_table(&pool).await;
    let broken = Arc::new(AtomicBool::new(false));
    let mut all = projections::all();
    all.push(Arc::new(Tally {
        broken: broken.clone(),
    }));
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..20 {
        // Each round: every projector steps in small batches on its own task, and all of
        // them are dropped at a random moment, whatever they are doing.
        let mut handles = Vec::new();
        for projector in &all {
            let mut worker = Worker::live(
                pool.clone(),
                projector.clone(),
                small_batches(rng.gen_range(1..40)),
            );
            handles.push(tokio::spawn(async move {
                worker.load().await.expect("load");
                while worker.step().await.expect("step") != Step::Idle {}
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1..60))).await;
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
    }
    for projector in &all {
        let mut worker = Worker::live(pool.clone(), projector.clone(), small_batches(500));
        worker.load().await.expect("load");
        worker.catch_up(|_, _| {}).await.expect("catch up");
    }
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_parked")
        .fetch_one(&pool)
        .await
        .expect("parked");
    assert_eq!(parked, 0, "no event was applied twice or out of order");
    for projector in &all {
        let (_, applied) = checkpoint(&pool, projector.name()).await;
        assert_eq!(
            applied,
            relevant(&pool, projector.as_ref()).await,
            "{} took in each event exactly once",
            projector.name()
        );
    }
    assert_eq!(tallies(&pool).await, wallet_versions(&pool).await);
    assert_rebuilds_equal_live(&pool).await;
}

#[tokio::test]
async fn a_poison_event_is_parked_with_its_stream_while_other_streams_stay_current() {
    let app = TestApp::without_projectors().await;
    let pool = app.db.pool.clone();
    tally_table(&pool).await;
    let broken = Arc::new(AtomicBool::new(true));
    let tally: Arc<dyn Projector> = Arc::new(Tally {
        broken: broken.clone(),
    });
    let people = funded_customers(&app, 2).await;
    let (a, b) = (people[0].2, people[1].2);
    app.deposit(a, 13).await;
    app.deposit(a, 5).await;
    app.deposit(b, 7).await;
    app.deposit(a, 6).await;
    let mut worker = Worker::live(pool.clone(), tally.clone(), small_batches(1000));
    worker.load().await.expect("load");
    worker.catch_up(|_, _| {}).await.expect("catch up");

    // The other wallet is current; the poisoned one stops before the poison.
    let counts: std::collections::HashMap<Uuid, i64> = tallies(&pool).await.into_iter().collect();
    let versions: std::collections::HashMap<Uuid, i64> =
        wallet_versions(&pool).await.into_iter().collect();
    assert_eq!(counts[&b], versions[&b]);
    assert_eq!(counts[&a], 2, "opened and the first deposit only");
    let parked: Vec<(Uuid, String, String, i32)> = sqlx::query_as(
        "SELECT stream_id, event_type, error, attempts FROM projection_parked \
         WHERE projector = 'tally' ORDER BY tx, position",
    )
    .fetch_all(&pool)
    .await
    .expect("parked");
    assert_eq!(
        parked.len(),
        3,
        "the poison and the two later events of its stream"
    );
    assert!(parked.iter().all(|p| p.0 == a));
    assert!(parked[0].2.contains("not supported"), "{:?}", parked[0]);
    assert_eq!(parked[0].3, 3, "tried three times");
    assert_eq!(parked[1].3, 0, "held back, never tried");
    let (_, applied) = checkpoint(&pool, "tally").await;
    assert_eq!(
        applied,
        relevant(&pool, tally.as_ref()).await,
        "the checkpoint moved past everything"
    );

    // Parking shows in the status and in /ready.
    let status = projections::status::status(&pool).await.expect("status");
    let tally_status = status
        .iter()
        .find(|s| s.name == "tally")
        .expect("tally status");
    assert_eq!((tally_status.parked, tally_status.lag_events), (3, 0));
    let ready = app.send(Method::GET, "/ready", None, None, &[]).await;
    assert_eq!(ready.body["parked_events"], 3, "{:?}", ready.body);
    assert_eq!(ready.body["projections"]["tally"]["parked"], 3);

    // Later events of the parked stream keep being held back.
    app.deposit(a, 8).await;
    app.deposit(b, 9).await;
    worker.catch_up(|_, _| {}).await.expect("catch up");
    assert_eq!(
        tallies(&pool)
            .await
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>()[&a],
        2
    );

    // A retry before the fix changes nothing.
    let report = projections::retry_parked(&pool, tally.as_ref(), "tally", "public")
        .await
        .expect("retry");
    assert_eq!((report.applied, report.still_parked), (0, 4));

    // After the fix the retry applies them in order, and the stream is current again.
    broken.store(false, Ordering::SeqCst);
    let report = projections::retry_parked(&pool, tally.as_ref(), "tally", "public")
        .await
        .expect("retry");
    assert_eq!((report.applied, report.still_parked), (4, 0));
    app.deposit(a, 10).await;
    worker.catch_up(|_, _| {}).await.expect("catch up");
    assert_eq!(tallies(&pool).await, wallet_versions(&pool).await);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_parked")
        .fetch_one(&pool)
        .await
        .expect("parked");
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_of_a_projector_is_active_and_a_standby_takes_over() {
    let app = TestApp::without_projectors().await;
    let pool = app.db.pool.clone();
    tally_table(&pool).await;
    let tally: Arc<dyn Projector> = Arc::new(Tally {
        broken: Arc::new(AtomicBool::new(false)),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let first = tokio::spawn(
        Worker::live(pool.clone(), tally.clone(), small_batches(5)).run(None, stopped.clone()),
    );
    let second = tokio::spawn(
        Worker::live(pool.clone(), tally.clone(), small_batches(5)).run(None, stopped.clone()),
    );
    let people = funded_customers(&app, 3).await;
    for (_, _, w) in &people {
        app.deposit(*w, 100).await;
    }
    let wait_current = || async {
        for _ in 0..1000 {
            if tallies(&pool).await == wallet_versions(&pool).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the tally did not catch up");
    };
    wait_current().await;
    let holders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid::int = hashtext('chronicle.projector') AND objid::int = hashtext('tally')",
    )
    .fetch_one(&pool)
    .await
    .expect("locks");
    assert_eq!(holders, 1, "exactly one instance holds the lease");
    // Whichever is active goes away; the standby takes over.
    first.abort();
    let _ = first.await;
    for (_, _, w) in &people {
        app.deposit(*w, 50).await;
    }
    wait_current().await;
    let _ = stop.send(true);
    let _ = second.await;
    let (_, applied) = checkpoint(&pool, "tally").await;
    assert_eq!(applied, relevant(&pool, tally.as_ref()).await);
}

#[tokio::test]
async fn an_interrupted_rebuild_resumes_where_it_stopped() {
    let app = Arc::new(TestApp::new().await);
    funded_customers(&app, 4).await;
    let pool = app.db.pool.clone();
    caught_up(&pool).await;
    let wallets = projections::by_name("wallets").expect("the wallets projector");
    rebuild::prepare(&pool, wallets.as_ref())
        .await
        .expect("prepare");
    // A first run that stops after two small batches.
    let mut first = Worker::new(
        pool.clone(),
        wallets.clone(),
        projections::runtime::rebuild_key("wallets"),
        rebuild::shadow_schema("wallets"),
        small_batches(3),
    );
    first.load().await.expect("load");
    first.step().await.expect("step");
    first.step().await.expect("step");
    let stopped_at = first.cursor();
    assert!(stopped_at.position > 0);
    let resumed_from = rebuild::prepare(&pool, wallets.as_ref())
        .await
        .expect("prepare again");
    assert_eq!(resumed_from, stopped_at, "the shadow's checkpoint survived");
    // `rebuild all` resumes `wallets` where it stopped while the others start from 0.
    rebuild::build_all(&pool, projections::all(), |_, _, _| {})
        .await
        .expect("resume");
    for projector in projections::all() {
        let diff = rebuild::differences(&pool, projector.as_ref())
            .await
            .expect("compare");
        assert!(diff.is_empty(), "{}: {diff:?}", projector.name());
        let key = projections::runtime::rebuild_key(projector.name());
        let (_, applied) = checkpoint(&pool, &key).await;
        assert_eq!(
            applied,
            relevant(&pool, projector.as_ref()).await,
            "{}'s shadow took in every event of its streams once",
            projector.name()
        );
    }
    rebuild::swap(&pool, wallets.clone()).await.expect("swap");
    let (live, applied) = checkpoint(&pool, "wallets").await;
    assert_eq!(applied, relevant(&pool, wallets.as_ref()).await);
    assert!(live > 0);
    for projector in projections::all().iter().filter(|p| p.name() != "wallets") {
        rebuild::discard(&pool, projector.as_ref())
            .await
            .expect("discard");
    }
    let shadow_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'rebuild_wallets'",
    )
    .fetch_one(&pool)
    .await
    .expect("schemas");
    assert_eq!(shadow_left, 0);
}

#[tokio::test]
async fn x_min_position_is_checked_and_waited_for() {
    let app = TestApp::without_projectors().await;
    let (_, token) = app.customer("rw").await;
    let wallet = app.wallet(&token, "EUR").await;
    let path = format!("/v1/wallets/{wallet}");
    for bad in ["abc", "-1", "1.5"] {
        let a = app
            .send(
                Method::GET,
                &path,
                Some(&token),
                None,
                &[("x-min-position", bad)],
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {:?}", a.body);
        assert_eq!(a.body["field"], "X-Min-Position");
    }
    let unknown = app
        .send(
            Method::GET,
            &path,
            Some(&token),
            None,
            &[("x-min-position", "999999999")],
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        unknown.body
    );
    // No projector runs here: a position the read model has not reached times out with 504.
    let head = app.log_head().await.expect("events").to_string();
    let behind = app
        .send(
            Method::GET,
            &path,
            Some(&token),
            None,
            &[("x-min-position", &head)],
        )
        .await;
    assert_eq!(
        behind.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        behind.body
    );
    assert_eq!(behind.body["code"], "read_model_behind");
    // Once a projector runs, the same query answers with the effect and X-Position.
    let pool: PgPool = app.db.pool.clone();
    let mut worker = Worker::live(
        pool.clone(),
        projections::by_name("wallets").expect("wallets"),
        WorkerConfig::default(),
    );
    worker.load().await.expect("load");
    worker.catch_up(|_, _| {}).await.expect("catch up");
    let fresh = app
        .send(
            Method::GET,
            &path,
            Some(&token),
            None,
            &[("x-min-position", &head)],
        )
        .await;
    assert_eq!(fresh.status, StatusCode::OK, "{:?}", fresh.body);
    let at: i64 = fresh.headers["x-position"]
        .to_str()
        .expect("text")
        .parse()
        .expect("a position");
    assert!(at >= 1);
}
