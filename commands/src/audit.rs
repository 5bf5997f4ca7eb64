//! The auditor's reads of the log itself: a stream's history, the global log in commit order
//! (a page, or every matching event in batches for an export), and an aggregate rebuilt from
//! its events as of a version or a time. Nothing here writes.

use crate::repo::{decode, LoadError};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use futures::{Stream, StreamExt, TryStreamExt};
use schemas::log::{EventRow, EVENT_COLUMNS};
use schemas::{personal, Cursor, RecordedEvent};
use sqlx::PgPool;
use uuid::Uuid;

/// The stream types of the six aggregates, as stored in `events.stream_type`.
pub const STREAM_TYPES: [&str; 6] = ["account", "wallet", "order", "escrow", "pot", "device"];

/// A page of one stream's events, in version order.
#[derive(Debug, Clone)]
pub struct StreamPage {
    /// The events with `stream_version >= from_version`, at most `limit` of them.
    pub events: Vec<RecordedEvent>,
    /// The version to ask for next, if the stream has more events after this page.
    pub next_version: Option<i64>,
}

/// Up to `limit` events of stream `stream_id` of type `stream_type` from version
/// `from_version` on; `None` if the stream has no event at all (or is of another type).
pub async fn stream_page(
    pool: &PgPool,
    stream_type: &str,
    stream_id: Uuid,
    from_version: i64,
    limit: i64,
) -> Result<Option<StreamPage>, sqlx::Error> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE stream_id = $1 AND stream_type = $2 AND stream_version >= $3 \
         ORDER BY stream_version LIMIT $4"
    );
    let limit = limit.max(1);
    let rows: Vec<EventRow> = sqlx::query_as(&sql)
        .bind(stream_id)
        .bind(stream_type)
        .bind(from_version)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    if rows.is_empty() {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = $1 AND stream_type = $2)",
        )
        .bind(stream_id)
        .bind(stream_type)
        .fetch_one(pool)
        .await?;
        if !exists {
            return Ok(None);
        }
    }
    let mut events: Vec<RecordedEvent> = rows.into_iter().map(Into::into).collect();
    let more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    personal::open(pool, &mut events).await?;
    let next_version = if more {
        events.last().map(|e| e.stream_version + 1)
    } else {
        None
    };
    Ok(Some(StreamPage {
        events,
        next_version,
    }))
}

/// Which events of the global log to return (every field optional; all must match).
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only these event types (empty: any).
    pub event_types: Vec<String>,
    /// Only this stream type.
    pub stream_type: Option<String>,
    /// Only events of commands by this subject (`actor_sub`).
    pub actor: Option<String>,
    /// Only events that occurred at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events that occurred before this time.
    pub to: Option<DateTime<Utc>>,
}

/// The condition of [`log_page`] and [`log_count`]: after the cursor ($1, $2), below the
/// horizon, and the filter ($3 to $7).
const LOG_WHERE: &str = "(tx, position) > ($1, $2) \
     AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
     AND (cardinality($3::text[]) = 0 OR event_type = ANY($3)) \
     AND ($4::text IS NULL OR stream_type = $4) \
     AND ($5::text IS NULL OR actor_sub = $5) \
     AND ($6::timestamptz IS NULL OR occurred_at >= $6) \
     AND ($7::timestamptz IS NULL OR occurred_at < $7)";

/// How many events [`log_page`] would return after `after` with `filter` and no limit, as of
/// now (an estimate for a progress bar: more may commit while an export runs).
pub async fn log_count(
    pool: &PgPool,
    after: Cursor,
    filter: &LogFilter,
) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT count(*) FROM events WHERE {LOG_WHERE}");
    sqlx::query_scalar(&sql)
        .bind(after.tx)
        .bind(after.position)
        .bind(&filter.event_types)
        .bind(&filter.stream_type)
        .bind(&filter.actor)
        .bind(filter.from)
        .bind(filter.to)
        .fetch_one(pool)
        .await
}

