//! Where every projector stands: position, lag in events and seconds, parked events.

use serde::Serialize;

/// One projector's standing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProjectorStatus {
    /// The checkpoint key (a projector's name, or `rebuild:<name>` for a rebuild in progress).
    pub name: String,
    /// The position of the last event taken in, in commit order.
    pub position: i64,
    /// Events taken in (applied or parked) since the read model was created.
    pub applied: i64,
    /// Events in the log after the checkpoint.
    pub lag_events: i64,
    /// How long the oldest event not yet taken in has waited, in seconds (0 when current).
    pub lag_seconds: f64,
    /// Parked events.
    pub parked: i64,
}

/// The standing of every checkpoint, live projectors and rebuilds alike.
pub async fn status(pool: &sqlx::PgPool) -> Result<Vec<ProjectorStatus>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64, Option<f64>)> = sqlx::query_as(
        "SELECT c.name, c.position, c.applied, \
                (SELECT count(*) FROM events e WHERE (e.tx, e.position) > (c.tx, c.position)), \
                (SELECT count(*) FROM projection_parked p WHERE p.projector = c.name), \
                (SELECT extract(epoch FROM now() - min(e.occurred_at))::float8 \
                   FROM events e WHERE (e.tx, e.position) > (c.tx, c.position)) \
         FROM projection_checkpoints c ORDER BY c.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(name, position, applied, lag_events, parked, lag)| ProjectorStatus {
                name,
                position,
                applied,
                lag_events,
                lag_seconds: lag.unwrap_or(0.0).max(0.0),
                parked,
            },
        )
        .collect())
}

/// Each checkpoint's position and parked events: the cheap part of [`status`], for `/ready`.
pub async fn brief(pool: &sqlx::PgPool) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.name, c.position, \
                (SELECT count(*) FROM projection_parked p WHERE p.projector = c.name) \
         FROM projection_checkpoints c ORDER BY c.name",
    )
    .fetch_all(pool)
    .await
}
