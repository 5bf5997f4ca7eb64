//! Read models of accounts, wallets (with their ledger and transfers) and the platform totals.
//!
//! Every projector here applies a batch in a handful of statements whatever its size: decode
//! the events, load the rows they touch once (`WHERE id = ANY($1)`), fold the events in memory,
//! and write back with one `UNNEST` upsert per table (one `UNNEST` insert for append-only rows).

pub mod accounts;
pub mod stats;
pub mod wallets;

use crate::page::PageRequest;
use crate::{ApplyError, Projector};
use schemas::RecordedEvent;
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

/// The projectors of this module.
pub fn projectors() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(accounts::AccountsProjector),
        Arc::new(wallets::WalletsProjector),
        Arc::new(stats::StatsProjector),
    ]
}

/// The position of the log's last event in the order projectors read it (transaction, then
/// position), if the log has any: a read model that has applied it knows every committed id.
pub async fn log_head(pool: &sqlx::PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM events ORDER BY tx DESC, position DESC LIMIT 1")
        .fetch_optional(pool)
        .await
}

/// Why a query of these read models failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The cursor was not made by this query (it decodes, but not to this query's sort key).
    #[error("the cursor does not belong to this query")]
    BadCursor,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The payload of `event` as the domain event enum `E`; an undecodable payload is poison.
pub(crate) fn decode<E: DeserializeOwned>(event: &RecordedEvent) -> Result<E, ApplyError> {
    event.decode::<E>().map_err(|e| {
        ApplyError::Poison(format!(
            "cannot decode {} {} at position {}: {e}",
            event.stream_type, event.event_type, event.position
        ))
    })
}

/// The ids of the streams whose rows a batch must load: those whose first event in the batch is
/// not their first ever (a row the batch itself creates cannot exist yet).
pub(crate) fn ids_to_load(events: &[RecordedEvent]) -> Vec<Uuid> {
    let mut seen = HashSet::with_capacity(events.len());
    events
        .iter()
        .filter(|e| seen.insert(e.stream_id) && e.stream_version > 1)
        .map(|e| e.stream_id)
        .collect()
}

/// A cursor's sort key: the list's tag, then the key of the last item returned, so that a
/// cursor of another list is refused.
pub(crate) fn cursor_key(tag: &str, key: String) -> Vec<String> {
    vec![tag.to_owned(), key]
}

/// The single-column sort key of a page request made by [`cursor_key`] with `tag` (`None` on
/// the first page); `BadCursor` for a cursor of another list.
pub(crate) fn single_key<T: std::str::FromStr>(
    page: &PageRequest,
    tag: &str,
) -> Result<Option<T>, QueryError> {
    match page.after.as_deref() {
        None => Ok(None),
        Some([t, key]) if t == tag => key.parse().map(Some).map_err(|_| QueryError::BadCursor),
        Some(_) => Err(QueryError::BadCursor),
    }
}
