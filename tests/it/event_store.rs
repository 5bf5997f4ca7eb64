//! The event store itself: commit-safe tailing of the global log (the gap test), optimistic
//! concurrency per stream, atomic multi-stream appends, shared commits, the append-only table,
//! snapshots against full replays, and loud failure on unknown events.

use crate::support::TestDb;
use chrono::Utc;
use commands::accounts::OpenAccount;
use commands::pg::PgEventStore;
use commands::repo::{replay, LoadError};
use commands::store::{
    AppendError, AppendRequest, Appended, ClaimRecord, EventStore, NewClaim, NewIdempotency,
    Snapshot, StoreError, StoredResponse, StreamWrite,
};
use commands::wallets::WalletAction;
use commands::{Actor, CommandError, CommandService, Envelope, Role, ServiceConfig, SystemClock};
use domain::wallet::Wallet;
use rand::Rng;
use schemas::{Cursor, Metadata, NewEvent, RecordedEvent};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const STREAM_TYPE: &str = "test_stream";

fn event(kind: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: kind.to_owned(),
        schema_version: 1,
        payload: json!({"note": kind}),
    }
}

fn metadata() -> Metadata {
    let id = Uuid::now_v7();
    Metadata {
        actor_sub: "event-store-test".to_owned(),
        actor_role: "admin".to_owned(),
        command_id: id,
        correlation_id: id,
        causation_id: None,
        occurred_at: Utc::now(),
    }
}

fn write(stream_id: Uuid, expected_version: i64, n: usize) -> StreamWrite {
    StreamWrite {
        stream_type: STREAM_TYPE,
        stream_id,
        expected_version,
        events: (0..n).map(|i| event(&format!("Happened{i}"))).collect(),
    }
}

fn request(streams: Vec<StreamWrite>) -> AppendRequest {
    AppendRequest {
        streams,
        metadata: metadata(),
        claims: vec![],
        snapshots: vec![],
        idempotency: None,
    }
}

fn event_ids(req: &AppendRequest) -> Vec<Uuid> {
    req.streams
        .iter()
        .flat_map(|s| s.events.iter().map(|e| e.event_id))
        .collect()
}

async fn stream_version(pool: &PgPool, stream: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(stream_version), 0)::bigint FROM events WHERE stream_id = $1",
    )
    .bind(stream)
    .fetch_one(pool)
    .await
    .expect("stream version")
}

async fn count_ids(pool: &PgPool, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
        .expect("count event ids")
}

/// Streams whose versions do not run 1..n without a hole.
async fn streams_with_holes(pool: &PgPool) -> Vec<(Uuid, i64, i64, i64)> {
    sqlx::query_as(
        "SELECT stream_id, min(stream_version), max(stream_version), count(*) FROM events \
         GROUP BY stream_id HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)",
    )
    .fetch_all(pool)
    .await
    .expect("hole check")
}

/// A pool on the test database with a long acquire timeout (many tasks queue on it).
async fn patient_pool(db: &TestDb, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(120))
        .connect(&db.url)
        .await
        .expect("connect a second pool")
}

// ---------------------------------------------------------------------------------------------
// (a) The gap test.
// ---------------------------------------------------------------------------------------------

const GAP_WRITERS: usize = 200;

/// One appender: its own transaction, one row, sometimes a long pause before COMMIT.
async fn gap_writer(pool: PgPool, event_id: Uuid, sleep: Option<f64>) {
    let mut tx = pool.begin().await.expect("begin");
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, \
         schema_version, payload, actor_sub, actor_role, command_id, correlation_id, \
         causation_id, occurred_at) \
         VALUES ($1, 'gap', $2, 1, 'GapEvent', 1, $3, 'gap-test', 'admin', $4, $4, NULL, now())",
    )
    .bind(event_id)
    .bind(Uuid::now_v7())
    .bind(json!({"writer": event_id}))
    .bind(id)
    .execute(&mut *tx)
    .await
    .expect("insert");
    if let Some(s) = sleep {
        sqlx::query("SELECT pg_sleep($1)")
            .bind(s)
            .execute(&mut *tx)
            .await
            .expect("sleep in the transaction");
    }
    tx.commit().await.expect("commit");
}

