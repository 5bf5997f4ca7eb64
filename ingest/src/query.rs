//! Reading the rollups: per-bucket statistics of one metric of one device (per minute from
//! `telemetry_minute`, per hour summed from it) and the latest value of each metric.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The width of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// One minute.
    Minute,
    /// One hour (summed from the minute rollups).
    Hour,
}

impl Bucket {
    /// Its width in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Bucket::Minute => 60,
            Bucket::Hour => 3600,
        }
    }

    /// The start of the bucket holding `at`.
    pub fn floor(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let secs = at.timestamp().div_euclid(self.seconds()) * self.seconds();
        DateTime::from_timestamp(secs, 0).unwrap_or(at)
    }
}

/// The statistics of one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct BucketStats {
    /// The bucket's start (UTC).
    pub bucket: DateTime<Utc>,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// The mean.
    pub avg: f64,
    /// How many values.
    pub count: i64,
}

/// The buckets of `metric` of `device` that start in `[from, to)` and hold readings, oldest
/// first.
pub async fn buckets(
    pool: &PgPool,
    device: Uuid,
    metric: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Bucket,
) -> Result<Vec<BucketStats>, sqlx::Error> {
    let sql = match bucket {
        Bucket::Minute => {
            "SELECT bucket, min, max, sum / count AS avg, count FROM telemetry_minute
             WHERE device_id = $1 AND metric = $2 AND bucket >= $3 AND bucket < $4
             ORDER BY bucket"
        }
        Bucket::Hour => {
            "SELECT date_trunc('hour', bucket, 'UTC') AS bucket, min(min) AS min,
                    max(max) AS max, sum(sum) / sum(count) AS avg, sum(count)::int8 AS count
             FROM telemetry_minute
             WHERE device_id = $1 AND metric = $2 AND bucket >= $3 AND bucket < $4
             GROUP BY 1 ORDER BY 1"
        }
    };
    sqlx::query_as(sql)
        .bind(device)
        .bind(metric)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await
}

/// The latest value of a metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latest {
    /// The value.
    pub value: f64,
    /// The reading's time.
    pub ts: DateTime<Utc>,
    /// The reading's seq.
    pub seq: i64,
}

/// The latest value of each metric of `device`, by name.
pub async fn latest(pool: &PgPool, device: Uuid) -> Result<BTreeMap<String, Latest>, sqlx::Error> {
    let rows: Vec<(String, f64, DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT metric, value, ts, seq FROM telemetry_latest WHERE device_id = $1 ORDER BY metric",
    )
    .bind(device)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(metric, value, ts, seq)| (metric, Latest { value, ts, seq }))
        .collect())
}
