//! Telemetry over HTTP and NATS JetStream: deduplication on (device, seq) across both paths
//! (per UTC day of ts), validation codes and whole-body refusals, inactive and unknown
//! devices, concurrent HTTP requests that repeat each other's readings, clients that go away
//! mid-request, a write the database refuses, a worker killed mid-batch, dead letters that
//! are recorded once and never delivered again, NAKs while the database fails, rollups
//! (applied behind the writers by the rollup worker, exactly once, also when it is killed
//! mid-batch) equal to aggregates of the raw readings, queries and retention.
//!
//! The NATS tests need a JetStream server at `NATS_URL` (default `nats://127.0.0.1:4222`);
//! each uses its own stream, subjects and consumer and deletes its stream at the end.

use crate::support::{Answer, TestApp};
use async_nats::jetstream::Context;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Duration as Span, Utc};
use commands::Role;
use ingest::nats::{NatsConfig, Worker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// The longest any bounded wait of these tests lasts before it fails.
const PATIENCE: Duration = Duration::from_secs(90);

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

struct Site {
    app: TestApp,
    owner: String,
}

async fn site() -> Site {
    let app = TestApp::new().await;
    let (_, owner) = app.customer("owner").await;
    Site { app, owner }
}

impl Site {
    fn pool(&self) -> &PgPool {
        &self.app.db.pool
    }

    /// A registered (not activated) device.
    async fn registered(&self, serial: &str) -> Uuid {
        let a = self
            .app
            .post(
                "/v1/devices",
                &self.owner,
                json!({"serial": serial, "model": "Thermo 3", "firmware_version": "1.0.0"}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.id()
    }

    /// An active device and its credential.
    async fn active(&self, serial: &str) -> (Uuid, String) {
        let id = self.registered(serial).await;
        let a = self
            .app
            .post(
                &format!("/v1/devices/{id}/activate"),
                &self.owner,
                json!({}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        let credential = a.body["credential"].as_str().expect("a credential");
        (id, credential.to_owned())
    }

    async fn act(&self, id: Uuid, what: &str) {
        let a = self
            .app
            .post(
                &format!("/v1/devices/{id}/{what}"),
                &self.owner,
                json!({"reason": "test"}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{what}: {:?}", a.body);
    }

    /// POST /v1/telemetry with `Authorization: Device <credential>` and a raw body.
    async fn post_raw(
        &self,
        credential: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        let mut req = Request::builder()
            .method("POST")
            .uri("/v1/telemetry")
            .header("content-type", content_type);
        if let Some(c) = credential {
            req = req.header("authorization", format!("Device {c}"));
        }
        self.app
            .raw(req.body(Body::from(body)).expect("a request"))
            .await
    }

    async fn post(&self, credential: &str, readings: Vec<Value>) -> Answer {
        let body = serde_json::to_vec(&json!({ "readings": readings })).expect("json");
        self.post_raw(Some(credential), "application/json", body)
            .await
    }

    async fn stored(&self) -> i64 {
        count(self.pool(), "SELECT count(*) FROM telemetry").await
    }

    /// Applies every queued rollup delta: the rollups then include every committed reading.
    async fn roll_up(&self) {
        ingest::rollup::catch_up(self.pool())
            .await
            .expect("rollups applied");
    }
}

fn reading(seq: i64, ts: DateTime<Utc>, metrics: Value) -> Value {
    json!({"seq": seq, "ts": rfc3339(ts), "metrics": metrics})
}

fn problem_code(a: &Answer) -> &str {
    assert_eq!(
        a.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        "application/problem+json",
        "{:?}",
        a.body
    );
    a.body["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_reading_sent_twice_over_http_is_stored_once_and_shown_as_latest() {
    let s = site().await;
    let (device, credential) = s.active("T-1").await;
    let now = Utc::now();
    let r = reading(1, now, json!({"temp": 21.5, "hum": 40}));
    let first = s.post(&credential, vec![r.clone()]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    assert_eq!(
        first.body,
        json!({"accepted": 1, "duplicates": 0, "rejected": []})
    );
    // The same reading again, even with other values: the first one stays.
    let again = reading(1, now, json!({"temp": 99, "hum": 99}));
    let second = s.post(&credential, vec![again]).await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{:?}", second.body);
    assert_eq!(
        second.body,
        json!({"accepted": 0, "duplicates": 1, "rejected": []})
    );
    assert_eq!(s.stored().await, 1);
    s.roll_up().await;
    assert_eq!(
        count(s.pool(), "SELECT sum(count)::int8 FROM telemetry_minute").await,
        2
    );
    let view = s.app.get(&format!("/v1/devices/{device}"), &s.owner).await;
    assert_eq!(view.status, StatusCode::OK, "{:?}", view.body);
    assert_eq!(view.body["latest_readings"]["temp"]["value"], json!(21.5));
    assert_eq!(view.body["latest_readings"]["hum"]["seq"], json!(1));
    let minute = s
        .app
        .get(
            &format!("/v1/devices/{device}/telemetry?metric=temp"),
            &s.owner,
        )
        .await;
    assert_eq!(minute.status, StatusCode::OK, "{:?}", minute.body);
    let items = minute.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{:?}", minute.body);
    assert_eq!(items[0]["count"], json!(1));
    assert_eq!(items[0]["avg"], json!(21.5));
    assert!(minute.headers.contains_key("x-position"));
}

#[tokio::test]
async fn each_bad_reading_gets_its_code_and_the_good_ones_are_stored() {
    let s = site().await;
    let (_, credential) = s.active("T-1").await;
    let now = Utc::now();
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("m{i}"), json!(i))).collect();
    let other = Uuid::now_v7();
    let readings = vec![
        reading(1, now, json!({"temp": 1})),
        json!({"seq": "one", "ts": rfc3339(now), "metrics": {"temp": 1}}),
        reading(3, now, json!({"Temp": 1})),
        reading(4, now, json!({})),
        reading(5, now, Value::Object(many)),
        reading(6, now, json!({"temp": "hot"})),
        reading(7, now + Span::minutes(6), json!({"temp": 1})),
        json!({"seq": 8, "ts": rfc3339(now), "device_id": other, "metrics": {"temp": 1}}),
        reading(1, now, json!({"temp": 2})),
        reading(
            10,
            now - Span::seconds(1),
            json!({"temp": 3, "volt.in": 3.3}),
        ),
        json!({"seq": 11, "ts": "last tuesday", "metrics": {"temp": 1}}),
        json!({"seq": 12, "ts": rfc3339(now), "metrics": {"temp": 1}, "extra": true}),
        json!(42),
    ];
    let a = s.post(&credential, readings).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.body["accepted"], json!(2));
    assert_eq!(a.body["duplicates"], json!(1));
    assert_eq!(
        a.body["rejected"],
        json!([
            {"index": 1, "seq": null, "code": "bad_reading"},
            {"index": 2, "seq": 3, "code": "bad_metric_name"},
            {"index": 3, "seq": 4, "code": "no_metrics"},
            {"index": 4, "seq": 5, "code": "too_many_metrics"},
            {"index": 5, "seq": 6, "code": "not_finite"},
            {"index": 6, "seq": 7, "code": "ts_in_future"},
            {"index": 7, "seq": 8, "code": "device_mismatch"},
            {"index": 10, "seq": 11, "code": "bad_reading"},
            {"index": 11, "seq": 12, "code": "bad_reading"},
            {"index": 12, "seq": null, "code": "bad_reading"}
        ])
    );
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM telemetry ORDER BY seq")
        .fetch_all(s.pool())
        .await
        .expect("seqs");
    assert_eq!(seqs, vec![1, 10]);
}

#[tokio::test]
async fn malformed_empty_and_oversized_bodies_are_refused_whole_and_write_nothing() {
    let s = site().await;
    let (_, credential) = s.active("T-1").await;
    let now = Utc::now();
    let good = reading(1, now, json!({"temp": 1}));
    let json_ct = "application/json";

    let truncated = format!("{{\"readings\": [{good}, ");
    let a = s
        .post_raw(Some(&credential), json_ct, truncated.into_bytes())
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_code(&a), "invalid_input");

    let a = s
        .post_raw(Some(&credential), json_ct, b"{\"readings\": []}".to_vec())
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["field"], "readings");

    let a = s
        .post_raw(
            Some(&credential),
            json_ct,
            format!("{{\"readings\": [{good}], \"gateway\": 1}}").into_bytes(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["field"], "gateway");

    let a = s
        .post_raw(Some(&credential), json_ct, b"[1, 2]".to_vec())
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let overflow = format!(
        "{{\"readings\": [{{\"seq\": 1, \"ts\": \"{}\", \"metrics\": {{\"t\": 1e999}}}}]}}",
        rfc3339(now)
    );
    let a = s
        .post_raw(Some(&credential), json_ct, overflow.into_bytes())
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let a = s
        .post_raw(
            Some(&credential),
            "text/plain",
            format!("{{\"readings\": [{good}]}}").into_bytes(),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(problem_code(&a), "unsupported_media_type");

    let too_many: Vec<Value> = (0..1001)
        .map(|i| reading(i, now, json!({"temp": 1})))
        .collect();
    let a = s.post(&credential, too_many).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_code(&a), "too_many_readings");

    let padding = "x".repeat(ingest_body_limit() + 1);
    let huge = format!("{{\"readings\": [{good}], \"pad\": \"{padding}\"}}");
    let a = s
        .post_raw(Some(&credential), json_ct, huge.into_bytes())
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_code(&a), "body_too_large");

    // Exactly 1,000 readings is fine.
    let thousand: Vec<Value> = (0..1000)
        .map(|i| reading(i, now, json!({"temp": i})))
        .collect();
    assert_eq!(s.stored().await, 0, "nothing was written by the refusals");
    let a = s.post(&credential, thousand).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.body["accepted"], json!(1000));
    assert_eq!(s.stored().await, 1000);
}

fn ingest_body_limit() -> usize {
    1024 * 1024
}

#[tokio::test]
async fn only_an_active_device_with_its_credential_may_post_readings() {
    let s = site().await;
    let (_, good) = s.active("T-ok").await;
    let (suspended, suspended_cred) = s.active("T-susp").await;
    let (gone, gone_cred) = s.active("T-gone").await;
    let fresh = s.registered("T-new").await;
    s.act(suspended, "suspend").await;
    s.act(gone, "decommission").await;
    let body = |seq| vec![reading(seq, Utc::now(), json!({"temp": 1}))];

    let a = s.post(&suspended_cred, body(1)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
    assert_eq!(problem_code(&a), "device_not_active");
    let a = s.post(&gone_cred, body(1)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);
    assert_eq!(
        a.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Device"[..])
    );
    let secret = good.split_once('.').map(|(_, s)| s).unwrap_or_default();
    for credential in [
        format!("{fresh}.{secret}"),
        format!("{}.{secret}", Uuid::now_v7()),
        format!(
            "{}.wrong",
            good.split_once('.').map(|(d, _)| d).unwrap_or_default()
        ),
    ] {
        let a = s.post(&credential, body(1)).await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "{credential}: {:?}",
            a.body
        );
        assert_eq!(problem_code(&a), "invalid_credential");
    }
    let a = s
        .post_raw(None, "application/json", b"{\"readings\": []}".to_vec())
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let bearer = s.app.token("owner", &[Role::Customer]);
    let a = s
        .app
        .send(
            axum::http::Method::POST,
            "/v1/telemetry",
            Some(&bearer),
            Some(json!({"readings": body(1)})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.stored().await, 0);
    let a = s.post(&good, body(1)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(s.stored().await, 1);
}

#[tokio::test]
async fn telemetry_queries_check_the_reader_and_the_parameters() {
    let s = site().await;
    let (device, credential) = s.active("T-1").await;
    let (_, stranger) = s.app.customer("stranger").await;
    let admin = s.app.token("admin", &[Role::Admin]);
    let auditor = s.app.token("auditor", &[Role::Auditor]);
    let now = Utc::now();
    let a = s
        .post(&credential, vec![reading(1, now, json!({"temp": 5}))])
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    s.roll_up().await;
    let path = format!("/v1/devices/{device}/telemetry");
    for token in [&s.owner, &admin, &auditor] {
        let a = s.app.get(&format!("{path}?metric=temp"), token).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(a.body["items"][0]["max"], json!(5.0));
    }
    let a = s.app.get(&format!("{path}?metric=temp"), &stranger).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = s
        .app
        .get(
            &format!("/v1/devices/{}/telemetry?metric=temp", Uuid::now_v7()),
            &admin,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = s
        .app
        .send(
            axum::http::Method::GET,
            &format!("{path}?metric=temp"),
            None,
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let to = rfc3339(now);
    let day_ago = rfc3339(now - Span::hours(25));
    let later = rfc3339(now + Span::hours(1));
    for (query, field) in [
        ("metric=Temp".to_owned(), "metric"),
        ("".to_owned(), "metric"),
        ("metric=temp&bucket=5m".to_owned(), "bucket"),
        ("metric=temp&from=yesterday".to_owned(), "from"),
        (format!("metric=temp&from={later}&to={to}"), "from"),
        (format!("metric=temp&from={day_ago}&to={to}"), "from"),
        ("metric=temp&from=0001-01-01T00:00:00Z".to_owned(), "from"),
        ("metric=temp&limit=5".to_owned(), "limit"),
    ] {
        let a = s.app.get(&format!("{path}?{query}"), &s.owner).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {:?}", a.body);
        assert_eq!(a.body["field"], field, "{query}: {:?}", a.body);
    }
    let a = s
        .app
        .get(
            &format!("{}/telemetry?metric=temp", "/v1/devices/nope"),
            &s.owner,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // 1,440 buckets are within the limit (from is rounded down to its bucket).
    let a = s
        .app
        .get(
            &format!(
                "{path}?metric=temp&bucket=1h&from={}&to={to}",
                rfc3339(now - Span::days(59))
            ),
            &s.owner,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["bucket"], "1h");
    assert_eq!(a.body["items"][0]["count"], json!(1));
}

#[tokio::test]
async fn rollups_equal_aggregates_of_the_raw_readings() {
    let s = site().await;
    let (a_id, a_cred) = s.active("T-a").await;
    let (b_id, b_cred) = s.active("T-b").await;
    let seed: u64 = rand::random();
    println!("rollup test seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Utc::now();
    let metrics = ["temp", "hum", "volt.in"];
    for credential in [&a_cred, &b_cred] {
        let mut readings = Vec::new();
        for seq in 0..1200 {
            let back = Span::milliseconds(rng.gen_range(1_000..3 * 3_600_000));
            let mut m = serde_json::Map::new();
            for name in metrics {
                if rng.gen_bool(0.8) {
                    let v: f64 = rng.gen_range(-500.0..500.0);
                    m.insert(name.to_owned(), json!((v * 1000.0).round() / 1000.0));
                }
            }
            if m.is_empty() {
                m.insert("temp".to_owned(), json!(rng.gen_range(-5..5)));
            }
            let ts = now - back;
            readings.push(reading(seq, ts, Value::Object(m)));
            // Some readings are sent again with other values and times of the same UTC day:
            // dropped.
            if rng.gen_bool(0.1) {
                let other = ts + Span::milliseconds(rng.gen_range(-60_000..60_000));
                let other = if other.date_naive() == ts.date_naive() {
                    other
                } else {
                    ts
                };
                readings.push(reading(seq, other, json!({"temp": 10_000})));
            }
        }
        for chunk in readings.chunks(1000) {
            let a = s.post(credential, chunk.to_vec()).await;
            assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
            assert_eq!(a.body["rejected"], json!([]));
        }
    }
    assert_eq!(s.stored().await, 2400);
    assert_eq!(
        count(
            s.pool(),
            "SELECT count(*) FROM telemetry WHERE (metrics->>'temp')::float8 = 10000"
        )
        .await,
        0,
        "no repeat was stored"
    );
    s.roll_up().await;

    // Per minute and latest values: the rollup tables against the raw readings.
    let buckets = rollups_match_raw(s.pool()).await;
    assert!(buckets > 100, "many minute buckets: {buckets}");

    // Per hour and per minute through the API, against the raw readings.
    for (device, metric) in [(a_id, "temp"), (b_id, "volt.in")] {
        for (bucket, unit, span) in [
            ("1h", "hour", Span::hours(5)),
            ("1m", "minute", Span::hours(4)),
        ] {
            let from = rfc3339(now - span);
            let to = rfc3339(now + Span::minutes(1));
            let a = s
                .app
                .get(
                    &format!("/v1/devices/{device}/telemetry?metric={metric}&bucket={bucket}&from={from}&to={to}"),
                    &s.owner,
                )
                .await;
            assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
            let expected: Vec<(DateTime<Utc>, f64, f64, f64, i64)> = sqlx::query_as(&format!(
                "SELECT date_trunc('{unit}', r.ts, 'UTC'), min(m.value::float8), max(m.value::float8),
                        avg(m.value::float8), count(*)
                 FROM telemetry r CROSS JOIN LATERAL jsonb_each(r.metrics) m
                 WHERE r.device_id = $1 AND m.key = $2 GROUP BY 1 ORDER BY 1"
            ))
            .bind(device)
            .bind(metric)
            .fetch_all(s.pool())
            .await
            .expect("raw per bucket");
            let items = a.body["items"].as_array().expect("items");
            assert_eq!(items.len(), expected.len(), "{bucket} {metric}");
            for (item, (b, lo, hi, avg, n)) in items.iter().zip(&expected) {
                let at: DateTime<Utc> = item["bucket"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .expect("bucket");
                assert_eq!(at, *b);
                assert_eq!(item["min"].as_f64(), Some(*lo));
                assert_eq!(item["max"].as_f64(), Some(*hi));
                assert_eq!(item["count"].as_i64(), Some(*n));
                let got = item["avg"].as_f64().expect("avg");
                assert!(
                    (got - avg).abs() <= 1e-9 * avg.abs().max(1.0),
                    "{got} vs {avg}"
                );
            }
            assert_eq!(
                items.iter().filter_map(|i| i["count"].as_i64()).sum::<i64>(),
                count(s.pool(), &format!("SELECT count(*) FROM telemetry WHERE device_id = '{device}' AND metrics ? '{metric}'")).await
            );
        }
    }
}

/// Checks the rollups against aggregates of the raw readings: per minute (min, max and count
/// exactly, sums to 1e-9) and the latest value of each metric (the newest by ts, then seq).
/// Returns how many minute buckets there are.
async fn rollups_match_raw(pool: &PgPool) -> usize {
    type Key = (Uuid, String, DateTime<Utc>);
    type Stats = (f64, f64, f64, i64);
    type Row = (Uuid, String, DateTime<Utc>, f64, f64, f64, i64);
    let raw: Vec<Row> = sqlx::query_as(
        "SELECT r.device_id, m.key, date_trunc('minute', r.ts, 'UTC'), min(m.value::float8),
                max(m.value::float8), sum(m.value::float8), count(*)
         FROM telemetry r CROSS JOIN LATERAL jsonb_each(r.metrics) m GROUP BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .expect("raw per minute");
    let rolled: Vec<Row> = sqlx::query_as(
        "SELECT device_id, metric, bucket, min, max, sum, count FROM telemetry_minute",
    )
    .fetch_all(pool)
    .await
    .expect("rollups");
    let by_key = |rows: Vec<Row>| -> BTreeMap<Key, Stats> {
        rows.into_iter()
            .map(|(d, m, b, lo, hi, sum, n)| ((d, m, b), (lo, hi, sum, n)))
            .collect()
    };
    let raw = by_key(raw);
    let rolled = by_key(rolled);
    assert_eq!(
        raw.keys().collect::<BTreeSet<_>>(),
        rolled.keys().collect::<BTreeSet<_>>()
    );
    for (key, (lo, hi, sum, n)) in &raw {
        let (rlo, rhi, rsum, rn) = rolled[key];
        assert_eq!((rlo, rhi, rn), (*lo, *hi, *n), "{key:?}");
        assert!(
            (rsum - sum).abs() <= 1e-9 * sum.abs().max(1.0),
            "{key:?}: {rsum} vs {sum}"
        );
    }

    // Latest values: the newest reading (by ts, then seq) of each metric.
    let expected: Vec<(Uuid, String, f64, i64)> = sqlx::query_as(
        "SELECT DISTINCT ON (r.device_id, m.key) r.device_id, m.key, m.value::float8, r.seq
         FROM telemetry r CROSS JOIN LATERAL jsonb_each(r.metrics) m
         ORDER BY r.device_id, m.key, r.ts DESC, r.seq DESC",
    )
    .fetch_all(pool)
    .await
    .expect("raw latest");
    let latest: Vec<(Uuid, String, f64, i64)> = sqlx::query_as(
        "SELECT device_id, metric, value, seq FROM telemetry_latest ORDER BY device_id, metric",
    )
    .fetch_all(pool)
    .await
    .expect("latest");
    assert_eq!(latest, expected);
    raw.len()
}

/// One request of the concurrent tests: its device's credential and its readings; each
/// reading's `temp` names the request (`tag`), so a stored row tells which request stored it.
struct Posted {
    device: Uuid,
    credential: String,
    tag: i64,
    readings: Vec<Value>,
}

/// `n` requests of 20-150 readings each for one of `devices`, with seqs drawn from 0..400, so
/// that requests repeat each other's readings (and their own). A reading's `ts` is fixed by
/// its seq (a repeat falls on the same UTC day); one request in five also carries a reading
/// behind the retention horizon.
fn overlapping_requests(
    rng: &mut StdRng,
    devices: &[(Uuid, String)],
    n: usize,
    first_tag: i64,
) -> Vec<Posted> {
    let base = Utc::now() - Span::minutes(30);
    let base = if (base - Span::minutes(10)).date_naive() == base.date_naive() {
        base
    } else {
        // Keep every ts within one UTC day, whatever the time of the run: the day before.
        base.date_naive().and_time(chrono::NaiveTime::MIN).and_utc() - Span::minutes(1)
    };
    (0..n)
        .map(|k| {
            let (device, credential) = devices[rng.gen_range(0..devices.len())].clone();
            let tag = first_tag + k as i64;
            let mut readings: Vec<Value> = (0..rng.gen_range(20..150))
                .map(|_| {
                    let seq: i64 = rng.gen_range(0..400);
                    let ts = base - Span::milliseconds(seq * 1_000);
                    reading(seq, ts, json!({"temp": tag, "hum": rng.gen_range(0..100)}))
                })
                .collect();
            if rng.gen_bool(0.2) {
                let at = rng.gen_range(0..readings.len());
                readings.insert(
                    at,
                    reading(
                        1_000_000 + tag,
                        Utc::now() - Span::days(60),
                        json!({"temp": tag}),
                    ),
                );
            }
            Posted {
                device,
                credential,
                tag,
                readings,
            }
        })
        .collect()
}

/// Checks an answer against its request: every reading counted once, and the refused ones
/// are exactly its readings behind the retention horizon.
fn check_answer(p: &Posted, a: &Answer) -> (i64, i64) {
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    let accepted = a.body["accepted"].as_i64().expect("accepted");
    let duplicates = a.body["duplicates"].as_i64().expect("duplicates");
    let rejected = a.body["rejected"].as_array().expect("rejected");
    assert_eq!(
        accepted + duplicates + rejected.len() as i64,
        p.readings.len() as i64,
        "{:?}",
        a.body
    );
    let old: Vec<Value> = p
        .readings
        .iter()
        .enumerate()
        .filter(|(_, r)| r["seq"].as_i64() >= Some(1_000_000))
        .map(|(i, r)| json!({"index": i, "seq": r["seq"], "code": "ts_too_old"}))
        .collect();
    assert_eq!(rejected, &old);
    (accepted, duplicates)
}

/// How many stored readings each request (by tag) stored, and how many rows per key.
async fn stored_by_tag(pool: &PgPool) -> (BTreeMap<(Uuid, i64), i64>, i64) {
    let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT device_id, (metrics->>'temp')::float8::int8, count(*) FROM telemetry GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("rows by tag");
    let most_per_key = count(
        pool,
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM telemetry
         GROUP BY device_id, seq, (ts AT TIME ZONE 'UTC')::date) k",
    )
    .await;
    (
        rows.into_iter().map(|(d, t, n)| ((d, t), n)).collect(),
        most_per_key,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_repeating_each_other_store_each_reading_once_and_count_it_once() {
    let s = site().await;
    let mut devices = Vec::new();
    for serial in ["T-c1", "T-c2", "T-c3"] {
        devices.push(s.active(serial).await);
    }
    let seed: u64 = rand::random();
    println!("concurrent telemetry test seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    // 16 clients, 5 requests each, one after the other.
    let clients: Vec<Vec<Posted>> = (0..16)
        .map(|c| overlapping_requests(&mut rng, &devices, 5, c * 100))
        .collect();
    let s = &s;
    let answers = futures::future::join_all(clients.iter().map(|requests| async move {
        let mut answers = Vec::new();
        for p in requests {
            answers.push(s.post(&p.credential, p.readings.clone()).await);
        }
        answers
    }))
    .await;
    let (by_tag, most_per_key) = stored_by_tag(s.pool()).await;
    assert_eq!(most_per_key, 1, "a key stored twice");
    let mut total = 0;
    for (requests, answers) in clients.iter().zip(&answers) {
        for (p, a) in requests.iter().zip(answers) {
            let (accepted, _) = check_answer(p, a);
            // The rows this request stored are exactly those it counted as accepted.
            assert_eq!(
                by_tag.get(&(p.device, p.tag)).copied().unwrap_or(0),
                accepted,
                "request {}: {:?}",
                p.tag,
                a.body
            );
            total += accepted;
        }
    }
    assert_eq!(s.stored().await, total);
    // Every distinct key sent (within the horizon) is stored.
    let mut keys = BTreeSet::new();
    for p in clients.iter().flatten() {
        for r in &p.readings {
            let seq = r["seq"].as_i64().expect("seq");
            if seq < 1_000_000 {
                keys.insert((p.device, seq));
            }
        }
    }
    assert_eq!(total, keys.len() as i64);
    s.roll_up().await;
    rollups_match_raw(s.pool()).await;
}

/// A request handed to a group writer, written or not.
type Pending = tokio::task::JoinHandle<Result<ingest::store::Written, ingest::group::GroupError>>;

/// Readings `seqs` of `device`, a second apart before `now`, one metric each.
fn readings_of(
    device: Uuid,
    now: DateTime<Utc>,
    seqs: std::ops::Range<i64>,
) -> Vec<ingest::reading::Reading> {
    seqs.map(|seq| ingest::reading::Reading {
        device_id: device,
        seq,
        ts: now - Span::seconds(seq),
        metrics: vec![("temp".into(), seq as f64)],
        metrics_text: None,
    })
    .collect()
}

fn send(writer: &ingest::group::GroupWriter, readings: Vec<ingest::reading::Reading>) -> Pending {
    let w = writer.clone();
    tokio::spawn(async move { w.write(readings).await })
}

/// A group writer with one writer task whose first request (readings 0..10 of `device`) is
/// held at its rollup delta by a lock on the queue, so that what is sent next waits and is
/// taken as one group once `blocker` commits.
struct HeldWriter {
    writer: ingest::group::GroupWriter,
    device: Uuid,
    now: DateTime<Utc>,
    blocker: sqlx::Transaction<'static, sqlx::Postgres>,
    first: Pending,
}

impl HeldWriter {
    async fn new(pool: &PgPool) -> Self {
        let writer = ingest::group::GroupWriter::new(pool.clone(), 1);
        let (device, now) = (Uuid::now_v7(), Utc::now());
        let mut blocker = pool.begin().await.expect("a transaction");
        sqlx::query("LOCK TABLE telemetry_rollup_queue IN EXCLUSIVE MODE")
            .execute(&mut *blocker)
            .await
            .expect("lock");
        let first = send(&writer, readings_of(device, now, 0..10));
        eventually("the first request to wait for the lock", || async move {
            count(
                pool,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
                == 1
        })
        .await;
        Self {
            writer,
            device,
            now,
            blocker,
            first,
        }
    }

    fn batch(&self, seqs: std::ops::Range<i64>) -> Vec<ingest::reading::Reading> {
        readings_of(self.device, self.now, seqs)
    }

    /// Sends `readings` and waits until the request is queued behind the held one.
    async fn queue(&self, readings: Vec<ingest::reading::Reading>) -> Pending {
        let queued = self.writer.queued();
        let handle = send(&self.writer, readings);
        let writer = &self.writer;
        eventually("the request to be queued", || async move {
            writer.queued() == queued + 1
        })
        .await;
        handle
    }

    /// Lets the held request finish; it stored its ten readings.
    async fn release(self) {
        self.blocker.commit().await.expect("released");
        let first = self.first.await.expect("joined").expect("written");
        assert_eq!(
            (first.accepted, first.duplicates, first.stored),
            (10, 0, (0..10).collect())
        );
    }
}

fn outcome(
    h: Result<Result<ingest::store::Written, ingest::group::GroupError>, tokio::task::JoinError>,
) -> (u64, u64, Vec<usize>) {
    let w = h.expect("joined").expect("written");
    (w.accepted, w.duplicates, w.stored)
}

/// Group commit: requests that wait while the writer is busy are written together, in one
/// transaction, each answered with its own share; a reading repeated by two requests of a
/// group is stored once and counted for the earlier one; a request whose caller has gone
/// before its group is taken is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_waiting_for_a_busy_writer_are_written_together_each_with_its_own_outcome() {
    let app = TestApp::new().await;
    let pool = &app.db.pool;
    let held = HeldWriter::new(pool).await;
    let mut later = Vec::new();
    for seqs in [5..15, 10..20, 5..15, 30..31] {
        later.push(held.queue(held.batch(seqs)).await);
    }
    let gone = held.queue(held.batch(40..45)).await;
    gone.abort();
    assert!(gone.await.is_err(), "aborted");
    held.release().await;
    let mut outcomes = Vec::new();
    for h in later {
        outcomes.push(outcome(h.await));
    }
    assert_eq!(
        outcomes,
        vec![
            (5, 5, (5..10).collect()),
            (5, 5, (5..10).collect()),
            (0, 10, vec![]),
            (1, 0, vec![0]),
        ]
    );
    assert_eq!(count(pool, "SELECT count(*) FROM telemetry").await, 21);
    assert_eq!(
        count(pool, "SELECT count(*) FROM telemetry WHERE seq >= 40").await,
        0,
        "the request whose caller went away"
    );
    // One transaction for the waiting requests: one receipt time, not the first request's.
    assert_eq!(
        count(
            pool,
            "SELECT count(DISTINCT received_at) FROM telemetry WHERE seq >= 10"
        )
        .await,
        1
    );
    assert_eq!(
        count(pool, "SELECT count(DISTINCT received_at) FROM telemetry").await,
        2
    );
    ingest::rollup::catch_up(pool).await.expect("rollups");
    rollups_match_raw(pool).await;
}

/// A request the database refuses, in a group, fails alone: the group is written again
/// request by request, and the others are stored and answered as if written alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_the_database_refuses_fails_alone_and_the_rest_of_its_group_is_stored() {
    let app = TestApp::new().await;
    let pool = &app.db.pool;
    let held = HeldWriter::new(pool).await;
    let before = held.queue(held.batch(100..110)).await;
    // A metric name no request could carry (the route checks names): its jsonb text is not
    // JSON, and the COPY fails on it.
    let mut poison = held.batch(200..203);
    poison[1].metrics = vec![("bad\"name".into(), 1.0)];
    let refused = held.queue(poison).await;
    let after = held.queue(held.batch(105..115)).await;
    held.release().await;
    assert_eq!(outcome(before.await), (10, 0, (0..10).collect()));
    match refused.await.expect("joined") {
        Err(e) => assert!(
            matches!(*e, sqlx::Error::Database(_)),
            "a database error: {e}"
        ),
        Ok(w) => panic!("the refused request was written: {w:?}"),
    }
    assert_eq!(outcome(after.await), (5, 5, (5..10).collect()));
    assert_eq!(count(pool, "SELECT count(*) FROM telemetry").await, 25);
    assert_eq!(
        count(pool, "SELECT count(*) FROM telemetry WHERE seq >= 200").await,
        0
    );
    ingest::rollup::catch_up(pool).await.expect("rollups");
    rollups_match_raw(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_go_away_mid_request_do_not_disturb_the_others() {
    let s = site().await;
    let mut devices = Vec::new();
    for serial in ["T-g1", "T-g2"] {
        devices.push(s.active(serial).await);
    }
    let seed: u64 = rand::random();
    println!("dropped clients test seed {seed}");
    let s = &s;
    let mut rng = StdRng::seed_from_u64(seed);
    let kept = overlapping_requests(&mut rng, &devices, 24, 0);
    // The clients that go away send readings of their own (other seqs), and give up after
    // 0 to 30 ms: before, during or after their readings' transaction.
    let gone: Vec<(Posted, u64)> = overlapping_requests(&mut rng, &devices, 24, 1_000)
        .into_iter()
        .map(|mut p| {
            for r in &mut p.readings {
                let seq = r["seq"].as_i64().expect("seq");
                r["seq"] = json!(seq + 10_000);
            }
            let after = rng.gen_range(0..30);
            (p, after)
        })
        .collect();
    let (kept_answers, _) = tokio::join!(
        futures::future::join_all(
            kept.iter()
                .map(|p| async move { s.post(&p.credential, p.readings.clone()).await })
        ),
        futures::future::join_all(gone.iter().map(|(p, after)| async move {
            let post = s.post(&p.credential, p.readings.clone());
            let _ = tokio::time::timeout(Duration::from_millis(*after), post).await;
        }))
    );
    let (by_tag, most_per_key) = stored_by_tag(s.pool()).await;
    assert_eq!(most_per_key, 1, "a key stored twice");
    for (p, a) in kept.iter().zip(&kept_answers) {
        let (accepted, _) = check_answer(p, a);
        assert_eq!(
            by_tag.get(&(p.device, p.tag)).copied().unwrap_or(0),
            accepted
        );
    }
    // The clients that went away send their readings again: then every one of them is
    // stored, once.
    let mut keys = BTreeSet::new();
    for (p, _) in &gone {
        for r in &p.readings {
            let seq = r["seq"].as_i64().expect("seq");
            if seq < 1_000_000 {
                keys.insert((p.device, seq));
            }
        }
    }
    for (p, _) in &gone {
        let a = s.post(&p.credential, p.readings.clone()).await;
        check_answer(p, &a);
    }
    let again: i64 = count(
        s.pool(),
        "SELECT count(*) FROM telemetry WHERE seq >= 10000 AND seq < 1000000",
    )
    .await;
    assert_eq!(again, keys.len() as i64);
    assert_eq!(stored_by_tag(s.pool()).await.1, 1);
    s.roll_up().await;
    rollups_match_raw(s.pool()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_database_refuses_the_write_every_request_gets_503_and_nothing_is_stored() {
    let s = site().await;
    let devices = vec![s.active("T-f1").await, s.active("T-f2").await];
    let seed: u64 = rand::random();
    println!("refused write test seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let requests = overlapping_requests(&mut rng, &devices, 16, 0);
    // The rows go in, then the rollup delta fails: the whole transaction rolls back.
    sqlx::query("ALTER TABLE telemetry_rollup_queue RENAME TO telemetry_rollup_queue_away")
        .execute(s.pool())
        .await
        .expect("break the writer");
    let s = &s;
    let answers = futures::future::join_all(
        requests
            .iter()
            .map(|p| async move { s.post(&p.credential, p.readings.clone()).await }),
    )
    .await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.body);
        assert_eq!(problem_code(a), "unavailable");
    }
    assert_eq!(s.stored().await, 0);
    sqlx::query("ALTER TABLE telemetry_rollup_queue_away RENAME TO telemetry_rollup_queue")
        .execute(s.pool())
        .await
        .expect("repair the writer");
    let answers = futures::future::join_all(
        requests
            .iter()
            .map(|p| async move { s.post(&p.credential, p.readings.clone()).await }),
    )
    .await;
    let mut total = 0;
    for (p, a) in requests.iter().zip(&answers) {
        total += check_answer(p, a).0;
    }
    assert_eq!(s.stored().await, total);
    assert_eq!(stored_by_tag(s.pool()).await.1, 1);
    s.roll_up().await;
    rollups_match_raw(s.pool()).await;
}

#[tokio::test]
async fn retention_drops_old_days_and_refuses_them_afterwards() {
    let s = site().await;
    let (_, credential) = s.active("T-1").await;
    let pool = s.pool().clone();
    ingest::store::apply_retention(&pool, 10)
        .await
        .expect("retention 10 days");
    let old = Utc::now() - Span::days(5);
    let a = s
        .post(
            &credential,
            vec![
                reading(1, old, json!({"temp": 1})),
                reading(2, Utc::now(), json!({"temp": 2})),
            ],
        )
        .await;
    assert_eq!(a.body["accepted"], json!(2), "{:?}", a.body);
    let day = old.format("%Y%m%d").to_string();
    let parts = format!(
        "SELECT count(*) FROM pg_class WHERE relname IN ('telemetry_p{day}', 'telemetry_p{day}_key', 'telemetry_minute_p{day}')"
    );
    assert_eq!(count(&pool, &parts).await, 3);
    s.roll_up().await;
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(*) FROM telemetry_minute_p{day}")
        )
        .await,
        1
    );

    let dropped = ingest::maintain_once(&pool, 2).await.expect("maintenance");
    assert!(dropped >= 2, "dropped {dropped}");
    assert_eq!(count(&pool, &parts).await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM telemetry").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM telemetry_minute WHERE bucket < now() - interval '1 day'"
        )
        .await,
        0
    );
    // Partitions stand ready for the next two days.
    let tomorrow = (Utc::now() + Span::days(2)).format("%Y%m%d").to_string();
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(*) FROM pg_class WHERE relname = 'telemetry_p{tomorrow}'")
        )
        .await,
        1
    );
    // The dropped reading does not come back: it is behind the horizon now.
    let a = s
        .post(&credential, vec![reading(1, old, json!({"temp": 1}))])
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        a.body,
        json!({"accepted": 0, "duplicates": 0, "rejected": [{"index": 0, "seq": 1, "code": "ts_too_old"}]})
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM telemetry").await, 1);
}

#[tokio::test]
async fn a_reused_seq_is_a_duplicate_on_its_day_and_a_new_reading_on_another_day() {
    let s = site().await;
    let (_, credential) = s.active("T-1").await;
    let now = Utc::now();
    // Another time of the same UTC day, and a time of the day before.
    let same_day = if (now - Span::seconds(1)).date_naive() == now.date_naive() {
        now - Span::seconds(1)
    } else {
        now + Span::milliseconds(500)
    };
    let day_before = now - Span::days(1);
    let post = |readings: Vec<Value>| s.post(&credential, readings);
    let a = post(vec![reading(1, now, json!({"temp": 1}))]).await;
    assert_eq!(
        a.body,
        json!({"accepted": 1, "duplicates": 0, "rejected": []})
    );
    let a = post(vec![reading(1, same_day, json!({"temp": 2}))]).await;
    assert_eq!(
        a.body,
        json!({"accepted": 0, "duplicates": 1, "rejected": []})
    );
    let a = post(vec![reading(1, day_before, json!({"temp": 3}))]).await;
    assert_eq!(
        a.body,
        json!({"accepted": 1, "duplicates": 0, "rejected": []})
    );
    let a = post(vec![
        reading(1, day_before, json!({"temp": 4})),
        reading(1, now, json!({"temp": 5})),
    ])
    .await;
    assert_eq!(
        a.body,
        json!({"accepted": 0, "duplicates": 2, "rejected": []})
    );
    // The same within one batch.
    let a = post(vec![
        reading(2, now, json!({"temp": 6})),
        reading(2, same_day, json!({"temp": 7})),
        reading(2, day_before, json!({"temp": 8})),
    ])
    .await;
    assert_eq!(
        a.body,
        json!({"accepted": 2, "duplicates": 1, "rejected": []})
    );
    let stored: Vec<(i64, f64)> =
        sqlx::query_as("SELECT seq, (metrics->>'temp')::float8 FROM telemetry ORDER BY seq, ts")
            .fetch_all(s.pool())
            .await
            .expect("stored");
    assert_eq!(stored, vec![(1, 3.0), (1, 1.0), (2, 8.0), (2, 6.0)]);
    s.roll_up().await;
    assert_eq!(
        count(s.pool(), "SELECT sum(count)::int8 FROM telemetry_minute").await,
        4
    );
}

#[tokio::test]
async fn the_rollup_worker_killed_mid_batch_applies_every_delta_once() {
    let s = site().await;
    let (device, credential) = s.active("T-1").await;
    let pool = s.pool().clone();
    let now = Utc::now();
    let a = s
        .post(
            &credential,
            vec![reading(0, now - Span::minutes(2), json!({"temp": 0}))],
        )
        .await;
    assert_eq!(a.body["accepted"], json!(1));
    s.roll_up().await;
    // Five batches over two metrics and several minutes, sent newest first: the latest value
    // must still be the newest reading.
    let mut seq = 1;
    for batch in 0..5 {
        let readings: Vec<Value> = (0..200)
            .map(|k| {
                seq += 1;
                let ts = now - Span::seconds(60 * batch + (k % 60));
                reading(seq, ts, json!({"temp": seq % 50, "hum": k}))
            })
            .collect();
        let a = s.post(&credential, readings).await;
        assert_eq!(a.body["accepted"], json!(200), "{:?}", a.body);
    }
    // A reader holds the device's latest row: the worker's step blocks there, after its
    // minute upserts and before its commit.
    let mut holder = pool.begin().await.expect("a transaction");
    sqlx::query(
        "SELECT 1 FROM telemetry_latest WHERE device_id = $1 AND metric = 'temp' FOR UPDATE",
    )
    .bind(device)
    .execute(&mut *holder)
    .await
    .expect("lock the latest row");
    let (stop, stopped) = watch::channel(false);
    let config = ingest::rollup::RollupConfig {
        interval: Duration::from_millis(20),
        ..Default::default()
    };
    let worker = tokio::spawn(ingest::rollup::run(pool.clone(), config, stopped));
    let blocked = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO telemetry_latest%'";
    eventually("the rollup worker blocked mid-batch", || async {
        count(&pool, blocked).await == 1
    })
    .await;
    assert_eq!(
        count(&pool, "SELECT sum(count)::int8 FROM telemetry_minute").await,
        1,
        "nothing of the blocked step is visible"
    );
    // Killed: its connection is terminated while the step's transaction is open.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO telemetry_latest%'",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate the worker's backend");
    assert_eq!(killed, vec![true]);
    holder.rollback().await.expect("release the row");
    // The same worker retries on a new connection and applies every delta, once.
    eventually("every delta applied", || async {
        count(&pool, "SELECT count(*) FROM telemetry_rollup_queue").await == 0
    })
    .await;
    assert_eq!(
        count(&pool, "SELECT sum(count)::int8 FROM telemetry_minute").await,
        1 + 2 * 1000
    );
    rollups_match_raw(&pool).await;
    let newest: i64 = count(
        &pool,
        "SELECT seq FROM telemetry_latest WHERE metric = 'temp'",
    )
    .await;
    // The newest: ts = now (the first batch), the largest seq at that ts (k = 180).
    assert_eq!(newest, 182);
    // An older reading arriving later does not replace the latest value.
    let a = s
        .post(
            &credential,
            vec![reading(5000, now - Span::hours(1), json!({"temp": 99}))],
        )
        .await;
    assert_eq!(a.body["accepted"], json!(1));
    eventually("the late reading rolled up", || async {
        count(&pool, "SELECT count(*) FROM telemetry_rollup_queue").await == 0
    })
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT seq FROM telemetry_latest WHERE metric = 'temp'"
        )
        .await,
        newest
    );
    rollups_match_raw(&pool).await;
    let _ = stop.send(true);
    worker.await.expect("the rollup worker stops on shutdown");
}

// ----- NATS -----

/// A JetStream stream, subjects and consumer of one test, deleted when it ends.
struct Bus {
    url: String,
    js: Context,
    config: NatsConfig,
}

impl Bus {
    async fn new(config: impl FnOnce(&mut NatsConfig)) -> Bus {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("these tests need nats-server -js at {url}: {e}"));
        let js = async_nats::jetstream::new(client.clone());
        let tag = Uuid::now_v7().simple().to_string();
        let mut c = NatsConfig {
            stream: format!("TELEMETRY_{tag}"),
            subject_prefix: format!("telemetry_{tag}"),
            consumer: "chronicle-ingest".to_owned(),
            workers: 1,
            ack_wait: Duration::from_secs(2),
            nak_delay: Duration::from_millis(100),
            nak_delay_max: Duration::from_millis(400),
            max_age: Duration::from_secs(3600),
            ..Default::default()
        };
        config(&mut c);
        ingest::nats::setup(&js, &c)
            .await
            .expect("stream and consumer");
        Bus { url, js, config: c }
    }

    fn subject(&self, device: impl std::fmt::Display) -> String {
        format!("{}.{device}", self.config.subject_prefix)
    }

    /// Publishes everything, then waits for every acknowledgement of the stream.
    async fn publish(&self, messages: Vec<(String, Vec<u8>)>) {
        let mut acks = Vec::new();
        for (subject, payload) in messages {
            acks.push(
                self.js
                    .publish(subject, payload.into())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("stored by the stream");
        }
    }

    /// A worker on its own connection (so aborting it is like its process dying).
    async fn worker(&self, pool: &PgPool) -> (tokio::task::JoinHandle<()>, watch::Sender<bool>) {
        let client = async_nats::connect(&self.url).await.expect("connect");
        let js = async_nats::jetstream::new(client.clone());
        let consumer = ingest::nats::setup(&js, &self.config)
            .await
            .expect("consumer");
        let (stop, stopped) = watch::channel(false);
        let worker = Worker::new(pool.clone(), client, consumer, self.config.clone());
        (tokio::spawn(worker.run(stopped)), stop)
    }

    /// (pending, ack pending, redelivered) of the consumer.
    async fn consumer_state(&self) -> (u64, usize, usize) {
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .expect("stream");
        let info = stream
            .consumer_info(&self.config.consumer)
            .await
            .expect("consumer info");
        (info.num_pending, info.num_ack_pending, info.num_redelivered)
    }

    /// Waits until the consumer has nothing pending or unacknowledged.
    async fn drained(&self) {
        eventually("the consumer to be drained", || async {
            let (pending, ack_pending, _) = self.consumer_state().await;
            pending == 0 && ack_pending == 0
        })
        .await;
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let (url, stream) = (self.url.clone(), self.config.stream.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(url).await {
                    let js = async_nats::jetstream::new(client);
                    let _ = js.delete_stream(stream).await;
                }
            });
        })
        .join();
    }
}

fn payload(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("json")
}

#[tokio::test]
async fn a_reading_published_twice_over_nats_and_posted_over_http_is_stored_once() {
    let s = site().await;
    let (device, credential) = s.active("T-1").await;
    let bus = Bus::new(|_| {}).await;
    let (worker, stop) = bus.worker(s.pool()).await;
    let now = Utc::now();
    let r = reading(1, now, json!({"temp": 20, "hum": 50}));
    bus.publish(vec![
        (bus.subject(device), payload(r.clone())),
        (bus.subject(device), payload(r.clone())),
    ])
    .await;
    eventually("the reading stored", || async { s.stored().await == 1 }).await;
    bus.drained().await;
    // The same reading over HTTP is a duplicate of the one NATS stored.
    let a = s.post(&credential, vec![r]).await;
    assert_eq!(
        a.body,
        json!({"accepted": 0, "duplicates": 1, "rejected": []})
    );
    // With its device_id in the payload too, and a later reading: one more row.
    let mut with_id = reading(2, now, json!({"temp": 21}));
    with_id["device_id"] = json!(device);
    bus.publish(vec![(bus.subject(device), payload(with_id))])
        .await;
    eventually("the second reading stored", || async {
        s.stored().await == 2
    })
    .await;
    bus.drained().await;
    assert_eq!(s.stored().await, 2);
    s.roll_up().await;
    assert_eq!(
        count(s.pool(), "SELECT sum(count)::int8 FROM telemetry_minute").await,
        3
    );
    assert_eq!(
        count(s.pool(), "SELECT count(*) FROM telemetry_dead_letters").await,
        0
    );
    let _ = stop.send(true);
    worker.await.expect("the worker stops on shutdown");
}

#[tokio::test]
async fn metrics_are_stored_as_sent_over_http_and_nats_and_roll_up_as_numbers() {
    let s = site().await;
    let (device, credential) = s.active("T-text").await;
    let bus = Bus::new(|_| {}).await;
    let (worker, stop) = bus.worker(s.pool()).await;
    let ts = rfc3339(Utc::now());
    // Trailing zeros, an integer, a negative zero, spaces, and a repeated name (the last
    // value counts, as in a JSON object).
    let metrics = r#"{ "temp" : 21.50, "rssi": -70, "z": -0, "t": 1, "t": 2.250 }"#;
    let one = |seq: i64| format!(r#"{{"seq":{seq},"ts":"{ts}","metrics":{metrics}}}"#);
    let a = s
        .post_raw(
            Some(&credential),
            "application/json",
            format!(r#"{{"readings":[{}]}}"#, one(1)).into_bytes(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    bus.publish(vec![
        (bus.subject(device), one(2).into_bytes()),
        (
            bus.subject(device),
            format!(r#"{{"readings":[{}]}}"#, one(3)).into_bytes(),
        ),
    ])
    .await;
    eventually("the NATS readings stored", || async {
        s.stored().await == 3
    })
    .await;
    bus.drained().await;
    // A name with an escape is read by serde_json, and its values written out again.
    let escaped = format!(r#"{{"seq":4,"ts":"{ts}","metrics":{{"te\u006dp":21.50,"t":2.25}}}}"#);
    let a = s
        .post_raw(
            Some(&credential),
            "application/json",
            format!(r#"{{"readings":[{escaped}]}}"#).into_bytes(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    let rows: Vec<(i64, String, String, bool)> = sqlx::query_as(
        "SELECT seq, metrics->>'temp', metrics->>'t', \
                metrics = '{\"temp\": 21.5, \"rssi\": -70, \"z\": 0, \"t\": 2.25}'::jsonb \
         FROM telemetry ORDER BY seq",
    )
    .fetch_all(s.pool())
    .await
    .expect("rows");
    let as_sent = |seq| (seq, "21.50".to_owned(), "2.250".to_owned(), true);
    assert_eq!(rows[..3], [as_sent(1), as_sent(2), as_sent(3)]);
    assert_eq!(rows[3].0, 4);
    assert_eq!((rows[3].1.as_str(), rows[3].2.as_str()), ("21.5", "2.25"));
    // The rollups hold the numbers: four readings of 21.5 and of 2.25, none of 1.
    s.roll_up().await;
    let stats: Vec<(String, f64, f64, i64)> = sqlx::query_as(
        "SELECT metric, min, max, count FROM telemetry_minute \
         WHERE metric IN ('temp', 't') ORDER BY metric",
    )
    .fetch_all(s.pool())
    .await
    .expect("rollups");
    let total = |m: &str| -> (f64, f64, i64) {
        stats
            .iter()
            .filter(|r| r.0 == m)
            .fold((f64::MAX, f64::MIN, 0), |(lo, hi, n), r| {
                (lo.min(r.1), hi.max(r.2), n + r.3)
            })
    };
    assert_eq!(total("temp"), (21.5, 21.5, 4));
    assert_eq!(total("t"), (2.25, 2.25, 4));
    assert_eq!(letters(s.pool()).await, vec![]);
    let _ = stop.send(true);
    worker.await.expect("the worker stops on shutdown");
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_and_doubles_nothing() {
    let s = site().await;
    let mut devices = Vec::new();
    for i in 0..3 {
        devices.push(s.active(&format!("T-{i}")).await.0);
    }
    let bus = Bus::new(|c| c.batch_max = 100).await;
    let now = Utc::now();
    let per_device = 1000;
    let mut messages = Vec::new();
    for seq in 0..per_device {
        for d in &devices {
            let ts = now - Span::milliseconds((per_device - seq) * 10);
            messages.push((
                bus.subject(d),
                payload(reading(seq, ts, json!({"temp": seq, "hum": 1}))),
            ));
        }
    }
    let total = messages.len() as i64;
    bus.publish(messages).await;
    let (first, _stop_first) = bus.worker(s.pool()).await;
    eventually("the first worker to store something", || async {
        s.stored().await > 0
    })
    .await;
    // Killed while it holds delivered, unacknowledged messages (its connection goes too).
    first.abort();
    let _ = first.await;
    let after_kill = s.stored().await;
    assert!(
        after_kill < total,
        "the worker was killed before the end ({after_kill})"
    );
    let (second, stop) = bus.worker(s.pool()).await;
    eventually("every reading stored", || async {
        s.stored().await == total
    })
    .await;
    bus.drained().await;
    assert_eq!(s.stored().await, total);
    assert_eq!(
        count(
            s.pool(),
            "SELECT count(DISTINCT (device_id, seq)) FROM telemetry"
        )
        .await,
        total
    );
    s.roll_up().await;
    assert_eq!(
        count(s.pool(), "SELECT sum(count)::int8 FROM telemetry_minute").await,
        2 * total,
        "each reading counted once in the rollups"
    );
    assert_eq!(
        count(
            s.pool(),
            "SELECT count(*) FROM telemetry_latest WHERE seq = 999 AND metric = 'temp'"
        )
        .await,
        3
    );
    let _ = stop.send(true);
    second.await.expect("the worker stops on shutdown");
}

#[tokio::test]
async fn unacceptable_messages_are_dead_lettered_once_and_not_delivered_again() {
    let s = site().await;
    let (good, _) = s.active("T-ok").await;
    let (suspended, _) = s.active("T-susp").await;
    let (gone, _) = s.active("T-gone").await;
    let fresh = s.registered("T-new").await;
    s.act(suspended, "suspend").await;
    s.act(gone, "decommission").await;
    let unknown = Uuid::now_v7();
    let bus = Bus::new(|_| {}).await;
    let (worker, stop) = bus.worker(s.pool()).await;
    let now = Utc::now();
    let ok = |seq| payload(reading(seq, now, json!({"temp": 1})));
    let mut mismatch = reading(3, now, json!({"temp": 1}));
    mismatch["device_id"] = json!(unknown);
    let bad = vec![
        (
            bus.subject(good),
            b"{\"seq\": 1, \"ts\":".to_vec(),
            "bad_json",
        ),
        (bus.subject(good), payload(mismatch), "device_mismatch"),
        (
            bus.subject(good),
            payload(reading(4, now + Span::minutes(10), json!({"t": 1}))),
            "ts_in_future",
        ),
        (
            bus.subject(good),
            payload(reading(5, now, json!({"T": 1}))),
            "bad_metric_name",
        ),
        (bus.subject(suspended), ok(1), "device_inactive"),
        (bus.subject(gone), ok(1), "device_inactive"),
        (bus.subject(fresh), ok(1), "device_inactive"),
        (bus.subject(unknown), ok(1), "unknown_device"),
        (bus.subject("not-a-device"), ok(1), "bad_subject"),
    ];
    let expected: BTreeMap<String, &str> = bad
        .iter()
        .map(|(subject, body, code)| {
            (
                format!("{subject} {}", String::from_utf8_lossy(body)),
                *code,
            )
        })
        .collect();
    let mut messages: Vec<(String, Vec<u8>)> =
        bad.iter().map(|(s, p, _)| (s.clone(), p.clone())).collect();
    messages.push((bus.subject(good), ok(1)));
    bus.publish(messages).await;
    let letters = || count(s.pool(), "SELECT count(*) FROM telemetry_dead_letters");
    eventually("every dead letter", || async { letters().await == 9 }).await;
    eventually("the good reading", || async { s.stored().await == 1 }).await;
    // Past the acknowledgement wait: a message that was not terminated would be delivered
    // again by now. A later reading shows the worker is still taking messages.
    tokio::time::sleep(bus.config.ack_wait + Duration::from_secs(1)).await;
    bus.publish(vec![(bus.subject(good), ok(2))]).await;
    eventually("the later reading", || async { s.stored().await == 2 }).await;
    bus.drained().await;
    let (_, _, redelivered) = bus.consumer_state().await;
    assert_eq!(redelivered, 0);
    let rows: Vec<(String, Vec<u8>, String, i32, String)> = sqlx::query_as(
        "SELECT subject, payload, reason, deliveries, stream FROM telemetry_dead_letters",
    )
    .fetch_all(s.pool())
    .await
    .expect("dead letters");
    assert_eq!(rows.len(), 9);
    let got: BTreeMap<String, &str> = rows
        .iter()
        .map(|(subject, body, reason, _, _)| {
            (
                format!("{subject} {}", String::from_utf8_lossy(body)),
                reason.as_str(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(
        rows.iter().all(|r| r.3 == 1 && r.4 == bus.config.stream),
        "{rows:?}"
    );
    let _ = stop.send(true);
    worker.await.expect("the worker stops on shutdown");
}

#[tokio::test]
async fn a_batch_the_database_refuses_is_naked_and_stored_once_it_recovers() {
    let s = site().await;
    let (device, _) = s.active("T-1").await;
    let bus = Bus::new(|_| {}).await;
    sqlx::query("ALTER TABLE telemetry_rollup_queue RENAME TO telemetry_rollup_queue_away")
        .execute(s.pool())
        .await
        .expect("break the writer");
    let (worker, stop) = bus.worker(s.pool()).await;
    bus.publish(vec![(
        bus.subject(device),
        payload(reading(1, Utc::now(), json!({"temp": 1}))),
    )])
    .await;
    eventually("a redelivery after the NAK", || async {
        bus.consumer_state().await.2 > 0
    })
    .await;
    assert_eq!(s.stored().await, 0);
    sqlx::query("ALTER TABLE telemetry_rollup_queue_away RENAME TO telemetry_rollup_queue")
        .execute(s.pool())
        .await
        .expect("repair the writer");
    eventually("the reading stored", || async { s.stored().await == 1 }).await;
    bus.drained().await;
    assert_eq!(s.stored().await, 1);
    assert_eq!(
        count(s.pool(), "SELECT count(*) FROM telemetry_dead_letters").await,
        0
    );
    let _ = stop.send(true);
    worker.await.expect("the worker stops on shutdown");
}

// ----- NATS batch messages (a gateway's `{"readings": [...]}`) -----

/// A batch message of `readings`, in the HTTP body's shape.
fn batch(readings: &[Value]) -> Vec<u8> {
    payload(json!({ "readings": readings }))
}

/// A gateway's largest batch: 1,000 readings of one device (seq 0 to 999, two metrics each,
/// a millisecond apart up to `now`).
fn full_batch(now: DateTime<Utc>) -> Vec<Value> {
    (0..ingest::reading::MAX_READINGS as i64)
        .map(|seq| {
            let ts = now - Span::milliseconds(1000 - seq);
            reading(seq, ts, json!({"temp": seq % 7, "hum": 50}))
        })
        .collect()
}

/// The dead letters of the test's stream: (stream_seq, reading_index, reason, payload,
/// deliveries), in order.
async fn letters(pool: &PgPool) -> Vec<(i64, Option<i32>, String, Vec<u8>, i32)> {
    sqlx::query_as(
        "SELECT stream_seq, reading_index, reason, payload, deliveries FROM telemetry_dead_letters
         ORDER BY stream_seq, reading_index NULLS FIRST",
    )
    .fetch_all(pool)
    .await
    .expect("dead letters")
}

#[tokio::test]
async fn a_batch_message_is_stored_once_per_reading_also_when_published_twice() {
    let s = site().await;
    let (device, _) = s.active("T-gw").await;
    let (other, _) = s.active("T-one").await;
    let bus = Bus::new(|_| {}).await;
    // The stream of an earlier version (another size limit) is updated in place.
    let wider = NatsConfig {
        max_message_bytes: 2 * ingest::nats::MAX_MESSAGE_BYTES,
        ..bus.config.clone()
    };
    ingest::nats::setup(&bus.js, &wider)
        .await
        .expect("the stream's limit raised");
    ingest::nats::setup(&bus.js, &bus.config)
        .await
        .expect("and lowered again");
    let info = bus
        .js
        .get_stream(&bus.config.stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .config
        .max_message_size;
    assert_eq!(
        usize::try_from(info).ok(),
        Some(ingest::nats::MAX_MESSAGE_BYTES + ingest::nats::HEADER_ALLOWANCE)
    );
    let (worker, stop) = bus.worker(s.pool()).await;
    let now = Utc::now();
    let readings = full_batch(now);
    let total = readings.len() as i64;
    // The full batch, a single reading of another device alongside, then the batch again
    // and the same readings split in two batches: each reading is one row.
    bus.publish(vec![
        (bus.subject(device), batch(&readings)),
        (
            bus.subject(other),
            payload(reading(1, now, json!({"temp": 1}))),
        ),
        (bus.subject(device), batch(&readings)),
    ])
    .await;
    eventually("every reading stored", || async {
        s.stored().await == total + 1
    })
    .await;
    bus.drained().await;
    bus.publish(vec![
        (bus.subject(device), batch(&readings[..400])),
        (bus.subject(device), batch(&readings[400..])),
    ])
    .await;
    bus.drained().await;
    assert_eq!(s.stored().await, total + 1);
    assert_eq!(
        count(
            s.pool(),
            &format!("SELECT count(DISTINCT seq) FROM telemetry WHERE device_id = '{device}'")
        )
        .await,
        total
    );
    s.roll_up().await;
    assert_eq!(
        count(s.pool(), "SELECT sum(count)::int8 FROM telemetry_minute").await,
        2 * total + 1,
        "each reading counted once in the rollups"
    );
    assert_eq!(letters(s.pool()).await, vec![]);
    let (_, _, redelivered) = bus.consumer_state().await;
    assert_eq!(redelivered, 0);
    let _ = stop.send(true);
    worker.await.expect("the worker stops on shutdown");
}

#[tokio::test]
async fn a_batch_with_bad_readings_stores_the_good_ones_and_dead_letters_each_bad_one_once() {
    let s = site().await;
    let (device, _) = s.active("T-gw").await;
    let bus = Bus::new(|_| {}).await;
    let (worker, stop) = bus.worker(s.pool()).await;
    let now = Utc::now();
    let mut mismatch = reading(4, now, json!({"temp": 1}));
    mismatch["device_id"] = json!(Uuid::now_v7());
    let readings = vec![
        reading(1, now, json!({"temp": 1})),                     // stored
        reading(2, now, json!({"Temp": 1})),                     // bad_metric_name
        reading(3, now + Span::minutes(10), json!({"temp": 1})), // ts_in_future
        mismatch,                                                // device_mismatch
        json!("not a reading"),                                  // bad_reading
        reading(5, now - Span::days(400), json!({"temp": 1})),   // ts_too_old
        reading(6, now, json!({})),                              // no_metrics
        reading(7, now, json!({"temp": 2})),                     // stored
        reading(1, now, json!({"temp": 9})),                     // a repeat: dropped
    ];
    let expected = [
        (1, "bad_metric_name"),
        (2, "ts_in_future"),
        (3, "device_mismatch"),
        (4, "bad_reading"),
        (5, "ts_too_old"),
        (6, "no_metrics"),
    ];
    bus.publish(vec![(bus.subject(device), batch(&readings))])
        .await;
    eventually("the good readings", || async { s.stored().await == 2 }).await;
    bus.drained().await;
    // Past the acknowledgement wait: nothing comes again, nothing is recorded twice.
    tokio::time::sleep(bus.config.ack_wait + Duration::from_secs(1)).await;
    bus.publish(vec![(
        bus.subject(device),
        batch(&[reading(8, now, json!({"temp": 3}))]),
    )])
    .await;
    eventually("the later batch", || async { s.stored().await == 3 }).await;
    bus.drained().await;
    let (_, _, redelivered) = bus.consumer_state().await;
    assert_eq!(redelivered, 0);
    let stored: Vec<(i64, Value)> =
        sqlx::query_as("SELECT seq, metrics FROM telemetry ORDER BY seq")
            .fetch_all(s.pool())
            .await
            .expect("rows");
    // The batch with a reading that is not an object was read by serde_json and its
    // metrics written out again (1.0); the later batch, of the common shape, kept them as
    // sent (3).
    assert_eq!(
        stored,
        vec![
            (1, json!({"temp": 1.0})),
            (7, json!({"temp": 2.0})),
            (8, json!({"temp": 3}))
        ]
    );
    // One letter per refused reading, with its index and its own JSON as sent.
    let got = letters(s.pool()).await;
    let want: Vec<(Option<i32>, String, Vec<u8>, i32)> = expected
        .iter()
        .map(|(i, code)| {
            (
                Some(*i),
                code.to_string(),
                payload(readings[*i as usize].clone()),
                1,
            )
        })
        .collect();
    assert_eq!(
        got.iter()
            .map(|(_, i, r, p, d)| (*i, r.clone(), p.clone(), *d))
            .collect::<Vec<_>>(),
        want
    );
    assert!(got.iter().all(|l| l.0 == got[0].0), "one message: {got:?}");
    // A redelivery of that message (a crash between the commit and the ack) finds its
    // letters: still one each, with the higher delivery count.
    let again = ingest::store::DeadLetter {
        stream: bus.config.stream.clone(),
        stream_seq: got[0].0,
        reading_index: Some(1),
        subject: bus.subject(device),
        payload: got[0].3.clone(),
        reason: ingest::reading::Code::BadMetricName,
        detail: "again".to_owned(),
        deliveries: 2,
    };
    ingest::store::write(s.pool(), &[], &[again], |_| None)
        .await
        .expect("the letter again");
    let after = letters(s.pool()).await;
    assert_eq!(after.len(), expected.len());
    assert_eq!(
        after.iter().map(|l| l.4).collect::<Vec<_>>(),
        vec![2, 1, 1, 1, 1, 1]
    );
    s.roll_up().await;
    assert_eq!(
        count(s.pool(), "SELECT sum(count)::int8 FROM telemetry_minute").await,
        3
    );
    let _ = stop.send(true);
    worker.await.expect("the worker stops on shutdown");
}

#[tokio::test]
async fn batches_refused_whole_are_dead_lettered_once_and_terminated() {
    let s = site().await;
    let (good, _) = s.active("T-ok").await;
    let (suspended, _) = s.active("T-susp").await;
    s.act(suspended, "suspend").await;
    let unknown = Uuid::now_v7();
    let limit = 100_000;
    let bus = Bus::new(|c| c.max_message_bytes = limit).await;
    let (worker, stop) = bus.worker(s.pool()).await;
    let now = Utc::now();
    let ok = |seq: i64| reading(seq, now, json!({"temp": 1}));
    let one_too_many: Vec<Value> = (0..=ingest::reading::MAX_READINGS as i64).map(ok).collect();
    let over = batch(&one_too_many);
    assert!(over.len() < limit, "refused for its count, not its size");
    // Valid JSON of a valid batch, padded past the size limit (the stream takes it: its
    // limit leaves room for headers).
    let mut large = batch(&[ok(1)]);
    large.resize(limit + 1, b' ');
    let refused = [
        (
            bus.subject(unknown),
            batch(&[ok(1), ok(2)]),
            "unknown_device",
        ),
        (
            bus.subject(suspended),
            batch(&[ok(1), json!({"seq": "x"})]),
            "device_inactive",
        ),
        (bus.subject(good), over, "too_many_readings"),
        (bus.subject(good), batch(&[]), "no_readings"),
        (
            bus.subject(good),
            payload(json!({"readings": [ok(1)], "gateway": "g-1"})),
            "bad_batch",
        ),
        (
            bus.subject(good),
            b"{\"readings\": [{\"seq\": 1,".to_vec(),
            "bad_json",
        ),
        (bus.subject(good), large, "message_too_large"),
    ];
    bus.publish(
        refused
            .iter()
            .map(|(s, p, _)| (s.clone(), p.clone()))
            .collect(),
    )
    .await;
    let n = refused.len();
    eventually("every dead letter", || async {
        letters(s.pool()).await.len() == n
    })
    .await;
    tokio::time::sleep(bus.config.ack_wait + Duration::from_secs(1)).await;
    // The worker still takes messages; what it terminated never comes again.
    bus.publish(vec![(bus.subject(good), batch(&[ok(1), ok(2)]))])
        .await;
    eventually("the later batch", || async { s.stored().await == 2 }).await;
    one_letter_per_message(s.pool(), &bus, refused.iter().map(|(_, p, c)| (&p[..], *c))).await;
    let _ = stop.send(true);
    worker.await.expect("the worker stops on shutdown");
}

/// Once `bus` is drained: nothing was delivered again, and the dead letters are one per
/// message refused whole, with its payload as received and its code, in publish order.
async fn one_letter_per_message<'a>(
    pool: &PgPool,
    bus: &Bus,
    refused: impl Iterator<Item = (&'a [u8], &'a str)>,
) {
    bus.drained().await;
    let (_, _, redelivered) = bus.consumer_state().await;
    assert_eq!(redelivered, 0);
    let got = letters(pool).await;
    assert_eq!(
        got.iter()
            .map(|(_, i, r, p, d)| (*i, r.as_str(), p.as_slice(), *d))
            .collect::<Vec<_>>(),
        refused
            .map(|(p, code)| (None, code, p, 1))
            .collect::<Vec<_>>(),
        "one letter per message, its payload as received, in publish order"
    );
}

#[path = "telemetry_compressed.rs"]
mod compressed;