/// The bug every Postgres event store once shipped: tail by `position > last`.
async fn naive_reader(pool: PgPool, done: Arc<AtomicBool>) -> HashSet<Uuid> {
    let mut last = 0i64;
    let mut seen = HashSet::new();
    loop {
        // Read the flag before the query, so the last poll starts after every commit.
        let finished = done.load(Ordering::SeqCst);
        let rows: Vec<(i64, Uuid)> = sqlx::query_as(
            "SELECT position, event_id FROM events WHERE position > $1 ORDER BY position",
        )
        .bind(last)
        .fetch_all(&pool)
        .await
        .expect("naive read");
        for (position, id) in rows {
            last = position;
            seen.insert(id);
        }
        if finished {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn read_everything(store: &PgEventStore, expected: usize) -> Vec<RecordedEvent> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let mut cursor = Cursor::START;
    loop {
        let batch = store.read_all(cursor, 1000).await.expect("read_all");
        if batch.is_empty() {
            if out.len() >= expected {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "full read stuck at {} events",
                out.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        cursor = batch.last().expect("non-empty").cursor();
        out.extend(batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tailing_read_all_never_skips_a_late_commit_nor_repeats_one() {
    let db = TestDb::with_pool_size(2).await;
    let store = PgEventStore::new(db.pool.clone(), 1);
    let writers_pool = patient_pool(&db, 14).await;
    let naive_pool = patient_pool(&db, 2).await;

    let mut rng = rand::thread_rng();
    let plan: Vec<(Uuid, Option<f64>)> = (0..GAP_WRITERS)
        .map(|i| {
            let sleep = (i % 3 == 0).then(|| rng.gen_range(1.0..3.0));
            (Uuid::now_v7(), sleep)
        })
        .collect();
    let expected: HashSet<Uuid> = plan.iter().map(|(id, _)| *id).collect();

    let done = Arc::new(AtomicBool::new(false));
    let naive = tokio::spawn(naive_reader(naive_pool.clone(), done.clone()));

    let started = Instant::now();
    let writers: Vec<_> = plan
        .iter()
        .map(|(id, sleep)| tokio::spawn(gap_writer(writers_pool.clone(), *id, *sleep)))
        .collect();
    let writers = tokio::spawn(async move {
        for w in writers {
            w.await.expect("writer task");
        }
    });

    // The tailing reader, as a projection would run it.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut cursor = Cursor::START;
    let mut seen: Vec<RecordedEvent> = Vec::new();
    let mut polls = 0usize;
    while seen.len() < GAP_WRITERS {
        assert!(
            Instant::now() < deadline,
            "the tailing reader saw only {} of {GAP_WRITERS} events",
            seen.len()
        );
        let batch = store.read_all(cursor, 50).await.expect("read_all");
        polls += 1;
        assert!(batch.len() <= 50, "read_all returned more than the limit");
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        for e in batch {
            assert!(
                e.cursor() > cursor,
                "read_all went backwards: {:?} after {cursor:?}",
                e.cursor()
            );
            cursor = e.cursor();
            seen.push(e);
        }
    }
    writers.await.expect("writers");
    let write_time = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let naive_seen = naive.await.expect("naive reader");

    // Nothing more after everything committed (no repeat, nothing late).
    let after = read_everything_after(&store, cursor).await;
    assert!(
        after.is_empty(),
        "the tail delivered {} more events after all 200",
        after.len()
    );

    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for e in &seen {
        *counts.entry(e.event_id).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "events seen more than once: {repeated:?}"
    );
    let seen_ids: HashSet<Uuid> = counts.keys().copied().collect();
    assert_eq!(
        seen_ids, expected,
        "the tail must see exactly the 200 committed events"
    );

    // A fresh full read after everything committed gives the same order.
    let full = read_everything(&store, GAP_WRITERS).await;
    let full_order: Vec<Uuid> = full.iter().map(|e| e.event_id).collect();
    let seen_order: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(
        full_order, seen_order,
        "the tail's order must be the log's stable order"
    );

    // The naive reader, run at the same time, loses late commits.
    let missed = expected.difference(&naive_seen).count();
    println!(
        "gap test: {GAP_WRITERS} writers in {write_time:?}, tailing reader {} events in {polls} polls; \
         naive `position > last` reader saw {} and MISSED {missed}",
        seen.len(),
        naive_seen.len()
    );
    assert!(
        missed >= 1,
        "the naive reader should have missed a late commit (the test would not catch the bug)"
    );
    writers_pool.close().await;
    naive_pool.close().await;
}

/// Shared commits write many events in one transaction: a reader paging with a small limit
/// cuts through the middle of such transactions and must resume exactly where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_all_pages_through_multi_event_transactions_in_small_steps() {
    let db = TestDb::with_pool_size(6).await;
    let store = PgEventStore::new(db.pool.clone(), 2);
    let mut expected = HashSet::new();
    let mut writers = Vec::new();
    for round in 0..5 {
        for i in 0..20usize {
            let req = request(vec![write(Uuid::now_v7(), 0, 1 + (i * 7 + round) % 12)]);
            expected.extend(event_ids(&req));
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(40 * round as u64)).await;
                store.append(req).await.expect("append")
            }));
        }
    }
    let total = expected.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut cursor = Cursor::START;
    let mut seen: Vec<RecordedEvent> = Vec::new();
    while seen.len() < total {
        assert!(
            Instant::now() < deadline,
            "the reader saw only {} of {total}",
            seen.len()
        );
        let batch = store.read_all(cursor, 7).await.expect("read_all");
        assert!(batch.len() <= 7);
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        for e in batch {
            assert!(e.cursor() > cursor, "read_all went backwards");
            cursor = e.cursor();
            seen.push(e);
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        read_everything_after(&store, cursor).await.is_empty(),
        "events after the last one"
    );
    let ids: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was delivered twice");
    assert_eq!(unique, expected, "every event delivered");
    let full: Vec<Uuid> = read_everything(&store, total)
        .await
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        full, ids,
        "paging in sevens gives the same order as one big read"
    );
    let mut per_tx: HashMap<i64, usize> = HashMap::new();
    for e in &seen {
        *per_tx.entry(e.tx).or_default() += 1;
    }
    let biggest = per_tx.values().copied().max().unwrap_or(0);
    println!(
        "paging: {total} events in {} transactions, the biggest holds {biggest}",
        per_tx.len()
    );
    assert!(
        biggest > 7,
        "some transaction holds more events than one page"
    );
    // Within a stream, the global order follows the versions.
    let mut last: HashMap<Uuid, i64> = HashMap::new();
    for e in &seen {
        let prev = last.insert(e.stream_id, e.stream_version).unwrap_or(0);
        assert_eq!(
            e.stream_version,
            prev + 1,
            "stream {} out of order",
            e.stream_id
        );
    }
}

async fn read_everything_after(store: &PgEventStore, cursor: Cursor) -> Vec<RecordedEvent> {
    // Give a late row every chance to show up, then read once more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.read_all(cursor, 1000).await.expect("read_all")
}

// ---------------------------------------------------------------------------------------------
// (b) Optimistic concurrency per stream.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_expected_version_twice_in_sequence_is_one_ok_one_conflict() {
    let db = TestDb::with_pool_size(4).await;
    let store = PgEventStore::new(db.pool.clone(), 2);
    let stream = Uuid::now_v7();

    // On a new stream.
    let first = request(vec![write(stream, 0, 1)]);
    let second = request(vec![write(stream, 0, 1)]);
    let loser_ids = event_ids(&second);
    store
        .append(first)
        .await
        .expect("the first append at version 0 wins");
    let r = store.append(second).await;
    assert!(
        matches!(r, Err(AppendError::Conflict)),
        "second append at 0: {r:?}"
    );
    assert_eq!(count_ids(&db.pool, &loser_ids).await, 0);

    // On an existing stream, with several events each.
    let first = request(vec![write(stream, 1, 3)]);
    let second = request(vec![write(stream, 1, 2)]);
    let loser_ids = event_ids(&second);
    let ok = store
        .append(first)
        .await
        .expect("the first append at version 1 wins");
    assert_eq!(ok.positions.len(), 3);
    let r = store.append(second).await;
    assert!(
        matches!(r, Err(AppendError::Conflict)),
        "second append at 1: {r:?}"
    );
    assert_eq!(count_ids(&db.pool, &loser_ids).await, 0);
    assert_eq!(stream_version(&db.pool, stream).await, 4);

    // The one that wins may as well be the other: the stale one loses whatever its size.
    let r = store.append(request(vec![write(stream, 3, 1)])).await;
    assert!(
        matches!(r, Err(AppendError::Conflict)),
        "append at a stale version 3: {r:?}"
    );
    store
        .append(request(vec![write(stream, 4, 1)]))
        .await
        .expect("append at the current version");
    assert!(streams_with_holes(&db.pool).await.is_empty());
}

/// The store's contract: events are appended "only if the stream is still at
/// `expected_version`", so a version ahead of the stream is refused like a stale one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expected_version_ahead_of_the_stream_is_a_conflict() {
    let db = TestDb::with_pool_size(4).await;
    let store = PgEventStore::new(db.pool.clone(), 1);
    let stream = Uuid::now_v7();
    let r = store.append(request(vec![write(stream, 3, 1)])).await;
    assert!(
        matches!(r, Err(AppendError::Conflict)),
        "an empty stream is not at version 3, yet the append answered {r:?}"
    );
    assert_eq!(
        stream_version(&db.pool, stream).await,
        0,
        "nothing may be written"
    );
    assert!(
        streams_with_holes(&db.pool).await.is_empty(),
        "a stream with a hole was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racers_on_one_stream_version_have_exactly_one_winner() {
    let db = TestDb::with_pool_size(8).await;
    // Two stores on one database: racers inside one process (shared commits) and across two.
    let stores: Vec<Arc<PgEventStore>> = vec![
        PgEventStore::new(db.pool.clone(), 2),
        PgEventStore::new(db.pool.clone(), 2),
    ];
    let stream = Uuid::now_v7();
    const RACERS: usize = 16;
    let mut winners: Vec<Uuid> = Vec::new();
    let mut version = 0i64;
    for round in 0..6 {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let store = stores[i % 2].clone();
                let barrier = barrier.clone();
                let req = request(vec![write(stream, version, 1 + (i + round) % 2)]);
                let ids = event_ids(&req);
                tokio::spawn(async move {
                    barrier.wait().await;
                    (ids, store.append(req).await)
                })
            })
            .collect();
        let mut oks = Vec::new();
        let mut conflicts = 0;
        for t in tasks {
            let (ids, r) = t.await.expect("racer");
            match r {
                Ok(a) => oks.push((ids, a)),
                Err(AppendError::Conflict) => conflicts += 1,
                Err(e) => panic!("a racer failed with {e:?}, not a conflict"),
            }
        }
        assert_eq!(
            oks.len(),
            1,
            "round {round} at version {version}: {} winners",
            oks.len()
        );
        assert_eq!(conflicts, RACERS - 1, "every loser gets a conflict");
        let (ids, appended) = oks.pop().expect("one winner");
        assert_eq!(appended.positions.len(), ids.len());
        let now = stream_version(&db.pool, stream).await;
        assert_eq!(
            now,
            version + ids.len() as i64,
            "only the winner's events were written"
        );
        winners.extend(ids);
        let stored: Vec<Uuid> = sqlx::query_scalar(
            "SELECT event_id FROM events WHERE stream_id = $1 ORDER BY stream_version",
        )
        .bind(stream)
        .fetch_all(&db.pool)
        .await
        .expect("stream events");
        assert_eq!(
            stored, winners,
            "the stream holds exactly the winners' events, in order"
        );
        version = now;
    }
    assert!(streams_with_holes(&db.pool).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// (c) Multi-stream appends are atomic.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_stream_append_with_one_stale_stream_writes_nothing() {
    let db = TestDb::with_pool_size(4).await;
    let store = PgEventStore::new(db.pool.clone(), 1);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    store
        .append(request(vec![write(a, 0, 1)]))
        .await
        .expect("a at 1");
    store
        .append(request(vec![write(b, 0, 2)]))
        .await
        .expect("b at 2");

    let full = |streams: Vec<StreamWrite>, claim_key: &str, idem_key: &str| {
        let mut req = request(streams);
        req.claims = vec![NewClaim {
            scope: "test_claim",
            key: claim_key.to_owned(),
            stream_id: a,
            stream_version: 2,
        }];
        req.snapshots = vec![Snapshot {
            stream_type: STREAM_TYPE,
            stream_id: a,
            version: 3,
            state: json!({"snap": true}),
        }];
        req.idempotency = Some(NewIdempotency {
            subject: "tester".to_owned(),
            key: idem_key.to_owned(),
            request_hash: "hash".to_owned(),
            status: 200,
            result_id: a,
            result_version: 3,
            last_stream: b,
            last_version: 3,
        });
        req
    };

    // b is at 2, not 1: the fresh write to a must not land either, in either stream order.
    for (label, streams) in [
        ("fresh first", vec![write(a, 1, 2), write(b, 1, 1)]),
        ("stale first", vec![write(b, 1, 1), write(a, 1, 2)]),
    ] {
        let req = full(streams, "k-1", "idem-1");
        let ids = event_ids(&req);
        let r = store.append(req).await;
        assert!(matches!(r, Err(AppendError::Conflict)), "{label}: {r:?}");
        assert_eq!(
            count_ids(&db.pool, &ids).await,
            0,
            "{label}: no event of the request is written"
        );
        assert_eq!(stream_version(&db.pool, a).await, 1, "{label}: a untouched");
        assert_eq!(stream_version(&db.pool, b).await, 2, "{label}: b untouched");
        assert!(
            store
                .claim("test_claim", "k-1")
                .await
                .expect("claim")
                .is_none(),
            "{label}: no claim"
        );
        assert!(
            store.load_snapshot(a).await.expect("snapshot").is_none(),
            "{label}: no snapshot"
        );
        assert!(
            store
                .idempotency("tester", "idem-1")
                .await
                .expect("idem")
                .is_none(),
            "{label}: no key"
        );
    }

    // With both versions current, everything lands together.
    let req = full(vec![write(a, 1, 2), write(b, 2, 1)], "k-1", "idem-1");
    let ids = event_ids(&req);
    let appended = store
        .append(req)
        .await
        .expect("a current multi-stream append");
    assert_eq!(appended.positions.len(), 3);
    assert_eq!(count_ids(&db.pool, &ids).await, 3);
    assert_eq!(stream_version(&db.pool, a).await, 3);
    assert_eq!(stream_version(&db.pool, b).await, 3);
    let claim: ClaimRecord = store
        .claim("test_claim", "k-1")
        .await
        .expect("claim")
        .expect("claimed");
    assert_eq!((claim.stream_id, claim.stream_version), (a, 2));
    assert_eq!(
        claim.position, appended.positions[0],
        "the claim carries the establishing event's position"
    );
    assert_eq!(
        store.load_snapshot(a).await.expect("snapshot").map(|s| s.0),
        Some(3)
    );
    let stored: StoredResponse = store
        .idempotency("tester", "idem-1")
        .await
        .expect("idem")
        .expect("recorded");
    assert_eq!(stored.result, Some((a, 3, appended.positions[2])));

    // A taken claim also takes the whole request down.
    let req = full(vec![write(a, 3, 1), write(b, 3, 1)], "k-1", "idem-2");
    let mut req = req;
    req.claims[0].stream_version = 4;
    req.snapshots.clear();
    req.idempotency = None;
    let ids = event_ids(&req);
    let r = store.append(req).await;
    assert!(
        matches!(r, Err(AppendError::ClaimTaken)),
        "taken claim: {r:?}"
    );
    assert_eq!(count_ids(&db.pool, &ids).await, 0);
    assert_eq!(stream_version(&db.pool, a).await, 3);
    assert_eq!(stream_version(&db.pool, b).await, 3);
    assert!(streams_with_holes(&db.pool).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// (d) Shared commits: many concurrent appends, each answered on its own.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Distinct,
    Shared(usize),
    /// Two new streams plus a shared stream at a stale version: must conflict as a whole.
    StaleMulti,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_succeed_or_conflict_each_on_its_own() {
    let db = TestDb::with_pool_size(8).await;
    let store = PgEventStore::new(db.pool.clone(), 2);
    let shared: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    for s in &shared {
        store
            .append(request(vec![write(*s, 0, 1)]))
            .await
            .expect("shared stream at 1");
    }

    let mut jobs: Vec<(Job, AppendRequest)> = Vec::new();
    for i in 0..100 {
        jobs.push((
            Job::Distinct,
            request(vec![write(Uuid::now_v7(), 0, 1 + i % 3)]),
        ));
    }
    for (k, s) in shared.iter().enumerate() {
        for _ in 0..10 {
            jobs.push((Job::Shared(k), request(vec![write(*s, 1, 1)])));
        }
    }
    for i in 0..6 {
        // Stale: every shared stream is at 1 at least, and these expect 0.
        let s = shared[i % shared.len()];
        jobs.push((
            Job::StaleMulti,
            request(vec![
                write(Uuid::now_v7(), 0, 1),
                write(s, 0, 1),
                write(Uuid::now_v7(), 0, 2),
            ]),
        ));
    }
    {
        use rand::seq::SliceRandom;
        jobs.shuffle(&mut rand::thread_rng());
    }

    let barrier = Arc::new(tokio::sync::Barrier::new(jobs.len()));
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|(job, req)| {
            let store = store.clone();
            let barrier = barrier.clone();
            let ids = event_ids(&req);
            tokio::spawn(async move {
                barrier.wait().await;
                (job, ids, store.append(req).await)
            })
        })
        .collect();
    let mut winners_per_shared = [0usize; 4];
    let mut written: Vec<(Vec<Uuid>, Appended)> = Vec::new();
    let mut lost: Vec<Uuid> = Vec::new();
    for t in tasks {
        let (job, ids, r) = t.await.expect("append task");
        match (job, r) {
            (Job::Distinct, Ok(a)) => written.push((ids, a)),
            (Job::Distinct, r) => panic!("an append to a new stream of its own failed: {r:?}"),
            (Job::Shared(k), Ok(a)) => {
                winners_per_shared[k] += 1;
                written.push((ids, a));
            }
            (Job::Shared(_), Err(AppendError::Conflict)) => lost.extend(ids),
            (Job::Shared(_), Err(e)) => panic!("a racer failed with {e:?}, not a conflict"),
            (Job::StaleMulti, Err(AppendError::Conflict)) => lost.extend(ids),
            (Job::StaleMulti, r) => panic!("a stale multi-stream append answered {r:?}"),
        }
    }
    assert_eq!(
        winners_per_shared, [1; 4],
        "exactly one winner per shared stream"
    );

    // Every winner's events are there, at the positions its answer gave.
    let all_ids: Vec<Uuid> = written.iter().flat_map(|(ids, _)| ids.clone()).collect();
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT event_id, position FROM events WHERE event_id = ANY($1)")
            .bind(&all_ids)
            .fetch_all(&db.pool)
            .await
            .expect("positions");
    let positions: HashMap<Uuid, i64> = rows.into_iter().collect();
    for (ids, appended) in &written {
        let stored: Vec<Option<i64>> = ids.iter().map(|id| positions.get(id).copied()).collect();
        let answered: Vec<Option<i64>> = appended.positions.iter().map(|p| Some(*p)).collect();
        assert_eq!(
            stored, answered,
            "the answer's positions are where the events landed"
        );
    }
    assert_eq!(
        count_ids(&db.pool, &lost).await,
        0,
        "no loser's event was written"
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(
        total as usize,
        4 + all_ids.len(),
        "the log holds the setup and the winners only"
    );
    let holes = streams_with_holes(&db.pool).await;
    assert!(holes.is_empty(), "streams with holes: {holes:?}");
}

// ---------------------------------------------------------------------------------------------
// (e) Append-only.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_events_table_refuses_update_delete_and_truncate() {
    let db = TestDb::with_pool_size(2).await;
    let store = PgEventStore::new(db.pool.clone(), 1);
    let stream = Uuid::now_v7();
    store
        .append(request(vec![write(stream, 0, 3)]))
        .await
        .expect("append");
    for sql in [
        "UPDATE events SET payload = '{}'::jsonb",
        "UPDATE events SET stream_version = stream_version + 10 WHERE stream_id IS NOT NULL",
        "DELETE FROM events",
        "DELETE FROM events WHERE stream_version = 3",
        "TRUNCATE events",
        "TRUNCATE TABLE events CASCADE",
    ] {
        let r = sqlx::query(sql).execute(&db.pool).await;
        let err = r.expect_err(&format!("`{sql}` must be refused"));
        assert!(
            err.to_string().contains("append-only"),
            "`{sql}` failed for another reason: {err}"
        );
    }
    let rows: Vec<(i64, serde_json::Value)> =
        sqlx::query_as("SELECT stream_version, payload FROM events ORDER BY position")
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(
        rows.iter().all(|r| r.1 != json!({})),
        "no payload was changed"
    );
}

// ---------------------------------------------------------------------------------------------
// (f), (g) Snapshots and decoding through the command service.
// ---------------------------------------------------------------------------------------------

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store that records how aggregates are loaded (snapshot, then events after which version).
struct Recording {
    inner: Arc<PgEventStore>,
    loads: Mutex<Vec<String>>,
}

impl Recording {
    fn note(&self, what: String) {
        self.loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
    fn loads(&self) -> Vec<String> {
        self.loads.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl EventStore for Recording {
    fn append<'l0, 'at>(
        &'l0 self,
        request: AppendRequest,
    ) -> BoxFut<'at, Result<Appended, AppendError>>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.inner.append(request)
    }

    fn load<'l0, 'at>(
        &'l0 self,
        stream_id: Uuid,
        after_version: i64,
    ) -> BoxFut<'at, Result<Vec<RecordedEvent>, StoreError>>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.note(format!("load {stream_id} after {after_version}"));
        self.inner.load(stream_id, after_version)
    }

    fn load_until<'l0, 'at>(
        &'l0 self,
        stream_id: Uuid,
        up_to: i64,
    ) -> BoxFut<'at, Result<Vec<RecordedEvent>, StoreError>>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.note(format!("load {stream_id} until {up_to}"));
        self.inner.load_until(stream_id, up_to)
    }

    fn load_snapshot<'l0, 'at>(
        &'l0 self,
        stream_id: Uuid,
    ) -> BoxFut<'at, Result<Option<(i64, serde_json::Value)>, StoreError>>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.note(format!("snapshot {stream_id}"));
        self.inner.load_snapshot(stream_id)
    }

    fn read_all<'l0, 'at>(
        &'l0 self,
        after: Cursor,
        limit: i64,
    ) -> BoxFut<'at, Result<Vec<RecordedEvent>, StoreError>>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.inner.read_all(after, limit)
    }

    fn claim<'l0, 'l1, 'l2, 'at>(
        &'l0 self,
        scope: &'l1 str,
        key: &'l2 str,
    ) -> BoxFut<'at, Result<Option<ClaimRecord>, StoreError>>
    where
        'l0: 'at,
        'l1: 'at,
        'l2: 'at,
        Self: 'at,
    {
        self.inner.claim(scope, key)
    }

    fn claims_with_prefix<'l0, 'l1, 'l2, 'at>(
        &'l0 self,
        scope: &'l1 str,
        prefix: &'l2 str,
    ) -> BoxFut<'at, Result<Vec<ClaimRecord>, StoreError>>
    where
        'l0: 'at,
        'l1: 'at,
        'l2: 'at,
        Self: 'at,
    {
        self.inner.claims_with_prefix(scope, prefix)
    }

    fn idempotency<'l0, 'l1, 'l2, 'at>(
        &'l0 self,
        subject: &'l1 str,
        key: &'l2 str,
    ) -> BoxFut<'at, Result<Option<StoredResponse>, StoreError>>
    where
        'l0: 'at,
        'l1: 'at,
        'l2: 'at,
        Self: 'at,
    {
        self.inner.idempotency(subject, key)
    }

    fn save_idempotency<'l0, 'l1, 'l2, 'l3, 'at>(
        &'l0 self,
        subject: &'l1 str,
        key: &'l2 str,
        response: &'l3 StoredResponse,
    ) -> BoxFut<'at, Result<bool, StoreError>>
    where
        'l0: 'at,
        'l1: 'at,
        'l2: 'at,
        'l3: 'at,
        Self: 'at,
    {
        self.inner.save_idempotency(subject, key, response)
    }
}

