//! Rollups out of the ingest transaction: per-minute min, max, sum and count of each metric
//! of each device (`telemetry_minute`) and the newest value of each (`telemetry_latest`).
//!
//! A batch write computes its [`Delta`] in memory (one entry per device, metric and minute of
//! the readings it stored) and queues it in `telemetry_rollup_queue` in the batch's own
//! transaction. The rollup worker ([`run`], one [`step`] at a time) takes queued deltas,
//! merges them in memory, upserts each (device, metric, minute) and each (device, metric)
//! once, and deletes the deltas it applied, all in one transaction. So every stored reading
//! is counted exactly once: a worker that dies mid-step leaves its deltas queued (its
//! transaction never commits) and the next step applies them. The merges (least, greatest,
//! sums, counts, newest by `(ts, seq)`) do not depend on order, so deltas are applied in any
//! order and no commit order is needed; several workers can run (`SKIP LOCKED` hands each
//! delta to one of them; keys are upserted in sorted order, so they do not deadlock).
//!
//! The rollups therefore lag behind the raw readings by up to the worker's interval plus a
//! step (see docs/telemetry.md); [`catch_up`] applies everything committed so far.

use crate::reading::Reading;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// The statistics of one (device, metric, minute) of a delta, with its newest value.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Agg {
    min: f64,
    max: f64,
    sum: f64,
    count: i64,
    last_value: f64,
    last_ts: DateTime<Utc>,
    last_seq: i64,
}

impl Agg {
    fn one(value: f64, ts: DateTime<Utc>, seq: i64) -> Self {
        Self {
            min: value,
            max: value,
            sum: value,
            count: 1,
            last_value: value,
            last_ts: ts,
            last_seq: seq,
        }
    }

    fn merge(&mut self, o: &Agg) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.count += o.count;
        if (o.last_ts, o.last_seq) > (self.last_ts, self.last_seq) {
            self.last_value = o.last_value;
            self.last_ts = o.last_ts;
            self.last_seq = o.last_seq;
        }
    }
}

/// The start of the UTC minute holding `ts` (as `date_trunc('minute', ts, 'UTC')`).
fn minute(ts: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(ts.timestamp().div_euclid(60) * 60, 0).unwrap_or(ts)
}

/// A rollup key: device, metric, minute.
type Key<'a> = (Uuid, &'a str, DateTime<Utc>);

/// The rollup delta of a batch's stored readings: per (device, metric, minute), the
/// statistics of the values and the newest value by `(ts, seq)`.
#[derive(Debug, Default)]
pub struct Delta<'a> {
    /// By device, minute and metric; each key once.
    entries: Vec<(Key<'a>, Agg)>,
    readings: usize,
}

/// A delta as the columns of `telemetry_rollup_queue`, entry `i` of each.
#[derive(Debug, Default)]
pub struct Columns<'a> {
    /// Devices.
    pub device_id: Vec<Uuid>,
    /// Metric names.
    pub metric: Vec<&'a str>,
    /// Minutes.
    pub bucket: Vec<DateTime<Utc>>,
    /// Smallest values.
    pub min: Vec<f64>,
    /// Largest values (`None`: a single value, `min`).
    pub max: Vec<Option<f64>>,
    /// Sums (`None`: a single value, `min`).
    pub sum: Vec<Option<f64>>,
    /// Counts.
    pub count: Vec<i64>,
    /// Newest values by `(ts, seq)` (`None`: a single value, `min`).
    pub last_value: Vec<Option<f64>>,
    /// Their `ts`.
    pub last_ts: Vec<DateTime<Utc>>,
    /// Their `seq`.
    pub last_seq: Vec<i64>,
}

