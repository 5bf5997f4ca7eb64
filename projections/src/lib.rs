//! Chronicle's read side: projector workers that tail the log through
//! [`schemas::log::read_all`] and keep PostgreSQL read models, the query functions over them,
//! rebuilds into shadow tables, and the freshness checks behind `X-Position` and
//! `X-Min-Position`.

pub mod chain;
pub mod commerce;
pub mod fanout;
pub mod money;
pub mod page;
pub mod rebuild;
pub mod runtime;
pub mod status;

pub use runtime::{retry_parked, ApplyError, Projector, RetryReport, Step, Worker, WorkerConfig};

use std::sync::Arc;
use std::time::Duration;

/// Every projector of this version, in a stable order.
pub fn all() -> Vec<Arc<dyn Projector>> {
    let mut all = money::projectors();
    all.extend(commerce::projectors());
    all
}

/// The projector called `name`.
pub fn by_name(name: &str) -> Option<Arc<dyn Projector>> {
    all().into_iter().find(|p| p.name() == name)
}

/// Where a read model stands: the position of the last event its projector took in (in
/// commit order), or 0 before the first.
pub async fn applied_position(pool: &sqlx::PgPool, name: &str) -> Result<i64, sqlx::Error> {
    let p: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(p.unwrap_or(0))
}

/// The answer of [`wait_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The read model has applied the position; it stands at the given position.
    Fresh(i64),
    /// It had not applied it when the wait ended; it stands at the given position.
    Behind(i64),
    /// No event in the log has that position.
    UnknownPosition,
}

/// Waits up to `timeout` until projector `name` has taken in the event at `position`.
///
/// Positions are handed out in insert order but become visible in commit order, so
/// "checkpoint position >= P" would be wrong both ways; instead the event's own (tx,
/// position) is compared with the checkpoint's cursor, which is exact.
pub async fn wait_for(
    pool: &sqlx::PgPool,
    name: &str,
    position: i64,
    timeout: Duration,
) -> Result<Freshness, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        let row: Option<(Option<i64>, i64, i64)> = sqlx::query_as(
            "SELECT (SELECT tx FROM events WHERE position = $2), c.tx, c.position \
             FROM projection_checkpoints c WHERE c.name = $1",
        )
        .bind(name)
        .bind(position)
        .fetch_optional(pool)
        .await?;
        let (event_tx, at) = match row {
            Some((event_tx, tx, p)) => (event_tx, Some((tx, p))),
            None => {
                let event_tx: Option<i64> =
                    sqlx::query_scalar("SELECT tx FROM events WHERE position = $1")
                        .bind(position)
                        .fetch_optional(pool)
                        .await?;
                (event_tx, None)
            }
        };
        let Some(event_tx) = event_tx else {
            return Ok(Freshness::UnknownPosition);
        };
        let standing = at.map(|(_, p)| p).unwrap_or(0);
        if let Some(cursor) = at {
            if (event_tx, position) <= cursor {
                return Ok(Freshness::Fresh(standing));
            }
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Ok(Freshness::Behind(standing));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}