/// Up to `limit` events of the global log after `after` that match `filter`, in commit order
/// `(tx, position)`, and only events of transactions below the horizon of
/// [`schemas::log::read_all`]: a reader following the cursors of the events returned never
/// misses an event that commits late and never sees one twice.
pub async fn log_page(
    pool: &PgPool,
    after: Cursor,
    filter: &LogFilter,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE {LOG_WHERE} ORDER BY tx, position LIMIT $8"
    );
    let rows: Vec<EventRow> = sqlx::query_as(&sql)
        .bind(after.tx)
        .bind(after.position)
        .bind(&filter.event_types)
        .bind(&filter.stream_type)
        .bind(&filter.actor)
        .bind(filter.from)
        .bind(filter.to)
        .bind(limit.max(0))
        .fetch_all(pool)
        .await?;
    let mut events: Vec<RecordedEvent> = rows.into_iter().map(Into::into).collect();
    personal::open(pool, &mut events).await?;
    Ok(events)
}

/// The cursor just past the event at `position` (its transaction and position), if the log
/// has such an event.
pub async fn cursor_of(pool: &PgPool, position: i64) -> Result<Option<Cursor>, sqlx::Error> {
    let tx: Option<i64> = sqlx::query_scalar("SELECT tx FROM events WHERE position = $1")
        .bind(position)
        .fetch_optional(pool)
        .await?;
    Ok(tx.map(|tx| Cursor { tx, position }))
}

/// Why a cursor given as text names no place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorTextError {
    /// Neither `<tx>-<position>` nor a log position.
    Malformed,
    /// A position where no event stands.
    NoEvent(i64),
}

/// A cursor from text: `<tx>-<position>` (as the audit routes' `next` and the export print
/// it), or a bare log position looked up in the log (0 is the start). The outer error is the
/// database's.
pub async fn cursor_from_text(
    pool: &PgPool,
    raw: &str,
) -> Result<Result<Cursor, CursorTextError>, sqlx::Error> {
    let raw = raw.trim();
    if raw.len() > 60 {
        return Ok(Err(CursorTextError::Malformed));
    }
    let number = |t: &str| t.parse::<i64>().ok().filter(|n| *n >= 0);
    Ok(match raw.split_once('-') {
        Some((tx, position)) => match (number(tx), number(position)) {
            (Some(tx), Some(position)) => Ok(Cursor { tx, position }),
            _ => Err(CursorTextError::Malformed),
        },
        None => match number(raw) {
            None => Err(CursorTextError::Malformed),
            Some(0) => Ok(Cursor::START),
            Some(position) => cursor_of(pool, position)
                .await?
                .ok_or(CursorTextError::NoEvent(position)),
        },
    })
}

/// Every event after `after` matching `filter` (at most `limit`, if given), as batches of at
/// most `batch` events read one after another with keyset pagination: memory stays bounded
/// by a few batches however large the log. The export ends at the first batch that comes
/// back short, i.e. at the log's horizon when it was read.
///
/// The batches are read ahead of the consumer by [`EXPORT_READ_AHEAD`], on a task of their
/// own (started at the first poll): while the consumer encodes and writes one batch, the
/// next is read and decoded, so the database and the encoding overlap instead of waiting
/// for each other. Dropping the stream stops the reading after the batch being read.
pub fn export(
    pool: PgPool,
    after: Cursor,
    filter: LogFilter,
    limit: Option<i64>,
    batch: i64,
) -> impl Stream<Item = Result<Vec<RecordedEvent>, sqlx::Error>> + Send + 'static {
    read_ahead(
        export_batches(pool, after, filter, limit, batch),
        EXPORT_READ_AHEAD,
    )
}

/// How many batches of an export may wait, read, for the consumer (besides the one being
/// read and the one being written).
pub const EXPORT_READ_AHEAD: usize = 1;

