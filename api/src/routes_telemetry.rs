//! Telemetry routes: a device posts batches of readings with its own credential, and owners,
//! admins and auditors read per-minute or per-hour statistics of a metric.
//!
//! `POST /v1/telemetry` answers 202 `{accepted, duplicates, rejected: [{index, seq, code}]}`:
//! each reading is checked on its own, the valid ones are stored in one transaction, and a
//! repeat of a stored `(device, seq)` counts as a duplicate. Telemetry is idempotent by
//! `(device_id, seq)` rather than by `Idempotency-Key`: a repeated request answers with its
//! readings as duplicates. A body that is not JSON of the right shape, has no readings or
//! more than 1,000, is refused as a whole (400, 413) and nothing is written. An inactive
//! device cannot authenticate at all (as for device commands): 401 `invalid_credential`
//! (decommissioned, never activated, unknown) or 403 `device_not_active` (suspended).

use crate::error::Problem;
use crate::extract::{device_challenge, is_json, parse_body, Caller, DeviceCaller};
use crate::query::{fresh, not_found, reply, unavailable, MinPosition, Params, QueryProblems};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use ingest::query::{Bucket, BucketStats};
use ingest::reading::{self, Reading, WireReading};
use projections::commerce::devices;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

/// The largest telemetry body: 1,000 readings of a dozen metrics fit several times over.
pub const MAX_TELEMETRY_BODY_BYTES: usize = 1024 * 1024;
/// The most readings in one request.
pub const MAX_READINGS: usize = ingest::reading::MAX_READINGS;
/// The range of times a query may name (seconds since the epoch: 1970 to 9999).
const EARLIEST: i64 = 0;
const LATEST: i64 = 253_402_300_799;
/// The most buckets one query may span.
pub const MAX_BUCKETS: i64 = 1440;

/// The OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(post_telemetry, get_telemetry),
    components(schemas(
        TelemetryBody,
        ReadingBody,
        TelemetryAnswer,
        RejectedReading,
        TelemetryBuckets,
        BucketView
    ))
)]
pub struct Api;

/// These routes, with their own body limit (telemetry batches are larger than commands).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/telemetry", post(post_telemetry))
        .route("/v1/devices/{id}/telemetry", get(get_telemetry))
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(DefaultBodyLimit::max(MAX_TELEMETRY_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_TELEMETRY_BODY_BYTES))
}

/// POST /v1/telemetry.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryBody {
    /// 1 to 1,000 readings, each checked on its own.
    #[schema(value_type = Vec<ReadingBody>)]
    readings: Vec<WireReading>,
}

/// One reading (the same JSON a device publishes to NATS `telemetry.<device_id>`).
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReadingBody {
    /// The device's own counter, 0 to 2^63-1: `(device, seq)` identifies the reading and
    /// repeats are dropped.
    seq: i64,
    /// When it was measured (RFC 3339); at most 5 minutes ahead, not before the retention
    /// horizon.
    ts: DateTime<Utc>,
    /// 1 to 64 finite numbers by name (`[a-z0-9_.]{1,64}`).
    metrics: BTreeMap<String, f64>,
    /// Optional: must be the sending device.
    device_id: Option<Uuid>,
}

/// A reading that was not stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedReading {
    /// Its position in `readings` (from 0).
    index: usize,
    /// Its `seq`, when it had a readable one.
    seq: Option<i64>,
    /// `bad_reading`, `bad_metric_name`, `no_metrics`, `too_many_metrics`, `not_finite`,
    /// `ts_in_future`, `ts_too_old` or `device_mismatch`.
    code: String,
}

/// The answer to a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct TelemetryAnswer {
    /// Readings stored now.
    accepted: u64,
    /// Readings stored before (or repeated within the batch): dropped.
    duplicates: u64,
    /// Readings refused, with their code.
    rejected: Vec<RejectedReading>,
}

fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            413,
            "body_too_large",
            format!(
                "the body is larger than {} KiB",
                MAX_TELEMETRY_BODY_BYTES / 1024
            ),
        )
    } else {
        Problem::new(
            400,
            "invalid_input",
            format!("the body could not be read: {rejection}"),
        )
    }
}

