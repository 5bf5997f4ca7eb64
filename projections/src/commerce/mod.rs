//! Read models of orders, escrows, pots and devices, and the queries over them.
//!
//! Every projector here applies a batch the same way: decode the events (an undecodable
//! payload is poison), load the rows the batch touches once (`WHERE id = ANY($1)`, skipping
//! aggregates the batch itself creates), fold the events into them in memory, then write each
//! table back with one `UNNEST` statement: an upsert for the aggregates' rows, plain inserts
//! for append-only rows (order lines, escrow decisions, contributions, invitations).

pub mod devices;
pub mod escrows;
pub mod orders;
pub mod pots;

use crate::runtime::ApplyError;
use crate::Projector;
use schemas::RecordedEvent;
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// The projectors of this module.
pub fn projectors() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(orders::OrdersProjector),
        Arc::new(escrows::EscrowsProjector),
        Arc::new(pots::PotsProjector),
        Arc::new(devices::DevicesProjector),
    ]
}

/// Why a list query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The cursor was not made by this list (another list's, or another sort's).
    #[error("the cursor does not belong to this list")]
    BadCursor,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Who reads a read model: everything (`admin`, `auditor`), or as one account (none when the
/// subject has no account yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Reads every aggregate and every contributor.
    All,
    /// Reads as this account.
    Account(Option<Uuid>),
}

impl Reader {
    /// The reading account, unless the reader sees everything.
    pub fn account(&self) -> Option<Uuid> {
        match self {
            Reader::All => None,
            Reader::Account(a) => *a,
        }
    }

    /// Whether the reader sees everything.
    pub fn is_all(&self) -> bool {
        matches!(self, Reader::All)
    }
}

/// The answer of a single-aggregate query whose access rule needs the read model itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// No such aggregate.
    NotFound,
    /// It exists, and the reader may not see it.
    Forbidden,
    /// It, as the reader may see it.
    Found(T),
}

/// Decodes every event of a batch into the domain enum `E`; one undecodable payload poisons
/// the batch (the runtime then finds and parks it).
pub(crate) fn decode_all<E: DeserializeOwned>(
    events: &[RecordedEvent],
) -> Result<Vec<E>, ApplyError> {
    events
        .iter()
        .map(|e| {
            e.decode::<E>().map_err(|error| {
                ApplyError::Poison(format!(
                    "{} {} at position {} does not decode: {error}",
                    e.stream_type, e.event_type, e.position
                ))
            })
        })
        .collect()
}

/// The aggregates whose rows a batch must load: those whose first event in the batch is not
/// their first event ever (a row created in the batch cannot exist yet).
pub(crate) fn ids_to_load(events: &[RecordedEvent]) -> Vec<Uuid> {
    let mut seen = HashSet::with_capacity(events.len());
    let mut load = Vec::new();
    for e in events {
        if seen.insert(e.stream_id) && e.stream_version > 1 {
            load.push(e.stream_id);
        }
    }
    load
}

/// Loads the rows of `table` with these ids, keyed by id.
pub(crate) async fn load_rows<R>(
    conn: &mut PgConnection,
    table: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, R>, sqlx::Error>
where
    R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin + HasId,
{
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<R> = sqlx::query_as(&format!("SELECT * FROM {table} WHERE id = ANY($1)"))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.id(), r)).collect())
}

/// A read-model row keyed by its aggregate's id.
pub(crate) trait HasId {
    /// The aggregate's id.
    fn id(&self) -> Uuid;
}

/// The poison error of an event whose aggregate has no row (its creation was never applied).
pub(crate) fn missing_row(e: &RecordedEvent) -> ApplyError {
    ApplyError::Poison(format!(
        "{} {} at position {}: no row for {} {} (its creation event was not applied)",
        e.stream_type, e.event_type, e.position, e.stream_type, e.stream_id
    ))
}

/// Rows changed by a batch, in the order first touched, without duplicates.
pub(crate) struct Touched<R> {
    rows: HashMap<Uuid, R>,
    order: Vec<Uuid>,
    dirty: HashSet<Uuid>,
}

impl<R> Touched<R> {
    /// Starts from the rows loaded for the batch.
    pub(crate) fn new(rows: HashMap<Uuid, R>) -> Self {
        Self {
            order: Vec::with_capacity(rows.len()),
            dirty: HashSet::with_capacity(rows.len()),
            rows,
        }
    }

    /// Adds a row created by the batch.
    pub(crate) fn create(&mut self, id: Uuid, row: R) {
        self.rows.insert(id, row);
        self.mark(id);
    }

    /// The row of `e`'s aggregate, marked changed; poison when it has none.
    pub(crate) fn row(&mut self, e: &RecordedEvent) -> Result<&mut R, ApplyError> {
        if !self.rows.contains_key(&e.stream_id) {
            return Err(missing_row(e));
        }
        self.mark(e.stream_id);
        self.rows
            .get_mut(&e.stream_id)
            .ok_or_else(|| missing_row(e))
    }

    fn mark(&mut self, id: Uuid) {
        if self.dirty.insert(id) {
            self.order.push(id);
        }
    }

    /// The changed rows, in the order first touched.
    pub(crate) fn changed(&self) -> impl Iterator<Item = &R> {
        self.order.iter().filter_map(|id| self.rows.get(id))
    }

    /// How many rows changed.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// Cursor keys: the list's tag first, so that a cursor of another list or sort is refused.
pub(crate) fn cursor_key(tag: &str, parts: &[String]) -> Vec<String> {
    let mut key = Vec::with_capacity(parts.len() + 1);
    key.push(tag.to_owned());
    key.extend(parts.iter().cloned());
    key
}

/// The parts of a decoded cursor after its tag; `BadCursor` when the tag or arity differs.
pub(crate) fn cursor_parts<'a>(
    after: &'a Option<Vec<String>>,
    tag: &str,
    arity: usize,
) -> Result<Option<&'a [String]>, QueryError> {
    match after {
        None => Ok(None),
        Some(key) if key.len() == arity + 1 && key[0] == tag => Ok(Some(&key[1..])),
        Some(_) => Err(QueryError::BadCursor),
    }
}

/// A uuid from a cursor part.
pub(crate) fn cursor_uuid(part: &str) -> Result<Uuid, QueryError> {
    Uuid::parse_str(part).map_err(|_| QueryError::BadCursor)
}

/// An integer from a cursor part.
pub(crate) fn cursor_i64(part: &str) -> Result<i64, QueryError> {
    part.parse().map_err(|_| QueryError::BadCursor)
}
