//! Prometheus metrics: HTTP requests by route and status, their latency, and whatever the
//! other crates record through the `metrics` facade (shared-commit batch sizes, ...).

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Histogram buckets of the metrics that count requests per commit.
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .ok()?
                // Requests per shared commit (commands) and per telemetry group: counts, not
                // seconds.
                .set_buckets_for_metric(
                    Matcher::Full("chronicle_append_batch_requests".into()),
                    COUNT_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("chronicle_telemetry_http_group_requests".into()),
                    COUNT_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Counts and times every request by method, matched route and status.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("chronicle_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("chronicle_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}

/// GET /metrics: Prometheus text.
pub async fn render(State(state): State<AppState>) -> Response {
    // The oldest open transaction in the cluster holds back the log's read horizon: readers
    // of `read_all` wait for it. Its age is the first thing to look at when projections lag.
    let age: Result<f64, sqlx::Error> = sqlx::query_scalar(
        "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8 \
         FROM pg_stat_activity WHERE backend_xid IS NOT NULL OR backend_xmin IS NOT NULL",
    )
    .fetch_one(&state.pool)
    .await;
    match age {
        Ok(seconds) => metrics::gauge!("chronicle_log_horizon_age_seconds").set(seconds),
        Err(e) => tracing::warn!(error = %e, "cannot read the log horizon's age"),
    }
    let body = handle().map(|h| h.render()).unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}