#[utoipa::path(
    post,
    path = "/v1/telemetry",
    tag = "telemetry",
    request_body = TelemetryBody,
    security(("device" = [])),
    responses(
        (status = 202, description = "the valid readings are stored (new ones counted in `accepted`, repeats in `duplicates`); the others are listed with their code", body = TelemetryAnswer),
        (status = 400, description = "not JSON, not `{\"readings\": [...]}`, or no readings; nothing is written", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no, bad or unknown device credential (also a decommissioned or never-activated device)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`device_not_active`: the device is suspended", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`too_many_readings` (over 1,000) or `body_too_large` (over 1 MiB)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the readings could not be stored; send them again (repeats are dropped)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn post_telemetry(
    State(s): State<AppState>,
    DeviceCaller(device): DeviceCaller,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = async {
        let bytes = body.map_err(body_problem)?;
        if !is_json(&headers) {
            return Err(Problem::new(
                415,
                "unsupported_media_type",
                "send Content-Type: application/json",
            ));
        }
        // The common shape is read directly (`parse_batch_common`), anything else by
        // serde_json; only a body that fails is parsed again through `parse_body`, for
        // the same 400 as every route (tracking the path of every key of a thousand readings
        // costs more than the readings' own parsing).
        let body: TelemetryBody = match reading::parse_batch_common(&bytes) {
            Some(readings) => TelemetryBody { readings },
            None => match serde_json::from_slice(&bytes) {
                Ok(body) => body,
                Err(_) => parse_body(&bytes)?,
            },
        };
        if body.readings.is_empty() {
            return Err(Problem::invalid("readings", "send at least one reading"));
        }
        if body.readings.len() > MAX_READINGS {
            return Err(Problem::new(
                413,
                "too_many_readings",
                format!(
                    "{} readings; at most {MAX_READINGS} per request",
                    body.readings.len()
                ),
            ));
        }
        let now = Utc::now();
        let mut readings: Vec<Reading> = Vec::with_capacity(body.readings.len());
        // Each checked reading's position in the body and its seq (for a `ts_too_old` entry).
        let mut positions: Vec<(usize, i64)> = Vec::with_capacity(body.readings.len());
        let mut rejected = Vec::new();
        for (index, wire) in body.readings.into_iter().enumerate() {
            match reading::check(wire, device.device_id, now) {
                Ok(r) => {
                    positions.push((index, r.seq));
                    readings.push(r);
                }
                Err(r) => rejected.push(RejectedReading {
                    index,
                    seq: r.seq,
                    code: r.code.as_str().to_owned(),
                }),
            }
        }
        let written = s.telemetry.write(readings).await.map_err(|e| {
                tracing::error!(error = %e, device_id = %device.device_id, "telemetry not stored");
                Problem::new(
                    503,
                    "unavailable",
                    "the readings could not be stored; send them again (repeats are dropped)",
                )
            })?;
        for i in &written.too_old {
            rejected.push(RejectedReading {
                index: positions[*i].0,
                seq: Some(positions[*i].1),
                code: reading::Code::TsTooOld.as_str().to_owned(),
            });
        }
        rejected.sort_by_key(|r| r.index);
        let counter = |outcome: &'static str, n: u64| {
            metrics::counter!("chronicle_telemetry_readings_total", "path" => "http", "outcome" => outcome)
                .increment(n);
        };
        counter("accepted", written.accepted);
        counter("duplicate", written.duplicates);
        counter("rejected", rejected.len() as u64);
        Ok(TelemetryAnswer {
            accepted: written.accepted,
            duplicates: written.duplicates,
            rejected,
        })
    }
    .await;
    match answer {
        Ok(a) => (StatusCode::ACCEPTED, Json(a)).into_response(),
        Err(p) => device_challenge(p.into_response()),
    }
}

