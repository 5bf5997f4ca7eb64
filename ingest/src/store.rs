//! The time-series log in PostgreSQL: the batch writer, dead letters, device status for the
//! NATS path, partitions ahead of time and retention. The tables and functions are in
//! `schemas/migrations/0006_telemetry.sql` and `0009_telemetry_throughput.sql`.
//!
//! A batch is one durable transaction that writes the raw rows and one queued rollup delta:
//! the raw rows go in by binary `COPY` straight into `telemetry`, whose day partitions carry
//! the `(device_id, seq)` key. A repeat of a stored reading makes that COPY fail on the key;
//! the batch is then written again with `INSERT ... ON CONFLICT DO NOTHING`, which stores the
//! new readings and says which they were. Repeats are rare (a retry, a redelivery), so the
//! common batch costs what a bare COPY costs, plus its delta.

use crate::reading::{Code, Reading};
use crate::rollup::Delta;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeSet, HashMap, HashSet};
use uuid::Uuid;

/// What the NATS worker can never accept, recorded once: a whole message, or one reading of
/// a batch message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The JetStream stream.
    pub stream: String,
    /// The message's sequence in that stream (with `reading_index`, what makes a redelivery
    /// the same letter).
    pub stream_seq: i64,
    /// The refused reading's position in its batch message; `None` when the whole message
    /// was refused.
    pub reading_index: Option<i32>,
    /// The subject it was published to.
    pub subject: String,
    /// The payload as received: the message's, or the refused reading's own JSON text.
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
    /// Readings stored before (same device and seq on the same UTC day), also repeats within
    /// the batch.
    pub duplicates: u64,
    /// Indices (into the batch) of readings older than the retention horizon, not stored.
    pub too_old: Vec<usize>,
    /// Indices (into the batch) of the readings stored now (`accepted` of them), in no
    /// particular order: what a group of requests written together splits its outcome by.
    pub stored: Vec<usize>,
}

/// The raw rows, in PostgreSQL's binary COPY format (encoded by [`encode_copy`]).
const COPY_SQL: &str = "COPY telemetry (device_id, seq, ts, metrics, received_at) \
                        FROM STDIN (FORMAT binary)";

/// The second way in, when the batch repeats stored readings: the day partitions' key
/// decides, and the new readings come back.
const INSERT_SQL: &str = r#"
INSERT INTO telemetry (device_id, seq, ts, metrics, received_at)
SELECT r.device_id, r.seq, r.ts, r.metrics::jsonb, $5
FROM UNNEST($1::uuid[], $2::int8[], $3::timestamptz[], $4::text[]) AS r(device_id, seq, ts, metrics)
ON CONFLICT DO NOTHING
RETURNING device_id, seq, ts
"#;

const QUEUE_SQL: &str = r#"
INSERT INTO telemetry_rollup_queue
    (readings, device_id, metric, bucket, min, max, sum, count, last_value, last_ts, last_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"#;

const DEAD_LETTER_SQL: &str = r#"
INSERT INTO telemetry_dead_letters AS d
    (stream, stream_seq, reading_index, subject, payload, reason, detail, deliveries)
SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int4[], $4::text[], $5::bytea[], $6::text[],
                     $7::text[], $8::int4[])
ON CONFLICT (stream, stream_seq, reading_index) DO UPDATE
    SET deliveries = GREATEST(d.deliveries, EXCLUDED.deliveries)
"#;

/// How often a batch is tried again after a deadlock or a serialization failure (two
/// batches repeating each other's readings at the same moment).
const ATTEMPTS: usize = 4;

/// The UTC day of a reading: its partition. (`naive_utc`, not `date_naive`, which adds the
/// zero offset with checked arithmetic: the writer's sort asks for it per comparison.)
fn day(ts: DateTime<Utc>) -> NaiveDate {
    ts.naive_utc().date()
}

