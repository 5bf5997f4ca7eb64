//! Rebuilds: a projector replays the log from position 0 into shadow tables (schema
//! `rebuild_<name>`, created `LIKE` the live ones) while the live tables keep serving, then the
//! shadow replaces the live tables in one transaction. The shadow's checkpoint is stored like
//! any other (`rebuild:<name>`), so an interrupted rebuild resumes where it stopped.

use crate::runtime::{rebuild_key, take_in, TakeIn, Worker, WorkerConfig, LIVE_SCHEMA};
use crate::{Projector, Step};
use schemas::{Cursor, RecordedEvent};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The schema holding a projector's shadow tables.
pub fn shadow_schema(name: &str) -> String {
    format!("rebuild_{name}")
}

/// Events per transaction while rebuilding.
pub const REBUILD_BATCH: i64 = 5000;

/// Creates the shadow tables and checkpoint unless they exist (a rebuild to resume).
/// Returns the cursor the rebuild starts from.
pub async fn prepare(pool: &PgPool, projector: &dyn Projector) -> Result<Cursor, sqlx::Error> {
    let schema = shadow_schema(projector.name());
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *tx)
        .await?;
    for table in projector.tables() {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.{table} \
             (LIKE {LIVE_SCHEMA}.{table} INCLUDING ALL EXCLUDING INDEXES)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    create_indexes(&mut tx, projector, Indexes::ForApply).await?;
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(rebuild_key(projector.name()))
        .execute(&mut *tx)
        .await?;
    let (t, p): (i64, i64) =
        sqlx::query_as("SELECT tx, position FROM projection_checkpoints WHERE name = $1")
            .bind(rebuild_key(projector.name()))
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(Cursor { tx: t, position: p })
}

/// Which of the live tables' indexes [`create_indexes`] gives the shadow tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexes {
    /// Those `apply` needs while the shadow fills (all but
    /// [`Projector::indexes_built_last`]).
    ForApply,
    /// All of them.
    All,
}

/// A live index: name, definition, unique, its constraint's name and kind (`p` or `u`).
type LiveIndex = (String, String, bool, Option<String>, Option<i8>);

