//! The PostgreSQL event store.
//!
//! Appends from concurrent commands share commits: writer tasks take every request waiting in
//! the queue and write them with one statement (one round trip, one commit). Each request is
//! still checked on its own: when the shared statement fails on a uniqueness clash, every
//! request of the batch is retried alone, so one loser never takes the others down.

use crate::store::{
    AppendError, AppendRequest, Appended, ClaimRecord, EventStore, StoreError, StoredResponse,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use schemas::log::{EventRow, EVENT_COLUMNS};
use schemas::{personal, Cursor, RecordedEvent};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

/// How many requests one shared commit takes at most.
const MAX_BATCH: usize = 256;
/// How often a transient failure (serialization, deadlock) is retried.
const TRANSIENT_RETRIES: usize = 5;

struct Pending {
    request: AppendRequest,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// The PostgreSQL event store (see `schemas/migrations`).
pub struct PgEventStore {
    pool: PgPool,
    queue: mpsc::Sender<Pending>,
}

impl PgEventStore {
    /// A store on `pool` with `writers` writer tasks sharing commits (at least one).
    pub fn new(pool: PgPool, writers: usize) -> Arc<Self> {
        let (queue, rx) = mpsc::channel::<Pending>(4096);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(writer(pool.clone(), rx.clone()));
        }
        Arc::new(Self { pool, queue })
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn writer(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(p) => batch.push(p),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
        }
        write_batch(&pool, batch).await;
    }
}

async fn write_batch(pool: &PgPool, batch: Vec<Pending>) {
    metrics::histogram!("chronicle_append_batch_requests").record(batch.len() as f64);
    if batch.len() > 1 && disjoint(&batch) {
        let requests: Vec<&AppendRequest> = batch.iter().map(|p| &p.request).collect();
        match insert(pool, &requests).await {
            Ok(positions) => {
                for p in batch {
                    let out = positions_for(&p.request, &positions);
                    let _ = p.reply.send(Ok(out));
                }
                return;
            }
            Err(AppendError::Store(e)) if !matches!(e.0, sqlx::Error::Database(_)) => {
                // The connection failed: the commit may or may not have happened, so nobody
                // may retry blindly. Every request learns that its outcome is unknown.
                tracing::error!(error = %e, size = batch.len(), "shared append failed, outcome unknown");
                let message = e.to_string();
                for p in batch {
                    let err = StoreError(sqlx::Error::Protocol(message.clone()));
                    let _ = p.reply.send(Err(AppendError::Store(err)));
                }
                return;
            }
            // The server refused the statement, so nothing of it was written: a clash or a
            // transient failure. Each request is retried alone and gets its own answer.
            Err(_) => {}
        }
    }
    for p in batch {
        let result = append_alone(pool, &p.request).await;
        let _ = p.reply.send(result);
    }
}

async fn append_alone(pool: &PgPool, request: &AppendRequest) -> Result<Appended, AppendError> {
    let mut attempt = 0;
    loop {
        match insert(pool, &[request]).await {
            Ok(positions) => return Ok(positions_for(request, &positions)),
            Err(AppendError::Store(e)) if is_transient(&e.0) && attempt < TRANSIENT_RETRIES => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Requests of one batch must not touch the same stream, claim or idempotency key (the
/// command layer serializes commands per aggregate, so this is the rule, not the exception).
fn disjoint(batch: &[Pending]) -> bool {
    let mut streams = HashSet::new();
    let mut claims = HashSet::new();
    let mut keys = HashSet::new();
    for p in batch {
        let r = &p.request;
        for s in &r.streams {
            if !streams.insert(s.stream_id) {
                return false;
            }
        }
        for c in &r.claims {
            if !claims.insert((c.scope, c.key.as_str())) {
                return false;
            }
        }
        if let Some(i) = &r.idempotency {
            if !keys.insert((i.subject.as_str(), i.key.as_str())) {
                return false;
            }
        }
    }
    true
}

fn positions_for(request: &AppendRequest, positions: &HashMap<(Uuid, i64), i64>) -> Appended {
    let mut out = Vec::new();
    for s in &request.streams {
        for (i, _) in s.events.iter().enumerate() {
            let version = s.expected_version + 1 + i as i64;
            out.push(positions.get(&(s.stream_id, version)).copied().unwrap_or(0));
        }
    }
    Appended { positions: out }
}

fn is_transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001") | Some("40P01")))
}

fn classify(e: sqlx::Error) -> AppendError {
    if let sqlx::Error::Database(db) = &e {
        match db.constraint() {
            Some("events_stream_version_key") => return AppendError::Conflict,
            Some("claims_pkey") => return AppendError::ClaimTaken,
            Some("idempotency_pkey") => return AppendError::IdempotencyTaken,
            _ => {}
        }
    }
    AppendError::Store(StoreError(e))
}

/// One statement for the whole batch: events, claims, snapshots and idempotency records in
/// data-modifying CTEs, so the batch costs one round trip and one commit.
///
/// `chk` counts streams whose expected version is not their last stored version's row (an
/// expected version ahead of the stream); if there is any, nothing is inserted at all (every
/// other CTE hangs off `ev`) and the caller sees fewer rows than events: a conflict. A stream
/// that moved past the expected version clashes on the unique (stream, version) instead.
const APPEND_SQL: &str = r#"
WITH chk AS (
    -- A scalar subquery per stream (not NOT EXISTS, which the planner may turn into a hash
    -- anti-join over the whole table when statistics are missing): one index probe each.
    SELECT count(*) FILTER (
               WHERE f.expected > 0
                 AND (SELECT p.position FROM events p
                      WHERE p.stream_id = f.stream_id AND p.stream_version = f.expected) IS NULL
           ) AS missing
    FROM UNNEST($30::uuid[], $31::bigint[]) AS f(stream_id, expected)
), ev AS (
    INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type,
                        schema_version, payload, actor_sub, actor_role, command_id,
                        correlation_id, causation_id, occurred_at)
    SELECT e.event_id, e.stream_type, e.stream_id, e.stream_version, e.event_type,
           e.schema_version, e.payload, e.actor_sub, e.actor_role, e.command_id,
           e.correlation_id, e.causation_id, e.occurred_at
    FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::int[],
                $7::jsonb[], $8::text[], $9::text[], $10::uuid[], $11::uuid[], $12::uuid[],
                $13::timestamptz[])
         WITH ORDINALITY AS e(event_id, stream_type, stream_id, stream_version, event_type,
                              schema_version, payload, actor_sub, actor_role, command_id,
                              correlation_id, causation_id, occurred_at, ord)
    CROSS JOIN chk
    WHERE chk.missing = 0
    ORDER BY e.ord
    RETURNING stream_id, stream_version, position
), cl AS (
    INSERT INTO claims (scope, key, stream_id, stream_version, position)
    SELECT c.scope, c.key, c.stream_id, c.stream_version, ev.position
    FROM UNNEST($14::text[], $15::text[], $16::uuid[], $17::bigint[])
         AS c(scope, key, stream_id, stream_version)
    JOIN ev ON ev.stream_id = c.stream_id AND ev.stream_version = c.stream_version
    RETURNING 1
), sn AS (
    INSERT INTO snapshots (stream_id, stream_type, version, state)
    SELECT s.stream_id, s.stream_type, s.version, s.state
    FROM UNNEST($18::uuid[], $19::text[], $20::bigint[], $21::jsonb[])
         AS s(stream_id, stream_type, version, state)
    JOIN ev ON ev.stream_id = s.stream_id AND ev.stream_version = s.version
    ON CONFLICT (stream_id) DO UPDATE
        SET version = EXCLUDED.version, state = EXCLUDED.state
        WHERE snapshots.version < EXCLUDED.version
    RETURNING 1
), idem AS (
    INSERT INTO idempotency (subject, key, request_hash, status, result_id, result_version,
                             result_position)
    SELECT i.subject, i.key, i.request_hash, i.status, i.result_id, i.result_version,
           ev.position
    FROM UNNEST($22::text[], $23::text[], $24::text[], $25::smallint[], $26::uuid[],
                $27::bigint[], $28::uuid[], $29::bigint[])
         AS i(subject, key, request_hash, status, result_id, result_version, last_stream,
              last_version)
    JOIN ev ON ev.stream_id = i.last_stream AND ev.stream_version = i.last_version
    RETURNING 1
)
SELECT stream_id, stream_version, position FROM ev
"#;

#[derive(Default)]
struct Columns {
    event_id: Vec<Uuid>,
    stream_type: Vec<String>,
    stream_id: Vec<Uuid>,
    stream_version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    payload: Vec<serde_json::Value>,
    actor_sub: Vec<String>,
    actor_role: Vec<String>,
    command_id: Vec<Uuid>,
    correlation_id: Vec<Uuid>,
    causation_id: Vec<Option<Uuid>>,
    occurred_at: Vec<DateTime<Utc>>,
    claim_scope: Vec<String>,
    claim_key: Vec<String>,
    claim_stream: Vec<Uuid>,
    claim_version: Vec<i64>,
    snap_stream: Vec<Uuid>,
    snap_type: Vec<String>,
    snap_version: Vec<i64>,
    snap_state: Vec<serde_json::Value>,
    idem_subject: Vec<String>,
    idem_key: Vec<String>,
    idem_hash: Vec<String>,
    idem_status: Vec<i16>,
    idem_result_id: Vec<Uuid>,
    idem_result_version: Vec<i64>,
    idem_last_stream: Vec<Uuid>,
    idem_last_version: Vec<i64>,
    check_stream: Vec<Uuid>,
    check_expected: Vec<i64>,
}

impl Columns {
    fn push(&mut self, r: &AppendRequest) {
        let m = &r.metadata;
        for s in &r.streams {
            self.check_stream.push(s.stream_id);
            self.check_expected.push(s.expected_version);
        }
        for s in &r.streams {
            for (i, e) in s.events.iter().enumerate() {
                self.event_id.push(e.event_id);
                self.stream_type.push(s.stream_type.to_owned());
                self.stream_id.push(s.stream_id);
                self.stream_version.push(s.expected_version + 1 + i as i64);
                self.event_type.push(e.event_type.clone());
                self.schema_version.push(e.schema_version);
                self.payload.push(e.payload.clone());
                self.actor_sub.push(m.actor_sub.clone());
                self.actor_role.push(m.actor_role.clone());
                self.command_id.push(m.command_id);
                self.correlation_id.push(m.correlation_id);
                self.causation_id.push(m.causation_id);
                self.occurred_at.push(m.occurred_at);
            }
        }
        for c in &r.claims {
            self.claim_scope.push(c.scope.to_owned());
            self.claim_key.push(c.key.clone());
            self.claim_stream.push(c.stream_id);
            self.claim_version.push(c.stream_version);
        }
        for s in &r.snapshots {
            self.snap_stream.push(s.stream_id);
            self.snap_type.push(s.stream_type.to_owned());
            self.snap_version.push(s.version);
            self.snap_state.push(s.state.clone());
        }
        if let Some(i) = &r.idempotency {
            self.idem_subject.push(i.subject.clone());
            self.idem_key.push(i.key.clone());
            self.idem_hash.push(i.request_hash.clone());
            self.idem_status.push(i.status as i16);
            self.idem_result_id.push(i.result_id);
            self.idem_result_version.push(i.result_version);
            self.idem_last_stream.push(i.last_stream);
            self.idem_last_version.push(i.last_version);
        }
    }
}

async fn insert(
    pool: &PgPool,
    requests: &[&AppendRequest],
) -> Result<HashMap<(Uuid, i64), i64>, AppendError> {
    let mut c = Columns::default();
    for r in requests {
        c.push(r);
    }
    let events = c.event_id.len();
    let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(APPEND_SQL)
        .bind(c.event_id)
        .bind(c.stream_type)
        .bind(c.stream_id)
        .bind(c.stream_version)
        .bind(c.event_type)
        .bind(c.schema_version)
        .bind(c.payload)
        .bind(c.actor_sub)
        .bind(c.actor_role)
        .bind(c.command_id)
        .bind(c.correlation_id)
        .bind(c.causation_id)
        .bind(c.occurred_at)
        .bind(c.claim_scope)
        .bind(c.claim_key)
        .bind(c.claim_stream)
        .bind(c.claim_version)
        .bind(c.snap_stream)
        .bind(c.snap_type)
        .bind(c.snap_version)
        .bind(c.snap_state)
        .bind(c.idem_subject)
        .bind(c.idem_key)
        .bind(c.idem_hash)
        .bind(c.idem_status)
        .bind(c.idem_result_id)
        .bind(c.idem_result_version)
        .bind(c.idem_last_stream)
        .bind(c.idem_last_version)
        .bind(c.check_stream)
        .bind(c.check_expected)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    if rows.len() != events {
        // An expected version ahead of its stream: the statement wrote nothing.
        return Err(AppendError::Conflict);
    }
    Ok(rows.into_iter().map(|(s, v, p)| ((s, v), p)).collect())
}

/// Seals the personal fields of a request's events and snapshots (nothing to do, and no
/// round trip, for a request that carries none).
async fn seal(pool: &PgPool, request: &mut AppendRequest) -> Result<(), AppendError> {
    let AppendRequest {
        streams, snapshots, ..
    } = request;
    let mut to_seal: Vec<personal::ToSeal<'_>> = streams
        .iter_mut()
        .map(|s| personal::ToSeal {
            stream_type: s.stream_type,
            stream_id: s.stream_id,
            events: &mut s.events,
            snapshots: Vec::new(),
        })
        .collect();
    for snap in snapshots.iter_mut() {
        match to_seal.iter_mut().find(|t| t.stream_id == snap.stream_id) {
            Some(t) => t.snapshots.push(&mut snap.state),
            None => to_seal.push(personal::ToSeal {
                stream_type: snap.stream_type,
                stream_id: snap.stream_id,
                events: &mut [],
                snapshots: vec![&mut snap.state],
            }),
        }
    }
    personal::seal_request(pool, &mut to_seal)
        .await
        .map_err(|e| AppendError::Store(StoreError(e)))
}

/// Opens the sealed personal fields of events read from the log.
async fn open(
    pool: &PgPool,
    mut events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    personal::open(pool, &mut events)
        .await
        .map_err(|e| StoreError(e.into()))?;
    Ok(events)
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn append(&self, mut request: AppendRequest) -> Result<Appended, AppendError> {
        seal(&self.pool, &mut request).await?;
        let (reply, rx) = oneshot::channel();
        if self.queue.send(Pending { request, reply }).await.is_err() {
            return Err(AppendError::Store(StoreError(sqlx::Error::PoolClosed)));
        }
        rx.await
            .unwrap_or(Err(AppendError::Store(StoreError(sqlx::Error::PoolClosed))))
    }

    async fn load(
        &self,
        stream_id: Uuid,
        after_version: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version > $2 \
             ORDER BY stream_version"
        );
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(stream_id)
            .bind(after_version)
            .fetch_all(&self.pool)
            .await?;
        open(&self.pool, rows.into_iter().map(Into::into).collect()).await
    }

    async fn load_until(
        &self,
        stream_id: Uuid,
        up_to: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version <= $2 \
             ORDER BY stream_version"
        );
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(stream_id)
            .bind(up_to)
            .fetch_all(&self.pool)
            .await?;
        open(&self.pool, rows.into_iter().map(Into::into).collect()).await
    }

    async fn load_snapshot(
        &self,
        stream_id: Uuid,
    ) -> Result<Option<(i64, serde_json::Value)>, StoreError> {
        let row: Option<(i64, String, serde_json::Value)> = sqlx::query_as(
            "SELECT version, stream_type, state FROM snapshots WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((version, stream_type, mut state)) = row else {
            return Ok(None);
        };
        personal::open_snapshot(&self.pool, &stream_type, stream_id, &mut state)
            .await
            .map_err(|e| StoreError(e.into()))?;
        Ok(Some((version, state)))
    }

    async fn read_all(&self, after: Cursor, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = schemas::log::read_all(&self.pool, after, limit).await?;
        open(&self.pool, events).await
    }

    async fn claim(&self, scope: &str, key: &str) -> Result<Option<ClaimRecord>, StoreError> {
        let row: Option<(String, Uuid, i64, i64)> = sqlx::query_as(
            "SELECT key, stream_id, stream_version, position FROM claims WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(key, stream_id, stream_version, position)| ClaimRecord {
                key,
                stream_id,
                stream_version,
                position,
            }),
        )
    }

    async fn claims_with_prefix(
        &self,
        scope: &str,
        prefix: &str,
    ) -> Result<Vec<ClaimRecord>, StoreError> {
        let rows: Vec<(String, Uuid, i64, i64)> = sqlx::query_as(
            "SELECT key, stream_id, stream_version, position FROM claims \
             WHERE scope = $1 AND starts_with(key, $2) ORDER BY key",
        )
        .bind(scope)
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key, stream_id, stream_version, position)| ClaimRecord {
                key,
                stream_id,
                stream_version,
                position,
            })
            .collect())
    }

    async fn idempotency(
        &self,
        subject: &str,
        key: &str,
    ) -> Result<Option<StoredResponse>, StoreError> {
        type Row = (
            String,
            i16,
            Option<Uuid>,
            Option<i64>,
            Option<i64>,
            Option<serde_json::Value>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT request_hash, status, result_id, result_version, result_position, body \
             FROM idempotency WHERE subject = $1 AND key = $2",
        )
        .bind(subject)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(request_hash, status, id, version, position, body)| StoredResponse {
                request_hash,
                status: status as u16,
                result: match (id, version, position) {
                    (Some(i), Some(v), Some(p)) => Some((i, v, p)),
                    _ => None,
                },
                body,
            },
        ))
    }

    async fn save_idempotency(
        &self,
        subject: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let (id, version, position) = match response.result {
            Some((i, v, p)) => (Some(i), Some(v), Some(p)),
            None => (None, None, None),
        };
        let done = sqlx::query(
            "INSERT INTO idempotency (subject, key, request_hash, status, result_id, \
             result_version, result_position, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT DO NOTHING",
        )
        .bind(subject)
        .bind(key)
        .bind(&response.request_hash)
        .bind(response.status as i16)
        .bind(id)
        .bind(version)
        .bind(position)
        .bind(&response.body)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
