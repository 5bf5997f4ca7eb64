//! The time-series log in PostgreSQL: the batch writer (one transaction, one statement for
//! the readings and their rollups), dead letters, device status for the NATS path,
//! partitions ahead of time and retention. The tables and functions are in
//! `schemas/migrations/0006_telemetry.sql`.

use crate::reading::{Code, Reading};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap, HashSet};
use uuid::Uuid;

/// A message the NATS worker can never accept, recorded once per stream message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The JetStream stream.
    pub stream: String,
    /// The message's sequence in that stream (what makes a redelivery the same letter).
    pub stream_seq: i64,
    /// The subject it was published to.
    pub subject: String,
    /// The payload as received.
    pub payload: Vec<u8>,
    /// Why it can never be accepted.
    pub reason: Code,
    /// For a human.
    pub detail: String,
    /// The delivery count when it was refused.
    pub deliveries: i32,
}

/// What a batch write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Readings stored now.
    pub accepted: u64,
    /// Readings stored before (same device and seq), also repeats within the batch.
    pub duplicates: u64,
    /// Indices (into the batch) of readings older than the retention horizon, not stored.
    pub too_old: Vec<usize>,
}

/// The readings of a batch and their rollups, in one statement: the dedup rows first
/// (`ON CONFLICT DO NOTHING RETURNING` says which readings are new), then the raw rows of the
/// new ones only, then their metrics folded into the latest values and the minute rollups.
/// Readings behind the retention horizon are filtered out and reported by ordinal.
const WRITE_SQL: &str = r#"
WITH input AS (
    SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::timestamptz[], $4::jsonb[])
        WITH ORDINALITY AS r(device_id, seq, ts, metrics, n)
),
horizon AS (SELECT telemetry_horizon() AS at),
fresh AS (
    INSERT INTO telemetry_seen (device_id, seq, ts)
    SELECT i.device_id, i.seq, i.ts FROM input i, horizon h WHERE i.ts >= h.at
    ON CONFLICT DO NOTHING
    RETURNING device_id, seq
),
stored AS (
    INSERT INTO telemetry (device_id, seq, ts, metrics, received_at)
    SELECT i.device_id, i.seq, i.ts, i.metrics, $5
    FROM input i JOIN fresh f ON f.device_id = i.device_id AND f.seq = i.seq
    RETURNING device_id, seq, ts, metrics
),
points AS (
    SELECT s.device_id, s.seq, s.ts, m.key AS metric, (m.value)::float8 AS value
    FROM stored s CROSS JOIN LATERAL jsonb_each(s.metrics) m
),
latest AS (
    INSERT INTO telemetry_latest AS l (device_id, metric, value, ts, seq)
    SELECT DISTINCT ON (device_id, metric) device_id, metric, value, ts, seq
    FROM points ORDER BY device_id, metric, ts DESC, seq DESC
    ON CONFLICT (device_id, metric) DO UPDATE
        SET value = EXCLUDED.value, ts = EXCLUDED.ts, seq = EXCLUDED.seq
        WHERE (EXCLUDED.ts, EXCLUDED.seq) > (l.ts, l.seq)
),
minute AS (
    INSERT INTO telemetry_minute AS t (device_id, metric, bucket, min, max, sum, count)
    SELECT device_id, metric, date_trunc('minute', ts, 'UTC'),
           min(value), max(value), sum(value), count(*)
    FROM points GROUP BY 1, 2, 3
    ON CONFLICT (device_id, metric, bucket) DO UPDATE
        SET min = LEAST(t.min, EXCLUDED.min), max = GREATEST(t.max, EXCLUDED.max),
            sum = t.sum + EXCLUDED.sum, count = t.count + EXCLUDED.count
)
SELECT (SELECT count(*) FROM stored) AS accepted,
       (SELECT coalesce(array_agg(i.n), '{}') FROM input i, horizon h WHERE i.ts < h.at)
           AS too_old
"#;

const DEAD_LETTER_SQL: &str = r#"
INSERT INTO telemetry_dead_letters AS d
    (stream, stream_seq, subject, payload, reason, detail, deliveries)
SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::bytea[], $5::text[], $6::text[],
                     $7::int4[])
ON CONFLICT (stream, stream_seq) DO UPDATE
    SET deliveries = GREATEST(d.deliveries, EXCLUDED.deliveries)
"#;

