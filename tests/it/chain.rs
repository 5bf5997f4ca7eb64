//! Tamper evidence: the hash chain over the log detects every changed, removed, inserted or
//! reordered event, and a chain over an untouched log verifies.

use crate::support::{small_batches, TestApp};
use axum::http::StatusCode;
use projections::chain::{verify, ChainProjector, Report};
use projections::Worker;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;

/// Seals the whole log.
async fn seal(pool: &PgPool) {
    let mut worker = Worker::live(pool.clone(), Arc::new(ChainProjector), small_batches(37));
    worker.load().await.expect("load");
    worker.catch_up(|_, _| {}).await.expect("seal");
}

async fn verified(conn: &mut PgConnection) -> Report {
    verify(conn, |_| {}).await.expect("verify")
}

#[tokio::test]
async fn an_untouched_log_verifies_and_unsealed_events_are_counted() {
    let app = TestApp::new().await;
    let pool = app.db.pool.clone();
    let mut conn = pool.acquire().await.expect("conn");
    let empty = verified(&mut conn).await;
    assert!(
        empty.ok && empty.checked == 0 && empty.unsealed == 0,
        "{empty:?}"
    );

    app.customers_with_transfers(3).await;
    seal(&pool).await;
    let events = app.event_count().await;
    let report = verified(&mut conn).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checked, events as u64);
    assert_eq!(report.unsealed, 0);
    assert_eq!(Some(report.sealed_position), app.log_head().await);

    app.customers_with_transfers(2).await;
    let behind = verified(&mut conn).await;
    assert!(behind.ok, "{behind:?}");
    assert_eq!(behind.checked, events as u64);
    assert_eq!(behind.unsealed, app.event_count().await - events);
    assert_eq!(behind.head_hash, report.head_hash);

    seal(&pool).await;
    let again = verified(&mut conn).await;
    assert!(again.ok && again.unsealed == 0, "{again:?}");
    assert_ne!(again.head_hash, report.head_hash);

    // The chain is append-only like the log.
    let refused = sqlx::query("DELETE FROM event_chain WHERE position = 1")
        .execute(&pool)
        .await;
    assert!(refused.is_err(), "links cannot be deleted");
}

/// The columns of one event as text, to tell whether a mutation changed anything.
async fn row_text(conn: &mut PgConnection, position: i64) -> Option<String> {
    sqlx::query_scalar("SELECT row(e.*)::text FROM events e WHERE position = $1")
        .bind(position)
        .fetch_optional(&mut *conn)
        .await
        .expect("row")
}

/// One random mutation of the stored log, inside the caller's transaction; a description of
/// it, or `None` when the chosen change would leave the data as it was.
async fn mutate(conn: &mut PgConnection, rng: &mut StdRng, positions: &[i64]) -> Option<String> {
    let p = positions[rng.gen_range(0..positions.len())];
    let q = positions[rng.gen_range(0..positions.len())];
    let before = row_text(conn, p).await;
    let before_q = row_text(conn, q).await;
    let what = match rng.gen_range(0..8) {
        0 | 1 => {
            // One byte of the payload's JSON text.
            let text: String =
                sqlx::query_scalar("SELECT payload::text FROM events WHERE position = $1")
                    .bind(p)
                    .fetch_one(&mut *conn)
                    .await
                    .expect("payload");
            let mut bytes = text.into_bytes();
            let candidates: Vec<usize> = (0..bytes.len())
                .filter(|&i| bytes[i].is_ascii_alphanumeric())
                .collect();
            if candidates.is_empty() {
                return None;
            }
            let i = candidates[rng.gen_range(0..candidates.len())];
            let old = bytes[i];
            bytes[i] = if old.is_ascii_digit() {
                b'0' + ((old - b'0' + 1 + rng.gen_range(0..8)) % 10)
            } else if old == b'z' {
                b'a'
            } else {
                old + 1
            };
            let mutated = String::from_utf8(bytes).ok()?;
            serde_json::from_str::<serde_json::Value>(&mutated).ok()?;
            sqlx::query("UPDATE events SET payload = $2::jsonb WHERE position = $1")
                .bind(p)
                .bind(&mutated)
                .execute(&mut *conn)
                .await
                .ok()?;
            format!("payload byte {i} of event {p}")
        }
        2 => {
            sqlx::query(
                "UPDATE events SET actor_sub = overlay(actor_sub placing \
                 CASE WHEN substr(actor_sub, 1, 1) = 'x' THEN 'y' ELSE 'x' END from 1 for 1) \
                 WHERE position = $1",
            )
            .bind(p)
            .execute(&mut *conn)
            .await
            .ok()?;
            format!("actor of event {p}")
        }
        3 => {
            sqlx::query(
                "UPDATE events SET occurred_at = occurred_at + interval '1 microsecond' \
                 WHERE position = $1",
            )
            .bind(p)
            .execute(&mut *conn)
            .await
            .ok()?;
            format!("time of event {p}")
        }
        4 => {
            sqlx::query("DELETE FROM events WHERE position = $1")
                .bind(p)
                .execute(&mut *conn)
                .await
                .ok()?;
            return Some(format!("deleted event {p}"));
        }
        5 => {
            // Two events trade payloads.
            sqlx::query(
                "UPDATE events e SET payload = o.payload FROM events o \
                 WHERE (e.position, o.position) IN (($1, $2), ($2, $1))",
            )
            .bind(p)
            .bind(q)
            .execute(&mut *conn)
            .await
            .ok()?;
            format!("payloads of events {p} and {q} swapped")
        }
        6 => {
            // Two events trade places in the log.
            sqlx::query(
                "UPDATE events e SET tx = o.tx, position = o.position FROM events o \
                 WHERE (e.position, o.position) IN (($1, $2), ($2, $1))",
            )
            .bind(p)
            .bind(q)
            .execute(&mut *conn)
            .await
            .ok()?;
            format!("events {p} and {q} swapped places")
        }
        _ => {
            // An event slipped in: a copy of another one under a new id and position.
            sqlx::query(
                "INSERT INTO events (event_id, tx, stream_type, stream_id, stream_version, \
                   event_type, schema_version, payload, actor_sub, actor_role, command_id, \
                   correlation_id, causation_id, occurred_at) \
                 OVERRIDING SYSTEM VALUE \
                 SELECT gen_random_uuid(), tx, stream_type, gen_random_uuid(), stream_version, \
                   event_type, schema_version, payload, actor_sub, actor_role, command_id, \
                   correlation_id, causation_id, occurred_at FROM events WHERE position = $1",
            )
            .bind(p)
            .execute(&mut *conn)
            .await
            .ok()?;
            return Some(format!("a copy of event {p} inserted"));
        }
    };
    let changed = row_text(conn, p).await != before || row_text(conn, q).await != before_q;
    changed.then_some(what)
}