/// Gives the shadow tables the live tables' indexes they lack (`which` of them), under the
/// live names and with their primary-key and unique constraints, so that after the swap the
/// tables are indexed exactly as the migrations made them. An index is lacking when no index
/// of the shadow table has the same definition (`USING ...` onwards, and uniqueness), so a
/// shadow made by an earlier version, with other index names, is not indexed twice.
async fn create_indexes(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    which: Indexes,
) -> Result<(), sqlx::Error> {
    let schema = shadow_schema(projector.name());
    let later = projector.indexes_built_last();
    for table in projector.tables() {
        let live: Vec<LiveIndex> = sqlx::query_as(
            "SELECT i.relname::text, pg_get_indexdef(x.indexrelid), x.indisunique, \
                    c.conname::text, c.contype \
             FROM pg_index x \
             JOIN pg_class t ON t.oid = x.indrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             JOIN pg_class i ON i.oid = x.indexrelid \
             LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid \
                                      AND c.contype IN ('p', 'u') \
             WHERE n.nspname = $1 AND t.relname = $2 ORDER BY i.relname",
        )
        .bind(LIVE_SCHEMA)
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let present: Vec<(String, bool)> = sqlx::query_as(
            "SELECT pg_get_indexdef(x.indexrelid), x.indisunique \
             FROM pg_index x \
             JOIN pg_class t ON t.oid = x.indrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = $1 AND t.relname = $2",
        )
        .bind(&schema)
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let shape =
            |def: &str, unique: bool| (def.find(" USING ").map(|at| def[at..].to_owned()), unique);
        let present: Vec<_> = present.iter().map(|(d, u)| shape(d, *u)).collect();
        for (name, def, unique, constraint, kind) in live {
            if which == Indexes::ForApply && later.contains(&name.as_str()) {
                continue;
            }
            if present.contains(&shape(&def, unique)) {
                continue;
            }
            let on_live = format!(" ON {LIVE_SCHEMA}.{table} ");
            if !def.contains(&on_live) {
                return Err(sqlx::Error::Protocol(format!(
                    "index {name} of {table}: unexpected definition {def}"
                )));
            }
            let def = def.replacen(&on_live, &format!(" ON {schema}.{table} "), 1);
            sqlx::query(&def).execute(&mut *conn).await?;
            if let Some(constraint) = constraint {
                let kind = if kind == Some(b'p' as i8) {
                    "PRIMARY KEY"
                } else {
                    "UNIQUE"
                };
                sqlx::query(&format!(
                    "ALTER TABLE {schema}.{table} ADD CONSTRAINT {constraint} {kind} USING INDEX {name}"
                ))
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

/// Completes a projector's shadow tables once they are filled: the indexes left for last
/// ([`Projector::indexes_built_last`]) are built, each in one sorted pass. Idempotent; the
/// rebuilds call it before comparing or swapping.
pub async fn finish(pool: &PgPool, projector: &dyn Projector) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Sorting a large table's keys in memory rather than in temporary files.
    sqlx::query("SET LOCAL maintenance_work_mem = '256MB'")
        .execute(&mut *tx)
        .await?;
    create_indexes(&mut tx, projector, Indexes::All).await?;
    tx.commit().await
}

/// A worker on the shadow tables.
pub fn shadow_worker(pool: &PgPool, projector: Arc<dyn Projector>) -> Worker {
    let name = projector.name();
    Worker::new(
        pool.clone(),
        projector,
        rebuild_key(name),
        shadow_schema(name),
        WorkerConfig {
            batch: REBUILD_BATCH,
            ..WorkerConfig::default()
        },
    )
}

/// Replays the log into the shadow tables until it is exhausted; `progress` gets each
/// batch's size and the cursor reached.
pub async fn build_shadow(
    pool: &PgPool,
    projector: Arc<dyn Projector>,
    progress: impl FnMut(usize, Cursor),
) -> Result<Cursor, sqlx::Error> {
    prepare(pool, projector.as_ref()).await?;
    let mut worker = shadow_worker(pool, projector.clone());
    worker.load().await?;
    worker.catch_up(progress).await?;
    finish(pool, projector.as_ref()).await?;
    Ok(worker.cursor())
}

/// Events read from the log per batch by the shared reader of [`build_all`].
pub const SHARED_READ_BATCH: i64 = 10_000;

/// Batches read ahead of the slowest projector by [`build_all`].
const READ_AHEAD: usize = 6;

/// A projector takes at least this many of its events in one transaction (fewer only at the
/// end of the log): each aggregate row it keeps is written once per transaction, however
/// many events touched it, and commits are few.
const TAKE_AT_LEAST: usize = 50_000;

/// A projector behind the reader takes the batches waiting for it together, up to this many
/// of its events in one transaction.
const COALESCE_UP_TO: usize = 100_000;

/// Replays the log into the shadow tables of several projectors at once (a `rebuild all`):
/// one reader reads and decodes the log once, in commit order, and hands each projector the
/// events of its stream types; every projector applies them on its own connection, so
/// reading and the projectors' writes overlap. Each projector's shadow checkpoint moves with
/// its own writes, so an interrupted run resumes each one where it stopped. `progress` gets
/// the projector's name, the number of its events taken in and the cursor reached.
pub async fn build_all(
    pool: &PgPool,
    projectors: Vec<Arc<dyn Projector>>,
    progress: impl Fn(&'static str, usize, Cursor) + Send + Sync + 'static,
) -> Result<Vec<Cursor>, sqlx::Error> {
    let mut workers = Vec::with_capacity(projectors.len());
    for projector in &projectors {
        prepare(pool, projector.as_ref()).await?;
        let mut worker = shadow_worker(pool, projector.clone());
        worker.load().await?;
        workers.push(worker);
    }
    let Some(start) = workers.iter().map(Worker::cursor).min() else {
        return Ok(Vec::new());
    };
    let head = schemas::log::head(pool).await?;

    type Batch = (Vec<RecordedEvent>, Cursor);
    let progress = Arc::new(progress);
    let mut senders: Vec<mpsc::Sender<Batch>> = Vec::with_capacity(workers.len());
    let mut appliers = JoinSet::new();
    for (i, mut worker) in workers.into_iter().enumerate() {
        let (send, mut receive) = mpsc::channel::<Batch>(READ_AHEAD);
        senders.push(send);
        let progress = progress.clone();
        let projector = projectors[i].clone();
        let pool = pool.clone();
        appliers.spawn(async move {
            // One buffer for every transaction, so its memory is allocated once.
            let mut events: Vec<RecordedEvent> = Vec::new();
            while let Some((first, mut end)) = receive.recv().await {
                events.extend(first);
                // Batches are taken together, as many as are waiting up to COALESCE_UP_TO and
                // at least TAKE_AT_LEAST events: fewer commits, and each row the projector
                // keeps is written once for all of them.
                while events.len() < COALESCE_UP_TO {
                    let next = if events.len() < TAKE_AT_LEAST {
                        receive.recv().await
                    } else {
                        receive.try_recv().ok()
                    };
                    match next {
                        Some((more, reached)) => {
                            events.extend(more);
                            end = reached;
                        }
                        None => break,
                    }
                }
                if let Step::Took(n) = worker.feed(&events, end).await? {
                    progress(worker.name(), n, worker.cursor());
                }
                events.clear();
            }
            finish(&pool, projector.as_ref()).await?;
            Ok::<_, sqlx::Error>((i, worker.cursor()))
        });
    }

    // For each stream type, the projectors that take its events (worked out once).
    let mut wanted_by: std::collections::HashMap<&'static str, Vec<usize>> =
        std::collections::HashMap::new();
    for (i, p) in projectors.iter().enumerate() {
        for &t in p.stream_types() {
            wanted_by.entry(t).or_default().push(i);
        }
    }
    let nobody: Vec<usize> = Vec::new();
    let wanting = |e: &RecordedEvent| -> &[usize] {
        wanted_by.get(e.stream_type.as_str()).unwrap_or(&nobody)
    };
    let reader = async {
        let mut cursor = start;
        loop {
            let mut events = schemas::log::read_all(pool, cursor, SHARED_READ_BATCH).await?;
            schemas::personal::open(pool, &mut events).await?;
            let Some(end) = events.last().map(RecordedEvent::cursor) else {
                match head {
                    Some(h) if cursor < h => {
                        // A transaction elsewhere holds the readable horizon back.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    _ => return Ok::<_, sqlx::Error>(()),
                }
            };
            cursor = end;
            // Hand every event to each projector of its stream type: moved to the last one
            // that wants it, cloned for the others.
            let mut sizes = vec![0; senders.len()];
            for &i in events.iter().flat_map(&wanting) {
                sizes[i] += 1;
            }
            let mut parts: Vec<Vec<RecordedEvent>> =
                sizes.into_iter().map(Vec::with_capacity).collect();
            for event in events {
                if let Some((&last, others)) = wanting(&event).split_last() {
                    for &i in others {
                        parts[i].push(event.clone());
                    }
                    parts[last].push(event);
                }
            }
            for (send, part) in senders.iter().zip(parts) {
                if send.send((part, end)).await.is_err() {
                    // The applier stopped with an error, reported below.
                    return Ok(());
                }
            }
        }
    };
    let read = reader.await;
    drop(senders);
    let mut cursors = vec![Cursor::START; projectors.len()];
    let mut failed = None;
    while let Some(done) = appliers.join_next().await {
        match done {
            Ok(Ok((i, cursor))) => cursors[i] = cursor,
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(e) => failed = failed.or(Some(sqlx::Error::Protocol(e.to_string()))),
        }
    }
    read?;
    match failed {
        Some(e) => Err(e),
        None => Ok(cursors),
    }
}

/// Rows that differ between the live and the shadow tables, per table: (table, rows only in
/// live, rows only in the shadow). Empty lists mean equal read models.
pub async fn differences(
    pool: &PgPool,
    projector: &dyn Projector,
) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    let schema = shadow_schema(projector.name());
    let mut out = Vec::new();
    for table in projector.tables() {
        let (live_only, shadow_only): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM (SELECT * FROM {LIVE_SCHEMA}.{table} \
                                           EXCEPT ALL SELECT * FROM {schema}.{table}) a), \
                    (SELECT count(*) FROM (SELECT * FROM {schema}.{table} \
                                           EXCEPT ALL SELECT * FROM {LIVE_SCHEMA}.{table}) b)"
        ))
        .fetch_one(pool)
        .await?;
        if live_only != 0 || shadow_only != 0 {
            out.push((table.to_string(), live_only, shadow_only));
        }
    }
    Ok(out)
}

/// Replaces the live tables with the shadow ones in one transaction: under the live
/// checkpoint's row lock (so the live worker pauses between batches), the shadow takes in the
/// last events, the live tables are dropped, the shadow tables move into their place, and the
/// live checkpoint and parked events become the shadow's. Readers wait for the commit and
/// then see the new tables.
pub async fn swap(pool: &PgPool, projector: Arc<dyn Projector>) -> Result<Cursor, SwapError> {
    let name = projector.name();
    let key = rebuild_key(name);
    let schema = shadow_schema(name);
    // The last events are taken in by a worker outside this transaction first, so that the
    // locked phase is short.
    let mut worker = shadow_worker(pool, projector.clone());
    worker.load().await?;
    worker.catch_up(|_, _| {}).await?;
    finish(pool, projector.as_ref()).await?;

    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT 1 FROM projection_checkpoints WHERE name = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    // Take in what committed since, inside the lock.
    let mut cursor = worker.cursor();
    loop {
        let (events, end) =
            crate::runtime::read_for(&mut tx, cursor, REBUILD_BATCH, projector.as_ref()).await?;
        if events.is_empty() && end <= cursor {
            break;
        }
        match take_in(
            &mut tx,
            projector.as_ref(),
            (&key, &schema),
            cursor,
            &events,
            end,
            None,
        )
        .await
        {
            Ok(TakeIn::Took(reached, _)) => cursor = reached,
            Ok(TakeIn::Moved(_)) => return Err(SwapError::Concurrent),
            Err(e) => return Err(SwapError::Apply(e.to_string())),
        }
    }
    for table in projector.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {LIVE_SCHEMA}.{table}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "ALTER TABLE {schema}.{table} SET SCHEMA {LIVE_SCHEMA}"
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE projection_checkpoints l SET tx = r.tx, position = r.position, \
                applied = r.applied, updated_at = now() \
         FROM projection_checkpoints r WHERE l.name = $1 AND r.name = $2",
    )
    .bind(name)
    .bind(&key)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM projection_parked WHERE projector = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE projection_parked SET projector = $1 WHERE projector = $2")
        .bind(name)
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(cursor)
}

/// Drops a rebuild's shadow tables and checkpoint.
pub async fn discard(pool: &PgPool, projector: &dyn Projector) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        shadow_schema(projector.name())
    ))
    .execute(&mut *tx)
    .await?;
    let key = rebuild_key(projector.name());
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM projection_parked WHERE projector = $1")
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Why a swap did not happen (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// An event failed while the shadow took in the last events; running the rebuild again
    /// parks it like the live projector would.
    #[error("an event failed to apply to the shadow tables: {0}")]
    Apply(String),
    /// Another rebuild of the same projector moved the shadow's checkpoint.
    #[error("another rebuild of this projector is running")]
    Concurrent,
}
