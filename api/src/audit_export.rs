//! The compliance export of the global log (`chronicle audit export`): every event matching a
//! filter, in commit order, read in batches (memory bounded by one batch) and written as
//! NDJSON (the audit routes' event objects, one per line) or CSV (a header row, then one row
//! per event with the payload as JSON text). After each batch is written and flushed the
//! caller is told the cursor of its last event: resuming after that cursor neither repeats
//! nor skips an event.

use crate::routes_audit::{encode_cursor, AuditEvent, EXPORT_BATCH};
use chrono::{DateTime, Utc};
use commands::audit::{self, LogFilter};
use futures::TryStreamExt;
use schemas::Cursor;
use sqlx::PgPool;
use std::io::Write;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// RFC 4180 CSV with a header row.
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            _ => Err(format!("unknown format {s:?}: use ndjson or csv")),
        }
    }
}

/// The CSV columns, in order: the fields of an audit event.
pub const CSV_COLUMNS: [&str; 15] = [
    "position",
    "tx",
    "event_id",
    "stream_type",
    "stream_id",
    "stream_version",
    "event_type",
    "schema_version",
    "payload",
    "actor_sub",
    "actor_role",
    "command_id",
    "correlation_id",
    "causation_id",
    "occurred_at",
];

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The log could not be read.
    #[error("reading the log: {0}")]
    Store(#[from] sqlx::Error),
    /// The output could not be written.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// A bad argument (cursor, time range).
    #[error("{0}")]
    Invalid(String),
}

/// The cursor as text: `<tx>-<position>` (as in the audit routes' `next`).
pub fn format_cursor(c: Cursor) -> String {
    encode_cursor(c)
}

/// A cursor from text: `<tx>-<position>`, or a bare log position looked up in the log (0 is
/// the start).
pub async fn parse_cursor(pool: &PgPool, raw: &str) -> Result<Cursor, ExportError> {
    match audit::cursor_from_text(pool, raw).await? {
        Ok(cursor) => Ok(cursor),
        Err(audit::CursorTextError::Malformed) => Err(ExportError::Invalid(format!(
            "bad cursor {:?}: use <tx>-<position> (as printed by an export) or a log position",
            raw.trim()
        ))),
        Err(audit::CursorTextError::NoEvent(position)) => Err(ExportError::Invalid(format!(
            "no event at position {position} in the log"
        ))),
    }
}

/// Quotes one CSV field when it holds a comma, a quote, CR or LF (quotes doubled).
pub fn csv_field(out: &mut Vec<u8>, field: &str) {
    csv_bytes(out, field.as_bytes());
}

/// [`csv_field`] of UTF-8 bytes.
fn csv_bytes(out: &mut Vec<u8>, field: &[u8]) {
    if !field
        .iter()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.extend_from_slice(field);
        return;
    }
    out.reserve(field.len() + 8);
    out.push(b'"');
    // Copy runs between quotes; each quote is doubled.
    let mut rest = field;
    while let Some(i) = rest.iter().position(|b| *b == b'"') {
        out.extend_from_slice(&rest[..=i]);
        out.push(b'"');
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

fn csv_row<'a>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = &'a str>) {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(out, f);
    }
    out.extend_from_slice(b"\r\n");
}

/// The CSV header row.
pub fn csv_header() -> Vec<u8> {
    let mut out = Vec::new();
    csv_row(&mut out, CSV_COLUMNS);
    out
}

/// Appends one event in `format` to `out`.
pub fn encode_event(
    out: &mut Vec<u8>,
    format: Format,
    event: AuditEvent,
) -> Result<(), ExportError> {
    match format {
        Format::Ndjson => ndjson_event(out, &event)?,
        Format::Csv => csv_event(out, &mut Vec::new(), &event)?,
    }
    Ok(())
}

/// Appends one event as a line of JSON to `out`: the bytes `serde_json::to_writer` writes
/// for the [`AuditEvent`] and a `\n` (the tests compare the two), with the numbers, ids and
/// the time written directly instead of through serde's string escaping, which they never
/// need.
fn ndjson_event(out: &mut Vec<u8>, event: &AuditEvent) -> Result<(), ExportError> {
    // Every field, by name, in the struct's order (serde's): a field added to AuditEvent
    // must be added here, or this does not compile.
    let AuditEvent {
        position,
        tx,
        event_id,
        stream_type,
        stream_id,
        stream_version,
        event_type,
        schema_version,
        payload,
        actor_sub,
        actor_role,
        command_id,
        correlation_id,
        causation_id,
        occurred_at,
    } = event;
    let mut uuid = uuid::Uuid::encode_buffer();
    let mut id = |out: &mut Vec<u8>, id: &uuid::Uuid| {
        out.push(b'"');
        out.extend_from_slice(id.hyphenated().encode_lower(&mut uuid).as_bytes());
        out.push(b'"');
    };
    // Writing to a Vec cannot fail: the results of write! are ignored.
    let _ = write!(out, "{{\"position\":{position},\"tx\":{tx},\"event_id\":");
    id(out, event_id);
    out.extend_from_slice(b",\"stream_type\":");
    json(out, stream_type)?;
    out.extend_from_slice(b",\"stream_id\":");
    id(out, stream_id);
    let _ = write!(out, ",\"stream_version\":{stream_version},\"event_type\":");
    json(out, event_type)?;
    let _ = write!(out, ",\"schema_version\":{schema_version},\"payload\":");
    json(out, payload)?;
    out.extend_from_slice(b",\"actor_sub\":");
    json(out, actor_sub)?;
    out.extend_from_slice(b",\"actor_role\":");
    json(out, actor_role)?;
    out.extend_from_slice(b",\"command_id\":");
    id(out, command_id);
    out.extend_from_slice(b",\"correlation_id\":");
    id(out, correlation_id);
    out.extend_from_slice(b",\"causation_id\":");
    match causation_id {
        Some(c) => id(out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"occurred_at\":");
    rfc3339(out, occurred_at)?;
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// Appends `value` as serde_json writes it.
fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from)?;
    Ok(())
}