/// Writes a batch of valid readings (any devices) and dead letters in one durable
/// transaction: creates missing day partitions, stores the new readings, queues their rollup
/// delta, counts the repeats, and records the dead letters plus one per reading that turned
/// out to be behind the retention horizon (`too_old_letter` makes it; HTTP makes none).
///
/// `(device_id, seq)` is unique per UTC day of `ts`: a repeat within the batch or of a stored
/// reading is a duplicate (the first one stored wins).
pub async fn write(
    pool: &PgPool,
    readings: &[Reading],
    dead_letters: &[DeadLetter],
    mut too_old_letter: impl FnMut(usize) -> Option<DeadLetter>,
) -> Result<Written, sqlx::Error> {
    // By key, so that the index is walked in order and concurrent batches take the keys'
    // locks in the same order; within the batch the first occurrence of a key is kept.
    let mut kept: Vec<usize> = (0..readings.len()).collect();
    kept.sort_by_key(|&i| {
        let r = &readings[i];
        (r.device_id, r.seq, day(r.ts), i)
    });
    kept.dedup_by(|later, first| {
        let (a, b) = (&readings[*later], &readings[*first]);
        a.device_id == b.device_id && a.seq == b.seq && day(a.ts) == day(b.ts)
    });
    let repeats = readings.len() - kept.len();
    let days: Vec<NaiveDate> = kept
        .iter()
        .map(|&i| day(readings[i].ts))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut copy = true;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = try_write(
            pool,
            readings,
            &kept,
            &days,
            dead_letters,
            &mut too_old_letter,
            copy,
        )
        .await;
        match result {
            Ok(mut written) => {
                written.duplicates += repeats as u64;
                return Ok(written);
            }
            // A repeat of a stored reading: the batch again, new readings only.
            Err(e) if copy && has_code(&e, &["23505"]) => copy = false,
            Err(e) if attempt < ATTEMPTS && has_code(&e, &["40P01", "40001"]) => copy = false,
            Err(e) => return Err(e),
        }
    }
}

/// Whether `e` is a database error with one of these SQLSTATE codes.
fn has_code(e: &sqlx::Error, codes: &[&str]) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| codes.contains(&c.as_ref())),
        _ => false,
    }
}

/// One attempt: by COPY (`copy`), or by INSERT ... ON CONFLICT DO NOTHING.
async fn try_write(
    pool: &PgPool,
    readings: &[Reading],
    kept: &[usize],
    days: &[NaiveDate],
    dead_letters: &[DeadLetter],
    too_old_letter: &mut impl FnMut(usize) -> Option<DeadLetter>,
    copy: bool,
) -> Result<Written, sqlx::Error> {
    let t0 = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    let mut written = Written::default();
    let (mut t_begin, mut t_rows, mut t_queue) = Default::default();
    if !kept.is_empty() {
        let horizon: DateTime<Utc> = sqlx::query_scalar("SELECT telemetry_begin_batch($1)")
            .bind(days)
            .fetch_one(&mut *tx)
            .await?;
        let (fresh, too_old): (Vec<usize>, Vec<usize>) =
            kept.iter().partition(|&&i| readings[i].ts >= horizon);
        let received_at = Utc::now();
        t_begin = t0.elapsed();
        let stored = if fresh.is_empty() {
            fresh
        } else if copy {
            let data = encode_copy(readings, &fresh, received_at);
            let (back, copied) = copy_detached(tx, data).await?;
            tx = back;
            copied?;
            fresh
        } else {
            insert_new(&mut tx, readings, &fresh, received_at).await?
        };
        t_rows = t0.elapsed();
        let delta = Delta::of(stored.iter().map(|&i| &readings[i]));
        if !delta.is_empty() {
            queue(&mut tx, &delta).await?;
        }
        t_queue = t0.elapsed();
        written.accepted = stored.len() as u64;
        written.duplicates = (kept.len() - too_old.len() - stored.len()) as u64;
        written.too_old = too_old;
        written.too_old.sort_unstable();
        written.stored = stored;
    }
    let mut letters: Vec<DeadLetter> = dead_letters.to_vec();
    letters.extend(written.too_old.iter().filter_map(|i| too_old_letter(*i)));
    if !letters.is_empty() {
        insert_dead_letters(&mut tx, &letters).await?;
    }
    let t_letters = t0.elapsed();
    tx.commit().await?;
    tracing::trace!(
        readings = written.accepted,
        copy,
        begin_us = t_begin.as_micros() as u64,
        rows_us = (t_rows - t_begin).as_micros() as u64,
        queue_us = (t_queue - t_rows).as_micros() as u64,
        commit_us = (t0.elapsed() - t_letters).as_micros() as u64,
        "telemetry write"
    );
    Ok(written)
}