/// Drives `stream` on a task of its own, at most `ahead` items ahead of the consumer of the
/// stream returned. The task is spawned at the first poll (so a Tokio runtime is needed only
/// then) and stops at the end of `stream`, or once the stream returned is dropped, at the
/// next item it would hand over.
fn read_ahead<S>(stream: S, ahead: usize) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
    let producer = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if tx.send(item).await.is_err() {
                return;
            }
        }
    };
    futures::stream::unfold((rx, Some(producer)), |(mut rx, producer)| async move {
        if let Some(producer) = producer {
            tokio::spawn(producer);
        }
        let item = rx.recv().await?;
        Some((item, (rx, None)))
    })
}

/// The batches of [`export`], read when polled.
fn export_batches(
    pool: PgPool,
    after: Cursor,
    filter: LogFilter,
    limit: Option<i64>,
    batch: i64,
) -> impl Stream<Item = Result<Vec<RecordedEvent>, sqlx::Error>> + Send + 'static {
    let batch = batch.max(1);
    // (where to read from, how many may still be sent, whether the log is exhausted)
    let start = (after, limit.map(|l| l.max(0)), false);
    futures::stream::try_unfold(start, move |(after, left, done)| {
        let pool = pool.clone();
        let filter = filter.clone();
        async move {
            if done || left == Some(0) {
                return Ok(None);
            }
            let want = left.map_or(batch, |l| l.min(batch));
            let events = log_page(&pool, after, &filter, want).await?;
            if events.is_empty() {
                return Ok(None);
            }
            let short = (events.len() as i64) < want;
            let next = events.last().map(RecordedEvent::cursor).unwrap_or(after);
            let left = left.map(|l| l - events.len() as i64);
            Ok(Some((events, (next, left, short))))
        }
    })
}

/// How far back to rebuild an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Up to and including this stream version.
    Version(i64),
    /// The events in version order up to the first one that occurred after this time.
    At(DateTime<Utc>),
}

/// An aggregate's state rebuilt from its events.
#[derive(Debug, Clone)]
pub struct Rebuilt<A> {
    /// The state.
    pub state: A,
    /// The version of the last event applied.
    pub version: i64,
    /// The global position of the last event applied.
    pub position: i64,
    /// When the last event applied occurred: the state holds from then on.
    pub occurred_at: DateTime<Utc>,
}

/// Aggregate `A` with id `id` rebuilt from its events (no snapshot, no cache) as of `bound`:
/// `None` if the stream has no event by then, or, for a version, has not reached it.
/// Events are read one at a time from the database and applied in version order; an event
/// that does not decode stops the rebuild with an error, never silently.
pub async fn as_of<A: Aggregate>(
    pool: &PgPool,
    id: Uuid,
    bound: AsOf,
) -> Result<Option<Rebuilt<A>>, LoadError> {
    let up_to = match bound {
        AsOf::Version(v) => v,
        AsOf::At(_) => i64::MAX,
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE stream_id = $1 AND stream_type = $2 AND stream_version <= $3 \
         ORDER BY stream_version"
    );
    let mut rows = sqlx::query_as::<_, EventRow>(&sql)
        .bind(id)
        .bind(A::TYPE)
        .bind(up_to)
        .fetch(pool);
    let mut rebuilt: Option<Rebuilt<A>> = None;
    let mut opener = personal::Opener::default();
    while let Some(row) = rows.try_next().await.map_err(StoreError)? {
        let mut event = RecordedEvent::from(row);
        opener
            .open(pool, std::slice::from_mut(&mut event))
            .await
            .map_err(|e| StoreError(e.into()))?;
        if let AsOf::At(t) = bound {
            if event.metadata.occurred_at > t {
                break;
            }
        }
        let domain_event = decode::<A>(&event)?;
        let r = rebuilt.get_or_insert_with(|| Rebuilt {
            state: A::default(),
            version: 0,
            position: 0,
            occurred_at: event.metadata.occurred_at,
        });
        r.state.apply(domain_event);
        r.version = event.stream_version;
        r.position = event.position;
        r.occurred_at = event.metadata.occurred_at;
    }
    Ok(match (bound, rebuilt) {
        (AsOf::Version(v), Some(r)) if r.version < v => None,
        (_, r) => r,
    })
}
