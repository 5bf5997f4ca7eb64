//! Reading the global log: the row mapping of `events` and the commit-safe tail read shared
//! by the write side and the projectors.

use crate::{Cursor, Metadata, RecordedEvent};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use uuid::Uuid;

/// The columns of `events`, in the order [`EventRow`] reads them.
pub const EVENT_COLUMNS: &str = "position, tx, event_id, stream_type, stream_id, stream_version, \
     event_type, schema_version, payload, actor_sub, actor_role, command_id, correlation_id, \
     causation_id, occurred_at";

/// A row of `SELECT {EVENT_COLUMNS}` (every reader of the log selects exactly those columns,
/// in that order).
#[allow(missing_docs)]
pub struct EventRow {
    pub position: i64,
    pub tx: i64,
    pub event_id: Uuid,
    pub stream_type: String,
    pub stream_id: Uuid,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: sqlx::types::Json<Box<serde_json::value::RawValue>>,
    pub actor_sub: String,
    pub actor_role: String,
    pub command_id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// Read by column index: a derived `FromRow` would look every column up by name, a hash
/// lookup per column and row that a replay or an export of the whole log pays a million times
/// over. Debug builds (the tests) check that the query selected [`EVENT_COLUMNS`] in order.
impl<'r> sqlx::FromRow<'r, PgRow> for EventRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        #[cfg(debug_assertions)]
        {
            use sqlx::Column;
            let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
            let expected: Vec<&str> = EVENT_COLUMNS.split(", ").collect();
            debug_assert_eq!(
                names, expected,
                "an EventRow query must select EVENT_COLUMNS"
            );
        }
        Ok(EventRow {
            position: row.try_get(0)?,
            tx: row.try_get(1)?,
            event_id: row.try_get(2)?,
            stream_type: row.try_get(3)?,
            stream_id: row.try_get(4)?,
            stream_version: row.try_get(5)?,
            event_type: row.try_get(6)?,
            schema_version: row.try_get(7)?,
            payload: row.try_get(8)?,
            actor_sub: row.try_get(9)?,
            actor_role: row.try_get(10)?,
            command_id: row.try_get(11)?,
            correlation_id: row.try_get(12)?,
            causation_id: row.try_get(13)?,
            occurred_at: row.try_get(14)?,
        })
    }
}

impl From<EventRow> for RecordedEvent {
    fn from(r: EventRow) -> Self {
        RecordedEvent {
            position: r.position,
            tx: r.tx,
            event_id: r.event_id,
            stream_type: r.stream_type,
            stream_id: r.stream_id,
            stream_version: r.stream_version,
            event_type: r.event_type,
            schema_version: r.schema_version,
            payload: crate::Payload::from_raw(r.payload.0),
            metadata: Metadata {
                actor_sub: r.actor_sub,
                actor_role: r.actor_role,
                command_id: r.command_id,
                correlation_id: r.correlation_id,
                causation_id: r.causation_id,
                occurred_at: r.occurred_at,
            },
        }
    }
}

/// The last committed event of the log in (tx, position) order, whether or not tailers can
/// read it yet: where a reader that wants everything committed so far must get to.
pub async fn head<'e, E>(executor: E) -> Result<Option<Cursor>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let head: Option<(i64, i64)> = sqlx::query_as(
        "SELECT tx, position FROM public.events ORDER BY tx DESC, position DESC LIMIT 1",
    )
    .fetch_optional(executor)
    .await?;
    Ok(head.map(|(tx, position)| Cursor { tx, position }))
}

/// Up to `limit` events after `after`, in (tx, position) order, of transactions that can no
/// longer be joined by an earlier one: only rows of transactions below the oldest one still
/// running are returned, so a reader that follows the cursors never misses an event that
/// commits late and never sees one twice. The statement's own snapshot sees all of them,
/// because every transaction below its xmin has ended.
pub async fn read_all<'e, E>(
    executor: E,
    after: Cursor,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE (tx, position) > ($1, $2) \
           AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
         ORDER BY tx, position LIMIT $3"
    );
    sqlx::query(&sql)
        .bind(after.tx)
        .bind(after.position)
        .bind(limit.max(0))
        .try_map(|row: PgRow| EventRow::from_row(&row).map(RecordedEvent::from))
        .fetch_all(executor)
        .await
}

/// Like [`read_all`], but only events of `stream_types`, and with how far the reader may move
/// its cursor: when fewer than `limit` events come back, every final event up to the returned
/// cursor has been considered (the irrelevant ones skipped), so a reader of a few stream types
/// does not rescan the others on its next read.
pub async fn read_types(
    conn: &mut sqlx::PgConnection,
    after: Cursor,
    limit: i64,
    stream_types: &[&str],
) -> Result<(Vec<RecordedEvent>, Cursor), sqlx::Error> {
    // The last final event first: the filtered read below runs with a horizon at least as
    // far, so every final event up to this one is either returned or not of these types.
    let last: Option<(i64, i64)> = sqlx::query_as(
        "SELECT tx, position FROM events \
         WHERE tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
         ORDER BY tx DESC, position DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE (tx, position) > ($1, $2) \
           AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
           AND stream_type = ANY($4) \
         ORDER BY tx, position LIMIT $3"
    );
    let types: Vec<String> = stream_types.iter().map(|s| s.to_string()).collect();
    let events: Vec<RecordedEvent> = sqlx::query(&sql)
        .bind(after.tx)
        .bind(after.position)
        .bind(limit.max(1))
        .bind(&types)
        .try_map(|row: PgRow| EventRow::from_row(&row).map(RecordedEvent::from))
        .fetch_all(&mut *conn)
        .await?;
    let mut end = events.last().map(RecordedEvent::cursor).unwrap_or(after);
    if (events.len() as i64) < limit.max(1) {
        if let Some((tx, position)) = last {
            end = end.max(Cursor { tx, position });
        }
    }
    Ok((events, end.max(after)))
}