/// Runs the COPY in a task of its own, which owns the transaction meanwhile, and hands the
/// transaction back with the outcome. A COPY cut short (the caller's future dropped: an HTTP
/// client gone, a worker aborted) would return its connection to the pool in the middle of
/// the COPY protocol; in its own task the COPY always ends, and a transaction dropped there
/// rolls back cleanly.
async fn copy_detached(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    data: Vec<u8>,
) -> Result<
    (
        sqlx::Transaction<'static, sqlx::Postgres>,
        Result<u64, sqlx::Error>,
    ),
    sqlx::Error,
> {
    tokio::spawn(async move {
        let copied = async {
            let mut copy_in = tx.copy_in_raw(COPY_SQL).await?;
            copy_in.send(data).await?;
            copy_in.finish().await
        }
        .await;
        (tx, copied)
    })
    .await
    .map_err(|_| sqlx::Error::WorkerCrashed)
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The readings `which` as a binary COPY stream of `(device_id, seq, ts, metrics,
/// received_at)`: metrics as jsonb (its binary form is a version byte and the JSON text).
pub fn encode_copy(readings: &[Reading], which: &[usize], received_at: DateTime<Utc>) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + which.len() * 160 + 2);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let received = received_at.timestamp_micros() - PG_EPOCH_MICROS;
    for &i in which {
        let r = &readings[i];
        out.extend_from_slice(&5i16.to_be_bytes());
        out.extend_from_slice(&16i32.to_be_bytes());
        out.extend_from_slice(r.device_id.as_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&r.seq.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&(r.ts.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes());
        // The jsonb field: its length is known once written.
        let at = out.len();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.push(1);
        metrics_json(&mut out, r);
        let len = i32::try_from(out.len() - at - 4).unwrap_or(i32::MAX);
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&received.to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// A reading's metrics as a JSON object: the text the device sent when the reading kept it,
/// else written out. Names are `[a-z0-9_.]` (nothing to escape); values are finite and
/// written as the shortest decimal that reads back as the same f64.
fn metrics_json(out: &mut Vec<u8>, r: &Reading) {
    if let Some(text) = &r.metrics_text {
        out.extend_from_slice(text);
        return;
    }
    out.push(b'{');
    for (k, (name, value)) in r.metrics.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        // Writing an f64 into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
    out.push(b'}');
}

/// Inserts the readings `which`, skipping those whose key is taken; returns those stored.
async fn insert_new(
    tx: &mut PgConnection,
    readings: &[Reading],
    which: &[usize],
    received_at: DateTime<Utc>,
) -> Result<Vec<usize>, sqlx::Error> {
    let mut json = Vec::with_capacity(128);
    let texts: Vec<String> = which
        .iter()
        .map(|&i| {
            json.clear();
            metrics_json(&mut json, &readings[i]);
            String::from_utf8_lossy(&json).into_owned()
        })
        .collect();
    let rows: Vec<(Uuid, i64, DateTime<Utc>)> = sqlx::query_as(INSERT_SQL)
        .bind(
            which
                .iter()
                .map(|&i| readings[i].device_id)
                .collect::<Vec<_>>(),
        )
        .bind(which.iter().map(|&i| readings[i].seq).collect::<Vec<_>>())
        .bind(which.iter().map(|&i| readings[i].ts).collect::<Vec<_>>())
        .bind(&texts)
        .bind(received_at)
        .fetch_all(&mut *tx)
        .await?;
    let by_key: HashMap<(Uuid, i64, NaiveDate), usize> = which
        .iter()
        .map(|&i| {
            let r = &readings[i];
            ((r.device_id, r.seq, day(r.ts)), i)
        })
        .collect();
    let mut stored: Vec<usize> = rows
        .into_iter()
        .filter_map(|(d, s, ts)| by_key.get(&(d, s, day(ts))).copied())
        .collect();
    stored.sort_unstable();
    Ok(stored)
}

/// Queues a batch's rollup delta (applied later by the rollup worker, exactly once).
async fn queue(tx: &mut PgConnection, delta: &Delta<'_>) -> Result<(), sqlx::Error> {
    let c = delta.columns();
    sqlx::query(QUEUE_SQL)
        .bind(i32::try_from(delta.readings()).unwrap_or(i32::MAX))
        .bind(&c.device_id)
        .bind(&c.metric)
        .bind(&c.bucket)
        .bind(&c.min)
        .bind(&c.max)
        .bind(&c.sum)
        .bind(&c.count)
        .bind(&c.last_value)
        .bind(&c.last_ts)
        .bind(&c.last_seq)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn insert_dead_letters(
    tx: &mut PgConnection,
    letters: &[DeadLetter],
) -> Result<(), sqlx::Error> {
    // A message redelivered while its first delivery was still in the batch is one letter.
    let mut seen = HashSet::new();
    let letters: Vec<&DeadLetter> = letters
        .iter()
        .filter(|l| seen.insert((l.stream.as_str(), l.stream_seq, l.reading_index)))
        .collect();
    sqlx::query(DEAD_LETTER_SQL)
        .bind(
            letters
                .iter()
                .map(|l| l.stream.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(letters.iter().map(|l| l.stream_seq).collect::<Vec<_>>())
        .bind(letters.iter().map(|l| l.reading_index).collect::<Vec<_>>())
        .bind(
            letters
                .iter()
                .map(|l| l.subject.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            letters
                .iter()
                .map(|l| l.payload.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            letters
                .iter()
                .map(|l| l.reason.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            letters
                .iter()
                .map(|l| l.detail.as_str())
                .collect::<Vec<_>>(),
        )
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
/// per-minute) and moves the horizon so that nothing older is accepted again. Returns how
/// many partitions were dropped.
pub async fn apply_retention(pool: &PgPool, days: u32) -> Result<i32, sqlx::Error> {
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    sqlx::query_scalar("SELECT telemetry_apply_retention($1)")
        .bind(days)
        .fetch_one(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_stream_has_the_binary_layout() {
        let ts = DateTime::parse_from_rfc3339("2000-01-01T00:00:01Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let r = Reading {
            device_id: Uuid::from_u128(1),
            seq: 7,
            ts,
            metrics: vec![("a".into(), 1.5), ("b.c".into(), -70.0)],
            metrics_text: None,
        };
        let data = encode_copy(&[r], &[0], ts);
        assert_eq!(&data[..11], b"PGCOPY\n\xff\r\n\0");
        let tuple = &data[19..];
        assert_eq!(&tuple[..2], &5i16.to_be_bytes());
        assert_eq!(&tuple[2..6], &16i32.to_be_bytes());
        assert_eq!(&tuple[22..26], &8i32.to_be_bytes());
        assert_eq!(&tuple[26..34], &7i64.to_be_bytes());
        assert_eq!(&tuple[38..46], &1_000_000i64.to_be_bytes());
        let json = br#"{"a":1.5,"b.c":-70.0}"#;
        assert_eq!(&tuple[46..50], &(json.len() as i32 + 1).to_be_bytes());
        assert_eq!(tuple[50], 1);
        assert_eq!(&tuple[51..51 + json.len()], json);
        assert_eq!(&data[data.len() - 2..], &(-1i16).to_be_bytes());
    }
}