fn envelope(subject: &str, role: Role) -> Envelope {
    Envelope::new(Actor {
        subject: subject.to_owned(),
        roles: vec![role],
    })
}

fn service(store: Arc<dyn EventStore>, snapshot_every: i64) -> CommandService {
    CommandService::new(
        store,
        Arc::new(SystemClock),
        ServiceConfig {
            snapshot_every,
            ..Default::default()
        },
    )
}

/// A customer with an EUR wallet; returns the wallet id.
async fn customer_wallet(svc: &CommandService, sub: &str) -> Uuid {
    let env = envelope(sub, Role::Customer);
    svc.open_account(
        &env,
        OpenAccount {
            subject: None,
            email: format!("{sub}@example.com"),
            display_name: sub.to_owned(),
            birth_date: None,
            country: None,
        },
    )
    .await
    .expect("open account");
    svc.open_wallet(&env, "EUR", None)
        .await
        .expect("open wallet")
        .id
}

async fn deposit(svc: &CommandService, wallet: Uuid, amount: i64) {
    svc.wallet_command(
        &envelope("psp", Role::Payments),
        wallet,
        WalletAction::Deposit {
            amount,
            external_ref: format!("ref-{}", Uuid::now_v7()),
        },
    )
    .await
    .expect("deposit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_service_loads_snapshot_plus_tail_and_agrees_with_a_full_replay() {
    let db = TestDb::with_pool_size(6).await;
    let store: Arc<dyn EventStore> = PgEventStore::new(db.pool.clone(), 2);
    let first = service(store.clone(), 5);
    let wallet = customer_wallet(&first, "snap-owner").await;
    let mut total = 0;
    for i in 1..=23i64 {
        let amount = 100 * i + 7;
        deposit(&first, wallet, amount).await;
        total += amount;
    }
    // Withdraw and freeze as well, so the tail is not only deposits.
    let owner = envelope("snap-owner", Role::Customer);
    first
        .wallet_command(
            &owner,
            wallet,
            WalletAction::Withdraw {
                amount: 1_000,
                external_ref: "w-1".into(),
            },
        )
        .await
        .expect("withdraw");
    total -= 1_000;
    // 1 open + 23 deposits + 1 withdrawal = 25: the latest snapshot is at 25.
    let (version, state): (i64, serde_json::Value) =
        sqlx::query_as("SELECT version, state FROM snapshots WHERE stream_id = $1")
            .bind(wallet)
            .fetch_one(&db.pool)
            .await
            .expect("a snapshot of the wallet");
    assert_eq!(version, 25);
    let at_25 = replay::<Wallet>(store.as_ref(), wallet, 25)
        .await
        .expect("replay to 25");
    assert_eq!(
        serde_json::to_value(&at_25.state).expect("json"),
        state,
        "snapshot 25 == replay to 25"
    );

    // Two more deposits: the snapshot stays at 25, the tail is 26..27 ...
    deposit(&first, wallet, 11).await;
    deposit(&first, wallet, 13).await;
    total += 24;
    // ... but the brief's scenario is 23 deposits with a snapshot at 20: checked below on a
    // second wallet.
    let admin = envelope("admin", Role::Admin);
    let recording = Arc::new(Recording {
        inner: PgEventStore::new(db.pool.clone(), 1),
        loads: Mutex::new(Vec::new()),
    });
    let cold = service(recording.clone(), 5);
    let cold_view = cold.get_wallet(&admin, wallet).await.expect("cold read");
    let warm_view = first.get_wallet(&admin, wallet).await.expect("warm read");
    let full = replay::<Wallet>(store.as_ref(), wallet, i64::MAX)
        .await
        .expect("full replay");
    assert_eq!(full.version, 27);
    assert_eq!(full.state.balance, total);
    assert_eq!(
        (cold_view.version, &cold_view.state),
        (full.version, &full.state)
    );
    assert_eq!(
        (warm_view.version, &warm_view.state),
        (full.version, &full.state)
    );
    let loads = recording.loads();
    assert_eq!(
        loads,
        vec![
            format!("snapshot {wallet}"),
            format!("load {wallet} after 25")
        ],
        "a cold slot starts from the snapshot and reads only the tail"
    );

    // The brief's scenario: 23 deposits, snapshot at 20.
    let wallet2 = customer_wallet(&first, "snap-owner-2").await;
    for i in 1..=23i64 {
        deposit(&first, wallet2, 1_000 + i).await;
    }
    let v: i64 = sqlx::query_scalar("SELECT version FROM snapshots WHERE stream_id = $1")
        .bind(wallet2)
        .fetch_one(&db.pool)
        .await
        .expect("snapshot of wallet 2");
    assert_eq!(
        v, 20,
        "1 open + 23 deposits = 24 events, snapshot every 5: latest at 20"
    );
    let cold2 = service(recording.clone(), 5);
    let before = recording.loads().len();
    let c = cold2
        .get_wallet(&admin, wallet2)
        .await
        .expect("cold read 2");
    let w = first
        .get_wallet(&admin, wallet2)
        .await
        .expect("warm read 2");
    let r = replay::<Wallet>(store.as_ref(), wallet2, i64::MAX)
        .await
        .expect("replay 2");
    assert_eq!(r.version, 24);
    assert_eq!(r.state.balance, (1..=23).map(|i| 1_000 + i).sum::<i64>());
    assert_eq!((c.version, &c.state), (r.version, &r.state));
    assert_eq!((w.version, &w.state), (r.version, &r.state));
    assert_eq!(
        recording.loads()[before..].to_vec(),
        vec![
            format!("snapshot {wallet2}"),
            format!("load {wallet2} after 20")
        ]
    );
    // The cold service keeps working from there: a command on top of snapshot + tail.
    deposit(&cold2, wallet2, 5).await;
    let r = replay::<Wallet>(store.as_ref(), wallet2, i64::MAX)
        .await
        .expect("replay 2b");
    assert_eq!(r.version, 25);
    assert_eq!(
        r.state.balance,
        (1..=23).map(|i| 1_000 + i).sum::<i64>() + 5
    );
    let v: i64 = sqlx::query_scalar("SELECT version FROM snapshots WHERE stream_id = $1")
        .bind(wallet2)
        .fetch_one(&db.pool)
        .await
        .expect("snapshot of wallet 2");
    assert_eq!(v, 25);
    assert!(streams_with_holes(&db.pool).await.is_empty());
}

async fn insert_raw(
    pool: &PgPool,
    wallet: Uuid,
    version: i64,
    event_type: &str,
    payload: serde_json::Value,
) {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, \
         schema_version, payload, actor_sub, actor_role, command_id, correlation_id, \
         causation_id, occurred_at) \
         VALUES ($1, 'wallet', $2, $3, $4, 1, $5, 'intruder', 'admin', $1, $1, NULL, now())",
    )
    .bind(id)
    .bind(wallet)
    .bind(version)
    .bind(event_type)
    .bind(payload)
    .execute(pool)
    .await
    .expect("insert a raw event");
}