/// A bucket width.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
enum BucketParam {
    /// One minute.
    #[serde(rename = "1m")]
    Minute,
    /// One hour.
    #[serde(rename = "1h")]
    Hour,
}

/// GET /v1/devices/{id}/telemetry: which metric, which time range, which buckets.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TelemetryQuery {
    /// The metric's name.
    metric: String,
    /// The start (RFC 3339), rounded down to its bucket; default: 60 buckets before `to`.
    from: Option<DateTime<Utc>>,
    /// The end (RFC 3339, exclusive); default: now.
    to: Option<DateTime<Utc>>,
    /// `1m` (default) or `1h`. At most 1,440 buckets per query.
    #[param(value_type = Option<String>, example = "1m")]
    bucket: Option<BucketParam>,
}

/// Statistics of one bucket.
#[derive(ToSchema)]
#[allow(dead_code)]
struct BucketView {
    /// The bucket's start.
    bucket: DateTime<Utc>,
    min: f64,
    max: f64,
    avg: f64,
    /// How many values.
    count: i64,
}

/// A metric's statistics per bucket, oldest first; buckets without readings are left out.
#[derive(Debug, Serialize, ToSchema)]
pub struct TelemetryBuckets {
    device_id: Uuid,
    metric: String,
    /// `1m` or `1h`.
    bucket: &'static str,
    /// The first bucket's start.
    from: DateTime<Utc>,
    /// The end (exclusive).
    to: DateTime<Utc>,
    #[schema(value_type = Vec<BucketView>)]
    items: Vec<BucketStats>,
}

#[utoipa::path(
    get,
    path = "/v1/devices/{id}/telemetry",
    tag = "queries",
    params(("id" = Uuid, Path, description = "the device"), TelemetryQuery, crate::query::QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "per-bucket min, max, avg and count of the metric (owner, admin, auditor); X-Position is the devices read model's", body = TelemetryBuckets,
         headers(("X-Position" = i64, description = "the position the devices read model had applied"))),
        QueryProblems
    )
)]
async fn get_telemetry(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Path(raw): Path<String>,
    Params(q): Params<TelemetryQuery>,
) -> Result<Response, Problem> {
    let id = Uuid::parse_str(&raw).map_err(|_| Problem::invalid("id", "id must be a UUID"))?;
    if !reading::is_metric_name(&q.metric) {
        return Err(Problem::invalid(
            "metric",
            "metric must be 1-64 of a-z 0-9 _ .",
        ));
    }
    let (bucket, name) = match q.bucket.unwrap_or(BucketParam::Minute) {
        BucketParam::Minute => (Bucket::Minute, "1m"),
        BucketParam::Hour => (Bucket::Hour, "1h"),
    };
    let width = Duration::seconds(bucket.seconds());
    for (field, at) in [("from", q.from), ("to", q.to)] {
        if at.is_some_and(|t| !(EARLIEST..=LATEST).contains(&t.timestamp())) {
            return Err(Problem::invalid(
                field,
                format!("{field} must be between the years 1970 and 9999"),
            ));
        }
    }
    let to = q.to.unwrap_or_else(Utc::now);
    let from = bucket.floor(q.from.unwrap_or(to - width * 60));
    if from >= to {
        return Err(Problem::invalid("from", "from must be before to"));
    }
    if (to - from).num_seconds() > MAX_BUCKETS * bucket.seconds() {
        return Err(Problem::invalid(
            "from",
            format!("at most {MAX_BUCKETS} buckets per query: narrow from..to or use bucket=1h"),
        ));
    }
    let viewer = crate::query::Viewer::of(&s, &actor).await?;
    let at = fresh(&s, devices::NAME, min).await?;
    let device = devices::device(&s.pool, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found("device"))?;
    viewer.check(&[device.owner])?;
    let items = ingest::query::buckets(&s.pool, id, &q.metric, from, to, bucket)
        .await
        .map_err(unavailable)?;
    let answer = TelemetryBuckets {
        device_id: id,
        metric: q.metric,
        bucket: name,
        from,
        to,
        items,
    };
    Ok(reply(at, None, &answer))
}