impl<'a> Delta<'a> {
    /// The delta of `readings`.
    pub fn of(readings: impl IntoIterator<Item = &'a Reading>) -> Self {
        // By device and minute (the writer hands them over sorted by device and seq, so this
        // sort has little to do), then each group's metrics, a handful, found by name.
        let mut rs: Vec<(Uuid, DateTime<Utc>, &'a Reading)> = readings
            .into_iter()
            .map(|r| (r.device_id, minute(r.ts), r))
            .collect();
        rs.sort_by_key(|(device, bucket, _)| (*device, *bucket));
        let mut entries: Vec<(Key<'a>, Agg)> = Vec::new();
        let mut group: Vec<(&'a str, Agg)> = Vec::new();
        let mut flush = |group: &mut Vec<(&'a str, Agg)>, device: Uuid, bucket| {
            group.sort_by(|a, b| a.0.cmp(b.0));
            entries.extend(group.drain(..).map(|(m, a)| ((device, m, bucket), a)));
        };
        let mut at: Option<(Uuid, DateTime<Utc>)> = None;
        for (device, bucket, r) in &rs {
            if at != Some((*device, *bucket)) {
                if let Some((d, b)) = at {
                    flush(&mut group, d, b);
                }
                at = Some((*device, *bucket));
            }
            for (j, (name, value)) in r.metrics.iter().enumerate() {
                let one = Agg::one(*value, r.ts, r.seq);
                // A device's readings mostly carry the same names, sorted: the j-th metric
                // is usually the group's j-th entry.
                let found = match group.get(j) {
                    Some((m, _)) if *m == name.as_str() => Some(j),
                    _ => group.iter().position(|(m, _)| *m == name.as_str()),
                };
                match found {
                    Some(k) => group[k].1.merge(&one),
                    None => group.push((name.as_str(), one)),
                }
            }
        }
        if let Some((d, b)) = at {
            flush(&mut group, d, b);
        }
        Delta {
            entries,
            readings: rs.len(),
        }
    }

    /// Whether it holds no reading.
    pub fn is_empty(&self) -> bool {
        self.readings == 0
    }

    /// How many readings it sums up.
    pub fn readings(&self) -> usize {
        self.readings
    }

    /// Its entries as columns.
    pub fn columns(&self) -> Columns<'a> {
        let n = self.entries.len();
        let mut c = Columns {
            device_id: Vec::with_capacity(n),
            metric: Vec::with_capacity(n),
            bucket: Vec::with_capacity(n),
            min: Vec::with_capacity(n),
            max: Vec::with_capacity(n),
            sum: Vec::with_capacity(n),
            count: Vec::with_capacity(n),
            last_value: Vec::with_capacity(n),
            last_ts: Vec::with_capacity(n),
            last_seq: Vec::with_capacity(n),
        };
        for ((device, metric, bucket), a) in &self.entries {
            // A single value is its own max, sum and newest value: stored once.
            let more = |v: f64| (a.count != 1).then_some(v);
            c.device_id.push(*device);
            c.metric.push(metric);
            c.bucket.push(*bucket);
            c.min.push(a.min);
            c.max.push(more(a.max));
            c.sum.push(more(a.sum));
            c.count.push(a.count);
            c.last_value.push(more(a.last_value));
            c.last_ts.push(a.last_ts);
            c.last_seq.push(a.last_seq);
        }
        c
    }
}

/// A queued delta as read back.
type QueuedRow = (
    i64,
    i32,
    Vec<Uuid>,
    Vec<String>,
    Vec<DateTime<Utc>>,
    Vec<f64>,
    Vec<Option<f64>>,
    Vec<Option<f64>>,
    Vec<i64>,
    Vec<Option<f64>>,
    Vec<DateTime<Utc>>,
    Vec<i64>,
    DateTime<Utc>,
);

const TAKE_SQL: &str = r#"
SELECT id, readings, device_id, metric, bucket, min, max, sum, count, last_value, last_ts,
       last_seq, queued_at
FROM telemetry_rollup_queue ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"#;

const MINUTE_SQL: &str = r#"
INSERT INTO telemetry_minute AS t (device_id, metric, bucket, min, max, sum, count)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::float8[], $5::float8[],
                     $6::float8[], $7::int8[])
ON CONFLICT (device_id, metric, bucket) DO UPDATE
    SET min = LEAST(t.min, EXCLUDED.min), max = GREATEST(t.max, EXCLUDED.max),
        sum = t.sum + EXCLUDED.sum, count = t.count + EXCLUDED.count
"#;

const LATEST_SQL: &str = r#"
INSERT INTO telemetry_latest AS l (device_id, metric, value, ts, seq)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::float8[], $4::timestamptz[], $5::int8[])
ON CONFLICT (device_id, metric) DO UPDATE
    SET value = EXCLUDED.value, ts = EXCLUDED.ts, seq = EXCLUDED.seq
    WHERE (EXCLUDED.ts, EXCLUDED.seq) > (l.ts, l.seq)