/// A time as chrono's serde writes it, in quotes: RFC 3339 in UTC with `Z` and as many
/// fractional digits as needed (none, 3, 6 or 9). Years outside 0-9999 and leap seconds go
/// through serde itself.
fn rfc3339(out: &mut Vec<u8>, t: &DateTime<Utc>) -> Result<(), ExportError> {
    use chrono::{Datelike, Timelike};
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&t.year()) || nanos >= 1_000_000_000 {
        return json(out, t);
    }
    let _ = write!(
        out,
        "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let _ = if nanos == 0 {
        Ok(())
    } else if nanos.is_multiple_of(1_000_000) {
        write!(out, ".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        write!(out, ".{:06}", nanos / 1_000)
    } else {
        write!(out, ".{nanos:09}")
    };
    out.extend_from_slice(b"Z\"");
    Ok(())
}

/// Appends one event as a CSV row to `out`, field by field in [`CSV_COLUMNS`]' order, each
/// cell the text of that field in the event's JSON form (strings unquoted, the payload as
/// compact JSON, a null as an empty cell); `scratch` is a buffer reused between rows.
fn csv_event(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    event: &AuditEvent,
) -> Result<(), ExportError> {
    // Every field, by name: a field added to AuditEvent must be added here (and to
    // CSV_COLUMNS), or this does not compile.
    let AuditEvent {
        position,
        tx,
        event_id,
        stream_type,
        stream_id,
        stream_version,
        event_type,
        schema_version,
        payload,
        actor_sub,
        actor_role,
        command_id,
        correlation_id,
        causation_id,
        occurred_at,
    } = event;
    let mut uuid = uuid::Uuid::encode_buffer();
    let mut id = |out: &mut Vec<u8>, id: &uuid::Uuid| {
        out.extend_from_slice(id.hyphenated().encode_lower(&mut uuid).as_bytes());
        out.push(b',');
    };
    let number = |out: &mut Vec<u8>, n: i64| {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{n},");
    };
    let text = |out: &mut Vec<u8>, s: &str| {
        csv_field(out, s);
        out.push(b',');
    };
    number(out, *position);
    number(out, *tx);
    id(out, event_id);
    text(out, stream_type);
    id(out, stream_id);
    number(out, *stream_version);
    text(out, event_type);
    number(out, i64::from(*schema_version));
    scratch.clear();
    serde_json::to_writer(&mut *scratch, payload).map_err(std::io::Error::from)?;
    csv_bytes(out, scratch);
    out.push(b',');
    text(out, actor_sub);
    text(out, actor_role);
    id(out, command_id);
    id(out, correlation_id);
    match causation_id {
        Some(c) => id(out, c),
        None => out.push(b','),
    }
    // The time as serde writes it (RFC 3339 in UTC, `Z`), without the JSON quotes.
    scratch.clear();
    rfc3339(scratch, occurred_at)?;
    let time = scratch
        .strip_prefix(b"\"")
        .and_then(|t| t.strip_suffix(b"\""))
        .unwrap_or(scratch);
    csv_bytes(out, time);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Writes every event after `after` matching `filter` (at most `limit`) to `out` in `format`,
/// one batch at a time; `on_batch(events written, cursor after them)` is called once each
/// batch is written and flushed. Returns the cursor after the last event written (`after` if
/// none). The CSV header is written only when `header` is true (not when appending).
#[allow(clippy::too_many_arguments)]
pub async fn export_to<W: Write>(
    pool: &PgPool,
    after: Cursor,
    filter: LogFilter,
    limit: Option<i64>,
    format: Format,
    header: bool,
    out: &mut W,
    mut on_batch: impl FnMut(u64, Cursor),
) -> Result<Cursor, ExportError> {
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if from >= to {
            return Err(ExportError::Invalid(format!(
                "--from ({from}) must be before --to ({to})"
            )));
        }
    }
    if header && format == Format::Csv {
        out.write_all(&csv_header())?;
        out.flush()?;
    }
    let mut cursor = after;
    // One batch's bytes, and a field's: reused from batch to batch.
    let mut chunk = Vec::with_capacity(EXPORT_BATCH as usize * 640);
    let mut scratch = Vec::with_capacity(1024);
    let mut batches = std::pin::pin!(audit::export(
        pool.clone(),
        after,
        filter,
        limit,
        EXPORT_BATCH
    ));
    while let Some(events) = batches.try_next().await? {
        // From here to the callback nothing awaits: a cancelled export has written either
        // the whole batch and reported its cursor, or none of it.
        let n = events.len() as u64;
        let last = events.last().map(|e| e.cursor()).unwrap_or(cursor);
        chunk.clear();
        for e in events {
            let event = AuditEvent::from(e);
            match format {
                Format::Ndjson => ndjson_event(&mut chunk, &event)?,
                Format::Csv => csv_event(&mut chunk, &mut scratch, &event)?,
            }
        }
        out.write_all(&chunk)?;
        out.flush()?;
        cursor = last;
        on_batch(n, cursor);
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let mut out = Vec::new();
        csv_row(
            &mut out,
            ["plain", "a,b", "say \"hi\"", "two\nlines", "", "{\"k\":1}"],
        );
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",,\"{\"\"k\"\":1}\"\r\n"
        );
    }

    /// The CSV row as first written: the event's JSON value, field by field.
    fn csv_via_json_value(event: &AuditEvent) -> Vec<u8> {
        let value = serde_json::to_value(event).unwrap_or_default();
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|c| match &value[*c] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        let mut out = Vec::new();
        csv_row(&mut out, cells.iter().map(String::as_str));
        out
    }

    fn event(n: i64, nanos: u32, causation: bool, text: &str) -> AuditEvent {
        let at = chrono::DateTime::from_timestamp(1_765_000_000 + n, nanos).unwrap_or_default();
        AuditEvent {
            position: n,
            tx: 1000 + n,
            event_id: uuid::Uuid::now_v7(),
            stream_type: "wallet".into(),
            stream_id: uuid::Uuid::now_v7(),
            stream_version: n + 1,
            event_type: "FundsDeposited".into(),
            schema_version: 1,
            payload: serde_json::json!({"amount": n, "memo": text, "z": [1, {"b": null}],
                                        "a": {"nested": "\"q\", \\ \u{e9}\n"}}),
            actor_sub: text.into(),
            actor_role: "payments".into(),
            command_id: uuid::Uuid::now_v7(),
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: causation.then(uuid::Uuid::now_v7),
            occurred_at: at,
        }
    }

    #[test]
    fn csv_rows_are_the_fields_of_the_json_form() {
        let texts = [
            "plain",
            "a,b",
            "say \"hi\"",
            "two\nlines",
            "cr\r",
            "",
            "\u{1F600}",
        ];
        let mut scratch = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            for nanos in [0, 120_000_000, 123_456_000, 5_000] {
                for causation in [false, true] {
                    let e = event(i as i64, nanos, causation, text);
                    let mut out = Vec::new();
                    csv_event(&mut out, &mut scratch, &e).unwrap_or_default();
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&csv_via_json_value(&e)),
                        "{text:?} {nanos} {causation}"
                    );
                }
            }
        }
    }

    #[test]
    fn ndjson_lines_are_what_serde_writes_for_the_event() {
        let texts = [
            "plain",
            "a,b",
            "say \"hi\"",
            "two\nlines",
            "tab\t\u{1}",
            "",
            "\u{1F600}",
        ];
        let nanos = [
            0,
            1,
            120_000_000,
            123_456_000,
            5_000,
            999_999_999,
            1_500_000_000,
        ];
        let mut events = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            for n in nanos {
                for causation in [false, true] {
                    events.push(event(i as i64, n, causation, text));
                }
            }
        }
        // Times at the edges of the fast path and past them (serde writes those).
        let edges = [
            (-62_167_219_200, 7_000),
            (-62_167_219_201, 7_000),
            (253_402_300_799, 7_000),
            (253_402_300_800, 7_000),
            // A leap second (nanoseconds past 10^9 at a :59).
            (1_765_000_019, 1_500_000_000),
        ];
        for (secs, nanos) in edges {
            let at = chrono::DateTime::from_timestamp(secs, nanos);
            assert!(at.is_some(), "{secs} {nanos}");
            let mut e = event(1, 0, true, "edge");
            e.occurred_at = at.unwrap_or_default();
            events.push(e);
        }
        for e in &events {
            let mut want = serde_json::to_vec(e).unwrap_or_default();
            want.push(b'\n');
            let mut got = Vec::new();
            ndjson_event(&mut got, e).unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{:?}",
                e.occurred_at
            );
        }
    }

    #[test]
    fn formats_parse() {
        assert_eq!("csv".parse::<Format>(), Ok(Format::Csv));
        assert_eq!("ndjson".parse::<Format>(), Ok(Format::Ndjson));
        assert!("json".parse::<Format>().is_err());
    }
}