/// Writes a batch of valid readings (any devices) and dead letters in one durable
/// transaction: creates missing day partitions, stores the new readings with their rollups,
/// counts the repeats, and records the dead letters plus one per reading that turned out to
/// be behind the retention horizon (`too_old_letter` makes it; HTTP makes none).
pub async fn write(
    pool: &PgPool,
    readings: &[Reading],
    dead_letters: &[DeadLetter],
    mut too_old_letter: impl FnMut(usize) -> Option<DeadLetter>,
) -> Result<Written, sqlx::Error> {
    // Repeats within the batch keep the first occurrence (a statement cannot insert the same
    // key twice); the rest are duplicates like repeats of stored readings.
    let mut seen = HashSet::with_capacity(readings.len());
    let mut index = Vec::with_capacity(readings.len());
    let (mut devices, mut seqs, mut times, mut metrics) = (
        Vec::with_capacity(readings.len()),
        Vec::with_capacity(readings.len()),
        Vec::with_capacity(readings.len()),
        Vec::with_capacity(readings.len()),
    );
    let mut days = BTreeSet::new();
    for (i, r) in readings.iter().enumerate() {
        if !seen.insert((r.device_id, r.seq)) {
            continue;
        }
        index.push(i);
        devices.push(r.device_id);
        seqs.push(r.seq);
        times.push(r.ts);
        metrics.push(Json(&r.metrics));
        days.insert(r.ts.date_naive());
    }
    let mut tx = pool.begin().await?;
    let mut written = Written::default();
    if !index.is_empty() {
        let days: Vec<NaiveDate> = days.into_iter().collect();
        sqlx::query("SELECT telemetry_begin_write($1)")
            .bind(&days)
            .execute(&mut *tx)
            .await?;
        let (accepted, too_old): (i64, Vec<i64>) = sqlx::query_as(WRITE_SQL)
            .bind(&devices)
            .bind(&seqs)
            .bind(&times)
            .bind(&metrics)
            .bind(Utc::now())
            .fetch_one(&mut *tx)
            .await?;
        written.too_old = too_old
            .iter()
            .filter_map(|n| usize::try_from(*n - 1).ok())
            .filter_map(|n| index.get(n).copied())
            .collect();
        written.accepted = u64::try_from(accepted).unwrap_or_default();
        written.duplicates = (readings.len() - written.too_old.len()) as u64 - written.accepted;
    }
    let mut letters: Vec<DeadLetter> = dead_letters.to_vec();
    letters.extend(written.too_old.iter().filter_map(|i| too_old_letter(*i)));
    if !letters.is_empty() {
        insert_dead_letters(&mut tx, &letters).await?;
    }
    tx.commit().await?;
    Ok(written)
}

async fn insert_dead_letters(
    tx: &mut sqlx::PgConnection,
    letters: &[DeadLetter],
) -> Result<(), sqlx::Error> {
    // A message redelivered while its first delivery was still in the batch is one letter.
    let mut seen = HashSet::new();
    let letters: Vec<&DeadLetter> = letters
        .iter()
        .filter(|l| seen.insert((l.stream.as_str(), l.stream_seq)))
        .collect();
    sqlx::query(DEAD_LETTER_SQL)
        .bind(letters.iter().map(|l| l.stream.clone()).collect::<Vec<_>>())
        .bind(letters.iter().map(|l| l.stream_seq).collect::<Vec<_>>())
        .bind(
            letters
                .iter()
                .map(|l| l.subject.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            letters
                .iter()
                .map(|l| l.payload.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            letters
                .iter()
                .map(|l| l.reason.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(letters.iter().map(|l| l.detail.clone()).collect::<Vec<_>>())
        .bind(letters.iter().map(|l| l.deliveries).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Whether a device may send readings, as the event store says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Active: its readings are accepted.
    Active,
    /// Registered but not active (never activated, suspended, decommissioned).
    Inactive,
    /// Never registered.
    Unknown,
}

/// The states of `ids`, in one query of the event store: a device's status is set by the
/// last of its lifecycle events (registered, activated, suspended, decommissioned). The log
/// is read rather than the `devices` read model, which may lag behind a suspension or an
/// activation; the query walks each device's own stream through the primary key
/// `(stream_id, stream_version)`, a handful of rows per device.
pub async fn device_states(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, DeviceState>, sqlx::Error> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (stream_id) stream_id, event_type FROM events
         WHERE stream_id = ANY($1) AND stream_type = 'device'
           AND event_type IN ('DeviceRegistered', 'DeviceActivated', 'DeviceSuspended',
                              'DeviceDecommissioned')
         ORDER BY stream_id, stream_version DESC",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut states: HashMap<Uuid, DeviceState> =
        ids.iter().map(|id| (*id, DeviceState::Unknown)).collect();
    for (id, last) in rows {
        let state = if last == "DeviceActivated" {
            DeviceState::Active
        } else {
            DeviceState::Inactive
        };
        states.insert(id, state);
    }
    Ok(states)
}

/// Creates the day partitions of today and the next `ahead` days if they are missing.
pub async fn prepare_partitions(
    pool: &PgPool,
    now: DateTime<Utc>,
    ahead: u32,
) -> Result<i32, sqlx::Error> {
    let today = now.date_naive();
    let days: Vec<NaiveDate> = (0..=u64::from(ahead))
        .filter_map(|d| today.checked_add_days(chrono::Days::new(d)))
        .collect();
    sqlx::query_scalar("SELECT telemetry_ensure_partitions($1)")
        .bind(&days)
        .fetch_one(pool)
        .await
}

/// Keeps `days` whole UTC days before today: drops the older day partitions (raw and
/// per-minute) and their dedup rows, and moves the horizon so that nothing older is accepted
/// again. Returns how many partitions were dropped.
pub async fn apply_retention(pool: &PgPool, days: u32) -> Result<i32, sqlx::Error> {
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    sqlx::query_scalar("SELECT telemetry_apply_retention($1)")
        .bind(days)
        .fetch_one(pool)
        .await
}
