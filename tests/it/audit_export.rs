//! `chronicle audit export`: the log in commit order as NDJSON and CSV, filtered, and resumed
//! from the cursor of an interrupted export without repeating or skipping an event.

use crate::support::TestApp;
use api::audit_export::{self, Format, CSV_COLUMNS};
use chrono::{DateTime, Utc};
use commands::audit::{self, LogFilter};
use schemas::Cursor;
use serde_json::Value;
use std::time::Duration;

/// A log of a few dozen events, readable up to its head (other tests' open transactions
/// hold the horizon back for a while).
async fn app_with_log() -> TestApp {
    let app = TestApp::new().await;
    app.customers_with_transfers(4).await;
    let total = app.event_count().await;
    for _ in 0..300 {
        let readable = audit::log_count(&app.db.pool, Cursor::START, &LogFilter::default())
            .await
            .expect("count");
        if readable == total {
            return app;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the log never became readable up to its head");
}

/// The events matching the filter in commit order, straight from SQL: (position, stream_type).
async fn expected(
    app: &TestApp,
    stream_type: Option<&str>,
    from: Option<DateTime<Utc>>,
) -> Vec<(i64, String)> {
    sqlx::query_as(
        "SELECT position, stream_type FROM events \
         WHERE ($1::text IS NULL OR stream_type = $1) AND ($2::timestamptz IS NULL OR occurred_at >= $2) \
         ORDER BY tx, position",
    )
    .bind(stream_type)
    .bind(from)
    .fetch_all(&app.db.pool)
    .await
    .expect("read the log")
}

async fn run(
    app: &TestApp,
    after: Cursor,
    filter: LogFilter,
    limit: Option<i64>,
    format: Format,
    header: bool,
) -> (Vec<u8>, Cursor, Vec<Cursor>) {
    let mut out = Vec::new();
    let mut reported = Vec::new();
    let end = audit_export::export_to(
        &app.db.pool,
        after,
        filter,
        limit,
        format,
        header,
        &mut out,
        |_, c| reported.push(c),
    )
    .await
    .expect("export");
    (out, end, reported)
}

fn ndjson_lines(out: &[u8]) -> Vec<Value> {
    std::str::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A minimal RFC 4180 parser: quoted fields may hold commas, doubled quotes and newlines.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
        } else {
            match c {
                '"' => quoted = true,
                ',' => row.push(std::mem::take(&mut field)),
                '\r' => {}
                '\n' => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                _ => field.push(c),
            }
        }
    }
    assert!(
        !quoted && field.is_empty() && row.is_empty(),
        "the CSV ends with a full row"
    );
    rows
}