fn is_decode_error(e: &CommandError) -> bool {
    matches!(e, CommandError::Load(LoadError::Decode { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_event_type_makes_loading_fail_never_skipped() {
    let db = TestDb::with_pool_size(6).await;
    let store: Arc<dyn EventStore> = PgEventStore::new(db.pool.clone(), 2);
    let warm = service(store.clone(), 5);
    let admin = envelope("admin", Role::Admin);

    // Past a snapshot, so the bogus event sits in the tail a cold load reads.
    let wallet = customer_wallet(&warm, "bogus-owner").await;
    for _ in 0..6 {
        deposit(&warm, wallet, 100).await;
    }
    let before = warm.get_wallet(&admin, wallet).await.expect("read before");
    assert_eq!(before.version, 7);
    insert_raw(&db.pool, wallet, 8, "Bogus", json!({})).await;

    let cold = service(store.clone(), 5);
    let r = cold.get_wallet(&admin, wallet).await;
    assert!(
        matches!(&r, Err(e) if is_decode_error(e)),
        "a cold load must fail loudly: {r:?}"
    );
    let r = warm.get_wallet(&admin, wallet).await;
    assert!(
        matches!(&r, Err(e) if is_decode_error(e)),
        "a warm refresh must fail loudly: {r:?}"
    );
    let r = replay::<Wallet>(store.as_ref(), wallet, i64::MAX).await;
    assert!(
        matches!(r, Err(LoadError::Decode { version: 8, .. })),
        "replay: {r:?}"
    );
    // Commands on it fail too, and write nothing past the bad event.
    let r = cold
        .wallet_command(
            &envelope("psp", Role::Payments),
            wallet,
            WalletAction::Deposit {
                amount: 1,
                external_ref: "after-bogus".into(),
            },
        )
        .await;
    assert!(
        matches!(&r, Err(e) if is_decode_error(e)),
        "a command on it: {r:?}"
    );
    assert_eq!(
        stream_version(&db.pool, wallet).await,
        8,
        "nothing appended past the bad event"
    );

    // A known type whose payload does not fit fails the same way (another wallet).
    let wallet2 = customer_wallet(&warm, "bogus-owner-2").await;
    deposit(&warm, wallet2, 100).await;
    insert_raw(
        &db.pool,
        wallet2,
        3,
        "FundsDeposited",
        json!({"external_ref": "x"}),
    )
    .await;
    let r = service(store.clone(), 5).get_wallet(&admin, wallet2).await;
    assert!(
        matches!(&r, Err(e) if is_decode_error(e)),
        "a payload without amount: {r:?}"
    );
    let wallet3 = customer_wallet(&warm, "bogus-owner-3").await;
    insert_raw(
        &db.pool,
        wallet3,
        2,
        "FundsDeposited",
        json!({"amount": 5, "external_ref": "x", "extra": 1}),
    )
    .await;
    let r = service(store.clone(), 5).get_wallet(&admin, wallet3).await;
    assert!(
        matches!(&r, Err(e) if is_decode_error(e)),
        "a payload with an unknown field: {r:?}"
    );
}