"#;

/// What a step applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Queued deltas applied (and deleted).
    pub batches: usize,
    /// The readings they summed up.
    pub readings: u64,
    /// Minute rows upserted.
    pub minutes: usize,
    /// When the oldest of them was queued.
    pub oldest: Option<DateTime<Utc>>,
}

/// Applies up to `max_batches` queued deltas in one transaction (those another worker holds
/// are skipped): merges them, upserts the minute rollups and the latest values, deletes the
/// deltas. Entries of days that retention already dropped are skipped.
pub async fn step(pool: &PgPool, max_batches: i64) -> Result<Applied, sqlx::Error> {
    let t0 = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    let horizon: DateTime<Utc> = sqlx::query_scalar("SELECT telemetry_begin_rollup()")
        .fetch_one(&mut *tx)
        .await?;
    let rows: Vec<QueuedRow> = sqlx::query_as(TAKE_SQL)
        .bind(max_batches)
        .fetch_all(&mut *tx)
        .await?;
    if rows.is_empty() {
        return Ok(Applied::default());
    }
    let t_take = t0.elapsed();
    let mut applied = Applied::default();
    let mut ids = Vec::with_capacity(rows.len());
    // Every entry of every delta merged by key (names borrowed from the decoded rows), then
    // sorted: concurrent workers lock rows in the same order.
    let mut merged: HashMap<Key<'_>, Agg> = HashMap::new();
    for (id, readings, devices, metrics, buckets, min, max, sum, count, lv, lts, lseq, at) in &rows
    {
        ids.push(*id);
        applied.batches += 1;
        applied.readings += u64::try_from(*readings).unwrap_or_default();
        applied.oldest = Some(applied.oldest.map_or(*at, |o| o.min(*at)));
        let n = devices.len();
        if [
            metrics.len(),
            buckets.len(),
            min.len(),
            max.len(),
            sum.len(),
            count.len(),
            lv.len(),
            lts.len(),
            lseq.len(),
        ]
        .iter()
        .any(|l| *l != n)
        {
            tracing::error!(
                queue_id = id,
                "a queued telemetry rollup delta has arrays of different lengths; skipped"
            );
            continue;
        }
        for i in 0..n {
            if buckets[i] < horizon {
                continue;
            }
            let a = Agg {
                min: min[i],
                max: max[i].unwrap_or(min[i]),
                sum: sum[i].unwrap_or(min[i]),
                count: count[i],
                last_value: lv[i].unwrap_or(min[i]),
                last_ts: lts[i],
                last_seq: lseq[i],
            };
            merged
                .entry((devices[i], metrics[i].as_str(), buckets[i]))
                .and_modify(|m| m.merge(&a))
                .or_insert(a);
        }
    }
    let mut entries: Vec<(Key<'_>, Agg)> = merged.into_iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut latest: Vec<((Uuid, &str), Agg)> = Vec::new();
    for ((device, metric, _), a) in &entries {
        match latest.last_mut() {
            Some(((d, m), l)) if d == device && m == metric => {
                if (a.last_ts, a.last_seq) > (l.last_ts, l.last_seq) {
                    *l = *a;
                }
            }
            _ => latest.push(((*device, metric), *a)),
        }
    }
    applied.minutes = entries.len();
    let t_merge = t0.elapsed();
    let mut t_minute = t_merge;
    if !entries.is_empty() {
        sqlx::query(MINUTE_SQL)
            .bind(entries.iter().map(|e| e.0 .0).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.0 .1).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.0 .2).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.1.min).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.1.max).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.1.sum).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.1.count).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        t_minute = t0.elapsed();
        sqlx::query(LATEST_SQL)
            .bind(latest.iter().map(|e| e.0 .0).collect::<Vec<_>>())
            .bind(latest.iter().map(|e| e.0 .1).collect::<Vec<_>>())
            .bind(latest.iter().map(|e| e.1.last_value).collect::<Vec<_>>())
            .bind(latest.iter().map(|e| e.1.last_ts).collect::<Vec<_>>())
            .bind(latest.iter().map(|e| e.1.last_seq).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    let t_latest = t0.elapsed();
    sqlx::query("DELETE FROM telemetry_rollup_queue WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::trace!(
        take_us = t_take.as_micros() as u64,
        merge_us = (t_merge - t_take).as_micros() as u64,
        minute_us = (t_minute - t_merge).as_micros() as u64,
        latest_us = (t_latest - t_minute).as_micros() as u64,
        commit_us = (t0.elapsed() - t_latest).as_micros() as u64,
        "telemetry rollup step"
    );
    metrics::counter!("chronicle_telemetry_rollup_readings_total").increment(applied.readings);
    if let Some(oldest) = applied.oldest {
        let lag = (Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::gauge!("chronicle_telemetry_rollup_lag_seconds").set(lag);
    }
    Ok(applied)
}

/// Applies every delta queued so far, waiting for those another worker is applying. Tests and
/// tools use it to read rollups that include every committed reading.
pub async fn catch_up(pool: &PgPool) -> Result<(), sqlx::Error> {
    loop {
        let applied = step(pool, 256).await?;
        if applied.batches > 0 {
            continue;
        }
        let empty: bool =
            sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM telemetry_rollup_queue)")
                .fetch_one(pool)
                .await?;
        if empty {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How the rollup worker paces itself.
#[derive(Debug, Clone)]
pub struct RollupConfig {
    /// How long it waits after finding the queue empty (the rollups' usual lag). Under load
    /// it applies the deltas of that long in one step: the longer, the fewer upserts per
    /// reading.
    pub interval: Duration,
    /// The most queued deltas (batches) in one step.
    pub max_batches: i64,
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            max_batches: 256,
        }
    }
}

/// The rollup worker: steps until `shutdown` turns true, waiting `interval` whenever a step
/// found less than a full load. Failures are logged and retried with a growing pause, never
/// returned.
pub async fn run(pool: PgPool, config: RollupConfig, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0u32;
    while !*shutdown.borrow() {
        let started = std::time::Instant::now();
        let wait = match step(&pool, config.max_batches).await {
            Ok(applied) => {
                failures = 0;
                if applied.batches > 0 {
                    tracing::debug!(
                        batches = applied.batches,
                        readings = applied.readings,
                        minutes = applied.minutes,
                        step_us = started.elapsed().as_micros() as u64,
                        "telemetry rollups applied"
                    );
                }
                if applied.batches as i64 >= config.max_batches {
                    continue;
                }
                config.interval
            }
            Err(error) => {
                failures += 1;
                let wait = Duration::from_millis(200 << failures.min(8));
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "telemetry rollups not applied; retrying");
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn reading(seq: i64, ts: &str, metrics: &[(&str, f64)]) -> Reading {
        Reading {
            device_id: Uuid::nil(),
            seq,
            ts: at(ts),
            metrics: metrics.iter().map(|(n, v)| ((*n).into(), *v)).collect(),
            metrics_text: None,
        }
    }

    proptest::proptest! {
        /// Whatever names each reading carries (sorted, as `check` leaves them), the delta
        /// holds, per device, metric and minute, the count, sum, extremes and newest value of
        /// exactly the values given.
        #[test]
        fn a_delta_matches_a_direct_tally(
            rows in proptest::collection::vec(
                (0u128..3, 0i64..50, 0i64..180,
                 proptest::sample::subsequence(vec!["a", "b", "c.d", "e"], 1..=4),
                 -100i32..100),
                1..60,
            ),
        ) {
            let readings: Vec<Reading> = rows
                .iter()
                .map(|(d, seq, secs, names, v)| Reading {
                    device_id: Uuid::from_u128(*d),
                    seq: *seq,
                    ts: DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap_or_default(),
                    metrics: names
                        .iter()
                        .enumerate()
                        .map(|(k, n)| ((*n).into(), f64::from(*v) + k as f64))
                        .collect(),
                    metrics_text: None,
                })
                .collect();
            let mut want: HashMap<(Uuid, String, DateTime<Utc>), Agg> = HashMap::new();
            for r in &readings {
                for (n, v) in &r.metrics {
                    let one = Agg::one(*v, r.ts, r.seq);
                    want.entry((r.device_id, n.to_string(), minute(r.ts)))
                        .and_modify(|a| a.merge(&one))
                        .or_insert(one);
                }
            }
            let delta = Delta::of(&readings);
            let got: HashMap<(Uuid, String, DateTime<Utc>), Agg> = delta
                .entries
                .iter()
                .map(|((d, m, b), a)| ((*d, (*m).to_owned(), *b), *a))
                .collect();
            proptest::prop_assert_eq!(got.len(), delta.entries.len());
            proptest::prop_assert_eq!(&got, &want);
        }
    }

    #[test]
    fn a_delta_sums_up_each_metric_per_minute_with_its_newest_value() {
        let readings = [
            reading(1, "2025-03-01T12:00:10Z", &[("t", 5.0), ("h", 1.0)]),
            reading(3, "2025-03-01T12:00:50Z", &[("t", -1.0)]),
            reading(2, "2025-03-01T12:00:50Z", &[("t", 9.0)]),
            reading(4, "2025-03-01T12:01:00Z", &[("t", 2.0)]),
        ];
        let delta = Delta::of(&readings);
        assert_eq!(delta.readings(), 4);
        let get = |m: &str, b: &str| {
            delta
                .entries
                .iter()
                .find(|(k, _)| *k == (Uuid::nil(), m, at(b)))
                .map(|(_, a)| *a)
        };
        let Some(m) = get("t", "2025-03-01T12:00:00Z") else {
            panic!("no entry")
        };
        assert_eq!((m.min, m.max, m.sum, m.count), (-1.0, 9.0, 13.0, 3));
        // Same ts: the larger seq is the newer reading.
        assert_eq!((m.last_value, m.last_seq), (-1.0, 3));
        let Some(next) = get("t", "2025-03-01T12:01:00Z") else {
            panic!("no entry")
        };
        assert_eq!((next.count, next.last_value), (1, 2.0));
        assert_eq!(delta.entries.len(), 3);
        let c = delta.columns();
        assert_eq!(c.device_id.len(), 3);
        assert_eq!(c.count.iter().sum::<i64>(), 5);
        // Single values are stored once.
        assert_eq!(c.max.iter().filter(|m| m.is_none()).count(), 2);
        assert_eq!(
            c.sum.iter().flatten().copied().collect::<Vec<_>>(),
            vec![13.0]
        );
    }

    #[test]
    fn minutes_are_utc_and_floor_before_1970() {
        assert_eq!(
            minute(at("2025-03-01T12:34:56.789+02:00")),
            at("2025-03-01T10:34:00Z")
        );
        assert_eq!(
            minute(at("1969-12-31T23:59:59.5Z")),
            at("1969-12-31T23:59:00Z")
        );
    }
}