#[tokio::test]
async fn ndjson_export_is_the_log_in_commit_order_with_filters() {
    let app = app_with_log().await;
    let (out, end, _) = run(
        &app,
        Cursor::START,
        LogFilter::default(),
        None,
        Format::Ndjson,
        true,
    )
    .await;
    let lines = ndjson_lines(&out);
    let want = expected(&app, None, None).await;
    assert!(want.len() > 10, "a log of some events: {}", want.len());
    let got: Vec<(i64, String)> = lines
        .iter()
        .map(|l| {
            (
                l["position"].as_i64().expect("position"),
                l["stream_type"].as_str().expect("type").to_owned(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // The audit routes' fields, every one of them.
    for field in CSV_COLUMNS {
        assert!(
            lines[0].get(field).is_some(),
            "field {field} in {}",
            lines[0]
        );
    }
    let last = lines.last().expect("a last line");
    assert_eq!(
        audit_export::format_cursor(end),
        format!("{}-{}", last["tx"], last["position"])
    );

    // Filtered by stream type and a time range starting mid-log.
    let middle: DateTime<Utc> = lines[lines.len() / 2]["occurred_at"]
        .as_str()
        .expect("time")
        .parse()
        .expect("RFC 3339");
    let filter = LogFilter {
        stream_type: Some("wallet".into()),
        from: Some(middle),
        to: Some(middle + chrono::Duration::days(1)),
        ..LogFilter::default()
    };
    let (out, _, _) = run(&app, Cursor::START, filter, None, Format::Ndjson, true).await;
    let got: Vec<i64> = ndjson_lines(&out)
        .iter()
        .map(|l| l["position"].as_i64().expect("p"))
        .collect();
    let want: Vec<i64> = expected(&app, Some("wallet"), Some(middle))
        .await
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);

    // A range that ends before it starts is refused.
    let bad = LogFilter {
        from: Some(middle),
        to: Some(middle),
        ..LogFilter::default()
    };
    let mut sink = Vec::new();
    let r = audit_export::export_to(
        &app.db.pool,
        Cursor::START,
        bad,
        None,
        Format::Ndjson,
        true,
        &mut sink,
        |_, _| {},
    )
    .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn csv_export_parses_back_into_the_same_events() {
    let app = app_with_log().await;
    let (json, _, _) = run(
        &app,
        Cursor::START,
        LogFilter::default(),
        None,
        Format::Ndjson,
        true,
    )
    .await;
    let (csv, _, _) = run(
        &app,
        Cursor::START,
        LogFilter::default(),
        None,
        Format::Csv,
        true,
    )
    .await;
    let rows = parse_csv(std::str::from_utf8(&csv).expect("utf-8"));
    let events = ndjson_lines(&json);
    assert_eq!(rows[0], CSV_COLUMNS.map(String::from).to_vec());
    assert_eq!(rows.len() - 1, events.len());
    for (row, event) in rows[1..].iter().zip(&events) {
        assert_eq!(row.len(), CSV_COLUMNS.len());
        for (cell, column) in row.iter().zip(CSV_COLUMNS) {
            let want = &event[column];
            match want {
                Value::Null => assert_eq!(cell, "", "{column}"),
                Value::String(s) => assert_eq!(cell, s, "{column}"),
                Value::Object(_) | Value::Array(_) => {
                    let back: Value = serde_json::from_str(cell).expect("JSON text");
                    assert_eq!(&back, want, "{column}");
                }
                other => assert_eq!(cell, &other.to_string(), "{column}"),
            }
        }
    }
    // A resumed CSV export appends rows without a second header.
    let (tail, _, _) = run(
        &app,
        Cursor::START,
        LogFilter::default(),
        Some(2),
        Format::Csv,
        false,
    )
    .await;
    assert_eq!(
        parse_csv(std::str::from_utf8(&tail).expect("utf-8")),
        rows[1..3].to_vec()
    );
}

#[tokio::test]
async fn an_export_stopped_and_resumed_from_its_cursor_is_the_whole_export() {
    let app = app_with_log().await;
    let (whole, _, _) = run(
        &app,
        Cursor::START,
        LogFilter::default(),
        None,
        Format::Ndjson,
        true,
    )
    .await;
    let n = ndjson_lines(&whole).len();
    for stop in [1, 7, n as i64 - 1, n as i64] {
        let (mut out, cursor, reported) = run(
            &app,
            Cursor::START,
            LogFilter::default(),
            Some(stop),
            Format::Ndjson,
            true,
        )
        .await;
        assert_eq!(
            reported.last(),
            Some(&cursor),
            "the cursor is reported after the batch"
        );
        // The cursor survives as text, as in `<output>.cursor`.
        let text = audit_export::format_cursor(cursor);
        let cursor = audit_export::parse_cursor(&app.db.pool, &text)
            .await
            .expect("cursor");
        let (rest, _, _) = run(
            &app,
            cursor,
            LogFilter::default(),
            None,
            Format::Ndjson,
            true,
        )
        .await;
        out.extend_from_slice(&rest);
        assert_eq!(out, whole, "stopped after {stop}");
    }
    // A bare position resumes after that event as well.
    let lines = ndjson_lines(&whole);
    let p = lines[4]["position"].as_i64().expect("p");
    let c = audit_export::parse_cursor(&app.db.pool, &p.to_string())
        .await
        .expect("cursor");
    let (rest, _, _) = run(&app, c, LogFilter::default(), None, Format::Ndjson, true).await;
    assert_eq!(ndjson_lines(&rest), lines[5..].to_vec());
    assert!(audit_export::parse_cursor(&app.db.pool, "x-1")
        .await
        .is_err());
    assert!(audit_export::parse_cursor(&app.db.pool, "999999999")
        .await
        .is_err());
}

#[tokio::test]
async fn a_resumed_export_crosses_batch_edges_without_a_gap_or_a_repeat() {
    let app = TestApp::without_projectors().await;
    // 2,500 events over three transactions (batches are 1,000 events), with payload text
    // that needs CSV quoting.
    for t in 0..3 {
        sqlx::query(
            "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, \
             schema_version, payload, actor_sub, actor_role, command_id, correlation_id, occurred_at) \
             SELECT gen_random_uuid(), 'wallet', gen_random_uuid(), 1, 'ExportProbe', 1, \
             jsonb_build_object('note', 'a, \"quoted\"' || chr(10) || 'line', 'n', g, 't', $1::int), \
             'probe', 'admin', gen_random_uuid(), gen_random_uuid(), now() \
             FROM generate_series(1, $2) g",
        )
        .bind(t)
        .bind(if t == 1 { 500 } else { 1000 })
        .execute(&app.db.pool)
        .await
        .expect("insert probe events");
    }
    for _ in 0..300 {
        let n = audit::log_count(&app.db.pool, Cursor::START, &LogFilter::default())
            .await
            .expect("count");
        if n == 2500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for format in [Format::Ndjson, Format::Csv] {
        let (whole, _, reported) = run(
            &app,
            Cursor::START,
            LogFilter::default(),
            None,
            format,
            true,
        )
        .await;
        assert_eq!(reported.len(), 3, "three batches");
        for stop in [999, 1000, 1001, 2499] {
            let (mut out, cursor, _) = run(
                &app,
                Cursor::START,
                LogFilter::default(),
                Some(stop),
                format,
                true,
            )
            .await;
            let (rest, _, _) = run(&app, cursor, LogFilter::default(), None, format, false).await;
            out.extend_from_slice(&rest);
            assert!(out == whole, "{format:?} stopped after {stop}");
        }
        if format == Format::Csv {
            let rows = parse_csv(std::str::from_utf8(&whole).expect("utf-8"));
            assert_eq!(rows.len(), 2501);
            let payload: Value = serde_json::from_str(&rows[1][8]).expect("payload");
            assert_eq!(payload["note"], "a, \"quoted\"\nline");
        }
    }
}