#[tokio::test]
async fn a_hundred_random_mutations_deletions_and_reorderings_are_all_detected() {
    let app = TestApp::new().await;
    app.customers_with_transfers(6).await;
    let pool = app.db.pool.clone();
    seal(&pool).await;
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(&pool)
        .await
        .expect("positions");
    assert!(positions.len() > 20);
    let mut rng = StdRng::seed_from_u64(0xC4A1);
    let mut conn = pool.acquire().await.expect("conn");
    let (mut tried, mut detected) = (0, 0);
    let mut kinds = std::collections::BTreeSet::new();
    while tried < 100 {
        sqlx::query("BEGIN")
            .execute(&mut *conn)
            .await
            .expect("begin");
        // The append-only triggers would refuse; a tamperer with the database's superuser
        // rights would switch them off like this.
        sqlx::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *conn)
            .await
            .expect("no triggers");
        sqlx::query("SAVEPOINT m")
            .execute(&mut *conn)
            .await
            .expect("savepoint");
        let what = mutate(&mut conn, &mut rng, &positions).await;
        let Some(what) = what else {
            sqlx::query("ROLLBACK")
                .execute(&mut *conn)
                .await
                .expect("rollback");
            continue;
        };
        tried += 1;
        let report = verified(&mut conn).await;
        if let Some(b) = &report.first_break {
            detected += 1;
            kinds.insert(b.kind);
        } else {
            panic!("not detected: {what}: {report:?}");
        }
        sqlx::query("ROLLBACK")
            .execute(&mut *conn)
            .await
            .expect("rollback");
    }
    assert_eq!((tried, detected), (100, 100));
    assert!(
        kinds.contains("changed") && kinds.contains("missing"),
        "{kinds:?}"
    );
    // Everything rolled back: the log verifies again.
    let report = verified(&mut conn).await;
    assert!(report.ok, "{report:?}");
}

#[tokio::test]
async fn get_audit_verify_reports_the_chain_to_auditors_only() {
    let app = TestApp::new().await;
    app.customers_with_transfers(3).await;
    let pool = app.db.pool.clone();
    seal(&pool).await;
    let auditor = app.token("auditor-1", &[commands::Role::Auditor]);
    let (_, customer) = app.customer("not-an-auditor").await;
    assert_eq!(
        app.get("/v1/audit/verify", &customer).await.status,
        StatusCode::FORBIDDEN
    );
    let answer = app.get("/v1/audit/verify", &auditor).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["ok"], true, "{:?}", answer.body);
    assert_eq!(answer.body["first_break"], serde_json::Value::Null);
    let checked = answer.body["checked"].as_i64().expect("checked");
    assert!(checked > 0);

    // Tampered for real, past the triggers.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("no triggers");
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{amount}', '1') WHERE position = 3",
    )
    .execute(&mut *tx)
    .await
    .expect("tamper");
    tx.commit().await.expect("commit");
    let answer = app.get("/v1/audit/verify", &auditor).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["ok"], false, "{:?}", answer.body);
    let first_break = &answer.body["first_break"];
    assert_eq!(first_break["kind"], "changed", "{first_break:?}");
    assert!(first_break["position"].as_i64().expect("position") <= 3);
}
